"""The assignment queue: which item an annotator labels next, under a lease.

Three queues share one mechanism: `write` hands out prompts that still need demonstrations,
`rank` hands out ranking tasks that still need rankings, `compare` hands out blind A/B
evaluation tasks that still need comparisons. An item is *available* to a user when

    submitted labels + live leases held by others < capacity      (capacity = overlap)
    and the user has not already submitted or skipped it.

A ranking task a reviewer has decided (an adjudication) is never served again: the decision
replaced its rankings in training, so another ranking would go unused.

Order: highest priority first (only ranking tasks have one: a round's own samples carry the
round's `priority` setting while it runs, see labelapp.services.rounds); then, in the rank queue
of a project with `active_learning` on, the tasks the current reward model is least sure of
(`RankingTask.uncertainty`, highest first; tasks not scored yet after every scored one); then
fewest submitted labels, then oldest.

Locking: the candidate is read with one `SELECT … FOR UPDATE SKIP LOCKED` in that order. Under READ COMMITTED that statement's view of *other*
rows (the leases) may be older than the locked row, so once the row is ours the live leases
are counted again in a fresh statement; every lease is created while holding the item's row
lock, so that second count is exact. A candidate that turns out full is passed over and the
next one is tried (this only happens in a race, never in proportion to queue length).

One live lease per user and queue: a claim first locks the user's row (`FOR NO KEY UPDATE`,
which does not block inserts that reference the user), so two claims by one person (a double
click, two tabs, a retried POST) run one after the other and the second returns the first's
lease. A partial unique index (`assignment_one_active_per_queue`) backs this in the database.

Submissions lock the item's row before the assignment's (`lease_for_submit`), the same row a
claim locks, and count again under that lock: a submission is stored only while
`submitted + others' live leases < capacity`. So a submit racing its own lease's expiry can
never add a label beyond the overlap: if a claim gave the slot to someone else first, the
submit sees that lease and is refused; if the submit goes first, the claim sees its label.
No deadlock: a submission waits for the item and then the assignment; a claim waits only for
the user's row (it skips locked items) and locks assignments it finds while holding those.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from labelapp.models import Assignment, EvaluationTask, Project, Prompt, Queue, RankingTask, Role
from labelapp.services.access import require_role
from labelapp.services.text import refuse_nul

MAX_RACE_RETRIES = 20


@dataclass(frozen=True)
class QueueSpec:
    model: type[models.Model]
    fk: str  # Assignment field pointing at the item
    count_field: str  # item field counting submitted labels
    capacity_field: str  # project field giving the capacity
    gold: Q | None = None  # items of this queue that are gold (none for the write queue)
    priority_field: str | None = None  # item field served highest first, before the fewest-labels order
    closed: Q | None = None  # items that take no more labels whatever their count (a decided ranking task)


SPECS = {
    Queue.WRITE: QueueSpec(Prompt, "prompt", "demonstration_count", "demonstrations_per_prompt"),
    Queue.RANK: QueueSpec(RankingTask, "ranking_task", "ranking_count", "overlap", Q(gold_order__isnull=False),
                          priority_field="priority", closed=Q(adjudication__isnull=False)),
    Queue.COMPARE: QueueSpec(EvaluationTask, "evaluation_task", "comparison_count", "overlap", ~Q(gold_winner="")),
}


def live_lease(now: datetime) -> Q:
    """Assignments that still reserve their item."""
    return Q(status=Assignment.Status.ACTIVE, expires_at__gt=now)


# the item never returns to that user
FINISHED = (Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED, Assignment.Status.WITHDRAWN)


def spec_for(queue: str) -> QueueSpec:
    try:
        return SPECS[Queue(queue)]
    except ValueError:
        raise ValidationError(f"Unknown queue {queue!r}: use one of {', '.join(Queue.values)}.") from None


def available_items(*, project: Project, user, queue: str, now: datetime) -> models.QuerySet:
    """Items of `queue` this user could be given now, best first (no locking)."""
    spec = spec_for(queue)
    capacity = getattr(project, spec.capacity_field)
    leases = (
        Assignment.objects.filter(live_lease(now), **{spec.fk: OuterRef("pk")})
        .order_by()
        .values(spec.fk)
        .annotate(n=Count("id"))
        .values("n")
    )
    done_by_user = _done_by(user, spec, now)
    items = spec.model.objects.filter(project=project, **{f"{spec.count_field}__lt": capacity})
    if spec.gold is not None:
        items = items.exclude(spec.gold)
    if spec.closed is not None:
        items = items.exclude(spec.closed)
    return (
        items.annotate(live_leases=Coalesce(Subquery(leases, output_field=models.IntegerField()), Value(0)))
        .filter(live_leases__lt=Value(capacity) - F(spec.count_field))
        .exclude(Exists(done_by_user))
        .order_by(*queue_order(spec, project))
    )


def queue_order(spec: QueueSpec, project: Project | None = None) -> tuple:
    """Serving order (module docstring): highest priority first (ranking tasks: a round's own samples
    before the backlog), the least certain first when the project learns actively, then fewest
    submitted labels, then oldest."""
    first = (f"-{spec.priority_field}",) if spec.priority_field else ()
    if project is not None and project.active_learning and spec.model is RankingTask:
        first = (*first, F("uncertainty").desc(nulls_last=True))
    return (*first, spec.count_field, "created_at", "id")


def _done_by(user, spec: QueueSpec, now: datetime):
    """The user's finished or live assignments on the outer item (an item never comes back to them)."""
    return Assignment.objects.filter(Q(status__in=FINISHED) | live_lease(now), user=user, **{spec.fk: OuterRef("pk")})


