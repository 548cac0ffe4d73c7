"""Length in the studio and the API: the evaluation's length-controlled win-rates (overall and per prompt
category) against hand computations, the over-optimisation warning on the round line and the policy run's
page, the reward model's length diagnostics on its run page, in the model registry and in the API."""
from html import escape

import pytest
from django.urls import reverse

from labelapp.models import ModelVersion, Round, TrainingRun
from labelapp.selectors import studio
from labelapp.selectors.length_watch import held_out_warnings, policy_trend, reward_length_text
from labelapp.selectors.stats import evaluation_summary
from labelapp.services.projects import evaluation_task_create
from tests.conftest import add_member, make_prompt, make_user
from tests.labelapp.test_length_control import two_value_table

pytestmark = pytest.mark.django_db

DIAGNOSTICS = {"eval/pairwise_accuracy": 0.6455, "eval/accuracy_chosen_longer": 0.844,
               "eval/accuracy_chosen_shorter": 0.406, "eval/prefers_longer": 0.71, "eval/longer_wins_baseline": 0.545,
               "eval/reward_length_corr": 0.31, "eval/pairs": 354, "eval/pairs_chosen_longer": 192,
               "eval/pairs_chosen_shorter": 159}


@pytest.fixture
def admin(project):
    return add_member(project, make_user("boss"), role="admin")


@pytest.fixture
def studio_client(client, admin):
    client.force_login(admin)
    return client


def versions(project):
    return (ModelVersion.objects.create(project=project, name="policy r1"),
            ModelVersion.objects.create(project=project, name="sft r1"))


def add_table(project, rnd, new, old, table, category="other", reference=""):
    """Evaluation tasks whose reward-model outcome and length difference follow `table`:
    (outcomes, differences) as built by two_value_table."""
    for outcome, diff in zip(*table):
        base = 120
        evaluation_task_create(project=project, round=rnd, model_a=new, model_b=old,
                               prompt=make_prompt(project, category=category, reference=reference),
                               text_a="a" * (base + diff), text_b="b" * base,
                               reward_a=outcome, reward_b=1.0 - outcome)


def test_per_category_length_controlled_win_rate_equals_a_hand_computation(project):
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new, old = versions(project)
    qa_out, qa_diff, qa_expected = two_value_table(240, 6, 8, -60, 1, 4)
    bs_out, bs_diff, bs_expected = two_value_table(100, 3, 5, -50, 2, 4)
    add_table(project, rnd, new, old, (qa_out, qa_diff), category="open_qa", reference="r" * 200)
    add_table(project, rnd, new, old, (bs_out, bs_diff), category="brainstorming")
    summary = evaluation_summary(project=project, round_id=rnd.pk)
    cats = summary["categories"]
    assert set(cats) == {"open_qa", "brainstorming"}
    assert cats["open_qa"]["length_controlled"]["reward_model"]["win_rate"] == pytest.approx(qa_expected, abs=1e-3)
    assert cats["brainstorming"]["length_controlled"]["reward_model"]["win_rate"] == pytest.approx(bs_expected, abs=1e-3)
    assert cats["open_qa"]["reward_model"]["win_rate"] == pytest.approx(7 / 12)
    assert cats["open_qa"]["tasks"] == 12 and cats["brainstorming"]["tasks"] == 9
    # mean lengths (characters): per category and overall, references only where there is one
    assert cats["open_qa"]["lengths"]["candidate"] == pytest.approx(120 + sum(qa_diff) / 12)
    assert cats["open_qa"]["lengths"]["reference"] == 200 and cats["brainstorming"]["lengths"]["reference"] is None
    overall = summary["lengths"]
    assert overall["baseline"] == 120 and overall["references"] == 12 and overall["reference"] == 200
    assert overall["candidate"] == pytest.approx(120 + (sum(qa_diff) + sum(bs_diff)) / 21)
    lc = summary["length_controlled"]["reward_model"]
    assert lc["n"] == 21 and lc["low"] <= lc["win_rate"] <= lc["high"] and not lc["separated"]
    assert summary["length_controlled"]["human"]["win_rate"] is None  # no judgments yet


def test_one_category_gives_no_per_category_table(project):
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new, old = versions(project)
    add_table(project, rnd, new, old, two_value_table(240, 6, 8, -60, 1, 4)[:2])
    assert evaluation_summary(project=project, round_id=rnd.pk)["categories"] == {}


