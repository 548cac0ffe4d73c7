"""Round guardrails (issue 16): a round's own tasks are served before the backlog, the waiting stage
counts them, settings are the effective ones and checked before anything is written, SFT trains on
approved demonstrations, and a promotion gate holds a policy that loses to its parent."""
import pytest
from django.core.exceptions import ValidationError

from labelapp.models import Queue, RankingTask, Round, TrainingRun
from labelapp.services.labels import ranking_submit
from labelapp.services.queue import task_claim
from labelapp.services.rounds import round_cancel, round_rankings, round_start
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user

pytestmark = pytest.mark.django_db


def rank_all(assignment, user):
    ids = list(assignment.ranking_task.completions.values_list("id", flat=True))
    return ranking_submit(assignment_id=assignment.pk, user=user, order=[[i] for i in ids])


def test_a_rounds_own_samples_are_served_before_an_older_backlog(tmp_path, settings, tiny_dir, sent):
    """The round's sampling run (the real executor, a tiny model) marks its tasks with the round and
    its priority; an annotator with 6 older backlog tasks gets the round's 3 tasks first, the waiting
    stage counts only those, and when the round ends they join the backlog again."""
    from tests.workers.conftest import execute
    from workers import executors

    settings.DATA_DIR = tmp_path
    project = make_project(k=2, overlap=1, base_model=tiny_dir)
    admin = add_member(project, make_user(), role="admin")
    annotator = add_member(project)
    backlog = [make_task(project) for _ in range(6)]  # older, and with fewer labels than nothing: all 0
    for i in range(3):
        make_prompt(project, text=f"Name a colour, number {i}.")
    rnd = round_start(project=project, user=admin, params={"prompts": 3, "min_rankings": 2, "priority": 7,
                                                           "sample": {"max_new_tokens": 2, "seed": 1}})
    run = rnd.runs.get(kind="sample")
    assert execute(executors.run_sample, run).result["tasks"] == 3  # as the worker does: outputs stored on finish
    own = set(RankingTask.objects.filter(round=rnd).values_list("id", flat=True))
    assert len(own) == 3 and set(RankingTask.objects.filter(round=rnd).values_list("priority", flat=True)) == {7}
    assert all(task.round_id is None and task.priority == 0 for task in RankingTask.objects.filter(pk__in=[t.pk for t in backlog]))

    served = []
    for _ in range(4):
        lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
        served.append(lease.ranking_task_id)
        rank_all(lease, annotator)
    assert set(served[:3]) == own  # the round's tasks first, in spite of the older backlog
    assert served[3] == backlog[0].pk  # then the backlog, oldest first
    assert round_rankings(rnd) == 3  # the backlog ranking is not one of this round's

    round_cancel(round_id=rnd.pk, user=admin)
    assert set(RankingTask.objects.filter(round=rnd).values_list("priority", flat=True)) == {0}


@pytest.mark.parametrize("priority", ["high", 1.5, True, 5000, None])
def test_a_bad_priority_is_refused_and_nothing_is_created(sent, priority):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    with pytest.raises(ValidationError, match="'priority' must be a whole number"):
        round_start(project=project, user=admin, params={"priority": priority})
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and sent == []


