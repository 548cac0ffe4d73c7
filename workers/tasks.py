"""Celery tasks. Thin: load the run by id, run its executor, record the outcome.

`run_execute` is safe to receive twice (Redis re-delivery after the visibility timeout, a
resent message after a broker restart, a retried publish): `run_begin` decides from the row
whether this worker may execute it, and returns None otherwise.

A database blip (a restart, a failover, a terminated connection) does not fail a run: progress
reports, heartbeats and `run_finish` that hit a database error close the broken connection
(`close_old_connections`) and try again with backoff. The run fails only when it could not report
for its whole heartbeat window (`RUN_HEARTBEAT_TIMEOUT`), the time after which the reconciler
takes it for lost anyway.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Callable, TypeVar

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection

from labelapp.models import TrainingRun
from labelapp.services.rounds import round_advance, rounds_advance_all
from labelapp.services.runs import RunLost, run_begin, run_finish, run_report, runs_reconcile

log = logging.getLogger(__name__)
T = TypeVar("T")
DATABASE_ERRORS = (OperationalError, InterfaceError)  # the connection, not the query: worth another try
FIRST_BACKOFF = 0.5  # seconds; doubles up to RUN_HEARTBEAT_EVERY


class DatabaseUnreachable(RuntimeError):
    """The database could not be written for the run's whole heartbeat window."""


def drop_broken_connections() -> None:
    """Close this thread's connection when it errored and no longer answers (or is past its age), and have
    the next query health-check it: the next try reconnects. Never inside a transaction (it would end it)."""
    if not connection.in_atomic_block:
        close_old_connections()


def with_database_retry(call: Callable[[], T], *, deadline: float, what: str) -> T:
    """`call()`, tried again after each database error (the broken connection closed first, so the next
    try reconnects) with backoff from FIRST_BACKOFF doubling to RUN_HEARTBEAT_EVERY, until `deadline`
    (time.monotonic()) passes: then DatabaseUnreachable. Other errors, RunLost included, go through."""
    delay = FIRST_BACKOFF
    while True:
        try:
            return call()
        except DATABASE_ERRORS as exc:
            drop_broken_connections()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnreachable(
                    f"could not {what} for {settings.RUN_HEARTBEAT_TIMEOUT} s (the heartbeat window): {exc}"
                ) from exc
            log.warning("could not %s (%s: %s); trying again in %.1f s", what, type(exc).__name__,
                        str(exc).strip(), min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, max(FIRST_BACKOFF, settings.RUN_HEARTBEAT_EVERY))


class Heartbeat:
    """Keeps the run's heartbeat fresh from a side thread while the executor works (a long
    generation phase reports no steps), and carries progress reports from the executor."""

    def __init__(self, run_id: int, token: str):
        self.run_id, self.token = run_id, token
        self.cancel = False
        self.lost = False
        self.reported_at = time.monotonic()  # the last report the database took, from either thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(settings.RUN_HEARTBEAT_EVERY):
                try:
                    self.cancel = run_report(run_id=self.run_id, token=self.token) or self.cancel
                    self.reported_at = time.monotonic()
                except RunLost:
                    self.lost = True
                    return
                except Exception:  # a database hiccup: drop the broken connection, try again next beat
                    drop_broken_connections()
                    log.warning("heartbeat for run %s failed", self.run_id, exc_info=True)
        finally:
            connection.close()

    @property
    def deadline(self) -> float:
        """Until when a database error may be retried: the heartbeat window after the last report."""
        return self.reported_at + settings.RUN_HEARTBEAT_TIMEOUT

    def progress(self, step: int, total: int, metrics: dict) -> None:
        """The rlhf progress callback: report (retrying database errors until the heartbeat window
        passes, then DatabaseUnreachable fails the run), and stop the trainer when asked to."""
        from rlhf import Cancelled

        def report() -> bool:
            drop_broken_connections()  # the report, and the executor's next query, health-check the connection
            return run_report(run_id=self.run_id, token=self.token, step=step, total=total, metrics=metrics)

        try:
            what = f"report progress of run {self.run_id}"
            self.cancel = with_database_retry(report, deadline=self.deadline, what=what)
            self.reported_at = time.monotonic()
        except RunLost:
            self.lost = True
        if self.cancel or self.lost:
            raise Cancelled("cancel requested" if self.cancel else "the run was taken over")


