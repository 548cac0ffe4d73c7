"""Annotation clients over the API: claim, read, submit, skip and review, with the pages' leases,
overlap, idempotency and validation (the same services underneath)."""
import json
import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.utils import timezone
from rest_framework.test import APIClient

from labelapp.models import (
    Assignment,
    Comparison,
    Demonstration,
    EvaluationTask,
    ModelVersion,
    Prompt,
    Queue,
    Ranking,
    RankingTask,
)
from labelapp.selectors import labels as selectors
from labelapp.services.labels import demonstration_submit
from labelapp.services.projects import evaluation_task_create
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    cache.clear()
    api = APIClient()
    api.force_authenticate(user)
    return api


def claim(api, project, queue):
    return api.post(f"/api/v1/projects/{project.pk}/queues/{queue}/claim/")


def test_rank_claim_submit_and_idempotent_resubmit(project, annotator):
    task = make_task(project)
    api = client_for(annotator)
    got = claim(api, project, "rank")
    assert got.status_code == 200
    item = got.json()
    assert item["queue"] == "rank" and item["prompt"]["turns"] == [{"role": "user", "content": task.prompt.text}]
    shown = selectors.completions_for_annotator(task_id=task.pk, user=annotator)
    assert [(c["letter"], c["id"]) for c in item["completions"]] == [(chr(65 + i), c.pk) for i, c in enumerate(shown)]
    assert all(set(c) == {"letter", "id", "text", "cut_off_at"} for c in item["completions"])  # no provenance
    assert claim(api, project, "rank").json()["assignment"] == item["assignment"]  # the same live lease

    ids = [c["id"] for c in item["completions"]]
    body = {"order": [[ids[1]], [ids[0], ids[2]], [ids[3]]], "flags": {str(ids[3]): ["harmful"]},
            "scores": {str(ids[1]): 6}, "time_spent_ms": 1234}
    first = api.post(item["submit"], body, format="json")
    assert first.status_code == 201, first.json()
    label = first.json()["label"]
    assert label["order"] == [[ids[1]], sorted([ids[0], ids[2]]), [ids[3]]] and first.json()["status"] == "submitted"
    again = api.post(item["submit"], {**body, "order": [[i] for i in ids]}, format="json")
    assert again.status_code == 200 and again.json()["label"] == label  # the first label, not a second one
    assert Ranking.objects.count() == 1 and RankingTask.objects.get().ranking_count == 1
    assert Ranking.objects.get().time_spent_ms == 1234
    assert claim(api, project, "rank").status_code == 204  # nothing left for this annotator


def test_invalid_labels_are_refused_with_the_services_messages_and_nothing_is_written(project, annotator):
    task = make_task(project)
    make_prompt(project)
    api = client_for(annotator)
    item = claim(api, project, "rank").json()
    ids = [c["id"] for c in item["completions"]]
    for body, message in [
        ({"order": [[ids[0]], [ids[1]]]}, "leaves out 2 of this task's responses"),
        ({"order": [[i] for i in ids], "scores": {str(ids[0]): 9}}, "out of range"),
        ({"order": [[i] for i in ids], "flags": {"999999": ["harmful"]}}, "not in this task"),
        ({"order": [[ids[0], ids[0]], ids[1:]]}, "more than once"),
    ]:
        refused = api.post(item["submit"], body, format="json")
        assert refused.status_code == 400 and message in json.dumps(refused.json()), refused.json()
    assert api.post(item["submit"], {"order": "A>B"}, format="json").status_code == 400
    assert not Ranking.objects.exists() and RankingTask.objects.get(pk=task.pk).ranking_count == 0

    write = claim(api, project, "write").json()
    empty = api.post(write["submit"], {"text": "   "}, format="json")
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    no_reason = api.post(write["skip"], {}, format="json")
    assert no_reason.status_code == 400 and "Say why you skip" in no_reason.json()["detail"]
    assert not Demonstration.objects.exists()
    assert api.post(write["submit"], {"text": "A fine answer.\r\n"}, format="json").status_code == 201
    assert Demonstration.objects.get().text == "A fine answer."


