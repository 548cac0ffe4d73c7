"""Label quality writes: marking gold items and refitting annotator reliability.

Gold items are ordinary ranking tasks or evaluation tasks with an expected answer. The queue
serves them at the project's `gold_rate`, to every annotator once, looking like any other item;
a submission against one is scored (Ranking.gold_score, Comparison.gold_correct); they never
count toward a real item's overlap, never enter training or exports, and are left out of
agreement statistics and win-rates (labelapp.services.queue, labelapp.formats.exports, labelapp.selectors.stats).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import transaction

from labelapp.analysis import reliability
from labelapp.models import (
    Adjudication,
    AILabel,
    Comparison,
    EvaluationTask,
    Project,
    Prompt,
    Ranking,
    RankingTask,
    ReliabilityFit,
    Role,
)
from labelapp.services.access import require_role
from labelapp.services.labels import gold_score, validate_order

log = logging.getLogger(__name__)


@transaction.atomic
def ranking_task_set_gold(*, task_id: int, user, order: list[list[int]] | None) -> RankingTask:
    """Make a ranking task gold with `order` as its expected ranking (tie groups, best first), or
    ordinary again with `order=None`. Its existing rankings are scored (or unscored) at once."""
    task = RankingTask.objects.select_for_update(of=("self",)).select_related("project").filter(pk=task_id).first()
    if task is None:
        raise ValidationError(f"There is no ranking task {task_id}.")
    require_role(project=task.project, user=user, role=Role.ADMIN)
    if order is not None:
        decided = Adjudication.objects.filter(task=task).select_related("reviewer").first()
        if decided is not None:  # two known answers would disagree in the reliability fit and the gold scores
            raise ValidationError(f"Task {task_id} was decided in adjudication by {decided.reviewer.username}: its "
                                  "decision is already its known answer, and a task cannot be both.")
        ids = set(task.completions.values_list("id", flat=True))
        order = validate_order(order, completion_ids=ids)
        if len(order) < 2:
            raise ValidationError(f"Task {task_id}: a gold ranking must order at least two responses; all are tied.")
    task.gold_order = order
    task.save(update_fields=["gold_order"])
    rankings = list(task.rankings.all())
    for ranking in rankings:
        ranking.gold_score = gold_score(ranking.order, order)
    Ranking.objects.bulk_update(rankings, ["gold_score"])
    return task


@transaction.atomic
def evaluation_task_set_gold(*, task_id: int, user, winner: str | None) -> EvaluationTask:
    """Make a blind-evaluation task gold with the expected `winner` ("a" the candidate, "b" the
    baseline, "tie"), or ordinary again with None. Existing comparisons are scored at once."""
    task = EvaluationTask.objects.select_for_update().select_related("project").filter(pk=task_id).first()
    if task is None:
        raise ValidationError(f"There is no evaluation task {task_id}.")
    require_role(project=task.project, user=user, role=Role.ADMIN)
    if winner is not None and winner not in Comparison.Winner.values:
        raise ValidationError(f"Evaluation task {task_id}: the expected answer must be a, b or tie, not {winner!r}.")
    task.gold_winner = winner or ""
    task.save(update_fields=["gold_winner"])
    comparisons = list(task.comparisons.all())
    for comparison in comparisons:
        comparison.gold_correct = (comparison.winner == winner) if winner else None
    Comparison.objects.bulk_update(comparisons, ["gold_correct"])
    return task


@transaction.atomic
def gold_import(*, project: Project, user, items: Sequence[dict]) -> dict:
    """Mark many items gold at once, all or nothing: each item is {"ranking_task": id, "expected":
    [[ids], …]} or {"evaluation_task": id, "expected": "a" | "b" | "tie"} (`expected` null makes it
    ordinary again). Errors name the item's position; nothing is changed when any item is bad."""
    require_role(project=project, user=user, role=Role.ADMIN)
    if not isinstance(items, list) or not items:
        raise ValidationError("Send a non-empty list of items.")
    errors, done = [], {"ranking_tasks": 0, "evaluation_tasks": 0}
    for n, item in enumerate(items, 1):
        try:
            if not isinstance(item, dict) or len({"ranking_task", "evaluation_task"} & set(item)) != 1:
                raise ValidationError('give exactly one of "ranking_task" or "evaluation_task", and "expected"')
            unknown = set(item) - {"ranking_task", "evaluation_task", "expected"}
            if unknown:
                raise ValidationError(f"unknown field(s) {', '.join(sorted(unknown))}")
            if "expected" not in item:
                raise ValidationError('"expected" is missing')
            key = "ranking_task" if "ranking_task" in item else "evaluation_task"
            task_id = item[key]
            if not isinstance(task_id, int) or isinstance(task_id, bool):
                raise ValidationError(f'"{key}" must be an id')
            model = RankingTask if key == "ranking_task" else EvaluationTask
            if not model.objects.filter(pk=task_id, project=project).exists():
                raise ValidationError(f"there is no {key.replace('_', ' ')} {task_id} in this project")
            with transaction.atomic():
                if key == "ranking_task":
                    ranking_task_set_gold(task_id=task_id, user=user, order=item["expected"])
                else:
                    evaluation_task_set_gold(task_id=task_id, user=user, winner=item["expected"])
            done[key + "s"] += 1
        except ValidationError as exc:
            errors.append(f"item {n}: {'; '.join(exc.messages)}")
    if errors:
        raise ValidationError(errors)  # leaving the transaction with an error undoes every item
    return done


