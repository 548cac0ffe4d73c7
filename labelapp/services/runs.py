"""Training runs: create, execute exactly once, report, cancel, retry, reconcile.

The database row owns a run's state; queue messages only say "look at run N". That is what makes
the tasks idempotent and keeps long runs from executing twice when Redis re-delivers a message
after its visibility timeout:

- `run_create` inserts a queued row and sends the message only after the transaction commits.
- `run_begin` (called by the worker) locks the row and takes it only when it is queued, or when
  it is running but its heartbeat stopped (the previous worker died). A re-delivered message for
  a finished run, or for a run another worker is executing, gets None and does nothing.
- `run_report` refreshes the heartbeat and progress, but only for the worker holding the
  run's execution token; it tells the worker whether a cancel was requested.
- `runs_reconcile` finds running rows whose heartbeat stopped: it re-queues them to resume from
  their last checkpoint, at most `max_attempts` times, then fails them.
- `run_finish` writes the run's outputs (its `store`: ranking tasks and completions, evaluation
  tasks, the registered model) in the same transaction that checks the execution token and
  records the outcome, so a worker that dies before the commit leaves nothing behind, and one
  that lost the run to another worker writes nothing. The outputs also carry their run as a key
  that the database keeps unique (one ranking/evaluation task per run and prompt, one completion
  per run, prompt, model and sample index, one model per run).
"""
from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Callable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from labelapp.models import ModelVersion, Project, Role, Round, TrainingRun
from labelapp.services.access import require_role

log = logging.getLogger(__name__)
METRIC_HISTORY_LIMIT = 2000
LOG_TAIL_CHARS = 8000
QUEUE_FOR_KIND = {kind: "gpu" for kind in TrainingRun.Kind.values}
PAIR_KINDS = (TrainingRun.Kind.REWARD, TrainingRun.Kind.DPO)  # runs that train on pairs from rankings


def check_pair_settings(params: dict, what: str) -> None:
    """`min_rank_gap` of a reward or DPO run: a whole number ≥ 1 (1 = every pair of a ranking)."""
    gap = params.get("min_rank_gap", 1)
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 1:
        raise ValidationError(f"{what}: 'min_rank_gap' must be a whole number of at least 1 (1 = every pair of a "
                              f"ranking, K-1 = only the best against the worst); got {gap!r}.")


class RunLost(Exception):
    """This worker no longer owns the run (another took it over, or it was finished)."""


def enqueue(run: TrainingRun) -> None:
    """Send the run's message; called on commit. The web process never imports the workers.

    If the broker is down the run stays queued and the reconciler sends it again later."""
    from celery import current_app

    try:
        result = current_app.send_task("studio.run_execute", args=[run.pk], queue=QUEUE_FOR_KIND[run.kind])
    except Exception:  # the broker is unreachable: the row is safe, the reconciler re-sends
        log.warning("could not enqueue run %s; the reconciler will retry", run.pk, exc_info=True)
        return
    TrainingRun.objects.filter(pk=run.pk).update(celery_task_id=result.id or "", enqueued_at=timezone.now())


@transaction.atomic
def run_create(
    *,
    project: Project,
    kind: str,
    params: dict | None = None,
    input_model: ModelVersion | None = None,
    round: Round | None = None,
    user=None,
    max_attempts: int | None = None,
) -> TrainingRun:
    """Queue a run. Its message is sent after commit, so a rolled-back request enqueues nothing."""
    if user is not None:
        require_role(project=project, user=user, role=Role.ADMIN)
    if kind not in TrainingRun.Kind.values:
        raise ValidationError(f"Unknown run kind {kind!r}: use one of {', '.join(TrainingRun.Kind.values)}.")
    if input_model is not None and input_model.project_id not in (None, project.pk):
        raise ValidationError("The input model belongs to another project.")
    if kind in PAIR_KINDS:
        check_pair_settings(params or {}, f"{kind} settings")
    run = TrainingRun.objects.create(
        project=project,
        kind=kind,
        params=params or {},
        input_model=input_model,
        round=round,
        created_by=user,
        max_attempts=max_attempts or settings.RUN_MAX_ATTEMPTS,
    )
    transaction.on_commit(lambda: enqueue(run))
    return run


def _stale_before(now: datetime) -> datetime:
    return now - timedelta(seconds=settings.RUN_HEARTBEAT_TIMEOUT)


