"""Adjudication: disputed tasks go to reviewers, whose decision replaces the rankings in training and
exports and counts as gold for the reliability model."""
from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from labelapp.formats.exports import ExportFilter, export_pairs, export_rankings
from labelapp.models import Adjudication, Queue
from labelapp.selectors.quality import disputed_tasks, item_confidences
from labelapp.services.labels import ranking_submit
from labelapp.services.quality import (
    ranking_task_adjudicate,
    ranking_task_set_gold,
    reliability_inputs,
    reliability_refit,
)
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_task

pytestmark = pytest.mark.django_db


def ranked(project, orders_by_user):
    """One task ranked by each user with the order given as indexes into its completions."""
    task = make_task(project)
    ids = sorted(task.completions.values_list("id", flat=True))
    for user, order in orders_by_user:
        lease = task_claim(project=project, user=user, queue=Queue.RANK)
        assert lease.ranking_task_id == task.pk
        ranking_submit(assignment_id=lease.pk, user=user, order=[[ids[i]] for i in order])
    return task, ids


@pytest.fixture
def disputed_setup():
    project = make_project(k=3, overlap=2)
    project.gold_rate = 0
    project.save()
    a, b = add_member(project), add_member(project)
    reviewer = add_member(project, role="reviewer")
    agreed, _ = ranked(project, [(a, [0, 1, 2]), (b, [0, 1, 2])])
    split, ids = ranked(project, [(a, [0, 1, 2]), (b, [2, 1, 0])])
    return project, a, b, reviewer, agreed, split, ids


def test_the_disputed_task_is_listed_and_the_agreed_one_is_not(disputed_setup):
    project, a, _, reviewer, agreed, split, _ = disputed_setup
    assert [t.pk for t, _ in disputed_tasks(project=project, reviewer=reviewer)] == [split.pk]  # agreement fallback
    reliability_refit(project=project)
    listed = disputed_tasks(project=project, reviewer=reviewer)
    assert [t.pk for t, _ in listed] == [split.pk] and listed[0][1] < 0.7
    assert item_confidences(project.reliability_fits.first())[agreed.pk] > listed[0][1]
    assert disputed_tasks(project=project, reviewer=a) == []  # a ranked it: another reviewer decides
    project.adjudication_below = 0
    project.save()
    assert disputed_tasks(project=project, reviewer=reviewer) == []


def test_decision_replaces_the_rankings_in_exports_and_counts_as_gold(disputed_setup):
    project, a, b, reviewer, agreed, split, ids = disputed_setup
    before = [json.loads(x) for x in b"".join(export_pairs(ExportFilter(project=project), meta=True)).splitlines()]
    assert len(before) == 4 * 3  # four rankings x C(3,2)
    decision = ranking_task_adjudicate(task_id=split.pk, reviewer=reviewer, order=[[ids[0]], [ids[1], ids[2]]])
    after = [json.loads(x) for x in b"".join(export_pairs(ExportFilter(project=project), meta=True)).splitlines()]
    from_split = [x for x in after if "adjudication_id" in x]
    assert len(after) == 2 * 3 + 2 and len(from_split) == 2  # the decision ties 1 and 2: two pairs
    assert all(x["adjudication_id"] == decision.pk for x in from_split)
    rankings = [json.loads(x) for x in b"".join(export_rankings(ExportFilter(project=project, min_agreement=0.9))).splitlines()]
    assert [(r["task_id"], r["adjudication_id"] is not None) for r in rankings] == [(agreed.pk, False), (agreed.pk, False),
                                                                                  (split.pk, True)]
    _, gold, _ = reliability_inputs(project=project)
    assert gold[split.pk] == [[ids[0]], [ids[1], ids[2]]]
    fit = reliability_refit(project=project)
    assert fit.gold_units == 2  # the decision's two strict pairs are known truth now
    assert fit.annotators[str(b.pk)]["reliability"] < fit.annotators[str(a.pk)]["reliability"]


def test_decisions_are_refused_with_reasons(disputed_setup):
    project, a, _, reviewer, agreed, split, ids = disputed_setup
    with pytest.raises(PermissionDenied):
        ranking_task_adjudicate(task_id=split.pk, reviewer=add_member(project), order=[[i] for i in ids])
    a_as_reviewer = a
    from labelapp.services.projects import membership_set

    membership_set(project=project, user=a_as_reviewer, role="reviewer")
    with pytest.raises(ValidationError, match="You ranked this task yourself"):
        ranking_task_adjudicate(task_id=split.pk, reviewer=a_as_reviewer, order=[[i] for i in ids])
    with pytest.raises(ValidationError, match="leaves out"):
        ranking_task_adjudicate(task_id=split.pk, reviewer=reviewer, order=[[ids[0]]])
    ranking_task_adjudicate(task_id=split.pk, reviewer=reviewer, order=[[i] for i in ids])
    with pytest.raises(ValidationError, match="already decided by"):
        ranking_task_adjudicate(task_id=split.pk, reviewer=add_member(project, role="reviewer"), order=[[i] for i in ids])
    assert Adjudication.objects.count() == 1


