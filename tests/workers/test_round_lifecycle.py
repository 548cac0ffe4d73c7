"""A round's lifecycle around its policies and runs: SFT only when the demonstrations changed since the
current policy's SFT ancestor, a passing gate that never drops a newer current policy, the evaluation
scored by the round's reward model, whole resumed checkpoints, and a cancel that wins over a finishing run."""
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction
from django.utils import timezone

from labelapp.models import Demonstration, EvaluationTask, ModelVersion, Round, TrainingRun
from labelapp.selectors import labels as selectors
from labelapp.services.rounds import demonstrations_hash, round_advance, round_cancel, round_promote, round_start
from labelapp.services.runs import model_version_register, run_begin, run_cancel, run_create, run_finish
from tests.conftest import add_member, make_project, make_prompt, make_user
from tests.workers.conftest import execute
from workers import executors

pytestmark = pytest.mark.django_db


def approved_demonstrations(project, n: int) -> None:
    author = add_member(project)
    for i in range(n):
        Demonstration.objects.create(prompt=make_prompt(project), author=author, text=f"An answer {i}.",
                                     review_status="approved")


def policy(project, name: str, parent=None, make_current=False, **training_data) -> ModelVersion:
    return model_version_register(project=project, name=name, kind="policy", artifact_path=f"/m/{name}",
                                  parent=parent, training_data=training_data, make_current=make_current)


# ---- SFT only when the demonstrations changed ------------------------------------------------


@pytest.mark.parametrize("method, training_data", [
    ("ppo", {"prompts": 3, "reward_model_id": 7}),  # what run_ppo records
    ("dpo", {"rankings": {"ids": [1], "count": 1, "hash": "r"}, "pairs": 1, "min_rank_gap": 1}),  # run_dpo's lineage
])
def test_a_round_after_a_promoted_rl_policy_skips_sft_on_unchanged_demonstrations(sent, method, training_data):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    approved_demonstrations(project, 3)
    snapshot = selectors.demonstration_snapshot(project=project)
    sft = policy(project, "sft-1", demonstrations={**snapshot, "include_pending": False})
    rl = policy(project, f"{method}-2", parent=sft, make_current=True, **training_data)

    rnd = round_start(project=project, user=admin, method=method)
    assert rnd.stage == Round.Stage.SAMPLING and not rnd.runs.filter(kind="sft").exists()
    assert rnd.sft_policy == rl and rnd.runs.get().input_model == rl

    round_cancel(round_id=rnd.pk, user=admin)
    approved_demonstrations(project, 1)  # the demonstrations changed since sft-1: SFT again, from the RL policy
    rnd = round_start(project=project, user=admin, method=method)
    assert rnd.stage == Round.Stage.SFT and rnd.runs.get(kind="sft").input_model == rl


def test_the_demonstrations_hash_stops_at_a_cycle_of_parents():
    project = make_project()
    first = policy(project, "a")
    second = policy(project, "b", parent=first)
    ModelVersion.objects.filter(pk=first.pk).update(parent=second)  # a broken lineage must not loop forever
    assert demonstrations_hash(ModelVersion.objects.get(pk=second.pk)) is None
    assert demonstrations_hash(None) is None


# ---- the promotion gate ----------------------------------------------------------------------


def evaluated_round(project, wins: int, losses: int, reward_model=None):
    """A PPO round whose evaluation run has succeeded: its new policy (not current) beat its parent (current)
    on `wins` held-out prompts and lost on `losses`."""
    from labelapp.round_settings import effective_defaults
    from labelapp.services.projects import evaluation_task_create

    parent = policy(project, "sft-1", make_current=True)
    new = policy(project, "ppo-2", parent=parent)
    rnd = Round.objects.create(project=project, number=1, stage="evaluation", params=effective_defaults("ppo"),
                               sft_policy=parent, new_policy=new, reward_model=reward_model)
    for i in range(wins + losses):
        evaluation_task_create(project=project, prompt=make_prompt(project, split="validation"), model_a=new,
                               model_b=parent, text_a=f"new {i}", text_b=f"old {i}", round=rnd,
                               reward_a=1.0 if i < wins else -1.0, reward_b=0.0)
    TrainingRun.objects.create(project=project, round=rnd, kind="evaluate", status="succeeded", input_model=new,
                               finished_at=timezone.now())
    return rnd, parent, new