def test_the_waiting_stage_counts_the_rounds_own_tasks_and_names_who_is_on_them(client, sent):
    """k / n counts rankings of tasks whose `round` is this round (a backlog ranking made meanwhile
    does not count), and the line names whoever holds a lease on one of them now."""
    from django.urls import reverse

    from labelapp.services.projects import ranking_task_create

    project = make_project(k=2, overlap=2)
    admin = add_member(project, make_user("chief"), role="admin")
    ann1, ann2 = add_member(project, make_user("ann1")), add_member(project, make_user("ann2"))
    backlog = make_task(project)
    rnd = Round.objects.create(project=project, number=1, stage="ranking", params={"min_rankings": 3, "priority": 10})
    own = [make_task(project) for _ in range(2)]
    RankingTask.objects.filter(pk__in=[t.pk for t in own]).update(round=rnd, priority=10)
    other = make_project(k=2)
    stray = make_task(other)
    with pytest.raises(ValidationError, match="The round belongs to another project"):
        ranking_task_create(project=other, prompt=stray.prompt, completions=list(stray.completions.all()), round=rnd)

    first = task_claim(project=project, user=ann1, queue=Queue.RANK)
    assert first.ranking_task_id == own[0].pk
    rank_all(first, ann1)
    held = task_claim(project=project, user=ann2, queue=Queue.RANK)  # ann2 holds the round's task, unranked
    assert held.ranking_task_id in {t.pk for t in own}
    RankingTask.objects.filter(pk=backlog.pk).update(ranking_count=1)  # a backlog label: not this round's
    client.force_login(admin)
    data = client.get(reverse("studio:status", args=[project.slug])).json()
    (row,) = data["rounds"]
    assert row["ranking"] == {"done": 1, "needed": 3, "text": "1 / 3 rankings of this round's tasks",
                              "working": [{"username": "ann2"}]}
    assert row["waiting_text"] == "1 / 3 rankings of this round's tasks · working on them now: ann2"
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    assert "1 / 3 rankings of this round&#x27;s tasks · working on them now: ann2" in page
    assert f'href="{reverse("labelapp:project", args=[project.slug])}" class="round-tasks"' in page


# ---- effective settings ----------------------------------------------------------------------


@pytest.mark.parametrize("params, method, message", [
    ({"reward": {"lerning_rate": 1e-4}}, "ppo", "reward.lerning_rate is not a setting (did you mean reward.learning_rate?)."),
    ({"sft": {"learning_rate": "fast"}}, "ppo", "sft.learning_rate must be a number (got 'fast')."),
    ({"sft": {"learning_rate": -1}}, "ppo", "sft.learning_rate must be a number greater than 0 (got -1)."),
    ({"sft": {"max_steps": 0}}, "ppo", "sft.max_steps must be -1 (use num_train_epochs) or a whole number of at least 1"),
    ({"sft": {"output_dir": "/tmp/x"}}, "ppo", "sft.output_dir is not a setting"),  # the worker decides paths
    ({"policy": {"beta": 0.1}}, "ppo", "policy.beta is not a setting"),  # a DPO setting on a PPO round
    ({"policy": {"rollout_batch_size": 16}}, "dpo", "policy.rollout_batch_size is not a setting"),
    ({"policy": {"mini_batch_size": 3}}, "ppo", "policy: mini_batch_size (3) must divide rollout_batch_size (16)."),
    ({"policy": {"ld_alpha": 2.0}}, "dpo", "policy: ld_alpha must lie in [0, 1] (got 2.0)."),
    ({"reward": {"length_control": "magic"}}, "ppo", "reward: length_control must be one of"),
    ({"reward": {"length_control": "balance", "length_balance_bins": 0}}, "dpo",
     "reward: length_balance_bins must be a whole number, 1 or more (got 0)."),
    ({"sample": {"temperature": 0}}, "ppo", "sample.temperature must be a number greater than 0 (got 0)."),
    ({"evaluation": {"prompts": True}}, "ppo", "evaluation.prompts must be a whole number (got True)."),
    ({"sample": {"quantize": "int4"}}, "ppo", "sample.quantize must be null or one of int8 (got 'int4')."),
    ({"sft": {"peft": "prefix_tuning"}, "reward": {"peft": "prompt_tuning"}}, "ppo",
     "reward: peft 'prompt_tuning' is not supported for the reward trainer"),
    ({"policy": {"peft": "ia3"}}, "ppo", "policy: peft 'ia3' is not supported for the ppo trainer"),
    ({"policy": {"num_samples": 1}}, "rloo", "policy: num_samples must be 2 or more for rloo"),
    ({"k": 12}, "ppo", "'k' must be null (the project's K) or a whole number from 2 to 9"),
    ({"sft": []}, "ppo", "'sft' must be an object of settings"),
])
def test_bad_settings_are_refused_with_their_path_and_nothing_is_created(sent, params, method, message):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    with pytest.raises(ValidationError) as caught:
        round_start(project=project, user=admin, method=method, params=params)
    assert any(m.startswith(message) for m in caught.value.messages), caught.value.messages
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and sent == []