def test_the_decision_page(disputed_setup):
    project, _, _, reviewer, _, split, ids = disputed_setup
    client = Client()
    client.force_login(reviewer)
    listing = client.get(f"/p/{project.slug}/adjudicate/").content.decode()
    assert f"/p/{project.slug}/adjudicate/{split.pk}/" in listing
    page = client.get(f"/p/{project.slug}/adjudicate/{split.pk}/").content.decode()
    assert "Annotator 1" in page and "Annotator 2" in page and "rank_" in page
    bad = client.post(f"/p/{project.slug}/adjudicate/{split.pk}/", {f"rank_{ids[0]}": "1"})
    assert bad.status_code == 400 and "B and C have none yet" in bad.content.decode()
    ok = client.post(f"/p/{project.slug}/adjudicate/{split.pk}/",
                     {f"rank_{ids[0]}": "1", f"rank_{ids[1]}": "2", f"rank_{ids[2]}": "2"}, follow=True)
    assert "decided" in ok.content.decode()
    assert Adjudication.objects.get().order == [[ids[0]], sorted(ids[1:])]
    annotator = add_member(project)
    client.force_login(annotator)
    assert client.get(f"/p/{project.slug}/adjudicate/").status_code == 404


def test_a_decided_task_leaves_the_rank_queue_and_cannot_be_made_gold():
    """Overlap 3, two annotators disagree and a reviewer decides: the third annotator is not served the task
    (their ranking would be replaced by the decision, unused), and an admin cannot then mark it gold with
    another answer (two known answers)."""
    project = make_project(k=3, overlap=3)
    project.gold_rate = 0
    project.save()
    a, b, c = (add_member(project) for _ in range(3))
    reviewer, admin = add_member(project, role="reviewer"), add_member(project, role="admin")
    split, ids = ranked(project, [(a, [0, 1, 2]), (b, [2, 1, 0])])
    ranking_task_adjudicate(task_id=split.pk, reviewer=reviewer, order=[[ids[0]], [ids[1]], [ids[2]]])
    other = make_task(project)
    assert task_claim(project=project, user=c, queue=Queue.RANK).ranking_task_id == other.pk
    with pytest.raises(ValidationError, match="decided in adjudication by"):
        ranking_task_set_gold(task_id=split.pk, user=admin, order=[[ids[2]], [ids[1]], [ids[0]]])
    split.refresh_from_db()
    assert split.gold_order is None


def test_a_task_that_is_not_disputed_cannot_be_decided(disputed_setup):
    """Only the adjudication queue is decidable: the agreed task (and every task while adjudication is off) is
    refused with the reason, and nothing is written."""
    project, _, _, reviewer, agreed, split, ids = disputed_setup
    agreed_ids = sorted(agreed.completions.values_list("id", flat=True))
    with pytest.raises(ValidationError, match=rf"Task {agreed.pk} is not disputed: it has consensus confidence 1.00, "
                                              r"and only tasks below the project's 0.70 are in the adjudication queue"):
        ranking_task_adjudicate(task_id=agreed.pk, reviewer=reviewer, order=[[i] for i in reversed(agreed_ids)])
    reliability_refit(project=project)  # with a fit, the fit's confidence decides
    with pytest.raises(ValidationError, match="is not disputed"):
        ranking_task_adjudicate(task_id=agreed.pk, reviewer=reviewer, order=[[i] for i in agreed_ids])
    project.adjudication_below = 0
    project.save()
    with pytest.raises(ValidationError, match="Adjudication is off in this project"):
        ranking_task_adjudicate(task_id=split.pk, reviewer=reviewer, order=[[i] for i in ids])
    assert not Adjudication.objects.exists()


def test_the_decision_page_of_a_task_that_is_not_disputed(disputed_setup):
    project, _, _, reviewer, agreed, _, _ = disputed_setup
    agreed_ids = sorted(agreed.completions.values_list("id", flat=True))
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/p/{project.slug}/adjudicate/{agreed.pk}/").content.decode()
    assert 'id="not-disputed"' in page and 'id="adjudicate-form"' not in page
    posted = client.post(f"/p/{project.slug}/adjudicate/{agreed.pk}/",
                         {f"rank_{agreed_ids[0]}": "3", f"rank_{agreed_ids[1]}": "2", f"rank_{agreed_ids[2]}": "1"})
    assert posted.status_code == 400 and f"Task {agreed.pk} is not disputed" in posted.content.decode()
    assert not Adjudication.objects.exists()
