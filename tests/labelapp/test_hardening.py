"""The low-severity faults of issue 18, each a clear error or a setting: deeply nested JSON (L3),
concurrent imports of the same prompts (L4), NUL characters (L5), another project's
demonstration on the review page (L6), imports that never read past their limit (L7), HTTPS
settings and `check --deploy` (L8), the API docs behind a log-in in production (L9)."""
import io
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from labelapp.models import Assignment, Demonstration, Prompt, Queue, Round
from labelapp.services.labels import demonstration_review, demonstration_submit
from labelapp.services.projects import prompt_create, prompts_import
from labelapp.services.queue import assignment_skip, task_claim
from labelapp.services.tokens import api_token_create
from tests.conftest import add_member, make_project, make_prompt, make_task

ROOT = Path(__file__).resolve().parents[2]
DEEP = b'{"text": "x", "metadata": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}\n"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


# ---- L3: deeply nested JSON ----------------------------------------------------------------------


@pytest.mark.django_db
def test_deeply_nested_json_in_an_import_is_a_clear_error(project):
    with pytest.raises(ValidationError) as info:
        prompts_import(project=project, data=b'{"text": "fine"}\n' + DEEP, fmt="jsonl")
    assert info.value.messages == ["line 2: the JSON is nested too deeply"]
    shallow_but_deep = {"text": "y", "metadata": json.loads('{"a": ' * 30 + "1" + "}" * 30)}
    with pytest.raises(ValidationError, match="line 1, field 'metadata': is nested more than 20 levels deep"):
        prompts_import(project=project, data=json.dumps(shallow_but_deep).encode(), fmt="jsonl")
    api = APIClient()
    api.force_authenticate(add_member(project, role="reviewer"))
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api.post(f"/api/v1/projects/{project.pk}/imports/prompts/", {"file": SimpleUploadedFile("p.jsonl", DEEP)})
    assert response.status_code == 400 and response.json()["errors"]["file"] == ["line 1: the JSON is nested too deeply"]
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_deeply_nested_round_settings_are_a_clear_error(project):
    admin = add_member(project, role="admin")
    settings_json = '{"sft": ' * 5000 + "{}" + "}" * 5000
    response = client_for(admin).post(reverse("studio:round_start", args=[project.slug]),
                                      {"method": "ppo", "prompts": "1", "min_rankings": "1", "settings": settings_json})
    assert response.status_code == 400 and "nested too deeply" in response.content.decode()
    assert not Round.objects.exists()


# ---- L4: two imports of the same prompts at once ---------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_imports_of_the_same_prompts_dedupe_cleanly():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    project = make_project(name="Twice")
    data = b"".join(json.dumps({"text": f"Prompt {i}"}).encode() + b"\n" for i in range(400))
    barrier, results, errors = threading.Barrier(2), [], []

    def run():
        try:
            barrier.wait()
            results.append(prompts_import(project=project, data=data, fmt="jsonl"))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted((r.created, r.duplicates) for r in results) == [(0, 400), (400, 0)]
    assert Prompt.objects.filter(project=project).count() == 400


# ---- L5: NUL characters ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_nul_in_the_services_is_a_clear_error(project, annotator, reviewer):
    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    with pytest.raises(ValidationError, match="The skip reason contains a NUL character"):
        assignment_skip(assignment_id=lease.pk, user=annotator, reason="bad\x00reason")
    with pytest.raises(ValidationError, match="The demonstration contains a NUL character"):
        demonstration_submit(assignment_id=lease.pk, user=annotator, text="half\x00written")
    demo = demonstration_submit(assignment_id=lease.pk, user=annotator, text="An answer.")
    with pytest.raises(ValidationError, match="The comment contains a NUL character"):
        demonstration_review(demonstration_id=demo.pk, reviewer=reviewer, approve=False, comment="no\x00pe")
    with pytest.raises(ValidationError, match="The token name contains a NUL character"):
        api_token_create(user=annotator, name="laptop\x00")
    with pytest.raises(ValidationError, match="The metadata contains a NUL character"):
        prompt_create(project=project, text="Fine text", metadata={"k": "v\x00"})
    with pytest.raises(ValidationError, match="project's name contains a NUL character"):
        make_project(name="Null\x00project")
    demo.refresh_from_db()
    assert demo.review_status == "pending" and Assignment.objects.get(pk=lease.pk).skip_reason == ""


