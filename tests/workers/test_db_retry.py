"""Worker bookkeeping through database errors (issue 18, H1), in-process on PostgreSQL: progress
reports, heartbeats and run_finish retry a database error with backoff after closing the broken
connection; the run fails only when it could not report for its whole heartbeat window. And the
outputs go in with run_finish, once: a lost commit acknowledgement, a failing store, a stale worker.
"""
import threading
import time

import psycopg
import pytest
from django.db import IntegrityError, OperationalError, connection

from labelapp.models import ModelVersion, TrainingRun
from labelapp.services import runs as run_services
from labelapp.services.runs import run_create
from tests.conftest import make_project
from tests.webclient import database_url
from workers import executors, tasks
from workers.executors import EXECUTORS, Outcome

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def quick(settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://…")
    settings.RUN_HEARTBEAT_EVERY = 1
    settings.RUN_HEARTBEAT_TIMEOUT = 30
    monkeypatch.setattr(tasks, "FIRST_BACKOFF", 0.05)
    monkeypatch.setattr(run_services, "enqueue", lambda run: None)  # no broker: run_execute is called here


@pytest.fixture
def run():
    return run_create(project=make_project(), kind="sft", params={})


def trainer(steps: int, between=None):
    """An executor that reports `steps` steps (calling `between(step)` after each) and registers a model."""
    def execute(run, progress):
        for step in range(1, steps + 1):
            progress(step, steps, {"loss": 1.0 / step})
            if between:
                between(step)
        store = executors.register(run, name=f"sft-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path="/m")
        return Outcome({"steps": steps}, store=store)
    return execute


class Flaky:
    """run_report that raises OperationalError on the calls `failing(call)` says, else the real one."""

    def __init__(self, failing):
        self.failing, self.calls, self.failures = failing, 0, 0
        self.lock = threading.Lock()

    def __call__(self, **kwargs):
        with self.lock:
            self.calls += 1
            fail = self.failing(self.calls, kwargs)
            self.failures += fail
        if fail:
            raise OperationalError("server closed the connection unexpectedly")
        return run_services.run_report(**kwargs)


def test_database_errors_in_progress_reports_are_retried_and_the_run_continues(run, monkeypatch):
    seen = []

    def failing(call, kwargs):  # step 2's report fails three times, then goes through
        if kwargs.get("step") == 2 and len(seen) < 3:
            seen.append(call)
            return True
        return False

    flaky = Flaky(failing)
    monkeypatch.setattr(tasks, "run_report", flaky)
    monkeypatch.setitem(EXECUTORS, "sft", trainer(5))
    assert tasks.run_execute(run.pk) == "succeeded"
    run.refresh_from_db()
    assert flaky.failures == 3  # three failed writes of step 2, then it went through
    assert run.status == "succeeded" and run.error == "" and run.attempts == 1
    assert [m["step"] for m in run.metrics] == [1, 2, 3, 4, 5]  # no step lost or doubled
    assert ModelVersion.objects.filter(run=run).count() == 1 and run.output_model.run_id == run.pk


def test_a_terminated_connection_between_steps_is_replaced_and_the_run_continues(run, monkeypatch):
    """The real thing: the backend of the executing thread is killed between two steps."""
    def terminate(step):
        if step in (2, 4):
            pid = connection.cursor().connection.info.backend_pid
            with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as admin:
                assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]

    monkeypatch.setitem(EXECUTORS, "sft", trainer(5, between=terminate))
    assert tasks.run_execute(run.pk) == "succeeded"
    run.refresh_from_db()
    assert run.status == "succeeded" and run.step == 5 and [m["step"] for m in run.metrics] == [1, 2, 3, 4, 5]
    assert ModelVersion.objects.filter(run=run).count() == 1


def test_a_run_that_cannot_report_for_its_heartbeat_window_fails(run, monkeypatch, settings):
    settings.RUN_HEARTBEAT_TIMEOUT = 2
    flaky = Flaky(lambda call, kw: True)  # the database takes no report at all (heartbeats included)
    monkeypatch.setattr(tasks, "run_report", flaky)
    monkeypatch.setitem(EXECUTORS, "sft", trainer(5))
    started = time.monotonic()
    assert tasks.run_execute(run.pk) == "failed"
    waited = time.monotonic() - started
    run.refresh_from_db()
    assert waited >= 2, "it gave up before the heartbeat window passed"
    assert flaky.failures >= 4  # retried with backoff, not once
    assert run.status == "failed" and "DatabaseUnreachable" in run.error and "heartbeat window" in run.error
    assert run.step == 0 and not ModelVersion.objects.filter(run=run).exists()  # nothing stored


def test_run_finish_is_retried_and_a_commit_whose_answer_was_lost_is_not_written_twice(run, monkeypatch):
    real = run_services.run_finish
    calls = []

    def lost_answer(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("could not receive data from server")  # before: nothing committed
        if len(calls) == 2:
            real(**kwargs)  # committed, then the connection broke before the answer came back
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(tasks, "run_finish", lost_answer)
    monkeypatch.setitem(EXECUTORS, "sft", trainer(2))
    assert tasks.run_execute(run.pk) == "succeeded"
    assert len(calls) == 3  # the third try found its own commit (RunLost for anyone else)
    run.refresh_from_db()
    assert run.status == "succeeded" and ModelVersion.objects.filter(run=run).count() == 1
    assert run.output_model.run_id == run.pk


def test_a_store_that_fails_writes_nothing_and_fails_the_run(run, monkeypatch):
    def half_then_break(locked, result):
        executors.register(run, name="sft", kind=ModelVersion.Kind.POLICY, artifact_path="/m")(locked, result)
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setitem(EXECUTORS, "sft", lambda run, progress: Outcome({"steps": 1}, store=half_then_break))
    assert tasks.run_execute(run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == "failed" and "Storing the run's outputs failed: IntegrityError" in run.error
    assert not ModelVersion.objects.exists() and run.output_model is None


def test_a_worker_that_lost_the_run_stores_nothing(run, monkeypatch):
    """Another worker took the run over while this one trained: its run_finish refuses before any write."""
    def taken_over(run, progress):
        progress(1, 1, {})
        TrainingRun.objects.filter(pk=run.pk).update(execution="another-worker")
        stored = executors.register(run, name="sft", kind=ModelVersion.Kind.POLICY, artifact_path="/m")
        return Outcome({}, store=stored)

    monkeypatch.setitem(EXECUTORS, "sft", taken_over)
    assert tasks.run_execute(run.pk) == "lost"
    assert not ModelVersion.objects.exists()
    run.refresh_from_db()
    assert run.status == "running" and run.execution == "another-worker"


def test_a_round_that_cannot_be_advanced_right_after_the_run_is_left_to_the_periodic_advance(monkeypatch):
    from labelapp.models import Round

    project = make_project()
    rnd = Round.objects.create(project=project, number=1)
    run = run_create(project=project, kind="sft", params={}, round=rnd)

    def broken(**kwargs):
        raise OperationalError("terminating connection due to administrator command")

    monkeypatch.setattr(tasks, "round_advance", broken)
    monkeypatch.setitem(EXECUTORS, "sft", trainer(1))
    assert tasks.run_execute(run.pk) == "succeeded"  # the run's outcome stands; beat advances the round later
    run.refresh_from_db()
    assert run.status == "succeeded" and ModelVersion.objects.filter(run=run).count() == 1


def test_the_heartbeat_thread_reconnects_after_its_connection_is_terminated(run, monkeypatch):
    """A phase without progress reports (sampling): only the heartbeat thread writes. Its backend is
    killed; the next beats fail, drop the connection and reconnect, and the heartbeat moves on."""
    seen = {}

    def generating(run, progress):
        main = connection.cursor().connection.info.backend_pid
        time.sleep(2.5)  # a few beats on the heartbeat thread's connection
        before = TrainingRun.objects.get(pk=run.pk).heartbeat_at
        with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as admin:
            seen["killed"] = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid NOT IN (%s, pg_backend_pid())", [main]).fetchone()[0]
        time.sleep(4)
        seen["moved"] = (TrainingRun.objects.get(pk=run.pk).heartbeat_at - before).total_seconds()
        return Outcome({})

    monkeypatch.setitem(EXECUTORS, "sft", generating)
    assert tasks.run_execute(run.pk) == "succeeded"
    assert seen["killed"] >= 1  # the heartbeat thread's backend
    assert seen["moved"] >= 2, seen  # beats went on after the kill
