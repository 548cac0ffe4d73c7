"""The whole loop with a tiny model, a real Celery worker, real Redis and PostgreSQL:
demonstrations → SFT → ranking tasks → rankings → reward model → PPO → a new policy whose
samples are new ranking tasks."""
import pytest

from labelapp.models import Completion, EvaluationTask, ModelVersion, RankingTask, Round, TrainingRun
from labelapp.services.rounds import round_advance, round_start
from tests.conftest import add_member, make_project, make_prompt
from tests.workers.conftest import wait_for
from workers.simulate import approve_demonstrations, simulate

pytestmark = pytest.mark.django_db(transaction=True)

TINY_TRAINING = {"max_steps": 2, "per_device_batch_size": 2, "save_steps": 0, "max_length": 512}
PPO = {"max_steps": 1, "rollout_batch_size": 2, "mini_batch_size": 2, "per_device_batch_size": 2,
       "max_new_tokens": 8, "ppo_epochs": 1, "save_steps": 0}


@pytest.fixture
def tiny_project(tmp_path):
    from rlhf.testing import tiny_checkpoint

    project = make_project(k=2, overlap=1)
    project.base_model = tiny_checkpoint(tmp_path / "tiny")
    project.save()
    admin = add_member(project, role="admin")
    for i in range(3):
        make_prompt(project, text=f"Tell me a fact about cats, number {i}.", category="open_qa",
                    reference="Cats sleep for most of the day and purr when they are happy.")
    for i in range(2):
        make_prompt(project, text=f"Held-out question {i} about dogs?", split="validation")
    return project, admin


def stage(rnd):
    rnd.refresh_from_db()
    return rnd.stage


def test_a_round_runs_end_to_end(tiny_project, start_worker):
    project, admin = tiny_project
    simulate(project=project, annotators=2, queues=["write"])
    approve_demonstrations(project)  # SFT trains on approved demonstrations
    worker = start_worker()
    rnd = round_start(project=project, user=admin, method="ppo", params={
        "prompts": 2, "min_rankings": 2, "sft": TINY_TRAINING, "reward": TINY_TRAINING, "policy": PPO,
        "sample": {"max_new_tokens": 8}, "evaluation": {"max_new_tokens": 8},
        "gate": {"min_reward_win_rate": None},  # tiny random models: promote whatever the win-rate (gate: its own tests)
    })
    assert rnd.stage == Round.Stage.SFT
    wait_for(lambda: stage(rnd) in ("ranking", "failed"), 240, "SFT and sampling", worker)
    assert rnd.stage == "ranking", rnd.error
    sft = rnd.sft_policy
    assert sft.parent is None and sft.training_data["demonstrations"]["count"] == 3
    assert RankingTask.objects.filter(project=project, completions__model_version=sft).distinct().count() == 2

    simulate(project=project, annotators=2, queues=["rank"])
    round_advance(round_id=rnd.pk)
    wait_for(lambda: stage(rnd) in ("done", "failed"), 300, "reward model, PPO and resampling", worker)
    assert rnd.stage == "done", rnd.error

    assert rnd.reward_model.kind == "reward" and rnd.reward_model.training_data["pairs"] >= 2
    policy = rnd.new_policy
    assert policy.parent_id == sft.pk and policy.is_current
    assert ModelVersion.objects.get(pk=sft.pk).is_current is False
    assert Completion.objects.filter(model_version=policy).exists()
    assert RankingTask.objects.filter(completions__model_version=policy).distinct().count() == 2
    kinds = list(rnd.runs.order_by("created_at").values_list("kind", "status"))
    assert kinds == [("sft", "succeeded"), ("sample", "succeeded"), ("reward", "succeeded"),
                     ("ppo", "succeeded"), ("sample", "succeeded"), ("evaluate", "succeeded")]
    evaluations = EvaluationTask.objects.filter(round=rnd)
    assert evaluations.count() == 2  # one per held-out prompt
    assert all(t.model_a_id == policy.pk and t.model_b_id == sft.pk for t in evaluations)
    assert all(t.reward_a is not None and t.reward_b is not None for t in evaluations)
    # each answer keeps how it ended, so a cut-off one is marked on the compare page
    for t in evaluations:
        for completion in (t.completion_a, t.completion_b):
            assert completion.decoding["finish_reason"] in ("eos", "length")
            assert 0 < completion.decoding["completion_tokens"] <= 8 and completion.decoding["max_new_tokens"] == 8
            assert (completion.cut_off_at == 8) == (completion.decoding["finish_reason"] == "length")
    evaluate = TrainingRun.objects.get(round=rnd, kind="evaluate")
    assert 0 <= evaluate.result["auto_win_rate"] <= 1
    ppo = TrainingRun.objects.get(round=rnd, kind="ppo")
    assert ppo.metrics and "objective/kl" in ppo.metrics[-1] and ppo.heartbeat_at
