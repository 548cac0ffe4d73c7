"""AI feedback in the studio: model labels kept apart, suggestions only when turned on (agreement
recorded), AI-vs-human agreement; the worker labels waiting tasks with a tiny reward model or judge."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from labelapp.models import AILabel, ModelVersion, Queue, Ranking
from labelapp.selectors.quality import ai_human_agreement, ai_suggestion, annotator_report
from labelapp.selectors.stats import project_agreement
from labelapp.services.labels import ranking_submit
from labelapp.services.quality import ai_label_record, ai_labels_enqueue, ranking_task_set_gold
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled():
    project = make_project(k=3, overlap=2)
    project.gold_rate = 0
    project.save()
    task = make_task(project)
    ids = sorted(task.completions.values_list("id", flat=True))
    version = ModelVersion.objects.create(project=project, name="rm-1", kind="reward")
    ai_label_record(task_id=task.pk, source="reward_model", model_version_id=version.pk,
                    order=[[ids[0]], [ids[1]], [ids[2]]], scores={ids[0]: 2.0, ids[1]: 1.0, ids[2]: 0.0})
    return project, task, ids, version


def rank(project, user, ids, order):
    lease = task_claim(project=project, user=user, queue=Queue.RANK)
    return ranking_submit(assignment_id=lease.pk, user=user, order=[[ids[i]] for i in order])


def test_ai_labels_never_count_as_human(labelled):
    project, task, ids, version = labelled
    again = ai_label_record(task_id=task.pk, source="reward_model", model_version_id=version.pk,
                            order=[[ids[2]], [ids[1]], [ids[0]]], scores={})
    assert AILabel.objects.count() == 1 and again.order == [[ids[0]], [ids[1]], [ids[2]]]  # written once
    task.refresh_from_db()
    assert task.ranking_count == 0 and not Ranking.objects.exists()
    assert project_agreement(project=project)["items_with_overlap"] == 0
    assert annotator_report(project=project)["annotators"] == []
    with pytest.raises(ValidationError, match="leaves out"):
        ai_label_record(task_id=task.pk, source="judge", model_version_id=version.pk, order=[[ids[0]]], scores={})


def test_suggestions_are_off_by_default_and_agreement_is_recorded_when_on(labelled):
    project, task, ids, _ = labelled
    a, b = add_member(project), add_member(project)
    client = Client()
    client.force_login(a)
    lease = task_claim(project=project, user=a, queue=Queue.RANK)
    assert "ai-suggestion" not in client.get(f"/p/{project.slug}/rank/{lease.pk}/").content.decode()
    first = ranking_submit(assignment_id=lease.pk, user=a, order=[[i] for i in ids])
    assert first.ai_agreement is None  # nothing was shown
    project.ai_suggestions = True
    project.save()
    client.force_login(b)
    lease = task_claim(project=project, user=b, queue=Queue.RANK)
    page = client.get(f"/p/{project.slug}/rank/{lease.pk}/").content.decode()
    assert 'id="ai-suggestion"' in page and "Suggestion from the reward model" in page
    second = ranking_submit(assignment_id=lease.pk, user=b, order=[[ids[2]], [ids[1]], [ids[0]]])
    assert second.ai_agreement == 0.0  # b reversed the suggestion


def test_a_task_made_gold_after_the_model_labelled_it_shows_no_suggestion_and_takes_no_new_label(labelled):
    project, task, ids, version = labelled
    letters = {ids[0]: "A", ids[1]: "B", ids[2]: "C"}
    assert ai_suggestion(task_id=task.pk, letters=letters) is not None
    ranking_task_set_gold(task_id=task.pk, user=add_member(project, role="admin"), order=[[i] for i in ids])
    assert ai_suggestion(task_id=task.pk, letters=letters) is None  # the model's order would give the answer away
    later = ModelVersion.objects.create(project=project, name="rm-2", kind="reward")
    assert ai_label_record(task_id=task.pk, source="reward_model", model_version_id=later.pk,
                           order=[[i] for i in ids], scores={}) is None
    assert AILabel.objects.filter(task=task).count() == 1


def test_suggestion_uses_the_annotators_letters(labelled):
    _, task, ids, _ = labelled
    text, source = ai_suggestion(task_id=task.pk, letters={ids[0]: "B", ids[1]: "C", ids[2]: "A"})
    assert text == "B > C > A" and source == "reward model"


def test_ai_human_agreement_hand_computed(labelled):
    project, task, ids, _ = labelled
    rank(project, add_member(project), ids, [0, 1, 2])  # agrees on 3 of 3 pairs
    rank(project, add_member(project), ids, [1, 0, 2])  # agrees on 2 of 3
    [row] = ai_human_agreement(project=project)
    assert row["tasks"] == 1 and row["n"] == 6 and row["agreement"] == pytest.approx(5 / 6)


def test_enqueue_needs_a_model_and_an_admin(labelled, monkeypatch):
    project, _, _, version = labelled
    admin = add_member(project, role="admin")
    sent = []
    monkeypatch.setattr("celery.current_app.send_task", lambda name, **kw: sent.append((name, kw)))
    with pytest.raises(ValidationError, match="no current reward model"):
        ai_labels_enqueue(project=project, user=admin, source="reward_model")
    version.is_current = True
    version.save()
    assert ai_labels_enqueue(project=project, user=admin, source="reward_model")
    assert sent == [("studio.ai_label", {"args": [project.pk, "reward_model", version.pk], "queue": "gpu"})]
    with pytest.raises(ValidationError, match="no current policy"):
        ai_labels_enqueue(project=project, user=admin, source="judge")


def test_the_worker_labels_waiting_tasks_with_a_tiny_reward_model_and_judge(tiny_dir):
    from workers.checks import ai_label_tasks

    project = make_project(k=3, overlap=1)
    tasks = [make_task(project) for _ in range(2)]
    rm = ModelVersion.objects.create(project=project, name="rm", kind="reward", artifact_path=tiny_dir)
    policy = ModelVersion.objects.create(project=project, name="pi", kind="policy", artifact_path=tiny_dir)
    assert ai_label_tasks(project_id=project.pk, source="reward_model", model_version_id=rm.pk) == 2
    assert ai_label_tasks(project_id=project.pk, source="reward_model", model_version_id=rm.pk) == 0  # done
    assert ai_label_tasks(project_id=project.pk, source="judge", model_version_id=policy.pk) == 2
    for task in tasks:
        labels = {label.source: label for label in AILabel.objects.filter(task=task)}
        assert set(labels) == {"reward_model", "judge"}
        ids = sorted(task.completions.values_list("id", flat=True))
        for label in labels.values():
            assert sorted(c for g in label.order for c in g) == ids and set(map(int, label.scores)) == set(ids)


def test_an_edit_measures_the_new_order_against_the_suggestion(labelled):
    """ai_agreement follows the ranking: reversing the suggestion gives 0, editing to its order gives 1, and a
    ranking given without a suggestion shown keeps None through an edit."""
    from labelapp.services.label_changes import ranking_edit

    project, task, ids, _ = labelled
    a, b = add_member(project), add_member(project)
    unseen = rank(project, a, ids, [2, 1, 0])
    project.ai_suggestions = True
    project.save()
    seen = rank(project, b, ids, [2, 1, 0])
    assert seen.ai_agreement == 0.0
    edited = ranking_edit(ranking_id=seen.pk, user=b, order=[[ids[0]], [ids[1]], [ids[2]]])
    assert edited.ai_agreement == 1.0
    assert Ranking.objects.get(pk=seen.pk).ai_agreement == 1.0  # stored, not only on the returned object
    ranking_edit(ranking_id=seen.pk, user=b, order=[[ids[0]], [ids[2]], [ids[1]]])
    assert Ranking.objects.get(pk=seen.pk).ai_agreement == pytest.approx(2 / 3)
    ranking_edit(ranking_id=unseen.pk, user=a, order=[[ids[0]], [ids[1]], [ids[2]]])
    assert Ranking.objects.get(pk=unseen.pk).ai_agreement is None  # a was never shown the suggestion
