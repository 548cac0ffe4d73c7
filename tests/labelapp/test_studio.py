"""The admin studio: who sees it, what its pages and JSON show, and that its buttons go through
the services (with the Celery publish recorded instead of sent)."""
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from labelapp.models import ModelVersion, Round, TrainingRun
from labelapp.services.labels import demonstration_submit
from labelapp.services.queue import task_claim
from labelapp.services.runs import model_version_register, run_begin, run_create, run_report
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(project):
    return add_member(project, make_user("boss"), role="admin")


@pytest.fixture
def studio(client, admin):
    client.force_login(admin)
    return client


def url(name, project, *args):
    return reverse(f"studio:{name}", args=[project.slug, *args])


def running_run(project, step=3, total=10, points=3):
    run = run_create(project=project, kind="sft", params={"max_steps": total})
    _, token = run_begin(run_id=run.pk, now=timezone.now() - timedelta(seconds=30))
    for i in range(1, points + 1):
        run_report(run_id=run.pk, token=token, step=i, total=total,
                   metrics={"loss/train": 3.0 - i * 0.1, "objective/kl": 0.01 * i})
    run_report(run_id=run.pk, token=token, step=step, total=total)
    return TrainingRun.objects.get(pk=run.pk)


def test_overview_shows_rounds_runs_lineage_queues_and_throughput(studio, project, admin, annotator, sent):
    prompt = make_prompt(project, text="Say something kind.")
    make_task(project)
    lease = task_claim(project=project, user=annotator, queue="write")
    demonstration_submit(assignment_id=lease.pk, user=annotator, text="You matter.", time_spent_ms=5)
    sft = model_version_register(project=project, name="sft-7", kind="policy", artifact_path="/x",
                                 metrics={"loss/train": 1.25})
    model_version_register(project=project, name="ppo-9", kind="policy", artifact_path="/y", parent=sft,
                           metrics={"objective/reward": 0.5, "objective/kl": 0.02}, make_current=True)
    rnd = Round.objects.create(project=project, number=1, method="ppo", stage="sft", params={"prompts": 2})
    run = running_run(project)
    TrainingRun.objects.filter(pk=run.pk).update(round=rnd)

    response = studio.get(url("overview", project))
    body = response.content.decode()
    assert response.status_code == 200
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)", body)  # no inline script
    assert 'id="round-form"' in body and 'name="settings"' in body
    assert "Round 1" in body and 'class="step step-current" data-stage="sft"' in body
    assert f'data-run-id="{run.pk}"' in body and 'value="30.0"' in body and "3 / 10" in body  # the <progress>
    assert re.search(r"sft-7\s*→\s*<strong>ppo-9</strong>", body)
    assert "objective/reward 0.5000" in body
    assert 'data-testid="queue-write" data-field="waiting">1<' in body  # make_task's prompt and 'data-testid="queue-rank">1<' in body
    assert 'data-testid="queue-review" data-field="waiting">1<' in body
    assert annotator.username in body  # throughput names the annotator for admins
    assert prompt.text not in body  # no label content on the studio page
    assert '"action": "focus:round-method"' in body and "Start a new round: go to its form" in body  # keymap + help


def test_run_detail_shows_params_progress_and_chart_summaries(studio, project):
    run = running_run(project)
    response = studio.get(url("run", project, run.pk))
    body = response.content.decode()
    assert response.status_code == 200
    assert 'data-key="loss/train"' in body and 'data-key="objective/kl"' in body
    assert "last 2.7, min 2.7, max 2.9 (3 points)" in body
    assert "&quot;max_steps&quot;: 10" in body
    assert 'id="studio-up"' in body and "studio.js" in body


def test_studio_is_invisible_to_lower_roles_and_other_projects(client, project, annotator, reviewer, sent):
    run = running_run(project)
    other_admin = add_member(make_project(), role="admin")
    pages = [url("overview", project), url("status", project), url("run", project, run.pk), url("run_json", project, run.pk)]
    for user in (annotator, reviewer, other_admin):
        client.force_login(user)
        for page in pages:
            assert client.get(page).status_code == 404, (user, page)
        assert client.post(url("round_start", project), {"method": "ppo", "prompts": "1", "min_rankings": "1",
                                                         "settings": "{}"}).status_code == 404
        assert client.post(url("run_cancel", project, run.pk)).status_code == 404
    assert not Round.objects.exists()
    assert TrainingRun.objects.get(pk=run.pk).cancel_requested is False
    client.logout()
    assert client.get(pages[0]).status_code == 302


