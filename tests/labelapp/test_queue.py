from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from labelapp.models import Assignment, Queue, RankingTask
from labelapp.services.labels import ranking_submit
from labelapp.services.queue import assignment_skip, task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db


def rank_all(assignment, user):
    ids = list(assignment.ranking_task.completions.values_list("id", flat=True))
    return ranking_submit(assignment_id=assignment.pk, user=user, order=[[i] for i in ids])


def test_claim_prefers_fewest_labels_then_oldest():
    project = make_project(overlap=2)
    a, b, c = (add_member(project) for _ in range(3))
    first, second = make_task(project), make_task(project)
    got = task_claim(project=project, user=a, queue=Queue.RANK)
    assert got.ranking_task == first  # oldest among equals
    rank_all(got, a)
    # `first` now has one label, `second` none: fewest labels wins over age
    assert task_claim(project=project, user=b, queue=Queue.RANK).ranking_task == second
    # b's live lease does not count as a label: `second` still has fewer submitted labels
    assert task_claim(project=project, user=c, queue=Queue.RANK).ranking_task == second


def test_claim_returns_the_same_live_lease_again(project, annotator):
    make_task(project)
    make_task(project)
    one = task_claim(project=project, user=annotator, queue=Queue.RANK)
    again = task_claim(project=project, user=annotator, queue=Queue.RANK)
    assert one.pk == again.pk
    assert Assignment.objects.count() == 1


def test_item_leaves_queue_at_overlap_and_never_returns_to_same_annotator():
    project = make_project(overlap=2)
    users = [add_member(project) for _ in range(3)]
    task = make_task(project)
    for user in users[:2]:
        rank_all(task_claim(project=project, user=user, queue=Queue.RANK), user)
    task.refresh_from_db()
    assert task.ranking_count == 2
    assert task_claim(project=project, user=users[2], queue=Queue.RANK) is None
    assert task_claim(project=project, user=users[0], queue=Queue.RANK) is None


def test_live_lease_holds_the_item_and_expiry_returns_it(project):
    a, b = add_member(project), add_member(project)
    make_task(project)
    now = timezone.now()
    held = task_claim(project=project, user=a, queue=Queue.RANK, lease_seconds=60, now=now)
    assert task_claim(project=project, user=b, queue=Queue.RANK, now=now + timedelta(seconds=59)) is None
    later = task_claim(project=project, user=b, queue=Queue.RANK, now=now + timedelta(seconds=61))
    assert later is not None and later.ranking_task_id == held.ranking_task_id


def test_expired_own_lease_is_renewed_not_duplicated(project, annotator):
    make_task(project)
    now = timezone.now()
    first = task_claim(project=project, user=annotator, queue=Queue.RANK, lease_seconds=10, now=now)
    second = task_claim(project=project, user=annotator, queue=Queue.RANK, now=now + timedelta(minutes=5))
    assert second.pk == first.pk
    assert second.expires_at > now + timedelta(minutes=5)
    assert Assignment.objects.count() == 1


def test_lease_length_comes_from_settings(settings, project, annotator):
    settings.LABEL_LEASE_SECONDS = 90
    make_task(project)
    a = task_claim(project=project, user=annotator, queue=Queue.RANK)
    assert (a.expires_at - a.leased_at) == timedelta(seconds=90)


def test_skipped_item_goes_to_others_but_not_back(project):
    a, b = add_member(project), add_member(project)
    make_task(project)
    held = task_claim(project=project, user=a, queue=Queue.RANK)
    assignment_skip(assignment_id=held.pk, user=a, reason="unclear")
    assert task_claim(project=project, user=a, queue=Queue.RANK) is None
    assert task_claim(project=project, user=b, queue=Queue.RANK).ranking_task_id == held.ranking_task_id


def test_write_queue_hands_out_prompts_until_demonstrated(project, annotator):
    from labelapp.services.labels import demonstration_submit

    prompt = make_prompt(project)
    a = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    assert a.prompt == prompt
    demonstration_submit(assignment_id=a.pk, user=annotator, text="An answer.")
    other = add_member(project)
    assert task_claim(project=project, user=other, queue=Queue.WRITE) is None


def test_non_member_cannot_claim(project):
    from tests.conftest import make_user

    make_task(project)
    with pytest.raises(PermissionDenied):
        task_claim(project=project, user=make_user(), queue=Queue.RANK)


def _bulk_tasks(project, n):
    prompt = make_prompt(project)
    tasks = RankingTask.objects.bulk_create([RankingTask(project=project, prompt=prompt) for _ in range(n)])
    return tasks


def _claim_queries(project, user, gold: bool = False):
    """Queries of one claim, with the gold draw fixed (gold served when there is gold, or never)."""
    from unittest import mock

    with mock.patch("labelapp.services.queue.gold_draw", return_value=0.0 if gold else 1.0):
        with CaptureQueriesContext(connection) as ctx:
            assert task_claim(project=project, user=user, queue=Queue.RANK) is not None
    return len(ctx.captured_queries)


def test_claim_query_count_does_not_grow_with_the_queue():
    small, large = make_project(), make_project()
    _bulk_tasks(small, 10)
    _bulk_tasks(large, 10_000)
    assert _claim_queries(small, add_member(small)) == _claim_queries(large, add_member(large))


def test_claim_query_count_with_gold_does_not_grow_with_the_queue():
    from labelapp.services.quality import ranking_task_set_gold

    small, large = make_project(), make_project()
    for project, n in ((small, 10), (large, 10_000)):
        _bulk_tasks(project, n)
        gold = make_task(project)
        ids = list(gold.completions.values_list("id", flat=True))
        admin = add_member(project, role="admin")
        ranking_task_set_gold(task_id=gold.pk, user=admin, order=[[i] for i in ids])
    assert _claim_queries(small, add_member(small), gold=True) == _claim_queries(large, add_member(large), gold=True)
