"""Many annotators claiming and submitting at once, on PostgreSQL (SQLite ignores row locks)."""
import threading
from collections import Counter

import pytest
from django.db import connection, connections

from labelapp.models import Assignment, Queue, Ranking, RankingTask
from labelapp.services.labels import ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_task

CLAIMERS = 24


@pytest.mark.django_db(transaction=True)
def test_concurrent_claimers_never_exceed_overlap():
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL: run with DATABASE_URL=postgres://…")
    project = make_project(overlap=3, k=2)
    tasks = [make_task(project) for _ in range(20)]
    users = [add_member(project) for _ in range(CLAIMERS)]
    barrier = threading.Barrier(CLAIMERS)
    errors: list[BaseException] = []
    claimed_at_once: list[tuple[int, int]] = []

    def annotate(user):
        try:
            barrier.wait()
            while True:
                assignment = task_claim(project=project, user=user, queue=Queue.RANK)
                if assignment is None:
                    return
                claimed_at_once.append((user.pk, assignment.ranking_task_id))
                ids = list(
                    RankingTask.completions.through.objects.filter(
                        rankingtask_id=assignment.ranking_task_id
                    ).values_list("completion_id", flat=True)
                )
                ranking_submit(assignment_id=assignment.pk, user=user, order=[ids])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    per_task = Counter(Ranking.objects.values_list("task_id", flat=True))
    assert per_task == {t.pk: 3 for t in tasks}  # every task filled, none past its overlap
    assert len(set(claimed_at_once)) == len(claimed_at_once) == 60  # nobody got an item twice
    assert not Assignment.objects.filter(status=Assignment.Status.ACTIVE).exists()
    counters = dict(RankingTask.objects.values_list("id", "ranking_count"))
    assert counters == {t.pk: 3 for t in tasks}