def test_nav_links_to_the_studio_for_admins_only(client, project, admin, annotator):
    client.force_login(admin)
    assert url("overview", project) in client.get(reverse("labelapp:project", args=[project.slug])).content.decode()
    client.force_login(annotator)
    assert url("overview", project) not in client.get(reverse("labelapp:project", args=[project.slug])).content.decode()


def test_json_reports_progress_eta_heartbeat_and_history(studio, project, sent):
    run = running_run(project, step=4, total=10, points=3)
    data = studio.get(url("status", project)).json()
    assert data["active"] is True
    (row,) = data["runs"]
    assert {k: row[k] for k in ("id", "kind", "status", "step", "total", "percent")} == {
        "id": run.pk, "kind": "sft", "status": "running", "step": 4, "total": 10, "percent": 40.0}
    assert row["eta_seconds"] is not None and row["eta_seconds"] > 0
    assert 0 <= row["heartbeat_age_seconds"] < 60 and row["last_metrics"] == pytest.approx(
        {"step": 3, "loss/train": 2.7, "objective/kl": 0.03})  # the last report that carried metrics
    assert row["urls"]["run"] == url("run", project, run.pk) and "history" not in row

    one = studio.get(url("run_json", project, run.pk))
    assert one["Cache-Control"].startswith("max-age=0") and one.json()["metric_keys"] == ["loss/train", "objective/kl"]
    assert [p["step"] for p in one.json()["history"]] == [1, 2, 3]

    TrainingRun.objects.filter(pk=run.pk).update(metrics=[{"step": i, "loss/train": float(i)} for i in range(1200)])
    history = studio.get(url("run_json", project, run.pk)).json()["history"]
    assert len(history) == 500 and history[0]["step"] == 0 and history[-1]["step"] == 1199

    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(hours=2))
    stale = studio.get(url("status", project)).json()["runs"][0]
    assert stale["heartbeat_stale"] is True and stale["heartbeat_text"] == "2 h 0 min ago (worker lost?)"

    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", finished_at=timezone.now())
    data = studio.get(url("status", project)).json()
    assert data["active"] is False and data["runs"][0]["percent"] == 100.0


@pytest.mark.parametrize("form, error", [
    ({"prompts": "0"}, "&#x27;prompts&#x27; must be a whole number of at least 1"),
    ({"prompts": "two"}, "Prompts per round must be a whole number"),
    ({"settings": "{\"sft\": {"}, "Advanced settings are not valid JSON"),
    ({"settings": "[1, 2]"}, "must be a JSON object"),
    ({"settings": "{\"sftt\": {}}"}, "Unknown round settings [&#x27;sftt&#x27;]"),
    ({"settings": "{\"reward\": {\"min_rank_gap\": 0}}"}, "&#x27;min_rank_gap&#x27; must be a whole number of at least 1"),
    ({"method": "rlaif"}, "Unknown method"),
])
def test_start_round_with_bad_settings_shows_the_error_and_writes_nothing(studio, project, sent, form, error):
    data = {"method": "ppo", "prompts": "4", "min_rankings": "2", "settings": "{}", **form}
    response = studio.post(url("round_start", project), data)
    body = response.content.decode()
    assert response.status_code == 400
    assert error in body.split('id="errors"')[1].split("</div>")[0]
    assert f'value="{data["prompts"]}"' in body  # what was typed is kept
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and sent == []


def test_start_round_goes_through_the_service_and_queues_its_first_run(
    studio, project, admin, sent, django_capture_on_commit_callbacks
):
    settings = '{"sft": {"max_steps": 30}, "sample": {"max_new_tokens": 8}}'
    with django_capture_on_commit_callbacks(execute=True):
        response = studio.post(url("round_start", project),
                               {"method": "dpo", "prompts": "3", "min_rankings": "2", "settings": settings}, follow=True)
    rnd = Round.objects.get()
    assert (rnd.number, rnd.method, rnd.created_by) == (1, "dpo", admin)
    assert rnd.params["prompts"] == 3 and rnd.params["sft"]["max_steps"] == 30
    assert rnd.params["sft"]["learning_rate"] == 2e-4  # the round keeps the effective settings, defaults included
    run = rnd.runs.get()
    assert run.kind == "sample" and sent == [run.pk]  # no demonstrations yet: straight to sampling
    assert "Round 1 started" in response.content.decode()
    again = studio.post(url("round_start", project), {"method": "ppo", "prompts": "3", "min_rankings": "2",
                                                       "settings": "{}"})
    assert again.status_code == 400 and "still in progress" in again.content.decode()
    assert Round.objects.count() == 1
    form = studio.get(url("overview", project)).content.decode()
    assert "&quot;max_steps&quot;: 30" in form  # the next round starts from the last one's settings


