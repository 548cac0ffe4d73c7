"""Project statistics built from the database and labelapp.analysis.agreement's pure functions."""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache

from labelapp.analysis.agreement import (
    annotator_consensus_agreement,
    krippendorff_alpha_ordinal,
    krippendorff_alpha_pairwise,
    pairwise_agreement,
)
from labelapp.formats.exports import pseudonym
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
    without a round).

    Each summary holds the raw win-rates (`human`, `reward_model`), the length-controlled ones
    (`length_controlled`: labelapp.analysis.length_control, read at equal answer length), the mean answer
    lengths in characters (`lengths`: candidate, baseline, references), the same per prompt
    category when the evaluation's prompts have two or more (`categories`), the same per prompt
    template and few-shot count (`templates`: "<name> · <k>-shot"), and the over-optimisation
    warnings of labelapp.selectors.length_watch.held_out_warnings (`warnings`)."""
    from django.db.models import Q
    from django.db.models.functions import Length

    from labelapp.models import Comparison, EvaluationTask
    from labelapp.selectors.length_watch import held_out_warnings

    wanted = Q(round_id__in=[r for r in round_ids if r is not None])
    if None in round_ids:
        wanted |= Q(round__isnull=True)
    tasks = EvaluationTask.objects.filter(wanted, project=project, gold_winner="")  # gold is scored, not counted
    rows: dict = defaultdict(list)
    for task in (tasks.annotate(len_a=Length("completion_a__text"), len_b=Length("completion_b__text"),
                                len_ref=Length("prompt__reference"))
                 .values("id", "round_id", "reward_a", "reward_b", "len_a", "len_b", "len_ref", "prompt__category",
                         "prompt__metadata__template__name", "prompt__metadata__template__few_shot")
                 .order_by("id")):
        rows[task["round_id"]].append(task)
    judged: dict = defaultdict(list)
    for task_id, winner in Comparison.objects.filter(task__in=tasks).values_list("task_id", "winner"):
        judged[task_id].append(WIN_VALUE[winner])
    summaries = {}
    for round_id in round_ids:
        summary = {"round_id": round_id, **_evaluation_block(rows[round_id], judged)}
        categories = sorted({t["prompt__category"] for t in rows[round_id]})
        summary["categories"] = {} if len(categories) < 2 else {
            category: _evaluation_block([t for t in rows[round_id] if t["prompt__category"] == category], judged)
            for category in categories
        }
        summary["templates"] = template_blocks(rows[round_id], judged)
        summary["warnings"] = held_out_warnings(summary)
        summaries[round_id] = summary
    return summaries


def template_key(task: dict) -> str | None:
    """"<template> · <k>-shot" for a task whose prompt was rendered from a prompt template, else None."""
    name = task.get("prompt__metadata__template__name")
    if not isinstance(name, str) or not name:
        return None
    shots = task.get("prompt__metadata__template__few_shot")
    return f"{name} · {shots if isinstance(shots, int) else 0}-shot"


def template_blocks(tasks: list[dict], judged: dict) -> dict:
    """Win-rates per prompt template and few-shot count (labelapp.formats.templating metadata), so a template's
    zero-shot and few-shot prompts are compared side by side; {} when no prompt came from a template."""
    keys = sorted({key for t in tasks if (key := template_key(t)) is not None})
    return {key: _evaluation_block([t for t in tasks if template_key(t) == key], judged) for key in keys}


def _evaluation_block(tasks: list[dict], judged: dict) -> dict:
    """Raw and length-controlled win-rates (human, reward model) and mean lengths of some tasks."""
    from labelapp.analysis.length_control import length_controlled_win_rate

    human, human_tasks, auto, auto_diffs = [], [], [], []
    for task in tasks:
        for value in judged.get(task["id"], []):
            human.append(value)
            human_tasks.append(task["id"])
        a, b = task["reward_a"], task["reward_b"]
        if a is not None and b is not None:
            auto.append(1.0 if a > b else 0.5 if a == b else 0.0)
            auto_diffs.append(task["len_a"] - task["len_b"])
    diff = {task["id"]: task["len_a"] - task["len_b"] for task in tasks}
    references = [task["len_ref"] for task in tasks if task["len_ref"]]

    def mean(values):
        return sum(values) / len(values) if values else None

    return {
        "tasks": len(tasks),
        "human": win_rate(human, groups=human_tasks),
        "reward_model": win_rate(auto),
        "length_controlled": {
            "human": length_controlled_win_rate(human, [diff[t] for t in human_tasks], groups=human_tasks,
                                                resamples=LC_RESAMPLES),
            "reward_model": length_controlled_win_rate(auto, auto_diffs, resamples=LC_RESAMPLES),
        },
        "lengths": {"candidate": mean([t["len_a"] for t in tasks]), "baseline": mean([t["len_b"] for t in tasks]),
                    "reference": mean(references), "references": len(references), "unit": "characters"},
    }


LC_RESAMPLES = 1000  # each resample refits the logistic model: about 0.2 s for 150 tasks on a 2-core CPU
