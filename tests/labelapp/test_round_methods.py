"""RLOO and GRPO as a round's policy method (issue 15): started over the API and from the studio form,
refused with a clear error when unknown, and the POLICY stage queues a run of the method's own kind that
scores with the round's reward model (PostgreSQL)."""
import pytest
from rest_framework.test import APIClient

from labelapp.models import ModelVersion, Round, TrainingRun
from labelapp.services.rounds import _clean_params, round_advance
from tests.conftest import add_member, make_prompt

pytestmark = pytest.mark.django_db


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_api_starts_a_round_with_rloo_or_grpo(project, sent, method):
    admin = add_member(project, role="admin")
    make_prompt(project)
    url = f"/api/v1/projects/{project.pk}/rounds/"
    started = client_for(admin).post(url, {"method": method, "params": {"policy": {"num_samples": 4}}},
                                     format="json")
    assert started.status_code == 201 and started.json()["method"] == method
    assert Round.objects.get().method == method


def test_unknown_method_is_refused_and_nothing_is_created(project, sent):
    from django.core.exceptions import ValidationError

    from labelapp.services.rounds import round_start

    admin = add_member(project, role="admin")
    bad = client_for(admin).post(f"/api/v1/projects/{project.pk}/rounds/", {"method": "a2c"}, format="json")
    assert bad.status_code == 400 and "a2c" in str(bad.json())
    with pytest.raises(ValidationError, match="use ppo, dpo, rloo, grpo"):
        round_start(project=project, user=admin, method="a2c")
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and sent == []


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_policy_stage_queues_the_methods_run_with_the_reward_model(project, sent, method,
                                                                 django_capture_on_commit_callbacks):
    sft = ModelVersion.objects.create(project=project, name="sft")
    reward = ModelVersion.objects.create(project=project, name="rm", kind=ModelVersion.Kind.REWARD)
    rnd = Round.objects.create(project=project, number=1, method=method, stage=Round.Stage.REWARD, sft_policy=sft,
                               params=_clean_params({"policy": {"num_samples": 2, "max_steps": 3}}, method))
    TrainingRun.objects.create(project=project, round=rnd, kind="reward", status=TrainingRun.Status.SUCCEEDED,
                               output_model=reward)
    with django_capture_on_commit_callbacks(execute=True):
        round_advance(round_id=rnd.pk)
    rnd.refresh_from_db()
    assert rnd.stage == Round.Stage.POLICY and rnd.reward_model == reward
    run = rnd.runs.get(kind=method)
    # the round keeps its effective settings (every default of the method's config filled in)
    assert {k: run.params[k] for k in ("num_samples", "max_steps", "reward_model_id")} == {
        "num_samples": 2, "max_steps": 3, "reward_model_id": reward.pk}
    assert "kl_penalty" in run.params and "value_model" not in run.params
    assert run.input_model == sft and sent == [run.pk]
    new = ModelVersion.objects.create(project=project, name=f"{method}-{run.pk}")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED, output_model=new)
    round_advance(round_id=rnd.pk)
    rnd.refresh_from_db()
    assert rnd.stage == Round.Stage.RESAMPLING and rnd.new_policy == new


def test_studio_form_offers_rloo_and_grpo_and_starts_a_grpo_round(client, project, sent):
    from django.urls import reverse

    admin = add_member(project, role="admin")
    client.force_login(admin)
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    assert '<option value="rloo"' in page and '<option value="grpo"' in page
    response = client.post(reverse("studio:round_start", args=[project.slug]),
                           {"method": "grpo", "prompts": "3", "min_rankings": "2",
                            "settings": '{"policy": {"num_samples": 4}}'}, follow=True)
    assert response.status_code == 200 and "Round 1 started" in response.content.decode()
    rnd = Round.objects.get()
    assert rnd.method == "grpo" and rnd.params["policy"]["num_samples"] == 4
    assert rnd.params["policy"]["kl_penalty"] == "loss"  # GRPO's own default, not RLOO's