def test_a_passing_gate_does_not_replace_a_newer_current_policy(sent):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    rnd, _parent, new = evaluated_round(project, wins=4, losses=0)  # passes the win-rate check
    newer = policy(project, "dpo-9", make_current=True)  # made current while the round ran

    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == Round.Stage.HELD and rnd.gate["state"] == "held"
    assert ModelVersion.objects.get(project=project, kind="policy", is_current=True) == newer
    assert [c["name"] for c in rnd.gate["checks"] if c["passed"] is False] == ["parent_current"]
    assert "the current policy is now dpo-9, not sft-1 (this round's starting point)" in rnd.gate["text"]
    with pytest.raises(ValidationError, match="The current policy is now dpo-9"):
        round_promote(round_id=rnd.pk, user=admin)
    assert not ModelVersion.objects.get(pk=new.pk).is_current


# ---- the evaluation's reward model -----------------------------------------------------------


def reward_model(project, name: str, make_current: bool) -> ModelVersion:
    return model_version_register(project=project, name=name, kind="reward", artifact_path=f"/m/{name}",
                                  make_current=make_current)


def test_the_evaluation_run_is_given_the_rounds_reward_model(sent):
    project = make_project()
    ours = reward_model(project, "reward-1", make_current=False)
    reward_model(project, "reward-2", make_current=True)  # a newer one, trained since
    parent = policy(project, "sft-1", make_current=True)
    new = policy(project, "ppo-2", parent=parent)
    from labelapp.round_settings import effective_defaults

    rnd = Round.objects.create(project=project, number=1, stage="resampling", params=effective_defaults("ppo"),
                               sft_policy=parent, new_policy=new, reward_model=ours)
    TrainingRun.objects.create(project=project, round=rnd, kind="sample", status="succeeded", input_model=new,
                               finished_at=timezone.now())
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == Round.Stage.EVALUATION
    assert rnd.runs.get(kind="evaluate").params["reward_model_id"] == ours.pk


@pytest.fixture
def scored_with(monkeypatch):
    """run_evaluate without models: answers are stubs, and the reward model it loads is recorded."""
    import rlhf.models
    import rlhf.reward
    import rlhf.sampling

    loaded: list[str] = []
    monkeypatch.setattr(rlhf.models, "load_for_sampling", lambda path, **kw: path)
    monkeypatch.setattr(rlhf.models, "load_tokenizer", lambda path, **kw: path)
    monkeypatch.setattr(rlhf.sampling, "sample", lambda model, tok, prompts, k, **kw: [
        SimpleNamespace(completion=f"{model} answer {i}", finish_reason="eos", completion_tokens=3)
        for i in range(len(prompts))])
    monkeypatch.setattr(rlhf.models, "load_reward_model", lambda path, **kw: loaded.append(path) or path)
    monkeypatch.setattr(rlhf.reward, "score", lambda rm, tok, items: SimpleNamespace(tolist=lambda: [0.0] * len(items)))
    return loaded


def test_the_evaluation_scores_with_the_rounds_reward_model_else_the_current_one(tmp_path, settings, sent,
                                                                                   scored_with):
    settings.DATA_DIR = tmp_path
    project = make_project()
    make_prompt(project, split="validation")
    ours = reward_model(project, "reward-1", make_current=False)
    current = reward_model(project, "reward-2", make_current=True)
    parent = policy(project, "sft-1", make_current=True)
    new = policy(project, "ppo-2", parent=parent)

    run = run_create(project=project, kind="evaluate", input_model=new,
                     params={"baseline_id": parent.pk, "reward_model_id": ours.pk})
    assert execute(executors.run_evaluate, run).status == "succeeded"
    assert scored_with == [ours.artifact_path]
    standalone = run_create(project=project, kind="evaluate", input_model=new, params={"baseline_id": parent.pk})
    execute(executors.run_evaluate, standalone)
    assert scored_with == [ours.artifact_path, current.artifact_path]
    assert EvaluationTask.objects.filter(reward_a=0.0).count() == 2


# ---- a resumed checkpoint is copied whole or not at all --------------------------------------