def verbose_round(project):
    """A round whose new policy answers longer and the reward model follows the length: its raw win-rate is
    clearly above one half (30 of 40), its length-controlled one is not."""
    rnd = Round.objects.create(project=project, number=1, method="ppo", stage="done", params={})
    new, old = versions(project)
    add_table(project, rnd, new, old, two_value_table(300, 27, 30, -100, 3, 10)[:2])
    return rnd


def test_reward_rising_with_length_warns_on_the_round_and_the_policy_run(project, studio_client):
    rnd = verbose_round(project)
    summary = evaluation_summary(project=project, round_id=rnd.pk)
    raw, lc = summary["reward_model"], summary["length_controlled"]["reward_model"]
    assert raw["low"] > 0.5 and lc["low"] <= 0.5  # the rule's two halves
    [warning] = summary["warnings"]
    assert warning["side"] == "reward_model" and "not once answer length is held equal" in warning["text"]
    assert "its answers average 320 characters against the parent's 120" in warning["text"]
    page = studio_client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    article = page[page.index(f'data-round-id="{rnd.pk}"'):page.index('<template id="round-template">')]
    assert 'data-field="evaluation_warning" hidden' not in article and escape(warning["text"]) in article
    status = studio_client.get(reverse("studio:status", args=[project.slug])).json()
    assert status["rounds"][0]["evaluation_warning"] == warning["text"]
    policy = TrainingRun.objects.create(project=project, round=rnd, kind="ppo", status="succeeded")
    run_page = studio_client.get(reverse("studio:run", args=[project.slug, policy.pk])).content.decode()
    assert escape(warning["text"]) in run_page
    run_json = studio_client.get(reverse("studio:run_json", args=[project.slug, policy.pk])).json()
    assert run_json["length_watch"]["warning"] == warning["text"]


def test_no_warning_when_the_gain_survives_length_control(project):
    rnd = Round.objects.create(project=project, number=1, method="ppo", stage="done", params={})
    new, old = versions(project)
    add_table(project, rnd, new, old, ([1.0] * 18 + [0.0] * 2, [0] * 20))  # wins at equal length
    summary = evaluation_summary(project=project, round_id=rnd.pk)
    assert summary["length_controlled"]["reward_model"]["low"] > 0.5 and summary["warnings"] == []


def test_warning_rule_reads_both_sides():
    def side(rate, low):
        return {"win_rate": rate, "low": low, "high": 1.0, "n": 10}

    summary = {"human": side(0.7, 0.55), "reward_model": side(0.6, 0.45),
               "length_controlled": {"human": side(0.5, 0.3), "reward_model": side(0.5, 0.3)},
               "lengths": {"candidate": 300.0, "baseline": 150.0}}
    assert [w["side"] for w in held_out_warnings(summary)] == ["human"]  # the reward model's raw low is < 0.5
    summary["length_controlled"]["human"] = side(0.6, 0.51)
    assert held_out_warnings(summary) == []


def test_evaluation_api_reports_raw_and_length_controlled_rates(project, admin, client):
    rnd = verbose_round(project)
    client.force_login(admin)
    body = client.get(f"/api/v1/rounds/{rnd.pk}/evaluation/").json()
    assert body["reward_model"]["win_rate"] == pytest.approx(0.75)
    lc = body["length_controlled"]["reward_model"]
    assert lc["win_rate"] < 0.75 and set(lc) >= {"low", "high", "slope", "separated", "n", "items"}
    assert body["lengths"] == {"candidate": pytest.approx(320.0), "baseline": 120.0, "reference": None,
                               "references": 0, "unit": "characters"}
    assert body["warnings"][0]["side"] == "reward_model"


def test_reward_model_length_diagnostics_on_run_page_registry_and_api(project, admin, client):
    run = TrainingRun.objects.create(project=project, kind="reward", status="succeeded",
                                     result={"pairs": 2000, **DIAGNOSTICS})
    version = ModelVersion.objects.create(project=project, name="reward-1", kind="reward", metrics=DIAGNOSTICS)
    run.output_model = version
    run.save()
    client.force_login(admin)
    page = client.get(reverse("studio:run", args=[project.slug, run.pk])).content.decode()
    assert "Length bias (held-out pairs)" in page
    assert '<tr data-key="eval/accuracy_chosen_shorter"><td>… where the chosen answer is shorter</td><td>0.406 (159 pairs)' in page
    overview = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    text = reward_length_text(DIAGNOSTICS)
    assert text == ("chosen longer 0.84 / shorter 0.41 · prefers longer 0.71 (longer wins 0.55) · "
                    "r(reward, length) 0.31")
    assert f"Length: {text}" in overview
    api = client.get(f"/api/v1/model-versions/{version.pk}/").json()["length_diagnostics"]
    assert api == {"accuracy": 0.6455, "accuracy_chosen_longer": 0.844, "accuracy_chosen_shorter": 0.406,
                   "prefers_longer": 0.71, "longer_wins_baseline": 0.545, "reward_length_corr": 0.31, "pairs": 354,
                   "pairs_chosen_longer": 192, "pairs_chosen_shorter": 159, "length_unit": "characters"}
    assert client.get(f"/api/v1/runs/{run.pk}/").json()["length_diagnostics"] == api
    policy = ModelVersion.objects.create(project=project, name="policy", kind="policy", metrics={"loss/train": 1.0})
    assert client.get(f"/api/v1/model-versions/{policy.pk}/").json()["length_diagnostics"] is None


