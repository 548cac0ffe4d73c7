"""Project statistics built from the database and labelapp.agreement's pure functions."""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from labelapp.agreement import (
    annotator_consensus_agreement,
    krippendorff_alpha_ordinal,
    krippendorff_alpha_pairwise,
    pairwise_agreement,
)
from labelapp.exports import pseudonym
from labelapp.models import Project, Ranking


def project_rankings(*, project: Project) -> dict[int, dict[int, list[list[int]]]]:
    """{task id: {annotator id: order}} for tasks ranked by two or more annotators."""
    by_task: dict[int, dict[int, list[list[int]]]] = defaultdict(dict)
    rows = (
        Ranking.objects.filter(task__project=project, task__ranking_count__gte=2, task__gold_order__isnull=True)
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
    strict = pairwise_agreement(rankings, ignore_ties=True)
    per_annotator = annotator_consensus_agreement(rankings)
    return {
        "items_with_overlap": len(rankings),
        "pairwise_agreement": overall.rate,
        "pairwise_comparisons": overall.n,
        "pairwise_agreement_without_ties": strict.rate,
        "pairwise_comparisons_without_ties": strict.n,
        "krippendorff_alpha_pairwise_nominal": krippendorff_alpha_pairwise(rankings, metric="nominal"),
        "krippendorff_alpha_pairwise_ordinal": krippendorff_alpha_pairwise(rankings, metric="ordinal"),
        "krippendorff_alpha_ordinal": krippendorff_alpha_ordinal(rankings),
        "annotators": {pseudonym(a): {"agreement_with_consensus": r.rate, "n": r.n} for a, r in per_annotator.items()},
    }


def win_rate(outcomes: list[float], *, groups: list | None = None, resamples: int = 2000, seed: int = 0) -> dict:
    """Win-rate of the candidate (1 = win, 0.5 = tie, 0 = loss) with a 95% percentile bootstrap
    interval — the measure InstructGPT reports.

    `groups` names the item each outcome judges (the evaluation task: one prompt, two answers;
    sortable keys). The bootstrap resamples whole items, because several annotators judging the
    same two answers are not independent draws; without `groups` every outcome is its own item."""
    n = len(outcomes)
    if not n:
        return {"win_rate": None, "low": None, "high": None, "n": 0, "items": 0}
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} group keys for {n} outcomes")
    items: dict = defaultdict(lambda: [0.0, 0])  # key -> [sum of outcomes, count]
    for key, value in zip(groups if groups is not None else range(n), outcomes, strict=True):
        items[key][0] += value
        items[key][1] += 1
    sums = tuple((total, count) for _, (total, count) in sorted(items.items()))
    low, high = _bootstrap(sums, resamples, seed)
    return {"win_rate": sum(outcomes) / n, "low": low, "high": high, "n": n, "items": len(sums)}


@lru_cache(maxsize=256)
def _bootstrap(sums: tuple[tuple[float, int], ...], resamples: int, seed: int) -> tuple[float, float]:
    """The 2.5% and 97.5% percentiles of the resampled win-rate (cached: the studio polls)."""
    import random

    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        drawn = rng.choices(sums, k=len(sums))
        means.append(sum(total for total, _ in drawn) / sum(count for _, count in drawn))
    means.sort()
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


WIN_VALUE = {"a": 1.0, "tie": 0.5, "b": 0.0}


def evaluation_summary(*, project: Project, round_id: int | None = None) -> dict:
    """Human win-rate (blind comparisons) and automatic win-rate (reward model) of the candidate
    over the baseline, for one round's evaluation tasks (or the project's latest round)."""
    from labelapp.models import EvaluationTask

    if round_id is None:
        round_id = EvaluationTask.objects.filter(project=project).order_by("-id").values_list("round_id", flat=True).first()
    return evaluation_summaries(project=project, round_ids=[round_id])[round_id]


def evaluation_summaries(*, project: Project, round_ids: list[int | None]) -> dict[int | None, dict]:
    """evaluation_summary for several rounds in two queries ({round id: summary}; None: tasks
    without a round)."""
    from django.db.models import Q

    from labelapp.models import Comparison, EvaluationTask

    wanted = Q(round_id__in=[r for r in round_ids if r is not None])
    if None in round_ids:
        wanted |= Q(round__isnull=True)
    tasks = EvaluationTask.objects.filter(wanted, project=project, gold_winner="")  # gold is scored, not counted
    counts: dict = defaultdict(int)
    auto: dict = defaultdict(list)
    for round_id, a, b in tasks.values_list("round_id", "reward_a", "reward_b"):
        counts[round_id] += 1
        if a is not None and b is not None:
            auto[round_id].append(1.0 if a > b else 0.5 if a == b else 0.0)
    judged: dict = defaultdict(list)
    for round_id, task_id, winner in Comparison.objects.filter(task__in=tasks).values_list("task__round_id", "task_id", "winner"):
        judged[round_id].append((task_id, WIN_VALUE[winner]))
    return {
        round_id: {
            "round_id": round_id, "tasks": counts[round_id],
            "human": win_rate([v for _, v in judged[round_id]], groups=[t for t, _ in judged[round_id]]),
            "reward_model": win_rate(auto[round_id]),
        }
        for round_id in round_ids
    }