def gold_items(*, project: Project, user, queue: str, now: datetime) -> models.QuerySet:
    """Gold items of `queue` this user has not labelled, least-served first. Gold items have no
    capacity: every annotator gets each one once, and they never count toward a real item's overlap."""
    spec = spec_for(queue)
    if spec.gold is None:
        return spec.model.objects.none()
    return (
        spec.model.objects.filter(spec.gold, project=project)
        .exclude(Exists(_done_by(user, spec, now)))
        .order_by(spec.count_field, "id")
    )


def gold_draw() -> float:
    """The draw that decides whether a claim serves a gold item (a function so tests can fix it)."""
    return random.random()


def current_assignment(*, project: Project, user, queue: str, now: datetime | None = None) -> Assignment | None:
    """The user's live lease in this queue, if any."""
    now = now or timezone.now()
    return (
        Assignment.objects.filter(live_lease(now), project=project, user=user, queue=queue)
        .order_by("-leased_at")
        .first()
    )


def _lock_user(user) -> None:
    """Serialise one user's claims (see the module docstring)."""
    get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk").first()


@transaction.atomic
def task_claim(
    *, project: Project, user, queue: str, lease_seconds: int | None = None, now: datetime | None = None
) -> Assignment | None:
    """Lease the next item of `queue` to `user`, or return None when nothing is waiting.

    A user holds at most one live lease per queue: claiming again, even at the same instant from
    another tab, returns the same one, so a reload never burns an item. The lease lasts
    `lease_seconds` (default LABEL_LEASE_SECONDS). Takes the user's row lock, then item locks.
    """
    require_role(project=project, user=user, role=Role.ANNOTATOR)
    spec = spec_for(queue)
    _lock_user(user)
    now = now or timezone.now()
    existing = current_assignment(project=project, user=user, queue=queue, now=now)
    if existing is not None:
        return existing
    # The user's leases in this queue that ran out stop being active: one active row per queue.
    Assignment.objects.filter(
        project=project, user=user, queue=queue, status=Assignment.Status.ACTIVE, expires_at__lte=now
    ).update(status=Assignment.Status.EXPIRED)
    capacity = getattr(project, spec.capacity_field)
    lease = timedelta(seconds=lease_seconds if lease_seconds is not None else settings.LABEL_LEASE_SECONDS)
    if spec.gold is not None and project.gold_rate > 0 and gold_draw() < project.gold_rate:
        # A gold item, served only while real work is waiting (gold alone is not a queue).
        gold = gold_items(project=project, user=user, queue=queue, now=now).select_for_update(
            skip_locked=True, of=("self",)).first()
        if gold is not None and available_items(project=project, user=user, queue=queue, now=now).exists():
            return _lease(project=project, user=user, queue=queue, item=gold, now=now, lease=lease)
    passed_over: list[int] = []
    for _ in range(MAX_RACE_RETRIES):
        candidates = available_items(project=project, user=user, queue=queue, now=now)
        if passed_over:
            candidates = candidates.exclude(pk__in=passed_over)
        item = candidates.select_for_update(skip_locked=True, of=("self",)).first()
        if item is None:
            return None
        # The row is locked: read its leases again with a statement that sees every commit.
        holders = list(
            Assignment.objects.filter(live_lease(now) | Q(user=user), **{spec.fk: item}).values_list("user_id", "pk", "status")
        )
        others = sum(1 for holder, _, _ in holders if holder != user.pk)
        done = any(holder == user.pk and status in FINISHED for holder, _, status in holders)
        if done or getattr(item, spec.count_field) + others >= capacity:
            passed_over.append(item.pk)
            continue
        mine = next((pk for holder, pk, _ in holders if holder == user.pk), None)
        return _lease(project=project, user=user, queue=queue, item=item, now=now, lease=lease, mine=mine)
    return None