def test_every_problem_is_reported_at_once():
    from labelapp.services.rounds import _clean_params

    with pytest.raises(ValidationError) as caught:
        _clean_params({"prompts": 0, "reward": {"lerning_rate": 1}, "policy": {"kl_coef": "x"}}, "ppo")
    assert len(caught.value.messages) == 3


def test_a_round_keeps_the_effective_settings_and_its_runs_get_them(sent):
    from labelapp.round_settings import effective_defaults

    project = make_project(k=3)
    admin = add_member(project, make_user(), role="admin")
    rnd = round_start(project=project, user=admin, method="dpo",
                      params={"policy": {"beta": 0.2}, "sample": {"max_new_tokens": 16}})
    defaults = effective_defaults("dpo")
    assert rnd.params["policy"] == {**defaults["policy"], "beta": 0.2}
    assert rnd.params["sft"] == defaults["sft"] and rnd.params["reward"]["min_rank_gap"] == 1
    run = rnd.runs.get()  # no demonstrations: sampling first
    assert run.params == {"max_new_tokens": 16, "temperature": 1.0, "prompts": 8, "k": 3}  # a null seed: drawn per run
    assert effective_defaults("ppo", project)["k"] == 3


def test_the_form_shows_every_default_and_refuses_bad_settings_by_name(client, sent):
    import json

    from django.urls import reverse

    project = make_project(k=3)
    admin = add_member(project, make_user("lead"), role="admin")
    client.force_login(admin)
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    box = page.split('id="round-settings"')[1].split(">", 1)[1].split("</textarea>")[0]
    import html

    shown = json.loads(html.unescape(box))
    assert shown["sft"]["learning_rate"] == 2e-4 and shown["reward"]["learning_rate"] == 1e-4
    assert shown["policy"]["kl_coef"] == 0.05 and shown["k"] == 3 and shown["priority"] == 10
    assert shown["evaluation"] == {"prompts": 8, "max_new_tokens": 64, "temperature": 0.7, "seed": 0, "quantize": None}
    assert "output_dir" not in shown["sft"] and "reward_model" not in shown["policy"]
    swap = json.loads(html.unescape(page.split('data-policy-defaults="')[1].split('"')[0]))
    assert swap["dpo"]["beta"] == 0.1 and swap["ppo"]["rollout_batch_size"] == 16

    shown["reward"]["lerning_rate"] = 1e-4
    shown["sft"]["learning_rate"] = "fast"
    response = client.post(reverse("studio:round_start", args=[project.slug]), {
        "method": "ppo", "prompts": "4", "min_rankings": "2", "settings": json.dumps(shown)})
    errors = html.unescape(response.content.decode().split('id="errors"')[1].split("</div>")[0])
    assert response.status_code == 400
    assert "reward.lerning_rate is not a setting (did you mean reward.learning_rate?)." in errors
    assert "sft.learning_rate must be a number (got 'fast')." in errors
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and sent == []

    del shown["reward"]["lerning_rate"]
    shown["sft"]["learning_rate"] = 3e-4
    response = client.post(reverse("studio:round_start", args=[project.slug]), {
        "method": "ppo", "prompts": "4", "min_rankings": "2", "settings": json.dumps(shown)})
    assert response.status_code == 302
    assert Round.objects.get().params["sft"]["learning_rate"] == 3e-4


# ---- SFT on approved demonstrations ----------------------------------------------------------


def _demonstrations(project, approved: int, pending: int, rejected: int = 0):
    from labelapp.models import Demonstration

    author = add_member(project)
    made = []
    for status, count in (("approved", approved), ("pending", pending), ("rejected", rejected)):
        for _ in range(count):
            prompt = make_prompt(project)
            made.append(Demonstration.objects.create(prompt=prompt, author=author, text=f"An answer ({status}).",
                                                     review_status=status))
    return made


