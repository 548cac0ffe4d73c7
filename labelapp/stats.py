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


def win_rate(outcomes: list[float], *, resamples: int = 2000, seed: int = 0) -> dict:
    """Win-rate of the candidate (1 = win, 0.5 = tie, 0 = loss) with a 95% percentile bootstrap
    interval over the judged items — the measure InstructGPT reports."""
    import random

    n = len(outcomes)
    if not n:
        return {"win_rate": None, "low": None, "high": None, "n": 0}
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(outcomes, k=n)) / n for _ in range(resamples))
    return {
        "win_rate": sum(outcomes) / n,
        "low": means[int(0.025 * resamples)],
        "high": means[min(resamples - 1, int(0.975 * resamples))],
        "n": n,
    }


WIN_VALUE = {"a": 1.0, "tie": 0.5, "b": 0.0}


def evaluation_summary(*, project: Project, round_id: int | None = None) -> dict:
    """Human win-rate (blind comparisons) and automatic win-rate (reward model) of the candidate
    over the baseline, for one round's evaluation tasks (or the project's latest round)."""
    from labelapp.models import Comparison, EvaluationTask

    tasks = EvaluationTask.objects.filter(project=project)
    if round_id is None:
        round_id = tasks.order_by("-id").values_list("round_id", flat=True).first()
    tasks = tasks.filter(round_id=round_id)
    human = [WIN_VALUE[w] for w in Comparison.objects.filter(task__in=tasks).values_list("winner", flat=True)]
    auto = [
        1.0 if a > b else 0.5 if a == b else 0.0
        for a, b in tasks.exclude(reward_a=None).exclude(reward_b=None).values_list("reward_a", "reward_b")
    ]
    return {"round_id": round_id, "tasks": tasks.count(), "human": win_rate(human), "reward_model": win_rate(auto)}
