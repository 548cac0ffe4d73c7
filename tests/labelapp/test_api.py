import json

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from labelapp.models import ApiToken, Prompt, Queue
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    cache.clear()  # throttle counters live in the cache
    return APIClient()


def as_user(api, user):
    api.force_authenticate(user)
    return api


def rank(project, user, order_of=lambda ids: [[i] for i in ids], **kwargs):
    lease = task_claim(project=project, user=user, queue=Queue.RANK)
    ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
    return ranking_submit(assignment_id=lease.pk, user=user, order=order_of(ids), **kwargs)


# ---- tokens -----------------------------------------------------------------------------


def test_token_is_shown_once_works_and_can_be_revoked(api):
    user = make_user()
    api.force_login(user)
    created = api.post("/api/v1/tokens/", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    key = created.json()["key"]
    assert key.startswith("rs_") and created.json()["prefix"] == key[:10]
    listed = api.get("/api/v1/tokens/").json()["results"]
    assert listed[0]["name"] == "laptop" and "key" not in listed[0]
    assert ApiToken.objects.get().digest != key  # only a digest is stored
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert bearer.get("/api/v1/projects/").status_code == 200
    assert api.delete(f"/api/v1/tokens/{created.json()['id']}/").status_code == 204
    assert bearer.get("/api/v1/projects/").status_code == 401
    assert bearer.get("/api/v1/projects/").json()["detail"] == "Invalid or revoked token."


def test_bad_token_inputs(api):
    user = make_user()
    as_user(api, user)
    assert api.post("/api/v1/tokens/", {"name": ""}, format="json").status_code == 400
    other = ApiToken.objects.create(user=make_user(), name="x", prefix="rs_x", digest="d" * 64)
    assert api.delete(f"/api/v1/tokens/{other.pk}/").status_code == 404
    assert ApiToken.objects.get(pk=other.pk).revoked_at is None
    anon = APIClient()
    anon.credentials(HTTP_AUTHORIZATION="Token")
    assert anon.get("/api/v1/projects/").status_code == 401


def test_token_creation_is_throttled(api, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"token_create": "2/hour"}}
    as_user(api, make_user())
    codes = [api.post("/api/v1/tokens/", {"name": f"t{i}"}, format="json").status_code for i in range(3)]
    assert codes == [201, 201, 429]
    assert ApiToken.objects.count() == 2