@transaction.atomic
def run_begin(*, run_id: int, now: datetime | None = None) -> tuple[TrainingRun, str] | None:
    """Take a run for execution; returns (run, execution token) or None when there is nothing to do."""
    now = now or timezone.now()
    run = TrainingRun.objects.select_for_update(of=("self",)).filter(pk=run_id).first()
    if run is None or run.status in TrainingRun.TERMINAL:
        return None
    if run.status == TrainingRun.Status.RUNNING and run.heartbeat_at and run.heartbeat_at > _stale_before(now):
        return None  # alive elsewhere: a duplicate message must not start it twice
    if run.cancel_requested:
        run.status, run.finished_at = TrainingRun.Status.CANCELLED, now
        run.save(update_fields=["status", "finished_at"])
        return None
    if run.attempts >= run.max_attempts:
        run.status, run.finished_at = TrainingRun.Status.FAILED, now
        run.error = f"Gave up after {run.attempts} attempts (the worker kept dying)."
        run.save(update_fields=["status", "finished_at", "error"])
        return None
    token = secrets.token_hex(16)
    run.status = TrainingRun.Status.RUNNING
    run.execution = token
    run.attempts += 1
    run.heartbeat_at = now
    run.started_at = run.started_at or now
    run.save(update_fields=["status", "execution", "attempts", "heartbeat_at", "started_at"])
    return run, token


def run_report(
    *, run_id: int, token: str, step: int | None = None, total: int | None = None, metrics: dict | None = None,
    log: str | None = None, now: datetime | None = None,
) -> bool:
    """Heartbeat (and progress) from the executing worker. Returns True when cancel was asked.

    Raises RunLost when the token no longer owns the run."""
    now = now or timezone.now()
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update(of=("self",)).filter(pk=run_id).first()
        if run is None or run.execution != token or run.status != TrainingRun.Status.RUNNING:
            raise RunLost(f"run {run_id} is no longer executed by this worker")
        fields = ["heartbeat_at"]
        run.heartbeat_at = now
        if step is not None:
            run.step, run.total = step, max(total or 0, step)
            fields += ["step", "total"]
        if metrics:
            run.metrics = (run.metrics + [{"step": step, **metrics}])[-METRIC_HISTORY_LIMIT:]
            fields.append("metrics")
        if log:
            run.logs_tail = (run.logs_tail + log)[-LOG_TAIL_CHARS:]
            fields.append("logs_tail")
        run.save(update_fields=fields)
        return run.cancel_requested


@transaction.atomic
def run_finish(
    *, run_id: int, token: str, status: str, result: dict | None = None, error: str = "",
    output_model: ModelVersion | None = None, now: datetime | None = None,
    store: Callable[[TrainingRun, dict], ModelVersion | None] | None = None,
) -> TrainingRun:
    """Record how the run ended. Only the executing worker may finish it.

    `store(run, result)`, given for a succeeded run, writes the run's outputs here, after the token
    check and in this transaction (it may add counts to `result`; a ModelVersion it returns becomes
    the run's output model): the outputs and the outcome are committed together or not at all. A run
    that succeeded after its cancel was requested (past its last step) is recorded cancelled, with no outputs."""
    now = now or timezone.now()
    run = TrainingRun.objects.select_for_update(of=("self",)).get(pk=run_id)
    if run.execution != token or run.status != TrainingRun.Status.RUNNING:
        raise RunLost(f"run {run_id} is no longer executed by this worker")
    result = dict(result or {})
    if run.cancel_requested and status == TrainingRun.Status.SUCCEEDED:  # cancelled after its last step: no outputs
        status, output_model = TrainingRun.Status.CANCELLED, None
    if store is not None and status == TrainingRun.Status.SUCCEEDED:
        output_model = store(run, result) or output_model
    run.status = status
    run.result = result
    run.error = error[-LOG_TAIL_CHARS:]
    run.output_model = output_model
    run.finished_at = now
    run.heartbeat_at = now
    if status == TrainingRun.Status.SUCCEEDED and run.total:
        run.step = run.total
    run.save()
    return run


@transaction.atomic
def run_result_add(*, run_id: int, **items) -> TrainingRun:
    """Add keys to a finished run's result (what followed it, e.g. active learning's scoring)."""
    run = TrainingRun.objects.select_for_update(of=("self",)).get(pk=run_id)
    run.result = {**(run.result or {}), **items}
    run.save(update_fields=["result"])
    return run


@transaction.atomic
def run_cancel(*, run_id: int, user, now: datetime | None = None) -> TrainingRun:
    """A queued run is cancelled at once; a running one stops at its next step."""
    now = now or timezone.now()
    run = TrainingRun.objects.select_for_update(of=("self",)).select_related("project").get(pk=run_id)
    require_role(project=run.project, user=user, role=Role.ADMIN)
    if run.status in TrainingRun.TERMINAL:
        raise ValidationError(f"This run already {run.status}.")
    run.cancel_requested = True
    if run.status == TrainingRun.Status.QUEUED:
        run.status, run.finished_at = TrainingRun.Status.CANCELLED, now
    run.save(update_fields=["cancel_requested", "status", "finished_at"])
    return run


