"""Celery tasks. Thin: load the run by id, run its executor, record the outcome.

`run_execute` is safe to receive twice (Redis re-delivery after the visibility timeout, a
resent message after a broker restart, a retried publish): `run_begin` decides from the row
whether this worker may execute it, and returns None otherwise.
"""
from __future__ import annotations

import logging
import threading
import traceback

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections, connection

from labelapp.models import TrainingRun
from labelapp.services.rounds import round_advance, rounds_advance_all
from labelapp.services.runs import RunLost, run_begin, run_finish, run_report, runs_reconcile

log = logging.getLogger(__name__)


class Heartbeat:
    """Keeps the run's heartbeat fresh from a side thread while the executor works (a long
    generation phase reports no steps), and carries progress reports from the executor."""

    def __init__(self, run_id: int, token: str):
        self.run_id, self.token = run_id, token
        self.cancel = False
        self.lost = False
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
                except RunLost:
                    self.lost = True
                    return
                except Exception:  # a database hiccup: try again next beat
                    log.warning("heartbeat for run %s failed", self.run_id, exc_info=True)
        finally:
            connection.close()

    def progress(self, step: int, total: int, metrics: dict) -> None:
        """The rlhf progress callback: report, and stop the trainer when asked to."""
        from rlhf import Cancelled

        try:
            self.cancel = run_report(run_id=self.run_id, token=self.token, step=step, total=total, metrics=metrics)
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
    status, result, error, model = TrainingRun.Status.FAILED, {}, "", None
    with Heartbeat(run.pk, token) as beat:
        try:
            outcome = EXECUTORS[run.kind](run, beat.progress)
            status, result, model = TrainingRun.Status.SUCCEEDED, outcome.result, outcome.model
        except Cancelled:
            status = TrainingRun.Status.CANCELLED
        except Exception as exc:  # recorded on the run for the studio to show
            log.exception("run %s failed", run.pk)
            error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()[-4000:]}"
    if beat.lost:
        return "lost"
    try:
        run_finish(run_id=run.pk, token=token, status=status, result=result, error=error, output_model=model)
    except RunLost:
        return "lost"
    if status == TrainingRun.Status.SUCCEEDED:
        _after_success(run.pk)
    if run.round_id:
        round_advance(round_id=run.round_id)
    return status


def _after_success(run_id: int) -> None:
    """Delete the run's checkpoints (kept until now: a restarted run resumes from them) and record
    disk use (labelapp.disk). Housekeeping: a failure here is logged, never the run's."""
    from labelapp.disk import after_run_success

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
