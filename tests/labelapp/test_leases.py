"""One live lease per user and queue (L1) and the lease-expiry race of a submission (L2), on
PostgreSQL: SQLite ignores row locks, so these need DATABASE_URL=postgres://…"""
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from labelapp.models import Assignment, Queue, Ranking, RankingTask
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL: run with DATABASE_URL=postgres://…")


def completion_ids(task_id):
    return list(RankingTask.completions.through.objects.filter(rankingtask_id=task_id).values_list("completion_id", flat=True))


def in_threads(n, target):
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results, errors


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("queue", [Queue.RANK, Queue.WRITE])
def test_parallel_claims_by_one_user_return_the_same_lease(postgres, queue):
    project = make_project(overlap=1, k=2)
    for _ in range(10):
        make_task(project)
    user = add_member(project)
    results, errors = in_threads(8, lambda i: task_claim(project=project, user=user, queue=queue).pk)
    assert not errors, errors
    assert len(set(results)) == 1, results  # a double click, two tabs, a retried POST: one lease
    assert Assignment.objects.filter(user=user, queue=queue).count() == 1


@pytest.mark.django_db
def test_the_database_refuses_a_second_active_lease_in_one_queue(project, annotator):
    first, second = make_task(project), make_task(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    other = second if lease.ranking_task_id == first.pk else first
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(project=project, user=annotator, queue=Queue.RANK, ranking_task=other,
                                  leased_at=now, expires_at=now + timedelta(minutes=5))
    # a live lease in another queue is fine
    make_prompt(project)
    assert task_claim(project=project, user=annotator, queue=Queue.WRITE) is not None


@pytest.mark.django_db
def test_claiming_after_expiry_retires_the_old_lease(project):
    a, b = add_member(project), add_member(project)
    make_task(project)
    make_task(project)
    now = timezone.now()
    old = task_claim(project=project, user=a, queue=Queue.RANK, lease_seconds=60, now=now)
    later = now + timedelta(seconds=61)
    taken = task_claim(project=project, user=b, queue=Queue.RANK, now=later)
    assert taken.ranking_task_id == old.ranking_task_id  # the expired lease freed the item
    new = task_claim(project=project, user=a, queue=Queue.RANK, now=later)
    assert new.ranking_task_id != old.ranking_task_id
    old.refresh_from_db()
    assert old.status == Assignment.Status.EXPIRED
    with pytest.raises(ValidationError, match="lease on this item expired"):
        ranking_submit(assignment_id=old.pk, user=a, order=[completion_ids(old.ranking_task_id)])
    assert Assignment.objects.filter(user=a, status=Assignment.Status.ACTIVE).count() == 1


@pytest.mark.django_db
def test_late_submit_refused_when_the_slot_went_to_someone_else(project):
    """The clock the submit read says the lease is live, but a claim already gave the item to
    someone else: under the item lock the submit sees that lease and is refused."""
    a, b = add_member(project), add_member(project)
    task = make_task(project)
    now = timezone.now()
    lease = task_claim(project=project, user=a, queue=Queue.RANK, lease_seconds=60, now=now)
    task_claim(project=project, user=b, queue=Queue.RANK, now=now + timedelta(seconds=61))
    with pytest.raises(ValidationError, match="already has all the labels"):
        ranking_submit(assignment_id=lease.pk, user=a, order=[completion_ids(task.pk)], now=now + timedelta(seconds=59))
    assert not Ranking.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_submit_racing_its_lease_expiry_never_exceeds_overlap(postgres):
    """A's submit (its clock read just before the lease ran out) arrives while B's claim of the
    same item holds the item's row lock: the submit waits, then sees B's lease and is refused."""
    project = make_project(overlap=1, k=2)
    task = make_task(project)
    a, b = add_member(project), add_member(project)
    start = timezone.now()
    lease = task_claim(project=project, user=a, queue=Queue.RANK, lease_seconds=60, now=start)
    claimed, release = threading.Event(), threading.Event()
    outcome = {}

    def claim_b():
        try:
            with transaction.atomic():  # B's claim commits only when told to
                outcome["b"] = task_claim(project=project, user=b, queue=Queue.RANK, now=start + timedelta(seconds=61))
                claimed.set()
                release.wait(10)
        finally:
            connections.close_all()

    def submit_a():
        try:
            ranking_submit(assignment_id=lease.pk, user=a, order=[completion_ids(task.pk)], now=start + timedelta(seconds=59))
            outcome["a"] = "saved"
        except ValidationError as exc:
            outcome["a"] = exc.messages[0]
        finally:
            connections.close_all()

    tb = threading.Thread(target=claim_b)
    tb.start()
    assert claimed.wait(10)
    assert outcome["b"].ranking_task_id == task.pk
    ta = threading.Thread(target=submit_a)
    ta.start()
    ta.join(0.5)
    assert ta.is_alive(), "the submit should wait for the item's row lock"
    release.set()
    tb.join(10)
    ta.join(10)
    assert "already has all the labels" in outcome["a"]
    ranking_submit(assignment_id=outcome["b"].pk, user=b, order=[completion_ids(task.pk)], now=start + timedelta(seconds=62))
    task.refresh_from_db()
    assert task.ranking_count == Ranking.objects.filter(task=task).count() == 1


@pytest.mark.django_db(transaction=True)
def test_submits_and_claims_racing_expiry_stay_within_overlap(postgres):
    """Many annotators whose leases all expire at once, each submitting late while others claim."""
    project = make_project(overlap=1, k=2)
    tasks = [make_task(project) for _ in range(4)]
    users = [add_member(project) for _ in range(8)]
    start = timezone.now()
    leases = {u.pk: task_claim(project=project, user=u, queue=Queue.RANK, lease_seconds=30, now=start) for u in users[:4]}
    later = start + timedelta(seconds=31)

    def act(i):
        user = users[i]
        if user.pk in leases:  # late submit with a clock that says the lease is live
            lease = leases[user.pk]
            try:
                ranking_submit(assignment_id=lease.pk, user=user, order=[completion_ids(lease.ranking_task_id)],
                               now=start + timedelta(seconds=29))
            except ValidationError:
                return "refused"
            return "saved"
        lease = task_claim(project=project, user=user, queue=Queue.RANK, now=later)
        if lease is None:
            return "nothing"
        ranking_submit(assignment_id=lease.pk, user=user, order=[completion_ids(lease.ranking_task_id)], now=later)
        return "saved"

    results, errors = in_threads(len(users), act)
    assert not errors, errors
    counts = dict(RankingTask.objects.values_list("id", "ranking_count"))
    assert counts == {t.pk: 1 for t in tasks}, (counts, results)
    assert Ranking.objects.count() == 4 and results.count("saved") == 4


@pytest.mark.django_db
def test_write_queue_late_submit_is_refused_too(project):
    a, b = add_member(project), add_member(project)
    make_prompt(project)
    now = timezone.now()
    lease = task_claim(project=project, user=a, queue=Queue.WRITE, lease_seconds=60, now=now)
    task_claim(project=project, user=b, queue=Queue.WRITE, now=now + timedelta(seconds=61))
    with pytest.raises(ValidationError, match="already has all the labels"):
        demonstration_submit(assignment_id=lease.pk, user=a, text="late", now=now + timedelta(seconds=59))
