"""A round waiting for rankings that can never come is told, not left waiting in silence: round_start refuses a
`min_rankings` its tasks cannot hold, and while the round waits, `Round.error` says why it cannot finish and
what would unblock it (labelapp.services.rounds.ranking_blocker), clearing once it can."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from labelapp.models import Queue, RankingTask, Round, TrainingRun
from labelapp.services.labels import ranking_submit
from labelapp.services.queue import assignment_skip, task_claim
from labelapp.services.rounds import _clean_params, round_advance, round_start
from tests.conftest import add_member, make_project, make_task, make_user

pytestmark = pytest.mark.django_db


def waiting_round(project, min_rankings: int, tasks: int) -> tuple[Round, list[RankingTask]]:
    """A round in RANKING with `tasks` tasks of its own (what its sampling run would have written)."""
    rnd = Round.objects.create(project=project, number=1, stage=Round.Stage.RANKING,
                               params=_clean_params({"prompts": tasks, "min_rankings": min_rankings}))
    own = [make_task(project) for _ in range(tasks)]
    RankingTask.objects.filter(pk__in=[t.pk for t in own]).update(round=rnd, priority=10)
    return rnd, own


def rank_next(project, user):
    lease = task_claim(project=project, user=user, queue=Queue.RANK)
    ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
    return ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in ids], time_spent_ms=5000)


def test_round_start_refuses_min_rankings_its_tasks_can_never_hold(sent):
    project = make_project(k=2, overlap=2)
    admin = add_member(project, make_user(), role="admin")
    with pytest.raises(ValidationError, match=r"'min_rankings' 9 can never be reached: the round samples at most 4 "
                                              r"prompts and each of their tasks takes 2 rankings .* 8 in all\. Lower "
                                              r"min_rankings to 8 or less, or raise prompts or the project's overlap"):
        round_start(project=project, user=admin, params={"prompts": 4, "min_rankings": 9})
    assert not Round.objects.exists() and not TrainingRun.objects.exists() and sent == []
    assert round_start(project=project, user=admin, params={"prompts": 4, "min_rankings": 8}).number == 1


def test_the_studio_form_shows_the_refusal(client):
    project = make_project(k=2, overlap=1)
    admin = add_member(project, make_user(), role="admin")
    client.force_login(admin)
    response = client.post(reverse("studio:round_start", args=[project.slug]),
                           {"method": "ppo", "prompts": "2", "min_rankings": "3", "settings": "{}"})
    assert response.status_code == 400 and "can never be reached" in response.content.decode()
    assert not Round.objects.exists()


def test_a_wait_too_few_people_can_end_says_so_and_clears_once_someone_joins(sent):
    """Two tasks at overlap 2 but one annotator: at most 2 of the 3 rankings can come. The round says so (with
    the fix: one more annotator), keeps waiting, and moves on once the new annotator's ranking is in."""
    project = make_project(k=2, overlap=2)
    project.gold_rate = 0
    project.save()
    ann = add_member(project, make_user("solo"))
    rnd, _ = waiting_round(project, min_rankings=3, tasks=2)
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == Round.Stage.RANKING
    assert rnd.error == ("Waiting for rankings cannot finish: this round needs 3 rankings of its tasks, 0 are in, and "
                         "at most 2 more can come (2 open tasks, overlap 2, 1 person who can rank, each ranking a "
                         "task once). To unblock it: add 1 more annotator to the project, or cancel this round and "
                         "start one with min_rankings 2 or less.")
    rnd.refresh_from_db()
    assert "cannot finish" in rnd.error  # stored: the studio and the API show it

    rank_next(project, ann)
    rank_next(project, ann)
    assert "1 person who can rank" in round_advance(round_id=rnd.pk).error

    other = add_member(project, make_user("helper"))
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == Round.Stage.RANKING and rnd.error == ""  # reachable again: the line goes away
    rank_next(project, other)
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == Round.Stage.REWARD and rnd.error == ""
    assert rnd.runs.get().kind == TrainingRun.Kind.REWARD


def test_overlap_is_named_when_raising_it_would_unblock_and_skips_are_final(sent):
    project = make_project(k=2, overlap=1)
    project.gold_rate = 0
    project.save()
    a, b = add_member(project), add_member(project)
    add_member(project, role="admin")  # admins may rank too: three people
    rnd, own = waiting_round(project, min_rankings=2, tasks=1)
    error = round_advance(round_id=rnd.pk).error
    assert "at most 1 more can come (1 open task, overlap 1, 3 people who can rank" in error
    assert "To unblock it: raise the project's overlap to 2, or cancel this round" in error
    assert "add" not in error.split("To unblock it:")[1].split(", or cancel")[0]  # more people alone would not help

    project.overlap = 3
    project.save()
    assert round_advance(round_id=rnd.pk).error == ""
    for user in (a, b):  # two of the three skip: only one ranking can come now
        lease = task_claim(project=project, user=user, queue=Queue.RANK)
        assert lease.ranking_task_id == own[0].pk
        assignment_skip(assignment_id=lease.pk, user=user, reason="unsure")
    assert "at most 1 more can come" in round_advance(round_id=rnd.pk).error


def test_a_sampling_that_made_no_tasks_is_named(sent):
    project = make_project(k=2)
    rnd = Round.objects.create(project=project, number=1, stage=Round.Stage.SAMPLING,
                               params=_clean_params({"prompts": 2, "min_rankings": 2}))
    now = timezone.now()
    TrainingRun.objects.create(project=project, round=rnd, kind=TrainingRun.Kind.SAMPLE, started_at=now,
                               finished_at=now, status=TrainingRun.Status.SUCCEEDED, result={"prompts": 0, "tasks": 0})
    rnd = round_advance(round_id=rnd.pk)
    assert rnd.stage == Round.Stage.RANKING
    assert rnd.error.startswith("Waiting for rankings cannot finish: this round's sampling made no ranking tasks")
    assert "add training prompts, then cancel this round and start a new one" in rnd.error


def test_the_studio_and_the_api_show_why_the_round_waits():
    from labelapp.services.tokens import api_token_create

    project = make_project(k=2, overlap=1)
    admin = add_member(project, make_user(), role="admin")
    rnd, _ = waiting_round(project, min_rankings=3, tasks=2)
    round_advance(round_id=rnd.pk)
    client = Client()
    client.force_login(admin)
    (row,) = client.get(reverse("studio:status", args=[project.slug])).json()["rounds"]
    assert row["error"].startswith("Waiting for rankings cannot finish") and row["stage"] == "ranking"
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    assert "Waiting for rankings cannot finish" in page
    _, key = api_token_create(user=admin, name="t")
    body = Client(HTTP_AUTHORIZATION=f"Token {key}").get(f"/api/v1/rounds/{rnd.pk}/").json()
    assert body["error"].startswith("Waiting for rankings cannot finish") and body["stage"] == "ranking"
