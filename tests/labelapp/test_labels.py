from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from labelapp.models import Assignment, Demonstration, Queue, Ranking
from labelapp.selectors.labels import ranking_pairs
from labelapp.services.labels import demonstration_review, demonstration_submit, order_from_ranks, ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_prompt, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def write_lease(project, annotator):
    make_prompt(project)
    return task_claim(project=project, user=annotator, queue=Queue.WRITE)


@pytest.fixture
def rank_lease(project, annotator):
    task = make_task(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    lease.ids = sorted(task.completions.values_list("id", flat=True))
    return lease


def nothing_stored():
    return not Demonstration.objects.exists() and not Ranking.objects.exists()


@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_demonstration_is_refused(write_lease, annotator, text):
    with pytest.raises(ValidationError, match="empty"):
        demonstration_submit(assignment_id=write_lease.pk, user=annotator, text=text)
    assert nothing_stored()
    write_lease.refresh_from_db()
    assert write_lease.status == Assignment.Status.ACTIVE


def test_text_over_the_limit_is_refused(settings, write_lease, annotator):
    settings.LABEL_MAX_TEXT_CHARS = 50
    with pytest.raises(ValidationError, match="51 characters; the limit is 50"):
        demonstration_submit(assignment_id=write_lease.pk, user=annotator, text="x" * 51)
    assert nothing_stored()


def test_demonstration_submit_is_idempotent(write_lease, annotator):
    first = demonstration_submit(assignment_id=write_lease.pk, user=annotator, text=" A fine answer. ")
    again = demonstration_submit(assignment_id=write_lease.pk, user=annotator, text="A fine answer.")
    assert first.pk == again.pk and first.text == "A fine answer."
    assert Demonstration.objects.count() == 1
    write_lease.prompt.refresh_from_db()
    assert write_lease.prompt.demonstration_count == 1


def test_label_for_an_item_leased_to_someone_else_is_refused(project, write_lease):
    intruder = add_member(project)
    with pytest.raises(ValidationError, match="not leased to you"):
        demonstration_submit(assignment_id=write_lease.pk, user=intruder, text="mine now")
    assert nothing_stored()


def test_label_after_the_lease_expired_is_refused(write_lease, annotator):
    later = write_lease.expires_at + timedelta(seconds=1)
    with pytest.raises(ValidationError, match="lease on this item expired"):
        demonstration_submit(assignment_id=write_lease.pk, user=annotator, text="too late", now=later)
    assert nothing_stored()


def test_ranking_with_ties_is_stored_and_pairs_derive_from_it(rank_lease, annotator):
    a, b, c, d = rank_lease.ids
    ranking = ranking_submit(
        assignment_id=rank_lease.pk,
        user=annotator,
        order=order_from_ranks({a: 2, b: 1, c: 2, d: 4}, completion_ids=rank_lease.ids),
        flags={a: ["harmful"]},
        scores={b: 7, d: "2"},
        time_spent_ms=1234,
    )
    assert ranking.order == [[b], [a, c], [d]]
    assert ranking.flags == {str(a): ["harmful"]} and ranking.scores == {str(b): 7, str(d): 2}
    pairs = ranking_pairs(ranking)
    # C(4,2)=6 pairs minus the one tie (a, c)
    assert sorted(pairs, key=str) == sorted(
        [(b, a, None), (b, c, None), (b, d, 5.0), (a, d, None), (c, d, None)], key=str
    )
    assert ranking_pairs(ranking, min_gap=2) == [(b, d, 5.0)]  # groups [b] [a c] [d]: only best vs worst
    assert ranking_pairs(ranking, min_gap=3) == []
    rank_lease.ranking_task.refresh_from_db()
    assert rank_lease.ranking_task.ranking_count == 1


BAD_ORDERS = {
    "missing one": lambda ids: [[ids[0]], [ids[1]], [ids[2]]],
    "duplicate": lambda ids: [[ids[0]], [ids[0]], [ids[1]], [ids[2]], [ids[3]]],
    "foreign id": lambda ids: [[ids[0]], [ids[1]], [ids[2]], [ids[3]], [999999]],
    "empty group": lambda ids: [[ids[0], ids[1]], [], [ids[2], ids[3]]],
    "not a list": lambda ids: {"best": ids},
    "strings": lambda ids: [[str(i)] for i in ids],
    "nothing": lambda ids: [],
}


@pytest.mark.parametrize("name", BAD_ORDERS)
def test_invalid_orderings_are_refused(rank_lease, annotator, name):
    with pytest.raises(ValidationError) as info:
        ranking_submit(assignment_id=rank_lease.pk, user=annotator, order=BAD_ORDERS[name](rank_lease.ids))
    assert "ranking" in " ".join(info.value.messages).lower()
    assert nothing_stored()


@pytest.mark.parametrize(
    "ranks, message",
    [({}, "Give every response a rank"), ({"x": 1}, None), (None, "out of range"), ("abc", "not a number")],
)
def test_rank_form_errors_are_clear(rank_lease, ranks, message):
    ids = rank_lease.ids
    if ranks is None:
        ranks = {i: n for n, i in enumerate(ids, start=2)}
    elif ranks == "abc":
        ranks = {i: "abc" for i in ids}
    elif ranks == {"x": 1}:
        ranks, message = {**{i: 1 for i in ids}, 12345: 1}, "not part of this task"
    with pytest.raises(ValidationError, match=message):
        order_from_ranks(ranks, completion_ids=ids)


def test_a_missing_rank_names_the_responses_as_the_page_shows_them():
    ids = [11, 12, 13, 14]
    names = dict(zip(ids, "ABCD"))
    with pytest.raises(ValidationError, match=r"rank from 1 to 4: C has none yet"):
        order_from_ranks({11: 1, 12: 2, 14: 3}, completion_ids=ids, names=names)
    with pytest.raises(ValidationError, match=r"rank from 1 to 4: A, B and D have none yet"):
        order_from_ranks({13: 1}, completion_ids=ids, names=names)
    with pytest.raises(ValidationError, match=r"response 12 and response 14 have none yet"):
        order_from_ranks({11: 1, 13: 1}, completion_ids=ids)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scores": {"first": 9}}, "out of range"),
        ({"scores": {"first": "seven"}}, "not a whole number"),
        ({"flags": {"first": ["rude"]}}, "Unknown flag"),
        ({"flags": {"999999": ["harmful"]}}, "not in this task"),
    ],
)
def test_bad_scores_and_flags_are_refused(rank_lease, annotator, kwargs, message):
    key = str(rank_lease.ids[0])
    kwargs = {f: {key if k == "first" else k: v for k, v in d.items()} for f, d in kwargs.items()}
    with pytest.raises(ValidationError, match=message):
        ranking_submit(assignment_id=rank_lease.pk, user=annotator, order=[rank_lease.ids], **kwargs)
    assert nothing_stored()


