"""The category mix (labelapp.selectors.category_mix): counts and shares per category by hand, beside InstructGPT's
mix; gold, rejected demonstrations and AI labels left out; the API resource and the studio page."""
from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from labelapp.models import Demonstration, ModelVersion, Queue
from labelapp.selectors.category_mix import INSTRUCTGPT_MIX, category_mix
from labelapp.services.labels import demonstration_review, demonstration_submit, ranking_submit
from labelapp.services.quality import ai_label_record, ranking_task_set_gold
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db


def test_instructgpt_mix_is_table_1():
    assert sum(INSTRUCTGPT_MIX.values()) == pytest.approx(99.9)  # as printed, rounded per row
    assert max(INSTRUCTGPT_MIX, key=INSTRUCTGPT_MIX.get) == "generation"


@pytest.fixture
def mixed():
    """4 prompts (2 generation, 1 chat, 1 'poetry' the project no longer lists), 3 demonstrations of which
    one is rejected, 3 rankings of which one is on a gold task, plus an AI label."""
    project = make_project(k=2, overlap=3, categories=["generation", "chat", "open_qa"])
    project.gold_rate = 0
    project.save()
    admin = add_member(project, role="admin")
    writer, reviewer = add_member(project), add_member(project, role="reviewer")
    g1 = make_prompt(project, text="Write a poem about rain.", category="generation")
    g2 = make_prompt(project, text="Write a story.", category="generation")
    c1 = make_prompt(project, text="Hi there!", category="chat")
    project.categories = ["generation", "chat", "open_qa", "poetry"]
    project.save()
    p1 = make_prompt(project, text="A haiku please.", category="poetry")
    project.categories = ["generation", "chat", "open_qa"]  # poetry dropped later; its prompt stays
    project.save()
    for _ in range(3):
        lease = task_claim(project=project, user=writer, queue=Queue.WRITE)
        demo = demonstration_submit(assignment_id=lease.pk, user=writer, text="An answer.")
    demonstration_review(demonstration_id=demo.pk, reviewer=reviewer, approve=False, comment="Too short.")
    real, gold = make_task(project, prompt=g1), make_task(project, prompt=c1)
    ids = sorted(gold.completions.values_list("id", flat=True))
    ranking_task_set_gold(task_id=gold.pk, user=admin, order=[[ids[0]], [ids[1]]])
    for user in (add_member(project), add_member(project)):
        lease = task_claim(project=project, user=user, queue=Queue.RANK)
        assert lease.ranking_task_id == real.pk
        task_ids = sorted(real.completions.values_list("id", flat=True))
        ranking_submit(assignment_id=lease.pk, user=user, order=[[task_ids[0]], [task_ids[1]]])
    with pytest.MonkeyPatch.context() as mp:  # one ranking of the gold task: scored, never in the mix
        mp.setattr("labelapp.services.queue.gold_draw", lambda: 0.0)
        project.gold_rate = 0.5
        project.save()
        user = add_member(project)
        lease = task_claim(project=project, user=user, queue=Queue.RANK)
        assert lease.ranking_task_id == gold.pk
        ranking_submit(assignment_id=lease.pk, user=user, order=[[ids[0]], [ids[1]]])
    rm = ModelVersion.objects.create(project=project, name="rm", kind="reward")
    ai_label_record(task_id=real.pk, source="reward_model", model_version_id=rm.pk,
                    order=[[task_ids[1]], [task_ids[0]]], scores={})
    return project, admin, {"g2": g2, "p1": p1}


def test_counts_and_shares_by_hand(mixed):
    project, _, _ = mixed
    mix = category_mix(project=project)
    demos = Demonstration.objects.filter(prompt__project=project).exclude(review_status="rejected")
    by_category = {c: demos.filter(prompt__category=c).count() for c in ("generation", "chat", "poetry")}
    assert mix["totals"] == {"prompts": 4, "demonstrations": 2, "rankings": 2}
    rows = {r["category"]: r for r in mix["categories"]}
    assert [r["category"] for r in mix["categories"]] == ["generation", "chat", "open_qa", "poetry"]
    assert rows["generation"]["prompts"] == 2 and rows["generation"]["prompts_share"] == 50.0
    assert rows["chat"]["prompts_share"] == 25.0 and rows["open_qa"]["prompts"] == 0
    assert rows["open_qa"]["prompts_share"] == 0.0 and rows["open_qa"]["instructgpt_share"] == 12.4
    assert rows["poetry"] == {**rows["poetry"], "listed": False, "prompts": 1, "instructgpt_share": None}
    assert {c: rows[c]["demonstrations"] for c in by_category} == by_category
    assert rows["generation"]["rankings"] == 2 and rows["generation"]["rankings_share"] == 100.0
    assert rows["chat"]["rankings"] == 0  # the gold task's ranking is not part of the mix


def test_an_empty_project_has_no_shares():
    mix = category_mix(project=make_project())
    assert mix["totals"] == {"prompts": 0, "demonstrations": 0, "rankings": 0}
    assert len(mix["categories"]) == 10 and all(r["prompts_share"] is None for r in mix["categories"])


def test_api_for_reviewers_and_the_page_for_admins(mixed):
    project, admin, _ = mixed
    reviewer, annotator = add_member(project, role="reviewer"), add_member(project)
    api = APIClient()
    api.force_authenticate(reviewer)
    data = api.get(f"/api/v1/projects/{project.slug}/statistics/categories/").json()
    assert data == category_mix(project=project)
    api.force_authenticate(annotator)
    refused = api.get(f"/api/v1/projects/{project.pk}/statistics/categories/")
    assert refused.status_code in (403, 404) and "detail" in refused.json()
    client = Client()
    client.force_login(admin)
    page = client.get(f"/studio/p/{project.slug}/categories/").content.decode()
    assert 'id="category-mix"' in page and "(no longer listed)" in page and "45.6%" in page
    client.force_login(reviewer)
    assert client.get(f"/studio/p/{project.slug}/categories/").status_code == 404