def test_sft_trains_on_approved_demonstrations_unless_the_round_allows_pending_ones(sent):
    from labelapp.selectors import labels as selectors
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    _demonstrations(project, approved=0, pending=2, rejected=1)
    assert selectors.training_demonstrations(project=project) == []
    assert len(selectors.training_demonstrations(project=project, include_pending=True)) == 2  # never the rejected

    first = round_start(project=project, user=admin)  # only pending ones: no SFT, straight to sampling
    assert first.stage == "sampling" and not first.runs.filter(kind="sft").exists()
    round_cancel(round_id=first.pk, user=admin)
    second = round_start(project=project, user=admin, params={"sft": {"include_pending": True, "max_steps": 3}})
    run = second.runs.get()
    assert second.stage == "sft" and run.kind == "sft"
    assert run.params["include_pending"] is True and run.params["max_steps"] == 3


def test_run_sft_uses_approved_demonstrations_and_records_it(tmp_path, settings, tiny_dir):
    from tests.workers.conftest import execute
    from workers import executors

    settings.DATA_DIR = tmp_path
    project = make_project(base_model=tiny_dir)
    approved = _demonstrations(project, approved=2, pending=3)[:2]
    tiny = {"max_steps": 1, "per_device_batch_size": 2, "save_steps": 0, "max_length": 256}
    run = TrainingRun.objects.create(project=project, kind="sft", status="queued", params=tiny)
    finished = execute(executors.run_sft, run)
    assert finished.result["demonstrations"] == 2 and finished.result["include_pending"] is False
    assert finished.output_model.training_data["demonstrations"]["ids"] == sorted(d.pk for d in approved)

    empty = make_project(base_model=tiny_dir)
    _demonstrations(empty, approved=0, pending=2)
    run = TrainingRun.objects.create(project=empty, kind="sft", status="running", params=tiny)
    with pytest.raises(ValidationError, match="no approved demonstrations to train on yet .review them first"):
        executors.run_sft(run, lambda *a: None)


def test_the_round_form_warns_when_few_demonstrations_are_approved(client):
    from django.urls import reverse

    project = make_project()
    admin = add_member(project, make_user("head"), role="admin")
    client.force_login(admin)
    made = _demonstrations(project, approved=3, pending=5)
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    warning = page.split('id="demonstration-warning">')[1].split("</p>")[0]
    assert "there are only 3 approved demonstrations (fewer than 8); 5 are pending review" in warning
    assert "sft.include_pending" in warning
    from labelapp.models import Demonstration

    Demonstration.objects.filter(pk__in=[d.pk for d in made]).update(review_status="approved")
    assert 'id="demonstration-warning"' not in client.get(reverse("studio:overview", args=[project.slug])).content.decode()


# ---- the promotion gate ----------------------------------------------------------------------


def evaluated_round(project, wins: int, losses: int, gate: dict | None = None, split: str = "validation",
                    long_wins: int = 0):
    """A PPO round whose evaluation run has finished: its new policy (not current) beat its parent (current)
    on `wins` held-out prompts and lost on `losses`, as scored by the round's reward model; in the first
    `long_wins` of its wins its answer is 300 characters longer than the parent's (elsewhere equal length)."""
    from django.utils import timezone

    from labelapp.round_settings import effective_defaults
    from labelapp.services.projects import evaluation_task_create
    from labelapp.services.runs import model_version_register

    parent = model_version_register(project=project, name="sft-1", kind="policy", artifact_path="/m/sft",
                                    make_current=True)
    new = model_version_register(project=project, name="ppo-2", kind="policy", artifact_path="/m/ppo", parent=parent)
    params = effective_defaults("ppo")
    params["gate"].update(gate or {})
    rnd = Round.objects.create(project=project, number=Round.objects.filter(project=project).count() + 1,
                               stage="evaluation", params=params, sft_policy=parent, new_policy=new)
    for i in range(wins + losses):
        prompt = make_prompt(project, split=split)
        evaluation_task_create(project=project, prompt=prompt, model_a=new, model_b=parent,
                               text_a=f"new {i}" + (" more" * 60 if i < long_wins else ""),
                               text_b=f"old {i}", round=rnd, reward_a=1.0 if i < wins else -1.0, reward_b=0.0)
    TrainingRun.objects.create(project=project, round=rnd, kind="evaluate", status="succeeded",
                               input_model=new, finished_at=timezone.now())
    return rnd, parent, new