def test_cancel_and_retry_through_the_services(studio, project, sent, django_capture_on_commit_callbacks):
    run = run_create(project=project, kind="reward")
    response = studio.post(url("run_cancel", project, run.pk), follow=True)
    assert response.status_code == 200 and f"Cancel requested for Reward model run {run.pk}" in response.content.decode()
    run.refresh_from_db()
    assert run.status == "cancelled" and run.cancel_requested

    again = studio.post(url("run_cancel", project, run.pk), follow=True)  # a ValidationError becomes a message
    assert again.status_code == 200 and "This run already cancelled." in again.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        back = studio.post(url("run_retry", project, run.pk), {"next": url("run", project, run.pk)})
    assert back["Location"] == url("run", project, run.pk)
    retry = TrainingRun.objects.get(retry_of=run)
    assert retry.status == "queued" and sent[-1] == retry.pk
    refused = studio.post(url("run_retry", project, retry.pk), {"next": "https://evil.example/"}, follow=True)
    assert "Only failed or cancelled runs can be retried." in refused.content.decode()
    assert refused.redirect_chain[-1][0] == url("overview", project)


def test_make_current_through_the_service(studio, project):
    old = model_version_register(project=project, name="sft-1", kind="policy", artifact_path="/a", make_current=True)
    new = model_version_register(project=project, name="sft-2", kind="policy", artifact_path="/b", parent=old)
    response = studio.post(url("make_current", project, new.pk), follow=True)
    assert "sft-2 is now the current policy." in response.content.decode()
    assert list(ModelVersion.objects.filter(is_current=True)) == [new]


def test_make_current_is_scoped_to_the_project(studio, project):
    foreign = model_version_register(project=make_project(), name="x", kind="policy", artifact_path="/c")
    assert studio.post(url("make_current", project, foreign.pk)).status_code == 404
    assert not ModelVersion.objects.get(pk=foreign.pk).is_current


def test_round_cancel_and_check_now(studio, project, admin, sent):
    from labelapp.services.rounds import round_start

    rnd = round_start(project=project, user=admin, params={"prompts": 1, "min_rankings": 1})
    checked = studio.post(url("round_advance", project, rnd.pk), follow=True)
    assert "is still sampling completions to rank" in checked.content.decode()
    response = studio.post(url("round_cancel", project, rnd.pk), follow=True)
    rnd.refresh_from_db()
    assert rnd.stage == "cancelled" and rnd.runs.get().status == "cancelled"
    assert f"Round {rnd.number} cancelled" in response.content.decode()
    twice = studio.post(url("round_cancel", project, rnd.pk), follow=True)
    assert twice.status_code == 200 and "already ended" in twice.content.decode()
    assert studio.get(url("status", project)).json()["rounds"][0]["steps"][-1]["state"] == "cancelled"


def test_throughput_counts_each_annotators_labels_in_the_last_day_and_week(project, annotator):
    from labelapp.models import Demonstration, Ranking
    from labelapp.selectors import studio
    from labelapp.services.labels import ranking_submit

    other = add_member(project, make_user("zoe"))
    for _ in range(3):
        make_prompt(project)
    for user in (annotator, annotator, other):
        lease = task_claim(project=project, user=user, queue="write")
        demonstration_submit(assignment_id=lease.pk, user=user, text="An answer.", time_spent_ms=1)
    make_task(project, texts=["a", "b"])
    lease = task_claim(project=project, user=other, queue="rank")
    ids = list(lease.ranking_task.completions.values_list("id", flat=True))
    ranking_submit(assignment_id=lease.pk, user=other, order=[[ids[0]], [ids[1]]], time_spent_ms=1)
    now = timezone.now()
    first, second = Demonstration.objects.filter(author=annotator).order_by("id")
    Demonstration.objects.filter(pk=first.pk).update(created_at=now - timedelta(days=2))  # this week only
    Demonstration.objects.filter(pk=second.pk).update(created_at=now - timedelta(days=8))  # too old
    assert Ranking.objects.count() == 1

    rows = {r["username"]: r for r in studio.annotator_throughput(project=project, now=now)}
    assert set(rows) == {annotator.username, "zoe"}
    assert {k: rows["zoe"][k] for k in ("day", "week", "demonstrations", "rankings")} == {
        "day": 2, "week": 2, "demonstrations": 1, "rankings": 1}
    assert (rows[annotator.username]["day"], rows[annotator.username]["week"]) == (0, 1)


