"""A retried training run resumes from the failed run's last checkpoint when it trains on the same
records (issue 18, H1: a retry used to start over from step 0 in a new directory)."""
from pathlib import Path

import pytest

from labelapp.models import Demonstration, TrainingRun
from labelapp.selectors import labels as selectors
from labelapp.services.runs import run_begin, run_create, run_finish, run_retry
from tests.conftest import add_member, make_project, make_prompt
from tests.workers.conftest import execute
from workers import executors
from workers.simulate import approve_demonstrations, simulate

pytestmark = pytest.mark.django_db
PARAMS = {"max_steps": 6, "save_steps": 2, "per_device_batch_size": 2, "max_length": 512, "save_total_limit": 1}


class Broke(RuntimeError):
    pass


@pytest.fixture
def project(tmp_path, settings, tiny_dir):
    settings.DATA_DIR = tmp_path
    project = make_project(base_model=tiny_dir)
    for i in range(4):
        make_prompt(project, text=f"Tell me about cats ({i}).", reference="Cats purr when they are happy.")
    simulate(project=project, annotators=2, queues=["write"])
    approve_demonstrations(project)  # SFT trains on approved demonstrations
    return project


def failed_at_step_5(project) -> TrainingRun:
    """An SFT run that dies at step 5 (checkpoint-4 written), recorded failed like the worker does."""
    run = run_create(project=project, kind="sft", params=PARAMS)
    run, token = run_begin(run_id=run.pk)

    def progress(step, total, metrics):
        if step == 5:
            raise Broke("the GPU fell off the bus")

    with pytest.raises(Broke):
        executors.run_sft(run, progress)
    run_finish(run_id=run.pk, token=token, status="failed", error="Broke")
    assert Path(run.output_dir, "checkpoint-4").is_dir()
    return run


def test_a_retry_of_a_failed_run_resumes_from_its_checkpoint(project):
    admin = add_member(project, role="admin")
    failed = failed_at_step_5(project)
    retry = run_retry(run_id=failed.pk, user=admin)
    finished = execute(executors.run_sft, retry)
    assert finished.status == "succeeded" and finished.output_model is not None
    assert finished.result["resumed_from"] == str(Path(retry.output_dir, "checkpoint-4"))
    assert finished.result["global_step"] == 6
    assert Path(failed.output_dir, "checkpoint-4").is_dir()  # the failed run's own checkpoint is left as it was


def test_a_retry_on_changed_data_starts_over(project):
    from rlhf.data import Demonstration as Record

    admin = add_member(project, role="admin")
    failed = failed_at_step_5(project)
    before = Demonstration.objects.count()
    make_prompt(project, text="A new prompt about dogs.", reference="Dogs are loyal animals.")
    simulate(project=project, annotators=1, queues=["write"])
    approve_demonstrations(project)
    assert Demonstration.objects.count() > before  # new (approved) demonstrations since the failure
    retry = run_retry(run_id=failed.pk, user=admin)
    demos = [Record(prompt=t, response=r) for _, t, r in selectors.training_demonstrations(project=project)]
    assert executors.resume_retried(retry, demos) == {}
    assert not list(Path(retry.output_dir).glob("checkpoint-*"))