def _lease(*, project: Project, user, queue: str, item, now: datetime, lease: timedelta,
           mine: int | None = None) -> Assignment:
    """Insert the lease on a locked item, or renew `mine`, the user's own expired row on it."""
    spec = spec_for(queue)
    if mine is None:
        mine = Assignment.objects.filter(user=user, **{spec.fk: item}).values_list("pk", flat=True).first()
    fields = {
        "project": project,
        "queue": queue,
        "status": Assignment.Status.ACTIVE,
        "leased_at": now,
        "expires_at": now + lease,
        "finished_at": None,
        "skip_reason": "",
    }
    if mine is None:  # the usual case
        return Assignment.objects.create(user=user, **{spec.fk: item}, **fields)
    Assignment.objects.filter(pk=mine).update(**fields)  # the user's own lease on it expired earlier
    return Assignment(pk=mine, user=user, **{spec.fk: item}, **fields)


def lease_for_submit(
    *, assignment_id: int, user, queue: str, now: datetime | None = None
) -> tuple[Assignment, datetime]:
    """Lock the item, then the user's assignment, for a submission; refuse anything not leased to
    them, an expired lease, and a submission the item has no room for. Returns the assignment
    and the time the checks used (`now`, or the clock read once the locks are held).

    Must be called inside `transaction.atomic`. Returns assignments already submitted as they
    are (the caller treats that as an idempotent repeat).
    """
    spec = spec_for(queue)
    found = Assignment.objects.filter(pk=assignment_id, queue=queue).values_list("user_id", spec.fk).first()
    if found is None or found[0] != user.pk:
        raise ValidationError("This item is not leased to you: open the queue to get your next item.")
    item = spec.model.objects.select_for_update().filter(pk=found[1]).first()
    assignment = (
        Assignment.objects.select_for_update(of=("self",)).select_related("project").filter(pk=assignment_id).first()
    )
    now = now or timezone.now()
    if assignment.status == Assignment.Status.SUBMITTED:
        return assignment, now
    if assignment.status in (Assignment.Status.SKIPPED, Assignment.Status.WITHDRAWN):
        raise ValidationError(f"You {assignment.get_status_display().lower()} this item; it has gone back to the queue.")
    if assignment.status == Assignment.Status.EXPIRED or assignment.expires_at <= now:
        raise ValidationError(
            f"Your lease on this item expired at {assignment.expires_at:%H:%M} UTC, so it may have gone to "
            "someone else. Your answer was not saved; copy it if you need it and take the next item."
        )
    if spec.gold is not None and spec.model.objects.filter(spec.gold, pk=item.pk).exists():
        return assignment, now  # gold items have no capacity
    others = Assignment.objects.filter(live_lease(now), **{spec.fk: item}).exclude(user=user).count()
    if getattr(item, spec.count_field) + others >= getattr(assignment.project, spec.capacity_field):
        raise ValidationError(
            "This item already has all the labels it needs, so your answer was not saved; take the next item."
        )
    return assignment, now


@transaction.atomic
def assignment_skip(*, assignment_id: int, user, reason: str = "", now: datetime | None = None) -> Assignment:
    """Give an item back: it returns to the queue for others and never comes back to this user.
    Skipping a prompt to write for needs a reason (it helps fix bad prompts)."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    refuse_nul(reason, what="skip reason")
    if len(reason) > 500:
        raise ValidationError("The skip reason is longer than 500 characters.")
    assignment = Assignment.objects.select_for_update().filter(pk=assignment_id).first()
    if assignment is None or assignment.user_id != user.pk:
        raise ValidationError("This item is not leased to you.")
    if assignment.status in (Assignment.Status.SKIPPED, Assignment.Status.WITHDRAWN):
        return assignment
    if assignment.status == Assignment.Status.SUBMITTED:
        raise ValidationError("This item is already submitted; it cannot be skipped.")
    if assignment.queue == Queue.WRITE and not reason:
        raise ValidationError("Say why you skip this prompt (the reason helps us fix bad prompts).")
    assignment.status = Assignment.Status.SKIPPED
    assignment.skip_reason = reason
    assignment.finished_at = now
    assignment.full_clean()
    assignment.save(update_fields=["status", "skip_reason", "finished_at"])
    return assignment
