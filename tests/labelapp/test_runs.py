"""Run state machine: enqueue after commit, execute once, heartbeats, cancel, reconcile."""
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from labelapp.models import TrainingRun
from labelapp.services.runs import (
    RunLost,
    run_begin,
    run_cancel,
    run_create,
    run_finish,
    run_report,
    run_retry,
    runs_reconcile,
)
from tests.conftest import add_member

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin(project):
    return add_member(project, role="admin")


def test_enqueue_happens_only_after_commit(project, admin, sent):
    with transaction.atomic():
        run = run_create(project=project, kind="sft", user=admin)
        assert sent == []
    assert sent == [run.pk]
    try:
        with transaction.atomic():
            run_create(project=project, kind="sft", user=admin)
            raise RuntimeError("the request fails")
    except RuntimeError:
        pass
    assert sent == [run.pk] and TrainingRun.objects.count() == 1


def test_only_admins_start_runs_and_kinds_are_checked(project, annotator, admin, sent):
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        run_create(project=project, kind="sft", user=annotator)
    with pytest.raises(ValidationError, match="Unknown run kind"):
        run_create(project=project, kind="rlaif")
    for bad in (0, "2", 1.5, True):
        with pytest.raises(ValidationError, match="'min_rank_gap' must be a whole number of at least 1"):
            run_create(project=project, kind="dpo", params={"min_rank_gap": bad}, user=admin)
    assert not TrainingRun.objects.exists() and sent == []
    run_create(project=project, kind="reward", params={"min_rank_gap": 3}, user=admin)


def test_a_run_executes_once_and_duplicates_are_no_ops(project, sent):
    run = run_create(project=project, kind="sft")
    run_begin(run_id=run.pk)
    taken = TrainingRun.objects.get(pk=run.pk)
    assert taken.status == "running" and taken.attempts == 1
    token = taken.execution
    assert run_begin(run_id=run.pk) is None  # re-delivered while alive: nothing
    run_report(run_id=run.pk, token=token, step=3, total=10, metrics={"loss": 1.5})
    run_finish(run_id=run.pk, token=token, status="succeeded", result={"loss": 1.0})
    assert run_begin(run_id=run.pk) is None  # re-delivered after the end: nothing
    done = TrainingRun.objects.get(pk=run.pk)
    assert (done.status, done.step, done.attempts) == ("succeeded", 10, 1)
    assert done.metrics == [{"step": 3, "loss": 1.5}]


def test_reports_from_a_stale_worker_are_refused(project, sent):
    run = run_create(project=project, kind="sft")
    _, token = run_begin(run_id=run.pk)
    with pytest.raises(RunLost):
        run_report(run_id=run.pk, token="someone-else")
    with pytest.raises(RunLost):
        run_finish(run_id=run.pk, token="someone-else", status="succeeded")


def test_cancel_queued_and_running(project, admin, sent):
    queued = run_create(project=project, kind="sft")
    assert run_cancel(run_id=queued.pk, user=admin).status == "cancelled"
    assert run_begin(run_id=queued.pk) is None
    running = run_create(project=project, kind="sft")
    _, token = run_begin(run_id=running.pk)
    run_cancel(run_id=running.pk, user=admin)
    assert run_report(run_id=running.pk, token=token, step=1, total=5) is True  # the worker is told to stop
    with pytest.raises(ValidationError, match="already"):
        run_cancel(run_id=queued.pk, user=admin)


def test_reconciler_resumes_then_fails_a_run_whose_worker_died(project, settings, sent):
    settings.RUN_HEARTBEAT_TIMEOUT = 60
    run = run_create(project=project, kind="sft", max_attempts=2)
    start = timezone.now()
    run_begin(run_id=run.pk, now=start)
    assert runs_reconcile(now=start + timedelta(seconds=30))["requeued"] == []  # still alive
    outcome = runs_reconcile(now=start + timedelta(seconds=61))
    assert outcome["requeued"] == [run.pk]
    again = TrainingRun.objects.get(pk=run.pk)
    assert again.status == "queued" and again.params["resume"] is True and "worker lost" in again.logs_tail
    _, token = run_begin(run_id=run.pk, now=start + timedelta(seconds=62))
    assert TrainingRun.objects.get(pk=run.pk).attempts == 2
    outcome = runs_reconcile(now=start + timedelta(seconds=200))
    assert outcome["failed"] == [run.pk]
    failed = TrainingRun.objects.get(pk=run.pk)
    assert failed.status == "failed" and "heartbeats" in failed.error
    with pytest.raises(RunLost):
        run_report(run_id=run.pk, token=token)


def test_reconciler_resends_queued_runs_whose_message_was_lost(project, settings, sent):
    settings.RUN_HEARTBEAT_TIMEOUT = 60
    run = run_create(project=project, kind="sft")
    assert sent == [run.pk]
    TrainingRun.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timedelta(seconds=120))
    assert runs_reconcile()["resent"] == [run.pk]
    assert sent == [run.pk, run.pk]


def test_retry_refuses_a_run_of_an_ended_round(project, admin, sent):
    from labelapp.models import Round

    rnd = Round.objects.create(project=project, number=1, stage="failed")
    run = TrainingRun.objects.create(project=project, round=rnd, kind="sft", status="failed")
    with pytest.raises(ValidationError, match="has ended"):
        run_retry(run_id=run.pk, user=admin)
    assert TrainingRun.objects.count() == 1


def test_retry_creates_a_new_run(project, admin, sent):
    run = run_create(project=project, kind="reward", params={"max_steps": 3})
    run_cancel(run_id=run.pk, user=admin)
    retry = run_retry(run_id=run.pk, user=admin)
    assert retry.pk != run.pk and retry.retry_of_id == run.pk and retry.params == {"max_steps": 3}
    with pytest.raises(ValidationError):
        run_retry(run_id=retry.pk, user=admin)
