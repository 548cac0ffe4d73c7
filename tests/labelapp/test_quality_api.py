"""Label-quality API and studio page: admins only, the report's numbers, gold marking."""
from __future__ import annotations

import pytest
from django.test import Client

from labelapp.models import RankingTask
from labelapp.services.quality import reliability_refit
from labelapp.services.tokens import api_token_create
from tests.conftest import add_member, make_project
from tests.labelapp.test_reliability_service import crowd_project

pytestmark = pytest.mark.django_db


def api(user):
    _, key = api_token_create(user=user, name="t")
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


def test_annotator_report_over_the_api_is_for_admins_only():
    project = crowd_project(12, ["careful", "careful", "random"])
    reliability_refit(project=project)
    admin = add_member(project, role="admin")
    url = f"/api/v1/projects/{project.pk}/statistics/annotators/"
    for role, expected in (("annotator", 403), ("reviewer", 403)):
        assert api(add_member(project, role=role)).get(url).status_code == expected
    assert api(add_member(make_project(), role="admin")).get(url).status_code == 404
    body = api(admin).get(url).json()
    assert body["fit"]["pairs"] == 12 * 6 and len(body["annotators"]) == 3
    row = body["annotators"][0]
    assert set(row) >= {"gold_accuracy", "agreement_with_others", "agreement_with_consensus", "reliability",
                        "reliability_low", "reliability_high", "labels_per_hour", "median_time_ms", "flags"}
    agreement = api(admin).get(f"/api/v1/projects/{project.pk}/statistics/agreement/").json()
    assert {"krippendorff_alpha_pairwise_nominal", "krippendorff_alpha_pairwise_ordinal",
            "pairwise_agreement_without_ties"} <= set(agreement)


def test_refit_is_queued(monkeypatch):
    project = make_project()
    admin = add_member(project, role="admin")
    sent = []
    monkeypatch.setattr("celery.current_app.send_task", lambda name, **kw: sent.append((name, kw)))
    response = api(admin).post(f"/api/v1/projects/{project.pk}/statistics/annotators/refit/")
    assert response.status_code == 202
    assert sent == [("studio.reliability_refit", {"args": [project.pk, True], "queue": "default"})]

    def down(*a, **k):
        raise ConnectionError("broker down")

    monkeypatch.setattr("celery.current_app.send_task", down)
    assert api(admin).post(f"/api/v1/projects/{project.pk}/statistics/annotators/refit/").status_code == 503


def test_gold_over_the_api_is_all_or_nothing():
    project = crowd_project(3, ["careful", "careful"], overlap=1)
    admin = add_member(project, role="admin")
    task = RankingTask.objects.filter(project=project).first()
    ids = sorted(task.completions.values_list("id", flat=True))
    url = f"/api/v1/projects/{project.pk}/gold/"
    bad = api(admin).post(url, {"items": [{"ranking_task": task.pk, "expected": [[i] for i in ids]},
                                          {"ranking_task": task.pk, "expected": [[ids[0]]]}]},
                          content_type="application/json")
    assert bad.status_code == 400 and "item 2" in str(bad.json())
    assert RankingTask.objects.get(pk=task.pk).gold_order is None
    ok = api(admin).post(url, {"items": [{"ranking_task": task.pk, "expected": [[i] for i in ids]}]},
                         content_type="application/json")
    assert ok.status_code == 200 and ok.json() == {"ranking_tasks": 1, "evaluation_tasks": 0}
    listed = api(admin).get(url).json()
    assert listed["ranking_tasks"][0]["id"] == task.pk and listed["ranking_tasks"][0]["labels"] == 1  # overlap 1
    assert api(add_member(project, role="reviewer")).post(url, {"items": []}, content_type="application/json").status_code == 403


def test_quality_page_shows_annotators_and_marks_gold():
    project = crowd_project(12, ["careful", "careful", "random"])
    reliability_refit(project=project)
    admin = add_member(project, role="admin")
    client = Client()
    client.force_login(admin)
    page = client.get(f"/studio/p/{project.slug}/quality/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('<tr data-user="sim-') == 3 and "<svg" in html and "95% interval" in html
    task = RankingTask.objects.filter(project=project).first()
    ids = sorted(task.completions.values_list("id", flat=True))
    response = client.post(f"/studio/p/{project.slug}/quality/gold/",
                           {"kind": "ranking_task", "task": task.pk, "expected": " > ".join(map(str, ids))}, follow=True)
    assert f"Ranking task {task.pk} is gold." in response.content.decode()
    assert RankingTask.objects.get(pk=task.pk).gold_order == [[i] for i in ids]
    response = client.post(f"/studio/p/{project.slug}/quality/gold/",
                           {"kind": "ranking_task", "task": task.pk, "expected": "first > second"}, follow=True)
    assert "completion ids, best first" in response.content.decode()
    annotator = add_member(project)
    client.force_login(annotator)
    assert client.get(f"/studio/p/{project.slug}/quality/").status_code == 404


def test_pairs_export_gains_weight_and_confidence_and_min_confidence_filters():
    import json

    project = crowd_project(12, ["careful", "careful", "inverted"])
    fit = reliability_refit(project=project)
    admin = add_member(project, role="admin")
    url = f"/api/v1/projects/{project.pk}/exports/pairs/"
    client = api(admin)

    def lines(query=""):
        response = client.get(url + query)
        assert response.status_code == 200, response.content
        return [json.loads(x) for x in b"".join(response.streaming_content).splitlines()]

    plain = lines()
    assert plain and all(set(x) == {"prompt", "chosen", "rejected"} for x in plain)  # unchanged by default
    weighted = lines("?weights=1&meta=1")
    assert len(weighted) == len(plain)
    by_user = {row["annotator"]: row["weight"] for row in weighted}
    assert len(by_user) == 3 and min(by_user.values()) == 0.0  # the inverted annotator counts for nothing
    assert all(0.0 <= row["confidence"] <= 1.0 for row in weighted)
    confident = lines("?weights=1&min_confidence=0.9")
    assert 0 < len(confident) < len(weighted) and all(row["confidence"] >= 0.9 for row in confident)
    assert client.get(url + "?min_confidence=2").status_code == 400
    assert fit.pk
