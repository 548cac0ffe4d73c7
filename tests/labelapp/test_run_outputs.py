"""A run's outputs are keyed by the run in the database (migration 0013_faults_run_outputs): writing one
twice is refused, with nothing half-written; run_finish stores them only for the token holder."""
import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from labelapp.models import Completion, EvaluationTask, ModelVersion, RankingTask
from labelapp.services.projects import completion_create, evaluation_task_create, ranking_task_create
from labelapp.services.runs import RunLost, model_version_register, run_begin, run_create, run_finish
from tests.conftest import make_prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(project, monkeypatch):
    monkeypatch.setattr("labelapp.services.runs.enqueue", lambda run: None)
    return run_create(project=project, kind="sample", params={})


@pytest.fixture
def policy(project):
    return model_version_register(project=project, name="policy", kind="policy", artifact_path="/p")


def test_a_completion_is_written_once_per_run_prompt_model_and_sample(project, run, policy):
    prompt = make_prompt(project)
    completion_create(prompt=prompt, text="one", model_version=policy, run=run, sample_index=0)
    completion_create(prompt=prompt, text="two", model_version=policy, run=run, sample_index=1)
    with pytest.raises(ValidationError, match="completion_once_per_run_item|already exists"):
        completion_create(prompt=prompt, text="again", model_version=policy, run=run, sample_index=1)
    assert Completion.objects.filter(run=run).count() == 2
    # without a run (imported, hand-written) nothing is keyed
    completion_create(prompt=prompt, text="one", model_version=policy)
    completion_create(prompt=prompt, text="one", model_version=policy)


def test_a_ranking_task_is_written_once_per_run_and_prompt(project, run, policy):
    prompt = make_prompt(project)
    first = [completion_create(prompt=prompt, text=t, model_version=policy, run=run, sample_index=i)
             for i, t in enumerate("ab")]
    ranking_task_create(project=project, prompt=prompt, completions=first, run=run)
    others = [completion_create(prompt=prompt, text=t, model_version=policy) for t in "cd"]
    with pytest.raises(IntegrityError, match="rankingtask_once_per_run_prompt"):
        ranking_task_create(project=project, prompt=prompt, completions=others, run=run)
    assert RankingTask.objects.filter(prompt=prompt).count() == 1  # the refused one left no task behind


def test_an_evaluation_task_is_written_once_per_run_and_prompt(project, run, policy):
    baseline = model_version_register(project=project, name="baseline", kind="policy", artifact_path="/b")
    prompt = make_prompt(project, split="validation")
    args = dict(project=project, prompt=prompt, model_a=policy, model_b=baseline, text_a="A", text_b="B", run=run)
    evaluation_task_create(**args)
    with pytest.raises(ValidationError):
        evaluation_task_create(**args)
    assert EvaluationTask.objects.filter(run=run).count() == 1
    assert Completion.objects.filter(prompt=prompt).count() == 2  # the refused one's completions rolled back


def test_a_run_registers_one_model(project, run):
    model_version_register(project=project, name="m1", kind="policy", artifact_path="/1", run=run, make_current=True)
    with pytest.raises(ValidationError, match="modelversion_once_per_run|already exists"):
        model_version_register(project=project, name="m2", kind="policy", artifact_path="/2", run=run,
                               make_current=True)
    assert list(ModelVersion.objects.filter(project=project).values_list("name", "is_current")) == [("m1", True)]


def test_run_finish_stores_outputs_only_for_the_token_holder_and_only_on_success(project, run):
    run, token = run_begin(run_id=run.pk)
    calls = []

    def store(locked, result):
        calls.append(locked.pk)
        result["stored"] = True
        return model_version_register(project=project, name="out", kind="policy", artifact_path="/o", run=locked)

    with pytest.raises(RunLost):
        run_finish(run_id=run.pk, token="someone-else", status="succeeded", store=store)
    assert calls == []
    finished = run_finish(run_id=run.pk, token=token, status="succeeded", result={"n": 1}, store=store)
    assert calls == [run.pk] and finished.result == {"n": 1, "stored": True}
    assert finished.output_model.name == "out" and finished.output_model.run_id == run.pk


def test_a_failed_or_cancelled_run_stores_nothing(project, run):
    run, token = run_begin(run_id=run.pk)
    finished = run_finish(run_id=run.pk, token=token, status="failed", error="boom",
                          store=lambda locked, result: pytest.fail("stored for a failed run"))
    assert finished.status == "failed" and finished.output_model is None
