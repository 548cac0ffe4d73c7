"""Gold items: served at the project's rate, scored, never in training, exports, overlap or statistics."""
from __future__ import annotations

import json
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from labelapp.formats.exports import ExportFilter, export_pairs
from labelapp.models import Comparison, EvaluationTask, ModelVersion, Queue, Ranking, RankingTask
from labelapp.selectors.stats import evaluation_summary, project_agreement
from labelapp.services.labels import comparison_submit, gold_score, ranking_submit
from labelapp.services.projects import evaluation_task_create
from labelapp.services.quality import evaluation_task_set_gold, gold_import, ranking_task_set_gold
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db


def ids_of(task):
    return sorted(task.completions.values_list("id", flat=True))


def always(gold: bool):
    return mock.patch("labelapp.services.queue.gold_draw", return_value=0.0 if gold else 1.0)


@pytest.fixture
def setup():
    project = make_project(k=3, overlap=1)
    admin = add_member(project, role="admin")
    real = [make_task(project) for _ in range(3)]
    gold = make_task(project)
    a, b, c = ids_of(gold)
    ranking_task_set_gold(task_id=gold.pk, user=admin, order=[[a], [b], [c]])
    return project, admin, real, gold


def test_gold_score_is_the_share_of_strict_gold_pairs_kept():
    assert gold_score([[1], [2], [3]], [[1], [2], [3]]) == 1.0
    assert gold_score([[2], [1], [3]], [[1], [2], [3]]) == pytest.approx(2 / 3)
    assert gold_score([[1, 2], [3]], [[1], [2], [3]]) == pytest.approx(2 / 3)  # a tie where gold orders is wrong
    assert gold_score([[3], [2], [1]], [[1], [2, 3]]) == 0.0  # gold's tie (2, 3) is not scored
    assert gold_score([], [[1], [2]]) == 0.0  # "none acceptable" against a gold order
    assert gold_score([[1], [2]], None) is None


def test_gold_is_served_to_everyone_once_scored_and_never_fills_overlap(setup):
    project, _, real, gold = setup
    users = [add_member(project) for _ in range(3)]
    a, b, c = ids_of(gold)
    with always(gold=True):
        for user, order in zip(users, ([[a], [b], [c]], [[c], [b], [a]], [[b], [a], [c]])):
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
            assert lease.ranking_task_id == gold.pk  # overlap is 1, yet every annotator gets the gold item
            ranking_submit(assignment_id=lease.pk, user=user, order=order)
        # Each has done the gold item: now real work, even with the draw saying gold.
        lease = task_claim(project=project, user=users[0], queue=Queue.RANK)
        assert lease.ranking_task_id in {t.pk for t in real}
    scores = dict(Ranking.objects.filter(task=gold).values_list("annotator_id", "gold_score"))
    assert scores == {users[0].pk: 1.0, users[1].pk: 0.0, users[2].pk: pytest.approx(2 / 3)}
    assert all(t.ranking_count == 0 for t in RankingTask.objects.filter(pk__in=[t.pk for t in real[1:]]))


def test_gold_and_real_tasks_look_the_same_to_annotators_in_the_api(setup):
    """The ranking-task list gives annotators no count: every annotator ranks a gold task, so a count above
    the project's overlap would single it out. Reviewers still see the counts."""
    from rest_framework.test import APIClient

    project, _, real, gold = setup
    users = [add_member(project) for _ in range(3)]
    a, b, c = ids_of(gold)
    with always(gold=True):
        for user in users:
            ranking_submit(assignment_id=task_claim(project=project, user=user, queue=Queue.RANK).pk, user=user,
                           order=[[a], [b], [c]])
    api = APIClient()
    api.force_authenticate(users[0])
    rows = {r["id"]: r for r in api.get("/api/v1/ranking-tasks/", {"project": project.pk}).json()["results"]}
    assert set(rows) == {gold.pk, *(t.pk for t in real)}
    assert {frozenset(r) for r in rows.values()} == {frozenset({"id", "project", "prompt", "completions", "created_at"})}
    assert "ranking_count" not in api.get(f"/api/v1/ranking-tasks/{gold.pk}/").json()
    api.force_authenticate(add_member(project, role="reviewer"))
    counts = {r["id"]: r["ranking_count"] for r in api.get("/api/v1/ranking-tasks/", {"project": project.pk}).json()["results"]}
    assert counts[gold.pk] == 3 and project.overlap == 1


def test_gold_is_not_served_when_no_real_work_is_left(setup):
    project, _, real, gold = setup
    user = add_member(project)
    with always(gold=False):
        for _ in real:
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
            assert lease.ranking_task_id != gold.pk
            ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in ids_of(lease.ranking_task)])
    with always(gold=True):
        assert task_claim(project=project, user=user, queue=Queue.RANK) is None


def test_gold_rate_zero_never_serves_gold(setup):
    project, _, _, gold = setup
    project.gold_rate = 0
    project.save()
    user = add_member(project)
    with always(gold=True):
        assert task_claim(project=project, user=user, queue=Queue.RANK).ranking_task_id != gold.pk