@pytest.mark.django_db
def test_nul_in_any_form_field_query_or_json_body_is_a_400_not_a_500(project, annotator):
    admin = add_member(project, role="admin")
    make_task(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    pages = Client(raise_request_exception=False)
    pages.force_login(annotator)
    skip = pages.post(reverse("labelapp:skip", args=[project.slug, "rank", lease.pk]), {"reason": "x\x00y"})
    assert skip.status_code == 400 and "NUL character" in skip.content.decode()
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.ACTIVE
    studio = Client(raise_request_exception=False)
    studio.force_login(admin)
    started = studio.post(reverse("studio:round_start", args=[project.slug]),
                          {"method": "ppo", "prompts": "1", "min_rankings": "1", "settings": '{"sft": {"note": "a\\u0000b"}}'})
    # the JSON escape reaches the view as text; the view's JSON turns it into a NUL: still refused
    assert started.status_code == 400 and not Round.objects.exists()
    raw = studio.post(reverse("studio:round_start", args=[project.slug]),
                      {"method": "ppo", "prompts": "1\x00", "min_rankings": "1", "settings": "{}"})
    assert raw.status_code == 400 and "NUL character" in raw.content.decode()
    api = APIClient(raise_request_exception=False)
    api.force_authenticate(admin)
    for response in (
        api.post(f"/api/v1/projects/{project.pk}/rounds/", {"method": "ppo", "params": {"note": "a\x00b"}}, format="json"),
        api.get("/api/v1/prompts/", {"category": "chat\x00"}),
        api.post("/api/v1/tokens/", {"name": "t\x00"}, format="json"),
    ):
        assert response.status_code == 400 and "NUL character" in response.json()["detail"], response.content
    assert not Round.objects.exists()


# ---- L6: the review page and another project's demonstration -----------------------------------------


@pytest.mark.django_db
def test_review_page_404s_for_another_projects_demonstration_without_naming_it():
    mine, theirs = make_project(name="Mine"), make_project(name="Secret Skunkworks")
    reviewer = add_member(mine, role="reviewer")
    writer = add_member(theirs)
    make_prompt(theirs)
    lease = task_claim(project=theirs, user=writer, queue=Queue.WRITE)
    foreign = demonstration_submit(assignment_id=lease.pk, user=writer, text="Their answer.")
    response = client_for(reviewer).post(reverse("labelapp:review", args=[mine.slug]),
                                         {"demonstration_id": foreign.pk, "decision": "approve"})
    assert response.status_code == 404 and "Skunkworks" not in response.content.decode()
    assert Demonstration.objects.get(pk=foreign.pk).review_status == "pending"


# ---- L7: imports never read past their limit ---------------------------------------------------------


class CountingFile(io.RawIOBase):
    """A file of `size` bytes that records how much was read from it (and knows no size of its own)."""

    def __init__(self, size: int, line: bytes = b'{"text": "a prompt"}\n'):
        self.size_left, self.read_bytes, self.line = size, 0, line

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.size_left)
        start = self.read_bytes % len(self.line)
        chunk = (self.line * (n // len(self.line) + 2))[start:start + n]
        buffer[:n] = chunk
        self.size_left -= n
        self.read_bytes += n
        return n


@pytest.mark.django_db
def test_an_import_stops_reading_at_the_limit(project, settings):
    settings.IMPORT_MAX_BYTES = 1_000_000
    big = CountingFile(50_000_000)
    with pytest.raises(ValidationError, match="more than 1,000,000 bytes, the limit"):
        prompts_import(project=project, data=io.BufferedReader(big), fmt="jsonl")
    assert big.read_bytes < 1_200_000  # not the 50 MB
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_one_huge_line_is_refused_without_being_held(project, settings):
    settings.IMPORT_MAX_BYTES = 60_000_000
    settings.IMPORT_MAX_LINE_BYTES = 1_000_000
    huge = b'{"text": "' + b"x" * 40_000_000 + b'"}\n{"text": "after"}\n'
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError) as info:
            prompts_import(project=project, data=io.BufferedReader(io.BytesIO(huge)), fmt="jsonl")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.messages == ["line 1: the line is longer than 1,000,000 bytes (IMPORT_MAX_LINE_BYTES)"]
    assert peak < 8_000_000, f"peak {peak:,} bytes while refusing a 40 MB line"  # one line cap, not the file


@pytest.mark.django_db(transaction=True)
def test_the_api_refuses_an_oversized_upload_from_its_length_before_reading_it(project, settings, live_server):
    import http.client

    settings.IMPORT_MAX_BYTES = 1000
    reviewer = add_member(project, role="reviewer")
    _, key = api_token_create(user=reviewer, name="t")
    host, port = live_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", f"/api/v1/projects/{project.pk}/imports/prompts/")
    conn.putheader("Authorization", f"Token {key}")
    conn.putheader("Content-Type", "multipart/form-data; boundary=xyz")
    conn.putheader("Content-Length", str(5 * 1024 ** 3))  # announces 5 GB, sends none of it
    conn.endheaders()
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 413 and "the limit is 1,000 bytes" in body["detail"]


@pytest.mark.django_db
def test_the_upload_handler_stops_a_body_without_an_honest_length(project, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.IMPORT_MAX_BYTES = 1000
    api = APIClient()
    api.force_authenticate(add_member(project, role="reviewer"))
    # the test client sends the true Content-Length; under the slack, so the handler must stop it
    response = api.post(f"/api/v1/projects/{project.pk}/imports/labels/",
                        {"file": SimpleUploadedFile("p.jsonl", b"x" * 20_000), "format": "hh"})
    assert response.status_code == 413 and "the limit is 1,000 bytes" in response.json()["detail"]


# ---- L8: HTTPS settings and check --deploy ------------------------------------------------------------


def run_manage(args, tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG", "SECRET_KEY", "APP_ENV", "REDIS_URL"}}
    clean.update({"DATA_DIR": str(tmp_path), **env})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)


PRODUCTION = {"APP_ENV": "production", "DEBUG": "0", "SECRET_KEY": "q7-Vx2rT9pLmW4nZ8cYb1hJ6kF3sD0gA5eR-uI8oP2yN7tQ4vB",
              "ALLOWED_HOSTS": "studio.example.com"}


def test_check_deploy_is_clean_in_production(tmp_path):
    run = run_manage(["check", "--deploy", "--fail-level", "WARNING"], tmp_path, **PRODUCTION,
                     SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout


def test_https_settings_come_from_the_environment(tmp_path):
    code = ("from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, "
            "s.SECURE_HSTS_INCLUDE_SUBDOMAINS, s.SECURE_PROXY_SSL_HEADER, s.API_DOCS_PUBLIC)")
    run = run_manage(["shell", "-v", "0", "-c", code], tmp_path, **PRODUCTION, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https")
    assert run.stdout.split() == ["True", "31536000", "True", "('HTTP_X_FORWARDED_PROTO',", "'https')", "False"]
    run = run_manage(["shell", "-v", "0", "-c", code], tmp_path, **PRODUCTION, SECURE_SSL_REDIRECT="0", SECURE_HSTS_SECONDS="3600",
                     SECURE_HSTS_INCLUDE_SUBDOMAINS="no", API_DOCS_PUBLIC="1")
    assert run.stdout.split() == ["False", "3600", "False", "None", "True"]
    run = run_manage(["shell", "-v", "0", "-c", code], tmp_path)  # development: none of it
    assert run.stdout.split() == ["False", "0", "False", "None", "True"]
    bad = run_manage(["check"], tmp_path, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert bad.returncode != 0 and "write it as 'X-Forwarded-Proto: https'" in bad.stderr


@pytest.mark.django_db
def test_ssl_redirect_and_hsts_behind_a_proxy(settings, project):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    client = Client()
    plain = client.get("/accounts/login/")
    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    secure = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200 and secure["Strict-Transport-Security"].startswith("max-age=31536000")


# ---- L9: the API's schema and Swagger UI behind a log-in in production -------------------------------


@pytest.mark.django_db
def test_api_docs_need_a_login_when_not_public(settings, project):
    settings.API_DOCS_PUBLIC = False
    anonymous = APIClient()
    for path in ("/api/v1/schema/", "/api/v1/docs/"):
        response = anonymous.get(path)
        assert response.status_code == 401 and response.json() == {"detail": "Authentication credentials were not provided."}, path
    member = APIClient()
    member.force_authenticate(add_member(project))
    assert json.loads(member.get("/api/v1/schema/", {"format": "json"}).content)["info"]["title"] == "RLHF studio API"
    assert member.get("/api/v1/docs/").status_code == 200
    settings.API_DOCS_PUBLIC = True
    assert anonymous.get("/api/v1/schema/", {"format": "json"}).status_code == 200