# ------------------------------------------------------------------------ reliability


def reliability_inputs(*, project: Project):
    """What the reliability model is fitted on: every ranking with a preference ({task: {annotator:
    order}}) — items with two or more annotators and gold items inform the annotators' reliabilities,
    an item one annotator ranked gets its posterior from that annotator's — and the known orders: gold
    items' expected ones and adjudicated items' decisions (an adjudication counts as gold)."""
    gold_orders = dict(
        RankingTask.objects.filter(project=project, gold_order__isnull=False).values_list("id", "gold_order")
    )
    gold_orders.update(Adjudication.objects.filter(task__project=project).values_list("task_id", "order"))
    rows = Ranking.objects.filter(task__project=project).exclude(order=[])
    rankings: dict[int, dict[int, list]] = defaultdict(dict)
    digest = hashlib.sha256()
    for ranking_id, task_id, annotator_id, order in rows.order_by("id").values_list("id", "task_id", "annotator_id", "order"):
        rankings[task_id][annotator_id] = order
        digest.update(f"{ranking_id}:{json.dumps(order)};".encode())
    digest.update(json.dumps(sorted(gold_orders.items())).encode())
    return dict(rankings), gold_orders, digest.hexdigest()


def reliability_refit(*, project: Project, force: bool = False) -> ReliabilityFit | None:
    """Fit the reliability model on the project's labels and store it; returns the stored fit
    (the latest one unchanged when no label changed since, unless `force`), or None when no
    ranking could inform it yet. Runs as a Celery job (studio.reliability_refit)."""
    rankings, gold_orders, labels_hash = reliability_inputs(project=project)
    latest = ReliabilityFit.objects.filter(project=project).first()
    if latest is not None and latest.labels_hash == labels_hash and not force:
        return latest
    if not any(t in gold_orders or len(by) >= 2 for t, by in rankings.items()):
        return None  # nothing shared and no gold: nothing says how reliable anyone is
    started = time.monotonic()
    result = reliability.fit(reliability.judgments_from_rankings(rankings),
                             gold=reliability.gold_units(gold_orders))
    # An annotator none of whose labels is shared or gold is unknown to the fit: not stored (weight 1,
    # PairWeights), and the items only they ranked get no posterior (trained as stated, not at the prior).
    known = {a for a, f in result.annotators.items() if f.judgments}
    annotators = {
        str(a): {"reliability": f.reliability, "low": f.low, "high": f.high, "tie_rate": f.tie_rate,
                 "judgments": f.judgments, "strict": f.strict, "gold_judgments": f.gold_judgments}
        for a, f in result.annotators.items() if a in known
    }
    posterior = {f"{t}:{x}:{y}": round(p, 6) for (t, x, y), p in result.posterior.items()
                 if t in gold_orders or len(rankings[t]) >= 2 or set(rankings[t]) <= known}
    return ReliabilityFit.objects.create(
        project=project, labels_hash=labels_hash, annotators=annotators, posterior=posterior,
        units=result.units, gold_units=result.gold_units, iterations=result.iterations,
        converged=result.converged, seconds=time.monotonic() - started,
    )


def reliability_refit_enqueue(*, project: Project, user) -> bool:
    """Ask a worker to refit now (the `default` queue; the web process never imports workers).
    False when the broker is unreachable: the beat's periodic refresh still picks the change up."""
    from celery import current_app

    require_role(project=project, user=user, role=Role.ADMIN)
    try:
        current_app.send_task("studio.reliability_refit", args=[project.pk, True], queue="default")
    except Exception:
        log.warning("could not enqueue a reliability refit of project %s", project.pk, exc_info=True)
        return False
    return True