def test_login_is_throttled(client, settings):
    cache.clear()
    settings.LOGIN_THROTTLE_ATTEMPTS = 3
    make_user("victim")
    codes = [client.post("/accounts/login/", {"username": "victim", "password": "wrong"}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = client.post("/accounts/login/", {"username": "victim", "password": "pw-victim"})
    assert refused.status_code == 429 and "Too many failed log-ins" in refused.content.decode()


# ---- reading ------------------------------------------------------------------------------


def test_annotators_see_their_own_labels_reviewers_see_all():
    project = make_project(overlap=2)
    a, b = add_member(project), add_member(project)
    reviewer = add_member(project, role="reviewer")
    make_task(project)
    mine = rank(project, a)
    rank(project, b)
    client = APIClient()
    client.force_authenticate(a)
    rows = client.get("/api/v1/rankings/").json()["results"]
    assert [r["id"] for r in rows] == [mine.pk]
    assert rows[0]["annotator"].startswith("ann_") and str(a.pk) not in rows[0]["annotator"]
    client.force_authenticate(reviewer)
    assert len(client.get("/api/v1/rankings/").json()["results"]) == 2


def test_filters_come_from_an_allow_list(api, project, annotator):
    as_user(api, annotator)
    make_prompt(project, category="chat")
    make_prompt(project, category="rewrite")
    leaky = api.get("/api/v1/prompts/", {"project__memberships__user__password__startswith": "pbkdf2"})
    assert leaky.status_code == 400 and "unknown filter" in leaky.json()["errors"]["filters"][0]
    assert api.get("/api/v1/prompts/", {"category": "poetry"}).status_code == 400
    assert api.get("/api/v1/prompts/", {"project": "no-such-project"}).json()["results"] == []
    rows = api.get("/api/v1/prompts/", {"category": "chat", "project": project.pk}).json()["results"]
    assert [r["category"] for r in rows] == ["chat"]
    by_slug = api.get("/api/v1/prompts/", {"category": "chat", "project": project.slug}).json()["results"]
    assert by_slug == rows


def test_cursor_pagination(api, project, annotator):
    as_user(api, annotator)
    for _ in range(5):
        make_prompt(project)
    first = api.get("/api/v1/prompts/", {"page_size": 2}).json()
    assert len(first["results"]) == 2 and "cursor=" in first["next"]
    second = api.get(first["next"]).json()
    assert {r["id"] for r in first["results"]}.isdisjoint({r["id"] for r in second["results"]})


# ---- imports ----------------------------------------------------------------------------


def upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


def test_prompt_import_all_or_nothing(api, project, reviewer, annotator):
    url = f"/api/v1/projects/{project.pk}/imports/prompts/"
    good = b'{"text": "one"}\n{"text": "two", "category": "chat"}\n'
    assert as_user(api, annotator).post(url, {"file": upload("p.jsonl", good)}).status_code == 403
    as_user(api, reviewer)
    created = api.post(url, {"file": upload("p.jsonl", good)})
    assert created.status_code == 201 and created.json() == {"created": 2, "duplicates": 0}
    assert api.post(url, {"file": upload("p.jsonl", good)}).json() == {"created": 0, "duplicates": 2}
    bad = api.post(url, {"file": upload("p.jsonl", b'{"text": "three"}\n{"text": \n')})
    assert bad.status_code == 400
    assert bad.json()["errors"] == {"file": ["line 2: broken JSON: Expecting value (column 10)"]}
    assert bad.json()["detail"] == "import refused, nothing was written"
    assert api.post(url, {"file": upload("p.xml", good)}).status_code == 400
    assert api.post(url, {}).json() == {"detail": "file: attach the file as multipart field 'file'",
                                        "errors": {"file": ["attach the file as multipart field 'file'"]}}
    assert Prompt.objects.count() == 2


def test_import_size_limit_is_checked_before_reading(api, project, reviewer, settings):
    settings.IMPORT_MAX_BYTES = 10
    as_user(api, reviewer)
    response = api.post(f"/api/v1/projects/{project.pk}/imports/prompts/", {"file": upload("p.jsonl", b"x" * 11)})
    assert response.status_code == 413 and "the limit is 10 bytes" in response.json()["detail"]


def test_other_projects_are_404_for_project_routes(api, reviewer):
    other = make_project()
    as_user(api, reviewer)
    for url in (
        f"/api/v1/projects/{other.pk}/imports/prompts/",
        f"/api/v1/projects/{other.pk}/exports/pairs/",
        f"/api/v1/projects/{other.pk}/statistics/agreement/",
    ):
        method = api.post if "imports" in url else api.get
        assert method(url).status_code == 404, url


# ---- exports ----------------------------------------------------------------------------


def read_lines(response) -> list[dict]:
    assert response.streaming
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


@pytest.fixture
def labelled():
    project = make_project(overlap=2)
    a, b = add_member(project), add_member(project)
    reviewer = add_member(project, role="reviewer")
    make_task(project, texts=["best", "mid", "also mid", "worst"])
    # a: best > {mid, also mid} > worst (a tie) ; b: strict order
    rank(project, a, lambda ids: [[ids[0]], [ids[1], ids[2]], [ids[3]]])
    rank(project, b)
    return project, reviewer


def test_pairs_export_plain_and_conversational(api, labelled):
    project, reviewer = labelled
    as_user(api, reviewer)
    plain = read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/pairs/"))
    assert len(plain) == (6 - 1) + 6  # C(4,2) minus the tie, plus a full order
    assert set(plain[0]) == {"prompt", "chosen", "rejected"} and plain[0]["chosen"] == "best"
    conv = read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/pairs/", {"style": "conversational", "meta": "1"}))
    assert conv[0]["prompt"][0]["role"] == "user" and conv[0]["chosen"] == [{"role": "assistant", "content": "best"}]
    assert conv[0]["annotator"].startswith("ann_")


def test_pairs_of_a_none_acceptable_ranking_are_marked(api):
    project = make_project(overlap=2, k=2)
    a, b = add_member(project), add_member(project)
    reviewer = add_member(project, role="reviewer")
    make_task(project, texts=["bad", "worse"])
    rank(project, a, none_acceptable=True)  # ordered, and none acceptable
    rank(project, b)
    as_user(api, reviewer)
    lines = read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/pairs/"))
    assert len(lines) == 2
    marked = [line for line in lines if line.get("none_acceptable")]
    assert len(marked) == 1 and marked[0]["none_acceptable"] is True
    assert [set(line) for line in lines if line not in marked] == [{"prompt", "chosen", "rejected"}]


def test_rankings_kto_and_agreement_filter(api, labelled):
    project, reviewer = labelled
    as_user(api, reviewer)
    rankings = read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/rankings/"))
    assert len(rankings) == 2 and len(rankings[0]["completions"]) == 4
    kto = read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/kto/"))
    assert sorted(r["label"] for r in kto) == [False, False, True, True]
    # the two annotators agree on 5 of 6 pairs (the tie differs): 0.83
    assert len(read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/rankings/", {"min_agreement": "0.8"}))) == 2
    assert read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/rankings/", {"min_agreement": "0.9"})) == []


def test_export_rejects_bad_parameters_and_annotators(api, labelled):
    project, reviewer = labelled
    url = f"/api/v1/projects/{project.pk}/exports/pairs/"
    as_user(api, reviewer)
    assert api.get(url, {"min_agreement": "2"}).json() == {"detail": "min_agreement: must be between 0 and 1",
                                                           "errors": {"min_agreement": ["must be between 0 and 1"]}}
    assert api.get(url, {"since": "yesterday"}).status_code == 400
    assert api.get(url, {"password": "x"}).status_code == 400
    assert api.get(f"/api/v1/projects/{project.pk}/exports/everything/").status_code == 404
    annotator = project.memberships.filter(role="annotator").first().user
    assert as_user(api, annotator).get(url).status_code == 403


def test_demonstrations_export(api, project, annotator, reviewer):
    make_prompt(project, text="Say hi")
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    demonstration_submit(assignment_id=lease.pk, user=annotator, text="Hi!")
    rows = read_lines(as_user(api, reviewer).get(f"/api/v1/projects/{project.pk}/exports/demonstrations/"))
    assert rows == [{"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}],
                     "category": "other", "split": "train"}]
    assert read_lines(api.get(f"/api/v1/projects/{project.pk}/exports/demonstrations/", {"status": "approved"})) == []


def test_agreement_statistics(api, labelled):
    project, reviewer = labelled
    stats = as_user(api, reviewer).get(f"/api/v1/projects/{project.pk}/statistics/agreement/").json()
    assert stats["items_with_overlap"] == 1
    assert stats["pairwise_comparisons"] == 6
    assert stats["pairwise_agreement"] == pytest.approx(5 / 6)
    assert len(stats["annotators"]) == 2


# ---- schema -------------------------------------------------------------------------------


def test_openapi_schema_and_docs_work_offline(api, annotator):
    as_user(api, annotator)
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    body = json.loads(schema.content)
    assert body["openapi"].startswith("3.") and "/api/v1/projects/{project_id}/exports/{kind}/" in body["paths"]
    docs = api.get("/api/v1/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content and b"cdn" not in docs.content.lower()