@shared_task(name="studio.run_execute", acks_late=True, reject_on_worker_lost=True)
def run_execute(run_id: int) -> str:
    from rlhf import Cancelled
    from workers.executors import EXECUTORS

    close_old_connections()
    taken = run_begin(run_id=run_id)
    if taken is None:
        return "skipped"
    run, token = taken
    log.info("run %s (%s) started, attempt %s", run.pk, run.kind, run.attempts)
    status, result, error, model, store = TrainingRun.Status.FAILED, {}, "", None, None
    with Heartbeat(run.pk, token) as beat:
        try:
            outcome = EXECUTORS[run.kind](run, beat.progress)
            status, result, model, store = TrainingRun.Status.SUCCEEDED, outcome.result, outcome.model, outcome.store
        except Cancelled:
            status = TrainingRun.Status.CANCELLED
        except Exception as exc:  # recorded on the run for the studio to show
            log.exception("run %s failed", run.pk)
            error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()[-4000:]}"
    if beat.lost:
        return "lost"
    try:
        finished = finish(run.pk, token, beat.deadline, status=status, result=result, error=error, output_model=model,
                          store=store)
    except Exception as exc:  # writing the outputs failed: they were rolled back; record the run failed
        log.exception("run %s: its outputs could not be stored", run.pk)
        error = f"Storing the run's outputs failed: {type(exc).__name__}: {exc}\n\n{traceback.format_exc()[-4000:]}"
        finished = finish(run.pk, token, beat.deadline, status=TrainingRun.Status.FAILED, result=result, error=error)
    if not finished:
        return "lost"
    if finished.status == TrainingRun.Status.SUCCEEDED:
        _after_success(run.pk)
        from workers.executors import after_finish

        after_finish(finished)
    if run.round_id:
        try:
            round_advance(round_id=run.round_id)
        except DATABASE_ERRORS:  # the run is recorded; beat's studio.rounds_advance moves the round on
            drop_broken_connections()
            log.warning("run %s: could not advance round %s now; the periodic advance will", run.pk, run.round_id,
                        exc_info=True)
    return finished.status


def finish(run_id: int, token: str, deadline: float, **outcome) -> TrainingRun | None:
    """run_finish, retried through database errors until `deadline`; None when the run is no longer ours
    (another worker took it over, or the database stayed away past the heartbeat window and the reconciler
    will resume or fail it). A commit whose acknowledgement was lost is recognised on the retry."""
    retried = False

    def attempt() -> TrainingRun:
        nonlocal retried
        try:
            return run_finish(run_id=run_id, token=token, **outcome)
        except DATABASE_ERRORS:
            retried = True
            raise

    try:
        return with_database_retry(attempt, deadline=deadline, what=f"record the end of run {run_id}")
    except RunLost:
        if retried:  # our own commit went through before the connection broke?
            done = TrainingRun.objects.filter(pk=run_id, execution=token).exclude(status=TrainingRun.Status.RUNNING)
            return done.first()
        return None
    except DatabaseUnreachable:
        log.error("run %s: the database stayed unreachable; the reconciler will resume or fail it", run_id)
        return None


def _after_success(run_id: int) -> None:
    """Delete the run's checkpoints (kept until now: a restarted run resumes from them) and record
    disk use (labelapp.services.disk). Housekeeping: a failure here is logged, never the run's."""
    from labelapp.services.disk import after_run_success

    try:
        after_run_success(run_id)
    except Exception:
        log.warning("disk housekeeping after run %s failed", run_id, exc_info=True)


@shared_task(name="studio.runs_reconcile")
def reconcile() -> dict:
    return runs_reconcile()


@shared_task(name="studio.rounds_advance")
def advance_rounds() -> int:
    return rounds_advance_all()


@shared_task(name="studio.reliability_refit")
def reliability_refit(project_id: int, force: bool = False) -> int | None:
    """Refit a project's annotator-reliability model (default queue: pure Python, seconds)."""
    from labelapp.models import Project
    from labelapp.services.quality import reliability_refit as refit

    close_old_connections()
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return None
    fit = refit(project=project, force=force)
    return fit.pk if fit else None


@shared_task(name="studio.reliability_refresh")
def reliability_refresh() -> int:
    """Beat: refit every project whose labels changed since its last fit (new, edited or withdrawn
    rankings, gold marked); unchanged projects cost one read of their rankings' ids and orders."""
    from labelapp.models import Project, Ranking
    from labelapp.services.quality import reliability_refit as refit

    close_old_connections()
    refitted = 0
    for project in Project.objects.filter(pk__in=Ranking.objects.values("task__project_id")):
        before = project.reliability_fits.values_list("pk", flat=True).first()
        fit = refit(project=project)
        refitted += fit is not None and fit.pk != before
    return refitted


@shared_task(name="studio.demonstrations_check")
def demonstrations_check() -> int:
    """Beat (gpu queue, where torch is): near-duplicate checks of new demonstrations (workers.checks)."""
    from workers.checks import check_demonstrations

    close_old_connections()
    return check_demonstrations()


@shared_task(name="studio.ai_label")
def ai_label(project_id: int, source: str, model_version_id: int) -> int:
    """AI annotator (gpu queue): label the project's waiting ranking tasks with a model (workers.checks)."""
    from workers.checks import ai_label_tasks

    close_old_connections()
    return ai_label_tasks(project_id=project_id, source=source, model_version_id=model_version_id)


@shared_task(name="studio.uncertainty_score")
def uncertainty_score(project_id: int, model_version_id: int) -> int:
    """Active learning (gpu queue): score the project's ranking tasks by the reward model's uncertainty."""
    from workers.checks import score_uncertainty

    close_old_connections()
    return score_uncertainty(project_id=project_id, model_version_id=model_version_id)
