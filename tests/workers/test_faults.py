"""Faults with a real worker: SIGKILL mid-run, duplicate messages, a lost broker message, a Redis restart,
the worker's database connections terminated mid-run, a worker killed while it stores its outputs."""
import signal
import threading
import time

import pytest
import torch
from django.db import connection, transaction
from django.utils import timezone

from labelapp.models import Completion, EvaluationTask, ModelVersion, RankingTask, TrainingRun
from labelapp.services.runs import enqueue, model_version_register, run_create, runs_reconcile
from tests.conftest import add_member, make_project, make_prompt
from tests.webclient import database_url
from tests.workers.conftest import execute, wait_for
from workers.simulate import approve_demonstrations, simulate

pytestmark = pytest.mark.django_db(transaction=True)
APP = "studio-worker-faults"  # the application_name of the worker's database connections


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


def worker_database() -> dict:
    """The worker's environment: the test database, its connections named APP so a test can find them."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://…")
    return {"DATABASE_URL": database_url(connection.settings_dict, APP)}


def worker_backends(condition: str = "TRUE") -> list[tuple[int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pid, query FROM pg_stat_activity WHERE application_name = %s AND {condition}", [APP])
        return cursor.fetchall()


def terminate_worker_connections(patience: float = 10.0) -> int:
    """Terminate every database connection of the worker; the worker may hold none at this instant (between
    a report and the next, or while it reconnects), so try again until it has one (up to `patience` s)."""
    deadline = time.monotonic() + patience
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name = %s", [APP])
            killed = cursor.fetchone()[0]
        if killed or time.monotonic() > deadline:
            return killed
        time.sleep(0.05)


def test_terminated_database_connections_mid_run_do_not_fail_it_and_register_one_model(sft_project, start_worker):
    """H1: pg_terminate_backend on every connection of the worker, three times while an SFT run trains:
    the run finishes in its first attempt, every step reported once, and one model is registered."""
    run = run_create(project=sft_project, kind="sft", params={
        "max_steps": 60, "save_steps": 10, "per_device_batch_size": 2, "max_length": 512, "save_total_limit": 1,
    })
    worker = start_worker(**worker_database())
    killed = []
    for step in (3, 12, 25):
        wait_for(lambda: refreshed(run).step >= step, 180, f"the run to reach step {step}", worker)
        assert run.status == "running" and run.step < 60, "the run ended before its connections were terminated"
        killed.append(terminate_worker_connections())
    wait_for(lambda: refreshed(run).status in ("succeeded", "failed"), 300, "the run to finish", worker)
    assert run.status == "succeeded", run.error
    assert all(killed), killed  # each time the worker had connections, and lost them
    assert run.attempts == 1 and run.step == 60  # not failed, not re-queued: it carried on
    steps = [m["step"] for m in run.metrics]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no step reported twice or out of order
    assert ModelVersion.objects.filter(project=sft_project).count() == 1
    assert refreshed(run).output_model.run_id == run.pk and run.output_model.is_current


class Blocker:
    """A transaction of its own (a thread, so its own connection) holding an uncommitted row with the key one
    of the run's outputs will have: the worker's run_finish transaction writes what comes before it, then
    waits on the row's lock, until `rollback()`."""

    def __init__(self, make):
        self.ready, self.release, self.error = threading.Event(), threading.Event(), None
        self.thread = threading.Thread(target=self._hold, args=(make,))
        self.thread.start()
        assert self.ready.wait(30) and self.error is None, self.error

    def _hold(self, make) -> None:
        try:
            with transaction.atomic():
                make()
                self.ready.set()
                self.release.wait(300)
                transaction.set_rollback(True)
        except BaseException as exc:  # reported by __init__
            self.error = exc
            self.ready.set()
        finally:
            connection.close()

    def rollback(self) -> None:
        self.release.set()
        self.thread.join(30)


def sampling_case(tiny_dir):
    project = make_project(k=2, base_model=tiny_dir)
    prompts = [make_prompt(project, text=f"Name a colour, number {i}.") for i in range(3)]
    run = run_create(project=project, kind="sample", params={"prompts": 3, "k": 2, "max_new_tokens": 4})

    def outputs():
        return (RankingTask.objects.filter(project=project).count(),
                Completion.objects.filter(prompt__project=project).count(),
                ModelVersion.objects.filter(project=project).count())

    block = lambda: RankingTask.objects.create(project=project, prompt=prompts[1], run=run)  # noqa: E731
    # 3 tasks of 2 completions, all keyed by the run; the base model registered once
    return run, block, "labelapp_rankingtask", outputs, (0, 0, 0), (3, 6, 1)