@transaction.atomic
def ranking_task_adjudicate(*, task_id: int, reviewer, order: list[list[int]], comment: str = "") -> Adjudication:
    """A reviewer decides a disputed ranking task: `order` (tie groups of its completion ids, best
    first) replaces its annotators' rankings in training and exports, and is the item's truth for
    the reliability model. A reviewer who ranked the task may not decide it; a task is decided once.
    Only a task in the adjudication queue is decided: one whose consensus confidence is below the project's
    `adjudication_below` (labelapp.selectors.quality.disputed_tasks); any other is refused and nothing is written."""
    from labelapp.selectors.quality import consensus_confidence, item_confidences, latest_fit
    from labelapp.services.labels import clean_text

    task = RankingTask.objects.select_for_update(of=("self",)).select_related("project").filter(pk=task_id).first()
    if task is None:
        raise ValidationError(f"There is no ranking task {task_id}.")
    require_role(project=task.project, user=reviewer, role=Role.REVIEWER)
    if task.gold_order is not None:
        raise ValidationError("This is a gold item: its answer is already known.")
    existing = Adjudication.objects.filter(task=task).select_related("reviewer").first()
    if existing is not None:
        raise ValidationError(f"This task was already decided by {existing.reviewer.username}.")
    if task.rankings.filter(annotator=reviewer).exists():
        raise ValidationError("You ranked this task yourself: another reviewer must decide it.")
    if task.ranking_count < 2:
        raise ValidationError("Only a task ranked by two or more annotators can be disputed.")
    below = task.project.adjudication_below
    if below <= 0:
        raise ValidationError("Adjudication is off in this project (adjudication_below is 0): no task is disputed, "
                              "so none can be decided.")
    confidences = item_confidences(latest_fit(project=task.project))
    confidence = consensus_confidence(task, confidences)  # under the task's lock: no ranking lands meanwhile
    if confidence is None or confidence >= below:
        said = "has no consensus confidence yet" if confidence is None else f"has consensus confidence {confidence:.2f}"
        raise ValidationError(f"Task {task.pk} is not disputed: it {said}, and only tasks below the project's "
                              f"{below:.2f} are in the adjudication queue. Its annotators' rankings stand.")
    order = validate_order(order, completion_ids=set(task.completions.values_list("id", flat=True)))
    comment = clean_text(comment, what="comment") if (comment or "").strip() else ""
    adjudication = Adjudication(task=task, reviewer=reviewer, order=order, comment=comment,
                                confidence_before=confidences.get(task.pk))
    adjudication.full_clean(validate_unique=False)
    adjudication.save()
    return adjudication


@transaction.atomic
def demonstration_check_record(*, demonstration_id: int, text: str, embedding: list[float],
                               duplicates: list[dict]) -> bool:
    """Store the near-duplicate check of a demonstration (run by the worker): its embedding and one
    "near duplicate" flag per match ({"kind", "detail"}); earlier near-duplicate flags are replaced.
    `text` is the text that was checked: if the author edited it meanwhile, nothing is written (the
    edit left it unchecked, so the next pass checks the new text). False when nothing was written."""
    from django.utils import timezone

    from labelapp.models import Demonstration

    demonstration = Demonstration.objects.select_for_update().filter(pk=demonstration_id).first()
    if demonstration is None or demonstration.text != text:  # withdrawn or edited meanwhile
        return False
    flags = [f for f in demonstration.quality_flags if f["kind"] != "near duplicate"] + duplicates
    demonstration.embedding = [round(float(x), 5) for x in embedding]
    demonstration.checked_at = timezone.now()
    demonstration.quality_flags = flags
    demonstration.flagged = bool(flags)
    demonstration.save(update_fields=["embedding", "checked_at", "quality_flags", "flagged"])
    return True


# ------------------------------------------------------------------------------------------ AI feedback


@transaction.atomic
def ai_label_record(*, task_id: int, source: str, model_version_id: int, order: list[list[int]],
                    scores: dict) -> AILabel | None:
    """Store a model's ranking of a task (run by the worker); None when the task is gone or was made gold
    since the worker picked it (gold is never labelled by a model). Idempotent: the same model's label of
    the same task is written once."""
    task = RankingTask.objects.filter(pk=task_id).first()
    if task is None or task.gold_order is not None:
        return None
    if source not in AILabel.Source.values:
        raise ValidationError(f"Unknown AI label source {source!r}.")
    order = validate_order(order, completion_ids=set(task.completions.values_list("id", flat=True)))
    label, _ = AILabel.objects.get_or_create(
        task=task, source=source, model_version_id=model_version_id,
        defaults={"order": order, "scores": {str(k): v for k, v in scores.items()}},
    )
    return label