def current(project):
    from labelapp.models import ModelVersion

    return ModelVersion.objects.get(project=project, kind="policy", is_current=True)


def test_a_policy_that_loses_to_its_parent_is_held_and_the_parent_stays_current(sent):
    from labelapp.services.rounds import round_advance

    project = make_project()
    rnd, parent, _new = evaluated_round(project, wins=1, losses=3)  # 25%, as in the issue
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == "held" and rnd.finished and current(project) == parent
    assert rnd.gate["state"] == "held" and rnd.gate["checks"][0]["win_rate"] == 0.25
    assert rnd.gate["text"].startswith("Promotion gate: held for review — reward-model win-rate 25.0% over the parent "
                                       "on 4 held-out prompts (needs ≥ 50.0%)")
    assert round_advance(round_id=rnd.pk).stage == "held"  # idempotent: nothing moves a held round
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(add_member(project, make_user(), role="reviewer"))
    body = api.get(f"/api/v1/rounds/{rnd.pk}/").json()
    assert body["stage"] == "held" and body["gate"]["state"] == "held" and body["gate"]["checks"][0]["passed"] is False
    # a held round has ended: the next round may start (from the parent, still current)
    admin = add_member(project, make_user(), role="admin")
    assert round_start(project=project, user=admin).base_policy == parent


def test_a_policy_that_wins_becomes_current(sent):
    from labelapp.services.rounds import round_advance

    project = make_project()
    rnd, _parent, new = evaluated_round(project, wins=2, losses=2)  # 50% passes ≥ 0.5
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == "done" and current(project) == new
    assert rnd.gate["state"] == "passed" and "the new policy is now current" in rnd.gate["text"]


def test_training_prompts_cannot_pass_the_gate(sent):
    from labelapp.services.rounds import round_advance

    project = make_project()
    rnd, parent, _ = evaluated_round(project, wins=4, losses=0, split="train")
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == "held" and current(project) == parent
    assert "no held-out (validation) prompts" in rnd.gate["text"]


@pytest.mark.parametrize("key, what, winner, stage, verdict", [
    # the parent wins both blind judgments: held
    ("min_human_win_rate", "win-rate", "b", "held", "blind human win-rate 0.0% over 2 judgments"),
    # the new policy wins both, at equal lengths (the controlled rate is the raw one): promoted
    ("min_human_lc_win_rate", "length-controlled win-rate", "a", "done",
     "blind human length-controlled win-rate 100.0% over 2 judgments"),
])
def test_the_human_checks_wait_for_their_judgments_then_decide(sent, key, what, winner, stage, verdict):
    from labelapp.models import Comparison, EvaluationTask
    from labelapp.services.rounds import round_advance

    project = make_project()
    judge = add_member(project)
    rnd, parent, new = evaluated_round(project, wins=3, losses=1, gate={key: 0.5, "min_judgments": 2})
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == "evaluation" and rnd.gate["state"] == "waiting" and current(project) == parent
    assert f"0 / 2 blind judgments in (needs a {what} ≥ 50.0%)" in rnd.gate["text"]
    for task in EvaluationTask.objects.filter(round=rnd)[:2]:
        Comparison.objects.create(task=task, annotator=judge, winner=winner, a_shown_left=True)
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == stage and current(project) == (parent if stage == "held" else new)
    assert f"{verdict} (needs ≥ 50.0%)" in rnd.gate["text"]


def test_promote_makes_the_held_policy_current_and_discard_keeps_the_old(sent):
    from labelapp.services.rounds import round_advance, round_discard, round_promote

    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    annotator = add_member(project)
    rnd, parent, new = evaluated_round(project, wins=0, losses=2)
    round_advance(round_id=rnd.pk)
    with pytest.raises(Exception, match="admin"):
        round_promote(round_id=rnd.pk, user=annotator)
    assert current(project) == parent and Round.objects.get(pk=rnd.pk).stage == "held"
    rnd = round_promote(round_id=rnd.pk, user=admin)
    assert rnd.stage == "done" and current(project) == new
    assert rnd.gate["decision"] == "promoted" and rnd.gate["decided_by"] == admin.username
    with pytest.raises(ValidationError, match="not held for review"):
        round_discard(round_id=rnd.pk, user=admin)

    other = make_project()
    admin2 = add_member(other, make_user(), role="admin")
    rnd2, parent2, _new2 = evaluated_round(other, wins=0, losses=2)
    round_advance(round_id=rnd2.pk)
    rnd2 = round_discard(round_id=rnd2.pk, user=admin2)
    assert rnd2.stage == "done" and current(other) == parent2 and rnd2.gate["decision"] == "discarded"
    assert "Discarded by" in rnd2.gate["text"] and "the previous policy stays current" in rnd2.gate["text"]