@transaction.atomic
def run_retry(*, run_id: int, user) -> TrainingRun:
    """Queue a fresh run with the same settings as a failed or cancelled one."""
    old = TrainingRun.objects.select_related("project").get(pk=run_id)
    if old.status not in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED):
        raise ValidationError("Only failed or cancelled runs can be retried.")
    if old.round is not None and old.round.finished:
        raise ValidationError(
            f"Round {old.round.number} has ended ({old.round.get_stage_display().lower()}); start a new round instead."
        )
    run = run_create(
        project=old.project, kind=old.kind, params=old.params, input_model=old.input_model, round=old.round, user=user
    )
    run.retry_of = old
    run.save(update_fields=["retry_of"])
    return run


def runs_reconcile(*, now: datetime | None = None) -> dict[str, list[int]]:
    """Re-queue (to resume) or fail runs whose worker stopped sending heartbeats, and send again
    the messages of queued runs that no worker picked up (a broker restart may have lost them;
    a duplicate message is harmless, see run_begin)."""
    now = now or timezone.now()
    outcome: dict[str, list[int]] = {"requeued": [], "failed": [], "resent": []}
    waiting = TrainingRun.objects.filter(status=TrainingRun.Status.QUEUED, cancel_requested=False).filter(
        Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=_stale_before(now))
    )
    for run in waiting:
        enqueue(run)
        outcome["resent"].append(run.pk)
    stale = TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING, heartbeat_at__lt=_stale_before(now))
    for run_id in stale.values_list("id", flat=True):
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update(skip_locked=True, of=("self",)).filter(
                pk=run_id, status=TrainingRun.Status.RUNNING, heartbeat_at__lt=_stale_before(now)
            ).first()
            if run is None:
                continue
            note = f"\n[{now:%H:%M:%S}] worker lost (no heartbeat for {settings.RUN_HEARTBEAT_TIMEOUT} s)"
            run.logs_tail = (run.logs_tail + note)[-LOG_TAIL_CHARS:]
            run.execution = ""
            if run.attempts < run.max_attempts and settings.RUN_RESUME_LOST:
                run.status = TrainingRun.Status.QUEUED
                run.params = {**run.params, "resume": True}
                run.save(update_fields=["status", "execution", "params", "logs_tail"])
                transaction.on_commit(lambda run=run: enqueue(run))
                outcome["requeued"].append(run.pk)
            else:
                run.status, run.finished_at = TrainingRun.Status.FAILED, now
                run.error = "The worker stopped sending heartbeats" + (
                    f" {run.attempts} times." if run.attempts >= run.max_attempts else "."
                )
                run.save(update_fields=["status", "execution", "finished_at", "error", "logs_tail"])
                outcome["failed"].append(run.pk)
    return outcome


@transaction.atomic
def model_version_register(
    *, project: Project, name: str, kind: str, artifact_path: str, parent: ModelVersion | None = None,
    training_data: dict | None = None, metrics: dict | None = None, make_current: bool = False,
    run: TrainingRun | None = None,
) -> ModelVersion:
    """Add a trained model to the registry, optionally as the project's current one of its kind.
    A `run` registers at most one model (enforced by the database)."""
    version = ModelVersion(
        project=project, name=name, kind=kind, artifact_path=artifact_path, parent=parent,
        training_data=training_data or {}, metrics=metrics or {}, is_current=False, run=run,
    )
    version.full_clean()
    version.save()
    if make_current:
        make_current_locked(version)
    return version


def lock_current(project_id: int) -> None:
    """Serialise every change of a project's current models (model_version_make_current, a run registering its
    model as current, a round's promotion gate and round_promote). The project row's lock is what makes it
    safe: locking the versions themselves is not enough, because two calls making two different versions
    current see the same old current row, and the second, once the first commits, finds nothing left to clear
    in its snapshot and breaks `modelversion_one_current_per_kind`. FOR NO KEY UPDATE: rows referencing the
    project (labels, tasks, runs) are still inserted meanwhile. Call inside a transaction."""
    Project.objects.select_for_update(no_key=True).filter(pk=project_id).values_list("pk").first()


def make_current_locked(version: ModelVersion) -> bool:
    """Make `version` the project's current model of its kind, under `lock_current`; False when it already
    was (making the same version current twice is a no-op). Call inside a transaction."""
    lock_current(version.project_id)
    # fresh statements after the lock: they see whatever a call that held it before us committed
    if ModelVersion.objects.filter(pk=version.pk, is_current=True).exists():
        version.is_current = True
        return False
    ModelVersion.objects.filter(project=version.project_id, kind=version.kind, is_current=True).update(is_current=False)
    ModelVersion.objects.filter(pk=version.pk).update(is_current=True)
    version.is_current = True
    return True


@transaction.atomic
def model_version_make_current(*, version_id: int, user) -> ModelVersion:
    """An admin makes a model the project's current one of its kind; safe when two such calls (or a run's
    registration, or a round's gate) race, and idempotent for the same version."""
    version = ModelVersion.objects.select_related("project").get(pk=version_id)
    require_role(project=version.project, user=user, role=Role.ADMIN)
    make_current_locked(version)
    return version
