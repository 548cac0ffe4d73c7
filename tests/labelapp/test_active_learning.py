"""Active learning: the reward model's uncertainty about each ranking task (rlhf.judge.pairwise_entropy),
stored by the worker, orders the rank queue and the next round's prompts when a project turns it on;
admins see it, annotators never do."""
from __future__ import annotations

import math

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from labelapp.models import ModelVersion, Prompt, Queue, RankingTask, TrainingRun
from labelapp.services.quality import active_learning_set, uncertainty_record, uncertainty_score_enqueue
from labelapp.services.queue import task_claim
from rlhf.judge import pairwise_entropy
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db

LN2 = math.log(2)


def test_pairwise_entropy_by_hand():
    assert pairwise_entropy([0.0, 0.0, 0.0]) == pytest.approx(LN2)  # every pair a coin flip
    assert pairwise_entropy([50.0, 0.0]) == pytest.approx(0.0, abs=1e-9)  # sure
    p = 1 / (1 + math.exp(-1.0))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    # pairs (1, 0), (1, 1), (0, 1): differences 1, 0, -1
    assert pairwise_entropy([1.0, 0.0, 1.0]) == pytest.approx((h + LN2 + h) / 3)
    assert pairwise_entropy([3.0]) == 0.0


@pytest.fixture
def scored():
    project = make_project(k=2, overlap=1)
    project.gold_rate = 0
    project.save()
    admin = add_member(project, role="admin")
    rm = ModelVersion.objects.create(project=project, name="rm-1", kind="reward")
    tasks = [make_task(project) for _ in range(4)]  # oldest first
    uncertainty_record(project=project, model_version_id=rm.pk,
                       scores={tasks[0].pk: 0.1, tasks[1].pk: 0.6, tasks[2].pk: 0.3})  # tasks[3] not scored
    return project, admin, rm, tasks


def served_order(project, n):
    order = []
    for _ in range(n):
        user = add_member(project)
        order.append(task_claim(project=project, user=user, queue=Queue.RANK).ranking_task_id)
    return order


def test_queue_serves_the_least_certain_first_only_when_on(scored):
    project, admin, _, tasks = scored
    assert served_order(project, 1) == [tasks[0].pk]  # off: fewest labels, then oldest
    RankingTask.objects.update(ranking_count=0)
    active_learning_set(project=project, user=admin, enabled=True)
    project.refresh_from_db()
    # overlap 1: each claim takes one task out of the others' reach; the first claim above still holds tasks[0]
    assert served_order(project, 3) == [tasks[1].pk, tasks[2].pk, tasks[3].pk]  # unscored after the scored ones


def test_uncertainty_recorded_with_each_prompts_highest_and_bad_scores_refused(scored):
    project, _, rm, tasks = scored
    prompt = tasks[1].prompt
    again = make_task(project, prompt=prompt)
    assert uncertainty_record(project=project, model_version_id=rm.pk, scores={again.pk: 0.2}) == 1
    prompt.refresh_from_db()
    assert prompt.uncertainty == pytest.approx(0.6)  # the highest of its tasks under this model
    task = RankingTask.objects.get(pk=tasks[1].pk)
    assert task.uncertainty == pytest.approx(0.6) and task.uncertainty_model == rm
    before = list(RankingTask.objects.order_by("id").values_list("uncertainty", flat=True))
    for bad in (-0.1, 0.8, float("nan"), "high"):
        with pytest.raises(ValidationError, match="from 0 to ln 2"):
            uncertainty_record(project=project, model_version_id=rm.pk, scores={tasks[0].pk: 0.5, tasks[3].pk: bad})
    policy = ModelVersion.objects.create(project=project, name="pi", kind="policy")
    with pytest.raises(ValidationError, match="not a reward model of this project"):
        uncertainty_record(project=project, model_version_id=policy.pk, scores={tasks[0].pk: 0.5})
    assert list(RankingTask.objects.order_by("id").values_list("uncertainty", flat=True)) == before  # nothing half-written