def ai_labels_enqueue(*, project: Project, user, source: str, model_version_id: int | None = None) -> bool:
    """Ask a gpu-queue worker to label the waiting ranking tasks with the reward model or a judge prompt
    (the project's current reward model / policy unless a model version is named). False when the
    broker is unreachable."""
    from celery import current_app

    from labelapp.models import ModelVersion

    require_role(project=project, user=user, role=Role.ADMIN)
    if source not in AILabel.Source.values:
        raise ValidationError(f"Choose the reward model or a judge prompt, not {source!r}.")
    kind = ModelVersion.Kind.REWARD if source == AILabel.Source.REWARD_MODEL else ModelVersion.Kind.POLICY
    versions = ModelVersion.objects.filter(project=project, kind=kind)
    version = versions.filter(pk=model_version_id).first() if model_version_id else versions.filter(is_current=True).first()
    if version is None:
        what = "reward model" if kind == ModelVersion.Kind.REWARD else "policy"
        raise ValidationError(f"There is no {'such' if model_version_id else 'current'} {what} in this project to "
                              "label with: train one first (a round's reward stage).")
    try:
        current_app.send_task("studio.ai_label", args=[project.pk, source, version.pk], queue="gpu")
    except Exception:
        log.warning("could not enqueue AI labels for project %s", project.pk, exc_info=True)
        return False
    return True


# ---------------------------------------------------------------------------------------- active learning


def active_learning_set(*, project: Project, user, enabled: bool) -> Project:
    """Turn active learning on or off for a project (admins)."""
    require_role(project=project, user=user, role=Role.ADMIN)
    Project.objects.filter(pk=project.pk).update(active_learning=bool(enabled))
    project.active_learning = bool(enabled)
    return project


@transaction.atomic
def uncertainty_record(*, project: Project, model_version_id: int, scores: dict[int, float]) -> int:
    """Store a reward model's uncertainty of ranking tasks (run by the worker after scoring them) and each
    affected prompt's uncertainty, the highest of its tasks scored by that model. Tasks of other projects
    and gold tasks are ignored; scores must be finite and in [0, ln 2]. Returns the tasks written."""
    import math

    from labelapp.models import ModelVersion

    version = ModelVersion.objects.filter(pk=model_version_id, project=project, kind=ModelVersion.Kind.REWARD).first()
    if version is None:
        raise ValidationError(f"Model version {model_version_id} is not a reward model of this project.")
    bad = [t for t, v in scores.items() if not (isinstance(v, (int, float)) and math.isfinite(v)
                                                 and 0.0 <= v <= math.log(2) + 1e-9)]
    if bad:
        raise ValidationError(f"Uncertainty must be a number from 0 to ln 2; task(s) {sorted(bad)[:5]} are not.")
    tasks = {t.pk: t for t in RankingTask.objects.select_for_update().filter(
        project=project, gold_order__isnull=True, pk__in=list(scores))}
    for task_id, task in tasks.items():
        task.uncertainty, task.uncertainty_model = float(scores[task_id]), version
    RankingTask.objects.bulk_update(tasks.values(), ["uncertainty", "uncertainty_model"])
    best: dict[int, float] = {}
    for prompt_id, value in RankingTask.objects.filter(
            project=project, uncertainty_model=version, prompt_id__in={t.prompt_id for t in tasks.values()}
    ).values_list("prompt_id", "uncertainty"):
        best[prompt_id] = max(best.get(prompt_id, 0.0), value)
    prompts = Prompt.objects.in_bulk(list(best))
    for prompt_id, value in best.items():
        prompts[prompt_id].uncertainty = value
    Prompt.objects.bulk_update(prompts.values(), ["uncertainty"])
    return len(tasks)


def uncertainty_score_enqueue(*, project: Project, user) -> bool:
    """Ask a gpu-queue worker to score the project's ranking tasks with the current reward model
    (studio.uncertainty_score). False when the broker is unreachable."""
    from celery import current_app

    from labelapp.models import ModelVersion

    require_role(project=project, user=user, role=Role.ADMIN)
    version = ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.REWARD, is_current=True).first()
    if version is None:
        raise ValidationError("There is no current reward model to score with: train one first (a round's reward stage).")
    try:
        current_app.send_task("studio.uncertainty_score", args=[project.pk, version.pk], queue="gpu")
    except Exception:
        log.warning("could not enqueue uncertainty scoring for project %s", project.pk, exc_info=True)
        return False
    return True