def test_promote_is_refused_when_the_current_policy_moved_on(sent):
    from labelapp.services.rounds import round_advance, round_promote
    from labelapp.services.runs import model_version_register

    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    rnd, _parent, _new = evaluated_round(project, wins=0, losses=2)
    round_advance(round_id=rnd.pk)
    newer = model_version_register(project=project, name="dpo-9", kind="policy", artifact_path="/m/dpo",
                                   make_current=True)
    with pytest.raises(ValidationError, match="The current policy is now dpo-9"):
        round_promote(round_id=rnd.pk, user=admin)
    assert current(project) == newer and Round.objects.get(pk=rnd.pk).stage == "held"


def test_the_length_controlled_check_holds_a_policy_that_won_by_writing_longer(sent):
    from labelapp.selectors.stats import evaluation_summary
    from labelapp.services.rounds import round_advance

    project = make_project()
    # 6 wins of 8 (75% raw) but 5 of them with much longer answers; at equal length: 1 win, 2 losses
    rnd, parent, _new = evaluated_round(project, wins=6, losses=2, long_wins=5,
                                        gate={"min_reward_lc_win_rate": 0.5})
    lc = evaluation_summary(project=project, round_id=rnd.pk)["length_controlled"]["reward_model"]["win_rate"]
    assert lc < 0.45
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == "held" and current(project) == parent
    assert [(c["name"], c["passed"]) for c in rnd.gate["checks"]] == [("reward_model", True), ("reward_model_lc", False)]
    assert (f"reward-model length-controlled win-rate {lc:.1%} over the parent on 8 held-out prompts (needs ≥ 50.0%)"
            in rnd.gate["text"])

    other = make_project()  # the same wins at equal length pass the same gate
    rnd2, _parent2, new2 = evaluated_round(other, wins=6, losses=2, gate={"min_reward_lc_win_rate": 0.5})
    rnd2 = round_advance(round_id=rnd2.pk)
    assert rnd2.stage == "done" and current(other) == new2
    assert rnd2.gate["checks"][1]["win_rate"] == pytest.approx(0.75)


def test_a_negative_length_penalty_is_refused_before_anything_is_created(sent):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    with pytest.raises(ValidationError) as caught:
        round_start(project=project, user=admin, method="rloo", params={"policy": {"length_penalty": -0.5}})
    assert "policy.length_penalty must be 0 or more (got -0.5)." in caught.value.messages
    assert not Round.objects.exists()


@pytest.mark.parametrize("gate, message", [
    ({"min_reward_lc_win_rate": -0.1},
     "gate.min_reward_lc_win_rate must be null (off) or a number in [0, 1] (got -0.1)."),
    ({"min_reward_win_rate": 1.5}, "gate.min_reward_win_rate must be null (off) or a number in [0, 1] (got 1.5)."),
    ({"min_judgments": 0}, "gate.min_judgments must be a whole number of at least 1 (got 0)."),
    ({"min_human_winrate": 0.5}, "gate.min_human_winrate is not a setting (did you mean gate.min_human_win_rate?)."),
])
def test_bad_gate_settings_are_refused(sent, gate, message):
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    with pytest.raises(ValidationError) as caught:
        round_start(project=project, user=admin, params={"gate": gate})
    assert message in caught.value.messages and not Round.objects.exists()


