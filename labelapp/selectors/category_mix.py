"""The category mix of a project: how its prompts, demonstrations and rankings spread over its prompt
categories, beside the InstructGPT mix (the studio's category page and
`GET /api/v1/projects/{id}/statistics/categories/`).

InstructGPT's share per use case is the distribution of its API prompt data set (Ouyang et al. 2022, table 1).
A project that keeps the default ten categories can compare its own mix with it; custom categories have no
InstructGPT share (null). Counts: prompts of either split; demonstrations that review has not rejected;
people's rankings of tasks that are not gold (AI labels and gold answers are not part of the training mix).
Categories the project no longer lists but its prompts still carry are reported too, after the listed ones,
and prompts without a category under "" (none).
"""
from __future__ import annotations

from django.db.models import Count

from labelapp.models import Demonstration, Project, Prompt, Ranking

# % of InstructGPT's API prompt data set per use case (Ouyang et al. 2022, table 1); sums to 99.9.
INSTRUCTGPT_MIX = {
    "generation": 45.6, "open_qa": 12.4, "brainstorming": 11.2, "chat": 8.4, "rewrite": 6.6,
    "summarization": 4.2, "classification": 3.5, "other": 3.5, "closed_qa": 2.6, "extract": 1.9,
}
KINDS = ("prompts", "demonstrations", "rankings")


def _share(n: int, total: int) -> float | None:
    return round(100.0 * n / total, 1) if total else None


def category_mix(*, project: Project) -> dict:
    """{"categories": [row per category], "totals": {kind: n}}; each row has the category, per kind its
    count and its share of the project's total (%, one decimal; null when the total is 0), and
    `instructgpt_share` (% or null for a category InstructGPT did not have)."""
    counts = {
        "prompts": Prompt.objects.filter(project=project).values_list("category").annotate(n=Count("id")),
        "demonstrations": Demonstration.objects.filter(prompt__project=project)
        .exclude(review_status=Demonstration.Review.REJECTED)
        .values_list("prompt__category").annotate(n=Count("id")),
        "rankings": Ranking.objects.filter(task__project=project, task__gold_order__isnull=True)
        .values_list("task__prompt__category").annotate(n=Count("id")),
    }
    by_kind = {kind: {category: n for category, n in rows.order_by()} for kind, rows in counts.items()}
    listed = list(project.categories or [])
    seen = {c for kind in by_kind.values() for c in kind}
    extra = sorted(c for c in seen if c not in listed)
    totals = {kind: sum(by_kind[kind].values()) for kind in KINDS}
    rows = []
    for category in [*listed, *extra]:
        row = {"category": category, "listed": category in listed}
        for kind in KINDS:
            n = by_kind[kind].get(category, 0)
            row[kind], row[f"{kind}_share"] = n, _share(n, totals[kind])
        row["instructgpt_share"] = INSTRUCTGPT_MIX.get(category)
        rows.append(row)
    return {"categories": rows, "totals": totals}