def test_calibrated_reward_model_shows_its_calibration_on_run_page_and_api(project, admin, client):
    """A reward run with length_calibration: the run page adds the slope and the uncalibrated values; the API
    nests them under `calibration` (the top-level values are the calibrated reward's)."""
    metrics = {**DIAGNOSTICS, "length_calibration/beta": 0.00123, "length_calibration/labels_prefer_longer": 0.55,
               "length_calibration/model_prefers_longer": 0.8, "length_calibration/calibrated_prefers_longer": 0.55,
               "length_calibration/pairs": 250, "eval/uncalibrated/pairwise_accuracy": 0.61,
               "eval/uncalibrated/accuracy_chosen_shorter": 0.28, "eval/uncalibrated/prefers_longer": 0.8}
    run = TrainingRun.objects.create(project=project, kind="reward", status="succeeded", result=metrics)
    client.force_login(admin)
    page = client.get(reverse("studio:run", args=[project.slug, run.pk])).content.decode()
    assert '<tr data-key="length_calibration/beta"><td>Length calibration slope</td><td>0.00123</td>' in page
    assert '<tr data-key="eval/uncalibrated/accuracy_chosen_shorter"><td>… where the chosen answer is shorter, ' \
           'before calibration</td><td>0.280</td>' in page
    api = client.get(f"/api/v1/runs/{run.pk}/").json()["length_diagnostics"]
    assert api["accuracy_chosen_shorter"] == 0.406 and "length_calibration/beta" not in api
    assert api["calibration"] == {"beta": 0.00123, "labels_prefer_longer": 0.55, "model_prefers_longer": 0.8,
                                  "calibrated_prefers_longer": 0.55,
                                  "uncalibrated": {"accuracy": 0.61, "accuracy_chosen_shorter": 0.28,
                                                   "prefers_longer": 0.8}}


def test_policy_trend_flags_reward_rising_with_length(project, admin, client):
    history = [{"step": i, "objective/reward": 0.1 * i, "objective/response_length": 40 + 6 * i,
                "objective/kl": 0.5 * i} for i in range(1, 13)]
    trend = policy_trend(history)
    assert trend["watch"] and trend["reward"] == pytest.approx([0.2, 1.1]) and trend["length"] == [52, 106]
    assert trend["correlation"] == pytest.approx(1.0)
    assert trend["text"].startswith("Over 12 steps the reward went from 0.2 to 1.1 and the mean response length "
                                    "from 52 to 106 tokens (correlation across steps 1.00); KL from 1 to 5.5")
    flat = [dict(p, **{"objective/response_length": 50}) for p in history]
    assert not policy_trend(flat)["watch"]
    assert policy_trend(history[:3]) is None  # too few steps to say
    run = TrainingRun.objects.create(project=project, kind="ppo", status="succeeded", metrics=history)
    client.force_login(admin)
    page = client.get(reverse("studio:run", args=[project.slug, run.pk])).content.decode()
    assert trend["text"] in page
    assert 'data-key="objective/response_length"' in page  # charted with reward and KL


def test_studio_overview_lists_categories(project, studio_client):
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new, old = versions(project)
    add_table(project, rnd, new, old, two_value_table(240, 6, 8, -60, 1, 4)[:2], category="open_qa")
    add_table(project, rnd, new, old, two_value_table(100, 3, 5, -50, 2, 4)[:2], category="brainstorming")
    rows = studio.category_rows(evaluation_summary(project=project, round_id=rnd.pk))
    assert [r["category"] for r in rows] == ["brainstorming", "open_qa"]
    page = studio_client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    assert "Win-rates per prompt category" in page and '<tr data-category="open_qa"><td>open_qa</td><td>12</td>' in page
