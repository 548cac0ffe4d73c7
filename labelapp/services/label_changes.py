"""Changing a label after it was submitted: its annotator may edit or withdraw a demonstration
or a ranking until a training run has used it.

A label is *used*, and frozen for good, once it is in the label set of any ModelVersion of its
project (the ids workers/executors.py records in `training_data`: `demonstrations` for SFT,
`rankings` for reward models and DPO; a PPO policy's lineage reaches labels only through those
models). While a run that reads that kind of label is running it may already have read it, so
the label is frozen for that time too. The label set a ModelVersion names therefore stays exact:
every id in it still exists with the content the model was trained on. (A run that starts in the
instant between this check and the edit's commit reads the label before or after it, never half.)

Withdrawing deletes the label, gives the item back to the queue (its counter goes down) and marks
the assignment `withdrawn`, so the item does not come back to the same annotator. Editing an
approved demonstration sends it back to review.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from labelapp.models import Assignment, Demonstration, Prompt, Ranking, RankingTask, Role
from labelapp.selectors import labels as selectors
from labelapp.services.access import require_role
from labelapp.services.labels import ai_agreement_with, clean_text, gold_score, ranking_fields


def _refuse_if_frozen(*, project, kind: str, label_id: int) -> None:
    reason = selectors.used_labels(project=project).reason(kind, label_id)
    if reason:
        raise ValidationError(f"This label can no longer change: {reason}")


def _own_demonstration(demonstration_id: int, user) -> Demonstration:
    demonstration = (
        Demonstration.objects.select_for_update(of=("self",))
        .select_related("prompt__project")
        .filter(pk=demonstration_id, author=user)
        .first()
    )
    if demonstration is None:
        raise ValidationError("That demonstration is not one of yours (or it was withdrawn).")
    require_role(project=demonstration.prompt.project, user=user, role=Role.ANNOTATOR)
    return demonstration


def _own_ranking(ranking_id: int, user) -> Ranking:
    ranking = (
        Ranking.objects.select_for_update(of=("self",))
        .select_related("task__project")
        .filter(pk=ranking_id, annotator=user)
        .first()
    )
    if ranking is None:
        raise ValidationError("That ranking is not one of yours (or it was withdrawn).")
    require_role(project=ranking.task.project, user=user, role=Role.ANNOTATOR)
    return ranking


def _withdraw(*, item_model, item_id: int, counter: str | None, assignment_id: int | None, now: datetime) -> None:
    """Lock the item, then the assignment (the order submissions take them in), mark the assignment
    withdrawn and give the item's slot back (`counter`; None when a rejection already did)."""
    item_model.objects.select_for_update().filter(pk=item_id).values_list("pk").first()
    if assignment_id is not None:
        assignment = Assignment.objects.select_for_update(of=("self",)).get(pk=assignment_id)
        assignment.status = Assignment.Status.WITHDRAWN
        assignment.finished_at = now
        assignment.save(update_fields=["status", "finished_at"])
    if counter:
        item_model.objects.filter(pk=item_id).update(**{counter: F(counter) - 1})


@transaction.atomic
def demonstration_edit(*, demonstration_id: int, user, text: str) -> Demonstration:
    """Replace the text of one of the user's demonstrations. An approved one goes back to review;
    a rejected one cannot be edited (its prompt already went back to the queue)."""
    demonstration = _own_demonstration(demonstration_id, user)
    _refuse_if_frozen(project=demonstration.prompt.project, kind="demonstrations", label_id=demonstration.pk)
    if demonstration.review_status == Demonstration.Review.REJECTED:
        raise ValidationError(
            "This demonstration was rejected in review and its prompt went back to the queue, so it cannot be "
            "edited; withdraw it if you do not want it kept."
        )
    text = clean_text(text, what="demonstration")
    if text == demonstration.text:
        return demonstration
    demonstration.text = text
    # The text changed: the near-duplicate check runs again; paste flags were about the first text.
    demonstration.embedding, demonstration.checked_at = None, None
    demonstration.quality_flags = [f for f in demonstration.quality_flags if f["kind"] != "near duplicate"]
    demonstration.flagged = bool(demonstration.quality_flags)
    fields = ["text", "embedding", "checked_at", "quality_flags", "flagged"]
    if demonstration.review_status == Demonstration.Review.APPROVED:
        demonstration.review_status = Demonstration.Review.PENDING
        demonstration.reviewer = None
        demonstration.reviewed_at = None
        demonstration.review_comment = ""
        fields += ["review_status", "reviewer", "reviewed_at", "review_comment"]
    demonstration.full_clean(validate_unique=False, validate_constraints=False)
    demonstration.save(update_fields=fields)
    return demonstration


@transaction.atomic
def demonstration_withdraw(*, demonstration_id: int, user, now: datetime | None = None) -> None:
    """Delete one of the user's demonstrations; its prompt goes back to the write queue."""
    now = now or timezone.now()
    demonstration = _own_demonstration(demonstration_id, user)
    _refuse_if_frozen(project=demonstration.prompt.project, kind="demonstrations", label_id=demonstration.pk)
    rejected = demonstration.review_status == Demonstration.Review.REJECTED  # a rejection already gave the slot back
    _withdraw(item_model=Prompt, item_id=demonstration.prompt_id, counter=None if rejected else "demonstration_count",
              assignment_id=demonstration.assignment_id, now=now)
    demonstration.delete()


@transaction.atomic
def ranking_edit(
    *, ranking_id: int, user, order: list[list[int]] | None, none_acceptable: bool = False,
    flags: Mapping | None = None, scores: Mapping | None = None,
) -> Ranking:
    """Replace the order, flags and scores of one of the user's rankings (validated as a submission is). Its
    gold score and, when it was given with an AI suggestion shown (`ai_agreement` set on submit), its agreement
    with that suggestion are computed again for the new order."""
    ranking = _own_ranking(ranking_id, user)
    _refuse_if_frozen(project=ranking.task.project, kind="rankings", label_id=ranking.pk)
    fields = ranking_fields(task_id=ranking.task_id, order=order, none_acceptable=none_acceptable, flags=flags,
                            scores=scores)
    fields["gold_score"] = gold_score(fields["order"], ranking.task.gold_order)
    if ranking.ai_agreement is not None:  # the person saw the suggestion when ranking: measure the new order
        fields["ai_agreement"] = ai_agreement_with(task_id=ranking.task_id, order=fields["order"])
    for name, value in fields.items():
        setattr(ranking, name, value)
    ranking.full_clean(validate_unique=False, validate_constraints=False)
    ranking.save(update_fields=list(fields))
    return ranking


@transaction.atomic
def ranking_withdraw(*, ranking_id: int, user, now: datetime | None = None) -> None:
    """Delete one of the user's rankings; its task goes back to the rank queue."""
    now = now or timezone.now()
    ranking = _own_ranking(ranking_id, user)
    _refuse_if_frozen(project=ranking.task.project, kind="rankings", label_id=ranking.pk)
    _withdraw(item_model=RankingTask, item_id=ranking.task_id, counter="ranking_count",
              assignment_id=ranking.assignment_id, now=now)
    ranking.delete()