def test_an_expired_lease_is_refused_and_a_skip_gives_the_item_to_others(project, annotator):
    make_task(project)
    api = client_for(annotator)
    item = claim(api, project, "rank").json()
    Assignment.objects.filter(pk=item["assignment"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    ids = [c["id"] for c in item["completions"]]
    late = api.post(item["submit"], {"order": [ids]}, format="json")
    assert late.status_code == 400 and "lease on this item expired" in late.json()["detail"]
    fresh = claim(api, project, "rank").json()  # the same task, leased again
    assert api.post(fresh["skip"], {"reason": "nul \x00 byte"}, format="json").status_code == 400
    skipped = api.post(fresh["skip"], {"reason": " cannot judge this "}, format="json")
    assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
    assert Assignment.objects.get(pk=fresh["assignment"]).skip_reason == "cannot judge this"
    other = add_member(project)
    assert claim(client_for(other), project, "rank").status_code == 200
    assert claim(client_for(annotator), project, "rank").status_code == 204


def test_compare_keeps_the_models_hidden_and_stores_the_side_as_shown(project, annotator):
    prompt = make_prompt(project, split="validation")
    new, old = (ModelVersion.objects.create(project=project, name=n) for n in ("new", "old"))
    evaluation_task_create(project=project, prompt=prompt, model_a=new, model_b=old, text_a="new answer",
                           text_b="old answer", decoding_b={"finish_reason": "length", "completion_tokens": 16})
    api = client_for(annotator)
    item = claim(api, project, "compare").json()
    assert set(item["sides"]) == {"left", "right"}
    assert all(set(side) == {"id", "text", "cut_off_at"} for side in item["sides"].values())
    cut = {name: side["cut_off_at"] for name, side in item["sides"].items()}
    left_is_new = item["sides"]["left"]["text"] == "new answer"
    assert cut["right" if left_is_new else "left"] == 16
    bad = api.post(item["submit"], {"preferred": "a"}, format="json")
    assert bad.status_code == 400 and "Choose the left answer" in bad.json()["detail"]
    done = api.post(item["submit"], {"preferred": "left"}, format="json")
    assert done.status_code == 201 and done.json()["label"]["preferred"] == "left"
    comparison = Comparison.objects.get()
    assert comparison.winner == ("a" if left_is_new else "b") and comparison.a_shown_left == left_is_new
    assert EvaluationTask.objects.get().comparison_count == 1


def test_review_claim_and_decision(project, annotator, reviewer):
    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    demo = demonstration_submit(assignment_id=lease.pk, user=annotator, text="Draft answer.")
    assert claim(client_for(annotator), project, "review").status_code == 403  # annotators do not review
    api = client_for(reviewer)
    item = claim(api, project, "review").json()
    assert item["demonstration"]["id"] == demo.pk and item["demonstration"]["author"].startswith("ann_")
    refused = api.post(item["submit"], {"decision": "reject"}, format="json")
    assert refused.status_code == 400 and "needs a comment" in refused.json()["detail"]
    approved = api.post(item["submit"], {"decision": "approve", "comment": "good"}, format="json")
    assert approved.status_code == 200 and approved.json()["review_status"] == "approved"
    again = api.post(item["submit"], {"decision": "approve"}, format="json")
    assert again.status_code == 200 and again.json()["review_comment"] == "good"  # the same decision: a no-op
    changed = api.post(item["submit"], {"decision": "reject", "comment": "no"}, format="json")
    assert changed.status_code == 400 and "already approved" in changed.json()["detail"]
    assert claim(api, project, "review").status_code == 204
    own = client_for(annotator).post(item["submit"], {"decision": "approve"}, format="json")
    assert own.status_code == 403 and Demonstration.objects.get().reviewer == reviewer


def test_a_review_names_the_text_it_read(project, annotator, reviewer):
    import hashlib

    from labelapp.services.label_changes import demonstration_edit

    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    demo = demonstration_submit(assignment_id=lease.pk, user=annotator, text="Draft answer.")
    api = client_for(reviewer)
    item = claim(api, project, "review").json()
    seen = hashlib.sha256(item["demonstration"]["text"].encode()).hexdigest()
    bad = api.post(item["submit"], {"decision": "approve", "text_sha256": "not a hash"}, format="json")
    assert bad.status_code == 400 and "text_sha256" in bad.json()["errors"]
    demonstration_edit(demonstration_id=demo.pk, user=annotator, text="Edited after the claim.")
    stale = api.post(item["submit"], {"decision": "approve", "text_sha256": seen}, format="json")
    assert stale.status_code == 400 and "edited this answer" in stale.json()["detail"]
    assert Demonstration.objects.get().review_status == "pending"
    fresh = hashlib.sha256(b"Edited after the claim.").hexdigest()
    assert api.post(item["submit"], {"decision": "approve", "text_sha256": fresh}, format="json").status_code == 200


def test_unknown_queue_and_other_peoples_assignments(project, annotator):
    make_task(project)
    api = client_for(annotator)
    assert claim(api, project, "label").status_code == 404
    by_slug = api.post(f"/api/v1/projects/{project.slug}/queues/rank/claim/")  # a project by id or slug
    assert by_slug.status_code == 200 and by_slug.json()["project"] == project.pk
    item = claim(api, project, "rank").json()
    intruder = client_for(add_member(project))
    for url in (f"/api/v1/assignments/{item['assignment']}/", item["submit"], item["skip"]):
        method = intruder.get if url.endswith(f"/{item['assignment']}/") else intruder.post
        assert method(url, {}, format="json").status_code == 404
    assert client_for(annotator).get(f"/api/v1/assignments/{item['assignment']}/").json()["label"] is None


def test_the_schema_lists_the_annotation_routes(annotator):
    api = client_for(annotator)
    paths = json.loads(api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").content)["paths"]
    for path in ("/api/v1/projects/{project_id}/queues/{queue}/claim/", "/api/v1/assignments/{assignment_id}/",
                 "/api/v1/assignments/{assignment_id}/submit/", "/api/v1/assignments/{assignment_id}/skip/",
                 "/api/v1/demonstrations/{demonstration_id}/review/"):
        assert path in paths, path


CLAIMERS = 24


@pytest.mark.django_db(transaction=True)
def test_24_api_claimers_never_exceed_overlap():
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL: run with DATABASE_URL=postgres://…")
    project = make_project(overlap=3, k=2)
    tasks = [make_task(project) for _ in range(20)]
    users = [add_member(project) for _ in range(CLAIMERS)]
    barrier = threading.Barrier(CLAIMERS)
    errors: list[BaseException] = []
    claimed: list[tuple[int, int]] = []
    over: list[tuple[int, int]] = []

    def annotate(user):
        api = APIClient()
        api.force_authenticate(user)
        try:
            barrier.wait()
            empty = 0
            while True:
                got = api.post(f"/api/v1/projects/{project.pk}/queues/rank/claim/")
                if got.status_code == 204:
                    # Nothing free this instant: items others hold locked are passed over (SKIP LOCKED).
                    # A client asks again a little later; three empty answers in a row mean done.
                    empty += 1
                    if empty == 3:
                        return
                    time.sleep(0.05)
                    continue
                empty = 0
                assert got.status_code == 200, got.content
                item = got.json()
                task_id = Assignment.objects.get(pk=item["assignment"]).ranking_task_id
                claimed.append((user.pk, task_id))
                busy = RankingTask.objects.get(pk=task_id).ranking_count + Assignment.objects.filter(
                    ranking_task_id=task_id, status=Assignment.Status.ACTIVE, expires_at__gt=timezone.now()).count()
                if busy > 3:
                    over.append((task_id, busy))
                ids = [c["id"] for c in item["completions"]]
                done = api.post(item["submit"], {"order": [ids]}, format="json")
                assert done.status_code == 201, done.content
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=annotate, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    assert not over, over  # labels + live leases never above the overlap while it ran
    assert Counter(Ranking.objects.values_list("task_id", flat=True)) == {t.pk: 3 for t in tasks}
    assert len(set(claimed)) == len(claimed) == 60  # nobody got an item twice
    assert dict(RankingTask.objects.values_list("id", "ranking_count")) == {t.pk: 3 for t in tasks}
    assert not Prompt.objects.filter(project=project, demonstration_count__gt=0).exists()