def test_gold_never_enters_exports_training_or_agreement(setup):
    project, _, real, gold = setup
    project.overlap = 2
    project.save()
    RankingTask.objects.filter(pk__in=[t.pk for t in real[1:]]).delete()  # one real task, ranked by both
    users = [add_member(project) for _ in range(2)]
    for user in users:
        with always(gold=True):
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
        assert lease.ranking_task_id == gold.pk
        ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in ids_of(gold)])
    lines = [json.loads(x) for x in b"".join(export_pairs(ExportFilter(project=project))).splitlines()]
    assert lines == []  # only gold was ranked
    assert project_agreement(project=project)["items_with_overlap"] == 0
    # A real task ranked twice does show up.
    for user in users:
        with always(gold=False):
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
        ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in ids_of(lease.ranking_task)])
    assert project_agreement(project=project)["items_with_overlap"] == 1
    lines = b"".join(export_pairs(ExportFilter(project=project))).splitlines()
    assert len(lines) == 2 * 3  # two rankings x C(3,2) pairs, none from the gold task


def test_marking_gold_scores_existing_rankings_and_unmarking_clears(setup):
    project, admin, real, _ = setup
    user = add_member(project)
    with always(gold=False):
        lease = task_claim(project=project, user=user, queue=Queue.RANK)
    task = lease.ranking_task
    x, y, z = ids_of(task)
    ranking = ranking_submit(assignment_id=lease.pk, user=user, order=[[x], [y], [z]])
    assert ranking.gold_score is None
    ranking_task_set_gold(task_id=task.pk, user=admin, order=[[z], [y], [x]])
    ranking.refresh_from_db()
    assert ranking.gold_score == 0.0
    ranking_task_set_gold(task_id=task.pk, user=admin, order=None)
    ranking.refresh_from_db()
    assert ranking.gold_score is None and RankingTask.objects.get(pk=task.pk).gold_order is None


def test_bad_gold_orders_are_refused_and_only_admins_mark(setup):
    project, admin, real, _ = setup
    x, y, z = ids_of(real[0])
    with pytest.raises(ValidationError, match="all are tied"):
        ranking_task_set_gold(task_id=real[0].pk, user=admin, order=[[x, y, z]])
    with pytest.raises(ValidationError, match="leaves out"):
        ranking_task_set_gold(task_id=real[0].pk, user=admin, order=[[x], [y]])
    with pytest.raises(PermissionDenied):
        ranking_task_set_gold(task_id=real[0].pk, user=add_member(project, role="reviewer"), order=[[x], [y], [z]])
    assert RankingTask.objects.get(pk=real[0].pk).gold_order is None


def test_gold_import_is_all_or_nothing_with_item_numbers(setup):
    project, admin, real, _ = setup
    x, y, z = ids_of(real[0])
    other = make_task(make_project())
    with pytest.raises(ValidationError) as err:
        gold_import(project=project, user=admin, items=[
            {"ranking_task": real[0].pk, "expected": [[x], [y], [z]]},
            {"ranking_task": other.pk, "expected": [[1], [2]]},
            {"ranking_task": real[1].pk},
            {"evaluation_task": 10**9, "expected": "a"},
        ])
    assert err.value.messages == [
        f"item 2: there is no ranking task {other.pk} in this project",
        'item 3: "expected" is missing',
        f"item 4: there is no evaluation task {10**9} in this project",
    ]
    assert RankingTask.objects.get(pk=real[0].pk).gold_order is None  # item 1 was not kept
    done = gold_import(project=project, user=admin, items=[{"ranking_task": real[0].pk, "expected": [[x], [y], [z]]}])
    assert done == {"ranking_tasks": 1, "evaluation_tasks": 0}
    assert RankingTask.objects.get(pk=real[0].pk).gold_order == [[x], [y], [z]]


def test_gold_comparisons_are_scored_and_left_out_of_the_win_rate():
    project = make_project(overlap=1)
    admin = add_member(project, role="admin")
    new = ModelVersion.objects.create(project=project, name="new")
    old = ModelVersion.objects.create(project=project, name="old")
    tasks = []
    for i in range(3):
        prompt = make_prompt(project)
        tasks.append(evaluation_task_create(project=project, prompt=prompt, model_a=new, model_b=old,
                                            text_a=f"new {i}", text_b=f"old {i}"))
    evaluation_task_set_gold(task_id=tasks[0].pk, user=admin, winner="b")
    with pytest.raises(ValidationError, match="must be a, b or tie"):
        evaluation_task_set_gold(task_id=tasks[1].pk, user=admin, winner="left")
    user = add_member(project)
    with always(gold=True):
        lease = task_claim(project=project, user=user, queue=Queue.COMPARE)
    assert lease.evaluation_task_id == tasks[0].pk
    comparison = comparison_submit(assignment_id=lease.pk, user=user, preferred="left", a_shown_left=True)
    assert comparison.winner == "a" and comparison.gold_correct is False
    with always(gold=False):
        lease = task_claim(project=project, user=user, queue=Queue.COMPARE)
    comparison_submit(assignment_id=lease.pk, user=user, preferred="left", a_shown_left=True)
    summary = evaluation_summary(project=project, round_id=None)
    assert summary["tasks"] == 2 and summary["human"]["n"] == 1 and summary["human"]["win_rate"] == 1.0
    assert Comparison.objects.filter(gold_correct__isnull=True).count() == 1
    assert EvaluationTask.objects.get(pk=tasks[0].pk).gold_winner == "b"
