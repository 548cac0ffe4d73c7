"""Django admin: every labelapp model is registered, and each changelist and change page renders
for a superuser (PostgreSQL); service-owned rows are read-only; an API token's digest is never
editable and never shown in full."""
from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from labelapp import models as m
from tests.conftest import add_member, make_prompt, make_task, make_user

pytestmark = pytest.mark.django_db


def _superuser_client():
    user = make_user(is_superuser=True, is_staff=True)
    client = Client()
    client.force_login(user)
    return client, user


@pytest.fixture
def one_of_each(project):
    """At least one row of every labelapp model."""
    from labelapp.services.tokens import api_token_create

    user = add_member(project, role="annotator")
    task = make_task(project)
    prompt = task.prompt
    c1, c2 = list(task.completions.all())[:2]
    policy = m.ModelVersion.objects.create(project=project, name="policy-a", artifact_path="/x/a")
    other = m.ModelVersion.objects.create(project=project, name="policy-b", parent=policy, artifact_path="/x/b")
    rnd = m.Round.objects.create(project=project, number=1, base_policy=policy, new_policy=other)
    m.TrainingRun.objects.create(project=project, round=rnd, kind="sft", input_model=policy, output_model=other,
                                 result={"disk_bytes": 12_345_678})
    ev = m.EvaluationTask.objects.create(project=project, round=rnd, prompt=make_prompt(project), model_a=other,
                                         model_b=policy, completion_a=c1, completion_b=c2)
    m.Comparison.objects.create(task=ev, annotator=user, winner="a", a_shown_left=True)
    m.Ranking.objects.create(task=task, annotator=user, order=[[c1.pk], [c2.pk]])
    m.Demonstration.objects.create(prompt=prompt, author=user, text="a demonstration")
    from django.utils import timezone

    now = timezone.now()
    m.Assignment.objects.create(project=project, user=user, queue="write", prompt=prompt, leased_at=now, expires_at=now)
    m.ReliabilityFit.objects.create(project=project, labels_hash="h" * 64)
    m.Adjudication.objects.create(task=task, reviewer=user, order=[[c1.pk], [c2.pk]])
    m.AILabel.objects.create(task=task, source="reward_model", model_version=policy, order=[[c1.pk], [c2.pk]])
    from labelapp.services.templates import prompt_template_create

    prompt_template_create(project=project, name="qa", text="Question: {question}")
    token, key = api_token_create(user=user, name="box")
    return token, key


def test_every_labelapp_model_is_registered():
    missing = [model.__name__ for model in apps.get_app_config("labelapp").get_models() if model not in admin.site._registry]
    assert missing == []


def test_every_changelist_and_change_page_renders(one_of_each):
    client, _ = _superuser_client()
    for model in apps.get_app_config("labelapp").get_models():
        meta = model._meta
        obj = model.objects.order_by("pk").first()
        assert obj is not None, f"fixture made no {meta.model_name}"
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        response = client.get(changelist)
        assert response.status_code == 200, (meta.model_name, response.status_code)
        # filters and search do not break the page
        response = client.get(changelist, {"q": "a"})
        assert response.status_code == 200, (meta.model_name, "search")
        change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
        response = client.get(change)
        assert response.status_code == 200, (meta.model_name, response.status_code)


def test_run_changelist_shows_disk_use(one_of_each):
    client, _ = _superuser_client()
    response = client.get(reverse("admin:labelapp_trainingrun_changelist"))
    assert "12.3" in response.content.decode()


def test_service_owned_rows_are_read_only(one_of_each):
    client, _ = _superuser_client()
    rnd = m.Round.objects.get()
    url = reverse("admin:labelapp_round_change", args=[rnd.pk])
    response = client.post(url, {"stage": "done", "number": 7})
    assert response.status_code == 403
    rnd.refresh_from_db()
    assert (rnd.stage, rnd.number) == ("sft", 1)
    assert client.get(reverse("admin:labelapp_trainingrun_add")).status_code == 403
    run = m.TrainingRun.objects.get()
    assert client.post(reverse("admin:labelapp_trainingrun_delete", args=[run.pk]), {"post": "yes"}).status_code == 403
    assert m.TrainingRun.objects.filter(pk=run.pk).exists()