def test_only_admins_switch_it_and_score(scored, monkeypatch):
    project, admin, rm, _ = scored
    annotator = add_member(project)
    with pytest.raises(PermissionDenied):
        active_learning_set(project=project, user=annotator, enabled=True)
    with pytest.raises(PermissionDenied):
        uncertainty_score_enqueue(project=project, user=annotator)
    with pytest.raises(ValidationError, match="no current reward model"):
        uncertainty_score_enqueue(project=project, user=admin)
    ModelVersion.objects.filter(pk=rm.pk).update(is_current=True)
    sent = []
    monkeypatch.setattr("celery.current_app.send_task", lambda name, args, queue: sent.append((name, args, queue)))
    assert uncertainty_score_enqueue(project=project, user=admin)
    assert sent == [("studio.uncertainty_score", [project.pk, rm.pk], "gpu")]


def test_the_worker_scores_every_task_with_a_tiny_reward_model(tiny_dir):
    from workers.checks import score_uncertainty

    project = make_project(k=3, overlap=1)
    tasks = [make_task(project) for _ in range(3)]
    rm = ModelVersion.objects.create(project=project, name="rm", kind="reward", artifact_path=tiny_dir)
    assert score_uncertainty(project_id=project.pk, model_version_id=rm.pk) == 3
    for task in RankingTask.objects.filter(pk__in=[t.pk for t in tasks]):
        assert 0.0 <= task.uncertainty <= LN2 and task.uncertainty_model_id == rm.pk
        assert Prompt.objects.get(pk=task.prompt_id).uncertainty == pytest.approx(task.uncertainty)


def test_next_round_samples_the_least_certain_prompts(tiny_dir, settings, tmp_path):
    from tests.workers.conftest import execute
    from workers import executors

    settings.DATA_DIR = tmp_path
    project = make_project(k=2, overlap=1, base_model=tiny_dir)
    prompts = [make_prompt(project, text=f"Question {i}?") for i in range(6)]
    Prompt.objects.filter(pk=prompts[4].pk).update(uncertainty=0.6)
    Prompt.objects.filter(pk=prompts[1].pk).update(uncertainty=0.5)
    Prompt.objects.filter(pk=prompts[2].pk).update(uncertainty=0.01)

    def sampled(seed):
        run = TrainingRun.objects.create(project=project, kind="sample", status=TrainingRun.Status.RUNNING,
                                         params={"prompts": 2, "max_new_tokens": 2, "seed": seed})
        execute(executors.run_sample, run)
        return set(RankingTask.objects.filter(project=project).values_list("prompt_id", flat=True))

    project.active_learning = True
    project.save()
    assert sampled(3) == {prompts[4].pk, prompts[1].pk}


def test_admins_see_scores_and_annotators_do_not(scored):
    project, admin, _, tasks = scored
    client = Client()
    client.force_login(admin)
    page = client.get(f"/studio/p/{project.slug}/quality/").content.decode()
    assert 'id="uncertain-tasks"' in page and "0.600" in page and 'id="active-on"' in page
    response = client.post(f"/studio/p/{project.slug}/quality/active-learning/", {"enabled": "1"}, follow=True)
    assert "Active learning is on." in response.content.decode()
    project.refresh_from_db()
    assert project.active_learning
    annotator = add_member(project)
    client.force_login(annotator)
    assert client.get(f"/studio/p/{project.slug}/quality/").status_code == 404
    assert client.post(f"/studio/p/{project.slug}/quality/active-learning/", {"enabled": "0"}).status_code == 404
    project.refresh_from_db()
    assert project.active_learning
    rank = client.get(f"/p/{project.slug}/rank/", follow=True).content.decode()
    api = client.get(f"/api/v1/ranking-tasks/{tasks[1].pk}/").content.decode()
    assert "uncertainty" not in rank and "0.6" not in api