def evaluation_case(tiny_dir):
    from labelapp.services.projects import completion_create

    project = make_project(k=2, base_model=tiny_dir)
    baseline = model_version_register(project=project, name="baseline", kind="policy", artifact_path=tiny_dir)
    candidate = model_version_register(project=project, name="candidate", kind="policy", artifact_path=tiny_dir,
                                       parent=baseline)
    prompts = [make_prompt(project, text=f"A held-out question {i}?", split="validation") for i in range(2)]
    run = run_create(project=project, kind="evaluate", input_model=candidate,
                     params={"prompts": 2, "max_new_tokens": 4})

    def block():
        a, b = (completion_create(prompt=prompts[1], text=t, model_version=m)
                for t, m in (("a", candidate), ("b", baseline)))
        EvaluationTask.objects.create(project=project, prompt=prompts[1], model_a=candidate, model_b=baseline,
                                      completion_a=a, completion_b=b, run=run)

    def outputs():
        return (EvaluationTask.objects.filter(project=project).count(),
                Completion.objects.filter(prompt__project=project).count())

    return run, block, "labelapp_evaluationtask", outputs, (0, 0), (2, 4)


def training_case(sft_project):
    old = model_version_register(project=sft_project, name="old", kind="policy", artifact_path=sft_project.base_model,
                                 make_current=True)
    run = run_create(project=sft_project, kind="sft", params={"max_steps": 2, "per_device_batch_size": 2,
                                                              "max_length": 512, "save_steps": 0})
    block = lambda: ModelVersion.objects.create(project=sft_project, name="blocker", kind="reward", run=run)  # noqa: E731

    def outputs():  # (versions, versions of the run, is the old one still current?)
        return (ModelVersion.objects.filter(project=sft_project).count(), ModelVersion.objects.filter(run=run).count(),
                ModelVersion.objects.get(pk=old.pk).is_current)

    # before: the store's first write (the old version no longer current) was rolled back with the rest
    return run, block, "labelapp_modelversion", outputs, (1, 0, True), (2, 1, False)


@pytest.mark.parametrize("kind", ["sample", "evaluate", "sft"])
def test_a_worker_killed_while_storing_outputs_leaves_none_and_the_resumed_run_writes_them_once(
        kind, request, start_worker, settings):
    """M3: the worker is SIGKILLed after writing part of its outputs (in run_finish's transaction, blocked
    on the next insert): nothing of them is committed; the reconciler re-queues the run; a second worker
    runs it again and its outputs exist once: no duplicate ranking tasks, completions, evaluation tasks or
    model versions."""
    settings.RUN_HEARTBEAT_TIMEOUT = 3
    env = worker_database()
    if kind == "sft":
        run, block, table, outputs, before, after = training_case(request.getfixturevalue("sft_project"))
    else:
        case = sampling_case if kind == "sample" else evaluation_case
        run, block, table, outputs, before, after = case(request.getfixturevalue("tiny_dir"))
    blocker = Blocker(block)
    try:
        first = start_worker(**env)
        waiting = wait_for(lambda: worker_backends("wait_event_type = 'Lock'"), 240,
                           "the worker to store its outputs and wait on the held row", first)
        assert f'INSERT INTO "{table}"' in waiting[0][1], waiting  # inside the store, mid-write
        assert outputs() == before and refreshed(run).status == "running"  # nothing visible: not committed
        first.stop(signal.SIGKILL)
    finally:
        blocker.rollback()
    wait_for(lambda: not worker_backends(), 60, "the killed worker's connections to end")
    assert outputs() == before and refreshed(run).status == "running"  # its transaction was rolled back

    wait_for(lambda: runs_reconcile()["requeued"] == [run.pk], 30, "the reconciler to re-queue the run")
    second = start_worker(**env)
    wait_for(lambda: refreshed(run).status in ("succeeded", "failed"), 240, "the retried run to finish", second)
    assert run.status == "succeeded", run.error
    assert run.attempts == 2 and outputs() == after
    if kind == "sample":
        assert RankingTask.objects.filter(run=run).count() == 3 and Completion.objects.filter(run=run).count() == 6
        assert run.result["tasks"] == 3
    elif kind == "evaluate":
        assert EvaluationTask.objects.filter(run=run).count() == 2 and Completion.objects.filter(run=run).count() == 4
    else:
        assert run.output_model.run_id == run.pk and run.output_model.is_current


def test_an_evaluation_loads_its_policies_and_judge_in_fp32_on_a_native_bf16_cpu(tiny_dir, monkeypatch):
    """On a CPU that computes bf16 natively (forced) sampling to rank is bf16, but the evaluation, whose
    win-rates the promotion gate reads, samples both policies and scores with the reward model in fp32: an
    adapter folded into bf16 weights loses updates below bf16's resolution, and bf16 scores tie."""
    from unittest import mock

    from rlhf import models
    from workers import executors

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    run, _, _, outputs, _, after = evaluation_case(tiny_dir)
    model_version_register(project=run.project, name="rm", kind="reward", artifact_path=tiny_dir, make_current=True)
    dtypes = []

    def load(loader):
        def wrapped(*args, **kwargs):
            model = loader(*args, **kwargs)
            dtypes.append(next(model.parameters()).dtype)
            return model
        return wrapped

    with mock.patch.object(models, "load_for_sampling", load(models.load_for_sampling)), \
            mock.patch.object(models, "load_reward_model", load(models.load_reward_model)):
        execute(executors.run_evaluate, run)
    assert dtypes == [torch.float32] * 3 and outputs() == after  # candidate, baseline, judge