def test_token_digest_is_read_only_and_never_shown_in_full(one_of_each):
    token, key = one_of_each
    client, _ = _superuser_client()
    url = reverse("admin:labelapp_apitoken_change", args=[token.pk])
    page = client.get(url).content.decode()
    assert token.digest not in page and key not in page
    assert token.digest[:8] in page
    assert 'name="digest"' not in page
    listing = client.get(reverse("admin:labelapp_apitoken_changelist")).content.decode()
    assert token.digest not in listing
    # a forged POST cannot change the digest (or the owner); the name can change
    other = make_user()
    response = client.post(url, {"name": "renamed", "digest": "0" * 64, "user": other.pk})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.name == "renamed"
    assert token.digest != "0" * 64 and token.user_id != other.pk
    from labelapp.services.tokens import api_token_authenticate

    assert api_token_authenticate(key) is not None
    # no add page: keys are made where they can be shown once
    assert client.get(reverse("admin:labelapp_apitoken_add")).status_code == 403


def test_token_revoke_action(one_of_each):
    token, key = one_of_each
    client, _ = _superuser_client()
    response = client.post(reverse("admin:labelapp_apitoken_changelist"),
                           {"action": "revoke", "_selected_action": [token.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    from labelapp.services.tokens import api_token_authenticate

    assert api_token_authenticate(key) is None


def test_run_cancel_action_goes_through_the_service(one_of_each, project):
    client, _ = _superuser_client()
    queued = m.TrainingRun.objects.create(project=project, kind="reward")
    finished = m.TrainingRun.objects.get(kind="sft")
    finished.status = "succeeded"
    finished.save()
    response = client.post(reverse("admin:labelapp_trainingrun_changelist"),
                           {"action": "cancel_runs", "_selected_action": [queued.pk, finished.pk]}, follow=True)
    assert response.status_code == 200
    queued.refresh_from_db()
    finished.refresh_from_db()
    assert (queued.status, queued.cancel_requested) == ("cancelled", True)
    assert finished.status == "succeeded"
    assert "already succeeded" in response.content.decode()


def test_labels_and_assignments_are_read_only_in_the_admin(one_of_each):
    client, _ = _superuser_client()
    for model, changes in ((m.Ranking, {"order": "[]"}), (m.Demonstration, {"text": "edited"}),
                           (m.Assignment, {"status": "submitted"})):
        obj = model.objects.get()
        name = model._meta.model_name
        before = model.objects.filter(pk=obj.pk).values().get()
        assert client.post(reverse(f"admin:labelapp_{name}_change", args=[obj.pk]), changes).status_code == 403
        assert client.post(reverse(f"admin:labelapp_{name}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403
        assert model.objects.filter(pk=obj.pk).values().get() == before  # counters and lineage stay true


def _gold_post(client, task, gold_order: str):
    rankings = list(task.rankings.order_by("pk"))
    data = {"gold_order": gold_order, "rankings-TOTAL_FORMS": len(rankings), "rankings-INITIAL_FORMS": len(rankings),
            "rankings-MIN_NUM_FORMS": 0, "rankings-MAX_NUM_FORMS": 1000}
    for i, ranking in enumerate(rankings):
        data.update({f"rankings-{i}-id": ranking.pk, f"rankings-{i}-task": task.pk})
    return client.post(reverse("admin:labelapp_rankingtask_change", args=[task.pk]), data)


def test_gold_marked_in_the_admin_goes_through_the_service(project):
    """The admin's one edit on a ranking task is its gold answer, checked and scored as in the studio."""
    from labelapp.services.labels import ranking_submit
    from labelapp.services.queue import task_claim

    client, _ = _superuser_client()
    annotator = add_member(project, role="annotator")
    task = make_task(project)
    ids = sorted(task.completions.values_list("id", flat=True))
    lease = task_claim(project=project, user=annotator, queue=m.Queue.RANK)
    ranking_submit(assignment_id=lease.pk, user=annotator, order=[[i] for i in ids])
    order = "[" + ", ".join(f"[{i}]" for i in ids) + "]"
    response = _gold_post(client, task, f"[[{ids[0]}], [{ids[0] + 10_000}]]")
    assert response.status_code == 200 and "not" in response.content.decode()  # an id not in the task
    task.refresh_from_db()
    assert task.gold_order is None
    assert _gold_post(client, task, order).status_code == 302
    task.refresh_from_db()
    assert task.gold_order == [[i] for i in ids] and task.rankings.get().gold_score == 1.0  # scored at once
    assert client.post(reverse("admin:labelapp_rankingtask_delete", args=[task.pk]), {"post": "yes"}).status_code == 403
