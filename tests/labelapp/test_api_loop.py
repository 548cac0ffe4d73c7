import pytest
from rest_framework.test import APIClient

from labelapp.models import ModelVersion, Round, TrainingRun
from tests.conftest import add_member, make_prompt

pytestmark = pytest.mark.django_db


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_admin_starts_a_round_over_the_api(project, sent):
    admin = add_member(project, role="admin")
    make_prompt(project)
    url = f"/api/v1/projects/{project.pk}/rounds/"
    bad = client_for(admin).post(url, {"method": "ppo", "params": {"prompts": 0}}, format="json")
    assert bad.status_code == 400 and "at least 1" in str(bad.json())
    for params, error in [({"reward": {"min_rank_gap": 0}}, "reward settings: 'min_rank_gap' must be a whole number"),
                          ({"policy": {"min_rank_gap": "all"}}, "policy settings: 'min_rank_gap'"),
                          ({"reward": [1, 2]}, "'reward' must be an object of settings")]:
        bad = client_for(admin).post(url, {"method": "dpo", "params": params}, format="json")
        assert bad.status_code == 400 and error in str(bad.json()), bad.json()
    assert not Round.objects.exists() and not TrainingRun.objects.exists()
    unreachable = client_for(admin).post(url, {"method": "dpo", "params": {"prompts": 4}}, format="json")  # 8 rankings
    assert unreachable.status_code == 400 and "'min_rankings' 8 can never be reached" in str(unreachable.json())
    started = client_for(admin).post(url, {"method": "dpo", "params": {"prompts": 4, "min_rankings": 4}}, format="json")
    assert started.status_code == 201 and started.json()["method"] == "dpo"
    rnd = Round.objects.get()
    assert rnd.stage == "sampling" and rnd.runs.get().kind == "sample"  # no demonstrations: no SFT
    again = client_for(admin).post(url, {"method": "ppo"}, format="json")
    assert again.status_code == 400 and "still in progress" in str(again.json())
    runs = client_for(admin).get("/api/v1/runs/", {"project": project.pk}).json()["results"]
    assert [r["kind"] for r in runs] == ["sample"]
    cancelled = client_for(admin).post(f"/api/v1/rounds/{rnd.pk}/cancel/")
    assert cancelled.json()["stage"] == "cancelled"
    assert TrainingRun.objects.get().status == "cancelled"


def test_reviewers_read_but_cannot_start_or_cancel_and_annotators_see_no_runs(project, annotator, reviewer, sent):
    run = TrainingRun.objects.create(project=project, kind="sft")
    client = client_for(reviewer)
    assert client.get(f"/api/v1/runs/{run.pk}/").status_code == 200
    assert client.post(f"/api/v1/projects/{project.pk}/rounds/", {}, format="json").status_code == 403
    assert client.post(f"/api/v1/runs/{run.pk}/cancel/").status_code == 403
    blind = client_for(annotator)  # runs name models and paths: annotators label blind
    assert blind.get(f"/api/v1/runs/{run.pk}/").status_code == 404
    assert blind.post(f"/api/v1/projects/{project.pk}/rounds/", {}, format="json").status_code == 403
    assert blind.post(f"/api/v1/runs/{run.pk}/cancel/").status_code == 404
    assert TrainingRun.objects.get().status == "queued" and not Round.objects.exists()


def test_make_current_and_evaluation_summary(project):
    admin = add_member(project, role="admin")
    old = ModelVersion.objects.create(project=project, name="old", is_current=True)
    new = ModelVersion.objects.create(project=project, name="new")
    assert client_for(admin).post(f"/api/v1/model-versions/{new.pk}/make-current/").json()["is_current"] is True
    old.refresh_from_db()
    assert old.is_current is False
    rnd = Round.objects.create(project=project, number=1)
    summary = client_for(admin).get(f"/api/v1/rounds/{rnd.pk}/evaluation/").json()
    assert summary["tasks"] == 0 and summary["human"]["win_rate"] is None


def test_round_start_command(project, sent, capsys):
    from django.core.management import CommandError, call_command

    admin = add_member(project, role="admin")
    make_prompt(project)
    with pytest.raises(CommandError, match="not JSON"):
        call_command("round_start", project.slug, "--as", admin.username, "--params", "{oops")
    call_command("round_start", project.slug, "--as", admin.username, "--method", "dpo")
    assert "Round 1 started (dpo)" in capsys.readouterr().out
    with pytest.raises(CommandError, match="still in progress"):
        call_command("round_start", project.slug, "--as", admin.username)