def test_none_acceptable_needs_no_order(rank_lease, annotator):
    ranking = ranking_submit(assignment_id=rank_lease.pk, user=annotator, order=None, none_acceptable=True)
    assert ranking.none_acceptable and ranking.order == [] and ranking_pairs(ranking) == []


def test_ranking_double_submit_stores_one(rank_lease, annotator):
    order = [[i] for i in rank_lease.ids]
    one = ranking_submit(assignment_id=rank_lease.pk, user=annotator, order=order)
    two = ranking_submit(assignment_id=rank_lease.pk, user=annotator, order=list(reversed(order)))
    assert one.pk == two.pk and Ranking.objects.count() == 1 and two.order == order


def test_review_reject_needs_comment_and_reopens_prompt(project, write_lease, annotator, reviewer):
    demo = demonstration_submit(assignment_id=write_lease.pk, user=annotator, text="Short.")
    with pytest.raises(ValidationError, match="needs a comment"):
        demonstration_review(demonstration_id=demo.pk, reviewer=reviewer, approve=False, comment="  ")
    demo.refresh_from_db()
    assert demo.review_status == Demonstration.Review.PENDING
    demonstration_review(demonstration_id=demo.pk, reviewer=reviewer, approve=False, comment="Too short.")
    demo.refresh_from_db()
    assert demo.review_status == Demonstration.Review.REJECTED and demo.reviewer == reviewer
    other = add_member(project)
    assert task_claim(project=project, user=other, queue=Queue.WRITE).prompt_id == demo.prompt_id
    with pytest.raises(ValidationError, match="already rejected"):
        demonstration_review(demonstration_id=demo.pk, reviewer=reviewer, approve=True)


def test_review_rules(project, write_lease, annotator, reviewer):
    demo = demonstration_submit(assignment_id=write_lease.pk, user=annotator, text="Answer.")
    with pytest.raises(PermissionDenied):
        demonstration_review(demonstration_id=demo.pk, reviewer=add_member(project), approve=True)
    with pytest.raises(ValidationError, match="your own"):
        demonstration_review(demonstration_id=demo.pk, reviewer=add_member(project, annotator, "reviewer"), approve=True)
    approved = demonstration_review(demonstration_id=demo.pk, reviewer=reviewer, approve=True)
    assert approved.review_status == Demonstration.Review.APPROVED and approved.reviewed_at <= timezone.now()