def test_promote_and_discard_are_admin_only_csrf_checked_posts(client, sent):
    from django.test import Client
    from django.urls import reverse

    from labelapp.services.rounds import round_advance

    project = make_project()
    admin = add_member(project, make_user("owner"), role="admin")
    reviewer = add_member(project, make_user("rev"), role="reviewer")
    rnd, parent, new = evaluated_round(project, wins=0, losses=2)
    round_advance(round_id=rnd.pk)
    promote = reverse("studio:round_promote", args=[project.slug, rnd.pk])
    client.force_login(reviewer)
    assert client.post(promote).status_code == 404  # the studio does not exist below admin
    client.force_login(admin)
    assert client.get(promote).status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(admin)
    assert strict.post(promote).status_code == 403
    assert Round.objects.get(pk=rnd.pk).stage == "held" and current(project) == parent
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    assert f'action="{promote}" class="inline round-promote"' in page
    response = client.post(promote, follow=True)
    assert "Round 1: the new policy is now current." in response.content.decode() and current(project) == new
    again = client.post(promote, follow=True)
    assert "is not held for review" in again.content.decode()


# ---- held-out figures in the model table -----------------------------------------------------


def test_the_model_table_shows_held_out_figures_with_their_meaning(client, sent):
    import html

    from django.urls import reverse

    from labelapp.services.rounds import round_advance
    from labelapp.services.runs import model_version_register

    project = make_project()
    admin = add_member(project, make_user("metrics"), role="admin")
    rnd, parent, _new = evaluated_round(project, wins=1, losses=3)
    round_advance(round_id=rnd.pk)
    reward = model_version_register(project=project, name="reward-7", kind="reward", artifact_path="/m/rm", metrics={
        "accuracy": 0.0, "margin": -0.2, "loss/train": 0.71, "loss/train_mean": 0.69, "eval/pairwise_accuracy": 0.636,
        "eval/pairs": 11, "global_step": 3})
    sft = model_version_register(project=project, name="sft-8", kind="policy", artifact_path="/m/s",
                                 metrics={"loss/train": 2.5, "loss/train_mean": 2.9, "train/learning_rate": 1e-4})
    client.force_login(admin)
    models = {m["name"]: m for m in client.get(reverse("studio:status", args=[project.slug])).json()["models"]}
    assert models["reward-7"]["metrics"] == [["eval/pairwise_accuracy", "0.6360"], ["eval/pairs", "11.0000"]]
    assert models["reward-7"]["metric_help"]["eval/pairwise_accuracy"].startswith("Held out: share of held-out")
    assert models["ppo-2"]["metrics"][0] == ["eval/rm_win_rate", "0.2500"]  # the round's held-out verdict
    assert models["sft-8"]["metrics"] == [["loss/train_mean", "2.9000"], ["loss/train", "2.5000"]]
    assert models["sft-8"]["metric_help"]["loss/train"].startswith("Last logged training batch only")

    page = html.unescape(client.get(reverse("studio:overview", args=[project.slug])).content.decode())
    row = page.split(f'data-version-id="{reward.pk}"')[1].split("</tr>")[0]
    assert "eval/pairwise_accuracy 0.6360" in row and "accuracy 0.0000" not in row
    assert 'title="Held out: share of held-out preference pairs the reward model orders' in row
    legend = page.split('id="metric-legend"')[1].split("</details>")[0]
    assert "<code>eval/pairwise_accuracy</code>" in legend and "<code>accuracy</code>" in legend
    assert sft.pk and parent.pk


def test_rounds_keep_lora_adapters_only_by_default(sent):
    """The studio's default `merge` is false (an adapter of MBs, not a 540 MB copy per run): the effective
    settings a round stores carry it to every training run; a round may still ask for merged copies."""
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    make_prompt(project)
    rnd = round_start(project=project, user=admin)
    assert all(rnd.params[section]["merge"] is False for section in ("sft", "reward", "policy"))
    assert rnd.params["reward"]["head_init"] == "probe"  # LP-FT; the other sections have no such setting
    assert all("head_init" not in rnd.params[section] for section in ("sft", "policy"))
    round_cancel(round_id=rnd.pk, user=admin)
    merged = round_start(project=project, user=admin, params={"reward": {"merge": True}})
    assert merged.params["reward"]["merge"] is True and merged.params["policy"]["merge"] is False
