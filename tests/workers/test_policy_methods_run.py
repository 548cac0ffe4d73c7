"""A GRPO / RLOO run through the worker's executor with tiny models: the run's kind picks the method, the
round's reward model scores the rollouts, the new policy is registered under the method's name; a bad
setting fails the run before any model loads and registers nothing."""
import pytest

from labelapp.models import ModelVersion, TrainingRun
from tests.conftest import make_project, make_prompt
from tests.workers.conftest import execute
from workers import executors

pytestmark = pytest.mark.django_db

TINY = {"max_steps": 1, "rollout_batch_size": 4, "mini_batch_size": 4, "num_samples": 2, "max_new_tokens": 6,
        "save_steps": 0, "device": "cpu"}


@pytest.fixture
def project_with_rm(tmp_path, settings, tiny_dir):
    from rlhf.models import load_tokenizer
    from rlhf.testing import build_tiny_llama

    settings.DATA_DIR = tmp_path
    project = make_project(k=2, overlap=1, base_model=tiny_dir)
    for i in range(3):
        make_prompt(project, text=f"Tell me a fact about cats, number {i}.")
    rm_dir = tmp_path / "rm"
    tok = load_tokenizer(tiny_dir)
    build_tiny_llama(tok, seed=7, for_reward=True).save_pretrained(rm_dir, safe_serialization=True)
    tok.save_pretrained(rm_dir)
    reward = ModelVersion.objects.create(project=project, name="rm", kind=ModelVersion.Kind.REWARD,
                                         artifact_path=str(rm_dir))
    return project, reward


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
def test_policy_method_run_registers_its_policy(project_with_rm, kind):
    project, reward = project_with_rm
    run = TrainingRun.objects.create(project=project, kind=kind, params={**TINY, "reward_model_id": reward.pk})
    finished = execute(executors.run_ppo, run)  # as the worker does: the policy is stored with run_finish
    model = finished.output_model
    assert model.name == f"{kind}-{run.pk}" and model.is_current  # outside a round: current at once
    assert model.training_data["reward_model_id"] == reward.pk
    assert finished.result["prompts"] == 3 and "objective/reward" in finished.result
    assert ("loss/kl" in finished.result) == (kind == "grpo")  # GRPO: KL as a loss term by default


def test_bad_policy_setting_fails_clearly_and_registers_nothing(project_with_rm):
    project, reward = project_with_rm
    run = TrainingRun.objects.create(project=project, kind="rloo", status=TrainingRun.Status.RUNNING,
                                     params={**TINY, "num_samples": 3, "reward_model_id": reward.pk})
    with pytest.raises(ValueError, match="must be a multiple of num_samples"):
        executors.run_ppo(run, lambda *a: None)
    assert not ModelVersion.objects.filter(kind=ModelVersion.Kind.POLICY).exists()
