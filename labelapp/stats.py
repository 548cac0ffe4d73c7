"""Project statistics built from the database and labelapp.agreement's pure functions."""
from __future__ import annotations

from collections import defaultdict

from labelapp.agreement import annotator_consensus_agreement, krippendorff_alpha_ordinal, pairwise_agreement
from labelapp.exports import pseudonym
from labelapp.models import Project, Ranking


def project_rankings(*, project: Project) -> dict[int, dict[int, list[list[int]]]]:
    """{task id: {annotator id: order}} for tasks ranked by two or more annotators."""
    by_task: dict[int, dict[int, list[list[int]]]] = defaultdict(dict)
    rows = (
        Ranking.objects.filter(task__project=project, task__ranking_count__gte=2)
        .exclude(order=[])
        .values_list("task_id", "annotator_id", "order")
        .iterator(chunk_size=5000)
    )
    for task_id, annotator_id, order in rows:
        by_task[task_id][annotator_id] = order
    return {task: orders for task, orders in by_task.items() if len(orders) >= 2}


def project_agreement(*, project: Project) -> dict:
    rankings = project_rankings(project=project)
    overall = pairwise_agreement(rankings)
    per_annotator = annotator_consensus_agreement(rankings)
    return {
        "items_with_overlap": len(rankings),
        "pairwise_agreement": overall.rate,
        "pairwise_comparisons": overall.n,
        "krippendorff_alpha_ordinal": krippendorff_alpha_ordinal(rankings),
        "annotators": {pseudonym(a): {"agreement_with_consensus": r.rate, "n": r.n} for a, r in per_annotator.items()},
    }