def test_round_shows_its_blind_evaluation_win_rate_in_the_page_and_the_polling_json(studio, project, admin):
    from labelapp.models import Queue
    from labelapp.selectors.labels import comparison_sides
    from labelapp.services.labels import comparison_submit
    from labelapp.services.projects import evaluation_task_create

    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new = ModelVersion.objects.create(project=project, name="policy r1")
    old = ModelVersion.objects.create(project=project, name="sft r1")
    page = studio.get(url("overview", project)).content.decode()
    assert 'class="round-evaluation" data-field="evaluation_text" hidden' in page  # no tasks yet: nothing shown
    for i in range(4):
        evaluation_task_create(project=project, round=rnd, prompt=make_prompt(project), model_a=new, model_b=old,
                               text_a=f"new {i}", text_b=f"old {i}", reward_a=float(i % 2), reward_b=0.5)
    status = studio.get(url("status", project)).json()
    assert status["rounds"][0]["evaluation_text"] == (
        "Blind evaluation, 4 held-out prompts: no judgments yet; reward model 50.0% [95% CI 0.0%–100.0%], "
        "length-controlled 50.0% [95% CI 0.0%–100.0%]. Mean answer length: new policy 5, parent 5 characters.")
    for preferred in ["a", "a", "a", "b"]:  # the candidate wins three of four prompts
        user = add_member(project)
        lease = task_claim(project=project, user=user, queue=Queue.COMPARE)
        a_left, _ = comparison_sides(task=lease.evaluation_task, user=user)
        side = "left" if (preferred == "a") == a_left else "right"
        comparison_submit(assignment_id=lease.pk, user=user, preferred=side, a_shown_left=a_left)
    text = studio.get(url("status", project)).json()["rounds"][0]["evaluation_text"]
    assert text.startswith("Blind evaluation, 4 held-out prompts: the new policy wins 75.0% [95% CI ")
    assert "(4 judgments on 4 prompts), length-controlled 75.0% [95% CI " in text  # equal lengths: the raw rate
    assert "; reward model 50.0%" in text
    assert text in studio.get(url("overview", project)).content.decode()


def test_the_polling_json_carries_models_queues_throughput_and_a_waiting_rounds_count(studio, project, admin, annotator):
    """What the overview refreshes without a reload: a round waiting for rankings is open (so the
    page keeps polling) but not active (so it backs off), and says how many rankings are in."""
    sft = model_version_register(project=project, name="sft-3", kind="policy", artifact_path="/x",
                                 metrics={"loss/train": 1.25}, make_current=True)
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="ranking",
                               params={"prompts": 2, "min_rankings": 8}, sft_policy=sft)
    sample = run_create(project=project, kind="sample", params={})
    TrainingRun.objects.filter(pk=sample.pk).update(
        round=rnd, status="succeeded", started_at=timezone.now() - timedelta(minutes=1), finished_at=timezone.now())
    task = make_task(project)  # created after the round's sampling began: one of its tasks
    lease = task_claim(project=project, user=annotator, queue="rank")
    from labelapp.services.labels import ranking_submit

    ranking_submit(assignment_id=lease.pk, user=annotator, order=[list(task.completions.values_list("id", flat=True))])
    data = studio.get(url("status", project)).json()
    assert data["active"] is False and data["open"] is True
    (row,) = data["rounds"]
    assert row["waiting_text"] == "1 / 8 rankings of this round's tasks" and row["method_label"] == "DPO"
    assert row["urls"] == {name: url(f"round_{name}", project, rnd.pk) for name in ("advance", "cancel", "promote", "discard")}
    (model,) = data["models"]
    assert model["name"] == "sft-3" and model["is_current"] and model["metrics"] == [["loss/train", "1.2500"]]
    assert model["make_current_url"] == url("make_current", project, sft.pk)
    queues = {q["queue"]: q["waiting"] for q in data["queues"]}
    assert queues["rank"] == 0 and queues["write"] == 1
    assert [(p["username"], p["rankings"]) for p in data["throughput"]] == [(annotator.username, 1)]
    assert "user_id" not in data["throughput"][0]
    page = studio.get(url("overview", project)).content.decode()
    assert "1 / 8 rankings of this round&#x27;s tasks" in page
