"""Which pairs of each ranking the reward model and DPO train on (`min_rank_gap`), through the executors
with a tiny model: the filter reaches the trainer and the lineage records it. Also DPO's loss settings
(`sft_weight`, `ld_alpha`): a bad value fails the run clearly and registers nothing."""
import pytest
from django.core.exceptions import ValidationError

from labelapp.models import ModelVersion, TrainingRun
from tests.conftest import make_project, make_prompt, make_task
from tests.workers.conftest import execute
from workers import executors
from workers.simulate import simulate

pytestmark = pytest.mark.django_db

TINY = {"max_steps": 1, "per_device_batch_size": 2, "save_steps": 0, "max_length": 512}


@pytest.fixture
def ranked(tmp_path, settings, tiny_dir):
    """Three 4-way rankings (rule oracle, no noise, no ties)."""
    settings.DATA_DIR = tmp_path
    project = make_project(k=4, overlap=1, base_model=tiny_dir)
    for i in range(3):
        prompt = make_prompt(project, text=f"Tell me a fact about cats, number {i}.",
                             reference="Cats sleep for most of the day and purr when they are happy.")
        make_task(project, prompt, texts=["Cats sleep most of the day and purr when happy.", "Cats sleep a lot.",
                                          "Cats bark.", "No."])
    simulate(project=project, annotators=1, queues=["rank"], oracle="rule", agreement=1.0)
    return project


def test_preference_pairs_keep_only_ranks_far_enough_apart(ranked):
    every, selected = executors.preference_pairs(ranked)
    assert len(every) == 3 * 6 and len(selected.rankings) == 3
    best_vs_worst, same = executors.preference_pairs(ranked, 3)
    assert same.rankings == selected.rankings and len(best_vs_worst) == 3
    assert {(p.chosen, p.rejected) for p in best_vs_worst} == {("Cats sleep most of the day and purr when happy.", "No.")}
    assert len(executors.preference_pairs(ranked, 2)[0]) == 3 * 3


def run_of(project, kind, params):
    return TrainingRun.objects.create(project=project, kind=kind, params=params, status=TrainingRun.Status.RUNNING)


@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_reward_and_dpo_runs_train_on_the_filtered_pairs_and_record_the_gap(ranked, kind):
    step = executors.run_reward if kind == "reward" else executors.run_dpo
    finished = execute(step, run_of(ranked, kind, {**TINY, "min_rank_gap": 2}))
    assert finished.result["pairs"] == 9
    model = finished.output_model
    assert model.training_data["pairs"] == 9 and model.training_data["min_rank_gap"] == 2 and model.run == finished
    with pytest.raises(ValidationError, match="there are (0|none yet) with min_rank_gap 4"):
        step(run_of(ranked, kind, {**TINY, "min_rank_gap": 4}), lambda *a: None)


def test_studio_reward_runs_start_their_head_from_the_probe_unless_the_round_says_otherwise(ranked):
    from rlhf.contract import read_metadata
    from rlhf.dpo import DPORunConfig
    from rlhf.reward import RewardRunConfig

    assert executors.make_config(RewardRunConfig, run_of(ranked, "reward", dict(TINY))).head_init == "probe"
    assert not hasattr(executors.make_config(DPORunConfig, run_of(ranked, "dpo", dict(TINY))), "head_init")
    finished = execute(executors.run_reward, run_of(ranked, "reward", dict(TINY)))
    meta = read_metadata(finished.output_dir)
    record = meta["head_init"]  # fitted on the pairs that train (the held-out split left out)
    assert record["mode"] == "probe" and record["pairs"] == meta["num_pairs"] == 18 - meta["num_eval_pairs"] < 18
    assert record["answers"] == 12
    finished = execute(executors.run_reward, run_of(ranked, "reward", {**TINY, "head_init": "random"}))
    assert read_metadata(finished.output_dir)["head_init"] == {"mode": "random"}


def test_ppo_refuses_a_pair_setting_it_cannot_use(ranked):
    from rlhf.ppo import PPOConfig

    with pytest.raises(ValidationError, match=r"Unknown PPOConfig settings: \['min_rank_gap'\]"):
        executors.make_config(PPOConfig, run_of(ranked, "ppo", {"min_rank_gap": 2}))


def test_dpo_loss_settings_train_and_bad_ones_register_nothing(ranked):
    finished = execute(executors.run_dpo, run_of(ranked, "dpo", {**TINY, "sft_weight": 1.0, "ld_alpha": 0.5}))
    assert finished.result["pairs"] == 18 and finished.output_model is not None
    versions = ModelVersion.objects.count()
    bad = run_of(ranked, "dpo", {**TINY, "ld_alpha": 2})
    with pytest.raises(ValueError, match=r"ld_alpha must lie in \[0, 1\] \(got 2\)"):
        executors.run_dpo(bad, lambda *a: None)
    assert ModelVersion.objects.count() == versions


@pytest.mark.parametrize("kind", ["reward", "dpo"])
def test_runs_mix_ai_labels_at_their_weight_and_record_the_label_sets(ranked, kind):
    from labelapp.models import RankingTask
    from labelapp.services.quality import ai_label_record

    task = RankingTask.objects.filter(project=ranked).first()
    ids = sorted(task.completions.values_list("id", flat=True))
    judge = ModelVersion.objects.create(project=ranked, name="rm-0", kind="reward")
    label = ai_label_record(task_id=task.pk, source="reward_model", model_version_id=judge.pk,
                            order=[[i] for i in ids], scores={})
    ranked.ai_label_weight = 0.5
    ranked.save()
    step = executors.run_reward if kind == "reward" else executors.run_dpo
    data = execute(step, run_of(ranked, kind, TINY)).output_model.training_data
    assert data["pairs"] == 3 * 6 + 6 and data["pair_sources"] == {"ai": 6, "human": 18}
    assert data["ai_labels"]["ids"] == [label.pk] and data["ai_label_weight"] == 0.5
    # "none" was asked, but AI pairs need a weighted loss: the run says it trained in "weight" mode
    weighting = data["label_weighting"]
    assert weighting["label_weights"] == "weight" and len(weighting["weights_hash"]) == 64


def test_a_reward_run_scores_the_tasks_when_active_learning_is_on(ranked):
    from labelapp.models import RankingTask

    ranked.active_learning = True
    ranked.save()
    finished = execute(executors.run_reward, run_of(ranked, "reward", TINY))
    executors.after_finish(finished)  # as the worker does once the run is stored
    finished.refresh_from_db()
    assert finished.result["uncertainty"] == {"tasks": 3} and finished.result["pairs"] == 18
    assert set(RankingTask.objects.filter(project=ranked).values_list("uncertainty_model", flat=True)) == {
        finished.output_model_id}
    ranked.active_learning = False
    ranked.save()
    plain = execute(executors.run_reward, run_of(ranked, "reward", TINY))
    executors.after_finish(plain)
    plain.refresh_from_db()
    assert "uncertainty" not in plain.result
