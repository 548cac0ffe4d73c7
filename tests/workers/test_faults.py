"""Faults with a real worker: SIGKILL mid-run, duplicate messages, a lost broker message, a Redis restart."""
import signal

import pytest
from django.utils import timezone

from labelapp.models import TrainingRun
from labelapp.services.runs import enqueue, run_create, runs_reconcile
from tests.conftest import add_member, make_project, make_prompt
from tests.workers.conftest import wait_for
from workers.simulate import approve_demonstrations, simulate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sft_project(tmp_path):
    from rlhf.testing import tiny_checkpoint

    project = make_project()
    project.base_model = tiny_checkpoint(tmp_path / "tiny")
    project.save()
    add_member(project, role="admin")
    for i in range(4):
        make_prompt(project, text=f"Tell me about cats ({i}).", reference="Cats purr when they are happy.")
    simulate(project=project, annotators=2, queues=["write"])
    approve_demonstrations(project)  # SFT trains on approved demonstrations
    return project


def refreshed(run):
    run.refresh_from_db()
    return run


def test_sigkill_mid_run_is_resumed_from_its_checkpoint_and_never_runs_twice(sft_project, start_worker, settings):
    settings.RUN_HEARTBEAT_TIMEOUT = 4
    run = run_create(project=sft_project, kind="sft", params={
        "max_steps": 80, "save_steps": 5, "per_device_batch_size": 2, "max_length": 512, "save_total_limit": 1,
    })
    first = start_worker()
    wait_for(lambda: refreshed(run).step >= 8, 180, "the run to pass its first checkpoint", first)
    first.stop(signal.SIGKILL)
    assert refreshed(run).status == "running"

    # Within the heartbeat window the reconciler sees it is lost and re-queues it to resume.
    wait_for(lambda: runs_reconcile()["requeued"] == [run.pk], 30, "the reconciler to requeue the run")
    assert refreshed(run).status == "queued" and run.params["resume"] is True

    second = start_worker()
    wait_for(lambda: refreshed(run).status == "running", 120, "the second worker to take the run", second)
    enqueue(run)  # a duplicate message while it runs: must not start it again
    wait_for(lambda: refreshed(run).status in ("succeeded", "failed"), 300, "the resumed run to finish", second)
    assert run.status == "succeeded", run.error
    assert run.attempts == 2  # the duplicate did not take it a third time
    steps = [m["step"] for m in run.metrics if "step" in m]
    assert steps.count(1) == 1, "the second attempt started over instead of resuming"
    assert "resuming from" in second.output() and max(steps) == 80
    assert "worker lost" in run.logs_tail
    # the solo worker takes the duplicate after the run: it must answer "skipped", not run again
    wait_for(lambda: "'skipped'" in second.output(), 120, "the duplicate message to be skipped", second)
    assert refreshed(run).attempts == 2 and run.status == "succeeded"


def test_a_lost_message_is_sent_again_by_the_reconciler(sft_project, start_worker, settings, broker):
    settings.RUN_HEARTBEAT_TIMEOUT = 1
    run = run_create(project=sft_project, kind="sft", params={"max_steps": 2, "per_device_batch_size": 2,
                                                                 "max_length": 512, "save_steps": 0})
    broker.flushdb()  # the broker restarted empty: the committed run's message is gone
    TrainingRun.objects.filter(pk=run.pk).update(enqueued_at=timezone.now() - timezone.timedelta(seconds=5))
    worker = start_worker()
    assert runs_reconcile()["resent"] == [run.pk]
    wait_for(lambda: refreshed(run).status == "succeeded", 180, "the re-sent run to finish", worker)


def test_a_redis_restart_loses_no_committed_run(sft_project, start_worker, settings, private_redis):
    """A real redis-server (ours, no persistence) is stopped and started again while a run trains: the
    running run finishes once, a run committed while Redis was down is sent again by the reconciler, and
    the worker reconnects by itself and trains it."""
    settings.RUN_HEARTBEAT_TIMEOUT = 30
    params = {"max_steps": 60, "per_device_batch_size": 2, "max_length": 512, "save_steps": 0}
    worker = start_worker(REDIS_URL=private_redis.url)
    first = run_create(project=sft_project, kind="sft", params=params)
    wait_for(lambda: refreshed(first).step >= 2, 180, "the first run to train", worker)

    private_redis.stop()  # every message and the unacked one are gone with it
    assert refreshed(first).status == "running" and first.step < first.total, "the run ended before the restart"
    second = run_create(project=sft_project, kind="sft", params={**params, "max_steps": 2})
    assert refreshed(second).status == "queued" and second.enqueued_at is None  # committed, not sent
    private_redis.start()

    wait_for(lambda: refreshed(first).status in ("succeeded", "failed"), 300, "the first run to finish", worker)
    assert first.status == "succeeded", first.error
    assert first.attempts == 1
    assert runs_reconcile()["resent"] == [second.pk]
    wait_for(lambda: refreshed(second).status == "succeeded", 180, "the worker to reconnect and train the second run",
             worker)
    assert refreshed(first).attempts == 1 and second.attempts == 1
    assert "Connection to broker lost" in worker.output() or "Cannot connect" in worker.output()
