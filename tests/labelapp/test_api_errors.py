"""One error shape under /api/ (W4): a 400 is {"detail", "errors": {field: [messages]}} whatever
raised it (a filter, a serializer, a service, an import); every other error is {"detail"}; unknown
routes, wrong methods and server errors answer JSON, never Django's HTML pages, DEBUG or not.
Projects are addressable by id or slug."""
import pytest
from rest_framework.test import APIClient

from labelapp.models import ApiToken
from labelapp.services.tokens import MAX_LIVE_TOKENS, api_token_create
from tests.conftest import add_member, make_project, make_prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(project):
    return add_member(project, role="admin")


@pytest.fixture
def api(admin):
    client = APIClient()
    client.force_authenticate(admin)
    return client


def assert_validation_shape(response, field):
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "errors"} and isinstance(body["detail"], str) and body["detail"]
    assert field in body["errors"]
    assert all(isinstance(ms, list) and all(isinstance(m, str) for m in ms) for ms in body["errors"].values())


def test_every_kind_of_validation_error_has_one_shape(api, project, admin):
    # an unknown filter, a bad filter value, a serializer, a service, an import, a malformed body
    assert_validation_shape(api.get("/api/v1/prompts/", {"nope": "1"}), "filters")
    assert_validation_shape(api.get("/api/v1/prompts/", {"created_after": "yesterday"}), "created_after")
    assert_validation_shape(api.post("/api/v1/tokens/", {}, format="json"), "name")
    for i in range(MAX_LIVE_TOKENS):
        api_token_create(user=admin, name=f"t{i}")
    assert_validation_shape(api.post("/api/v1/tokens/", {"name": "one more"}, format="json"), "name")
    refused = api.post(f"/api/v1/projects/{project.pk}/imports/prompts/",
                       {"file": _upload(b'{"text": "x", "split": "test"}\n')}, format="multipart")
    assert_validation_shape(refused, "file")
    assert refused.json()["detail"] == "import refused, nothing was written"
    nested = b'{"a": ' * 5000 + b"1" + b"}" * 5000  # deeper than Python's JSON parser goes
    assert_validation_shape(api.generic("POST", "/api/v1/tokens/", nested, content_type="application/json"),
                            "non_field_errors")
    assert ApiToken.objects.count() == MAX_LIVE_TOKENS


def test_a_service_refusal_is_a_400_in_the_same_shape(api, project, monkeypatch):
    from django.core.exceptions import ValidationError

    from labelapp.api import loop

    def refuse(**kwargs):
        raise ValidationError("Round 1 is still in progress; cancel it or wait for it to finish.")

    monkeypatch.setattr(loop, "round_start", refuse)
    response = api.post(f"/api/v1/projects/{project.pk}/rounds/", {"method": "ppo"}, format="json")
    assert_validation_shape(response, "non_field_errors")
    assert response.json()["detail"] == "Round 1 is still in progress; cancel it or wait for it to finish."


def _upload(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("p.jsonl", data)


@pytest.mark.parametrize("debug", [True, False])
def test_other_errors_are_json_detail_only(settings, project, admin, debug):
    settings.DEBUG = debug
    anonymous = APIClient()
    api = APIClient()
    api.force_authenticate(add_member(project, role="annotator"))
    cases = [
        (anonymous.get("/api/v1/projects/"), 401),
        (APIClient(HTTP_AUTHORIZATION="Token nope").get("/api/v1/projects/"), 401),
        (api.post(f"/api/v1/projects/{project.pk}/rounds/", {}, format="json"), 403),
        (api.get("/api/v1/projects/999999/"), 404),
        (api.delete(f"/api/v1/projects/{project.pk}/"), 405),
        (api.get("/api/v1/no-such-thing/"), 404),
        (api.post("/api/v1/no-such-thing/", {}), 404),
        (api.get("/api/v2/projects/"), 404),
        (api.get("/api"), 404),
        (api.get("/api/"), 404),
        (api.post("/api/v1/tokens", {"name": "x"}, format="json"), 404),  # no redirect that would drop the body
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request["PATH_INFO"], response.status_code)
        assert response["Content-Type"] == "application/json", response.request["PATH_INFO"]
        body = response.json()
        assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    assert "did you mean /api/v1/tokens/" in cases[-1][0].json()["detail"]
    moved = api.get("/api/v1/projects", {"page_size": 5})
    assert moved.status_code == 301 and moved["Location"] == "/api/v1/projects/?page_size=5"


@pytest.mark.parametrize("debug", [True, False])
def test_an_unexpected_exception_is_a_json_500(settings, project, admin, monkeypatch, debug):
    from labelapp.api import views

    settings.DEBUG = debug

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(views.PromptViewSet, "scope", staticmethod(broken))
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(admin)
    response = client.get("/api/v1/prompts/")
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert response.json()["detail"].startswith("Server error")
    assert ("debug" in response.json()) == debug


def test_projects_by_id_or_slug(api, project):
    make_prompt(project, text="Hello?")
    by_id = api.get(f"/api/v1/projects/{project.pk}/").json()
    assert api.get(f"/api/v1/projects/{project.slug}/").json() == by_id
    exported = api.get(f"/api/v1/projects/{project.slug}/exports/prompts/")
    assert b"Hello?" in b"".join(exported.streaming_content)
    assert api.get(f"/api/v1/projects/{project.slug}/statistics/agreement/").status_code == 200
    other = make_project(name="Someone else's")
    for path in (f"/api/v1/projects/{other.slug}/", f"/api/v1/projects/{other.slug}/exports/prompts/",
                 f"/api/v1/projects/{other.slug}/statistics/agreement/"):
        assert api.get(path).status_code == 404


def test_a_slug_needs_a_letter():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="needs a letter"):
        make_project(name="2024")
    assert make_project(name="2024 batch").slug == "2024-batch"