def test_a_checkpoint_copy_that_breaks_off_leaves_no_checkpoint_to_resume_from(tmp_path, settings, monkeypatch):
    import json

    from rlhf.contract import data_hash, last_checkpoint

    settings.DATA_DIR = tmp_path
    project = make_project()
    records = [{"prompt": "p", "response": "r"}]
    old = TrainingRun.objects.create(project=project, kind="sft", status="failed")
    checkpoint = Path(old.output_dir, "checkpoint-4")
    checkpoint.mkdir(parents=True)
    for name in ("trainer_state.json", "model.safetensors", "optimizer.pt"):
        (checkpoint / name).write_text(name)
    Path(old.output_dir, executors.INPUTS_FILE).write_text(json.dumps({"data_hash": data_hash(records)}))
    retry = TrainingRun.objects.create(project=project, kind="sft", status="running", retry_of=old)
    out = Path(retry.output_dir)

    real = executors._link_or_copy

    def breaks_off(src, dst):
        if Path(src).name == "optimizer.pt":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(executors, "_link_or_copy", breaks_off)
    with pytest.raises(OSError):
        executors.resume_retried(retry, records)
    assert last_checkpoint(out) is None  # no half checkpoint-4 that a later attempt would trust
    assert sorted(p.name for p in out.iterdir()) == [executors.INPUTS_FILE]

    monkeypatch.setattr(executors, "_link_or_copy", real)
    (out / "checkpoint-4").mkdir()  # a half copy under the final name, left by an older worker
    (out / "checkpoint-4" / "model.safetensors").write_text("half")
    assert executors.resume_retried(retry, records) == {"resume": True}
    assert last_checkpoint(out) == str(out / "checkpoint-4")
    assert sorted(p.name for p in (out / "checkpoint-4").iterdir()) == [
        "model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert (out / "checkpoint-4" / "model.safetensors").read_text() == "model.safetensors"


# ---- cancel while a run finishes -------------------------------------------------------------


def test_a_run_cancelled_after_its_last_step_stores_nothing(sent):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    rnd = round_start(project=project, user=admin)  # no demonstrations: sampling
    run, token = run_begin(run_id=rnd.runs.get().pk)
    run_cancel(run_id=run.pk, user=admin)  # asked after the executor's last progress report
    stored = []

    def store(locked, result):
        stored.append(locked.pk)
        return policy(project, "sampled")

    finished = run_finish(run_id=run.pk, token=token, status="succeeded", result={"tasks": 3}, store=store)
    assert finished.status == "cancelled" and finished.output_model is None and stored == []
    assert not ModelVersion.objects.filter(name="sampled").exists()
    assert round_advance(round_id=rnd.pk).stage == Round.Stage.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_round_while_its_run_finishes_skips_that_run(sent):
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL: run with DATABASE_URL=postgres://…")
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    rnd = round_start(project=project, user=admin)
    run, token = run_begin(run_id=rnd.runs.get().pk)
    errors: list[BaseException] = []

    def cancel():
        try:
            round_cancel(round_id=rnd.pk, user=admin)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=cancel)
    with transaction.atomic():
        run_finish(run_id=run.pk, token=token, status="succeeded")  # holds the run's row lock until commit
        thread.start()
        deadline = time.monotonic() + 20
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:  # until the cancel waits on that lock
                cursor.execute("SELECT pg_stat_clear_snapshot()")  # else one snapshot per transaction
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND wait_event_type = 'Lock'")
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("round_cancel never waited for the finishing run")
    thread.join(timeout=30)
    assert not errors, errors
    assert Round.objects.get(pk=rnd.pk).stage == Round.Stage.CANCELLED
    assert TrainingRun.objects.get(pk=run.pk).status == "succeeded"


def test_an_evaluation_of_a_policy_without_parent_is_against_the_base_model(tmp_path, settings, sent, scored_with):
    """A first round with no current policy and no demonstrations trains its policy from the base model;
    its evaluation then compares against that base model instead of failing at the round's last stage."""
    from labelapp.models import ModelVersion

    settings.DATA_DIR = tmp_path
    project = make_project()
    make_prompt(project, split="validation")
    new = policy(project, "ppo-1")
    run = run_create(project=project, kind="evaluate", input_model=new, params={})
    assert execute(executors.run_evaluate, run).status == "succeeded"
    base = ModelVersion.objects.get(project=project, artifact_path=project.base_model)
    task = EvaluationTask.objects.get()
    assert {task.model_a_id, task.model_b_id} == {new.pk, base.pk}


def test_a_requeued_run_whose_labels_changed_starts_over(tmp_path, settings):
    """A run re-queued after its worker was lost resumes from its own checkpoints only if it reads the same
    records again; if labels changed meanwhile, those checkpoints are removed and it starts from step 0."""
    import json

    from rlhf.contract import data_hash, last_checkpoint

    settings.DATA_DIR = tmp_path
    project = make_project()
    first = [{"prompt": "p", "response": "r"}]
    changed = first + [{"prompt": "p2", "response": "r2"}]
    run = TrainingRun.objects.create(project=project, kind="sft", status="running", params={"resume": True})
    out = Path(run.output_dir)
    checkpoint = out / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (out / executors.INPUTS_FILE).write_text(json.dumps({"data_hash": data_hash(first)}))
    assert executors.resume_retried(run, first) == {}  # same records: the run's own resume stands
    assert last_checkpoint(out) is not None
    assert executors.resume_retried(run, changed) == {"resume": False}
    assert last_checkpoint(out) is None and not checkpoint.exists()
    assert json.loads((out / executors.INPUTS_FILE).read_text())["data_hash"] == data_hash(changed)
