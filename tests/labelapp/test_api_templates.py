"""Prompt templates over the API: CRUD with the version bump, roles, IDOR (a template of another
project through my project's URL), preview, and the templated import in the /api/ error shape."""
from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from labelapp.models import Prompt, PromptTemplate
from labelapp.services.templates import prompt_template_create
from tests.conftest import add_member, make_project

pytestmark = pytest.mark.django_db

ROWS = [{"question": f"What is {i} + {i}?", "topic": "arithmetic", "target": str(2 * i)} for i in range(1, 11)]
TEXT = "Topic: {topic}. {question}"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def base(project) -> str:
    return f"/api/v1/projects/{project.pk}/templates/"


def rows_file(rows, name="rows.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, "\n".join(json.dumps(r) for r in rows).encode())


def test_admin_creates_edits_lists_and_deletes_a_template(project):
    admin = add_member(project, role="admin")
    api = client_for(admin)
    made = api.post(base(project), {"name": "sum", "text": TEXT, "few_shot": 3, "seed": 4}, format="json")
    assert made.status_code == 201, made.json()
    body = made.json()
    assert body["version"] == 1 and body["placeholders"] == ["topic", "question"] and body["few_shot"] == 3
    url = f"{base(project)}{body['id']}/"
    edited = api.patch(url, {"cot_cue": "Let's think step by step."}, format="json")
    assert edited.status_code == 200 and edited.json()["version"] == 2
    assert api.patch(url, {"name": "sums"}, format="json").json()["version"] == 2  # a rename renders the same
    listed = api.get(base(project)).json()
    assert [t["name"] for t in listed["results"]] == ["sums"]
    assert api.get(f"/api/v1/projects/{project.slug}/templates/").json()["results"][0]["id"] == body["id"]
    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404
    assert not PromptTemplate.objects.exists()


def test_bad_templates_come_back_in_the_api_error_shape_and_save_nothing(project):
    api = client_for(add_member(project, role="admin"))
    got = api.post(base(project), {"name": "bad", "text": "no fields"}, format="json")
    assert got.status_code == 400
    assert set(got.json()) == {"detail", "errors"}
    assert "no {placeholder}" in got.json()["errors"]["text"][0]
    got = api.post(base(project), {"name": "bad", "text": "{a}", "few_shot": 40}, format="json")
    assert got.status_code == 400 and "few_shot" in got.json()["errors"]
    got = api.post(base(project), {"name": "bad", "text": "{a}", "mode": "poem"}, format="json")
    assert got.status_code == 400 and "mode" in got.json()["errors"]
    assert not PromptTemplate.objects.exists()
    template = prompt_template_create(project=project, name="ok", text="{a}")
    got = api.patch(f"{base(project)}{template.pk}/", {"text": "{a"}, format="json")
    assert got.status_code == 400 and "literal braces" in got.json()["detail"]
    assert PromptTemplate.objects.get(pk=template.pk).text == "{a}"


def test_roles_annotators_see_nothing_reviewers_read_admins_write(project):
    template = prompt_template_create(project=project, name="t", text=TEXT)
    annotator = client_for(add_member(project, role="annotator"))
    reviewer = client_for(add_member(project, role="reviewer"))
    assert annotator.get(base(project)).status_code == 403
    assert reviewer.get(base(project)).status_code == 200
    assert reviewer.post(base(project), {"name": "x", "text": "{a}"}, format="json").status_code == 403
    assert reviewer.patch(f"{base(project)}{template.pk}/", {"text": "{b}"}, format="json").status_code == 403
    assert reviewer.delete(f"{base(project)}{template.pk}/").status_code == 403
    assert PromptTemplate.objects.get(pk=template.pk).text == TEXT


def test_another_projects_template_through_my_project_is_404(project):
    admin = add_member(project, role="admin")
    other = make_project()
    add_member(other, admin, role="admin")  # an admin of both: still 404 through the wrong project
    theirs = prompt_template_create(project=other, name="theirs", text="{a}")
    api = client_for(admin)
    url = f"{base(project)}{theirs.pk}/"
    assert api.get(url).status_code == 404
    assert api.patch(url, {"text": "{b}"}, format="json").status_code == 404
    assert api.delete(url).status_code == 404
    got = api.post(f"{base(project)}preview/", {"template": theirs.pk, "rows": ROWS}, format="json")
    assert got.status_code == 404
    got = api.post(f"/api/v1/projects/{project.pk}/imports/templated/", {"file": rows_file(ROWS),
                                                                           "templates": str(theirs.pk)})
    assert got.status_code == 400 and "no such template" in got.json()["errors"]["file"][0]
    assert PromptTemplate.objects.get(pk=theirs.pk).text == "{a}" and not Prompt.objects.exists()


def test_preview_of_unsaved_and_stored_templates(project):
    api = client_for(add_member(project, role="reviewer"))
    got = api.post(f"{base(project)}preview/", {"text": TEXT, "few_shot": 3, "seed": 2, "rows": ROWS, "row": 4},
                   format="json")
    assert got.status_code == 200, got.json()
    body = got.json()
    assert body["messages"][-1] == {"role": "user", "content": "Topic: arithmetic. What is 4 + 4?"}
    assert len(body["examples"]) == 3 and 4 not in body["examples"] and body["reference"] == "8"
    stored = prompt_template_create(project=project, name="s", text=TEXT, mode="text", few_shot=0)
    got = api.post(f"{base(project)}preview/", {"template": stored.pk, "rows": ROWS}, format="json")
    assert got.json()["text"] == "Topic: arithmetic. What is 1 + 1?\nAnswer:" and got.json()["messages"] is None
    bad = api.post(f"{base(project)}preview/", {"text": TEXT, "rows": [{"question": "q"}]}, format="json")
    assert bad.status_code == 400 and "row 1: field 'topic' is missing" in bad.json()["errors"]["rows"][0]
    bad = api.post(f"{base(project)}preview/", {"text": "{a", "rows": ROWS}, format="json")
    assert bad.status_code == 400 and "text" in bad.json()["errors"]


def test_templated_import_over_the_api(project):
    admin = client_for(add_member(project, role="admin"))
    template = prompt_template_create(project=project, name="t", text=TEXT, few_shot=3)
    url = f"/api/v1/projects/{project.pk}/imports/templated/"
    got = admin.post(url, {"file": rows_file(ROWS), "templates": "t", "category": "closed_qa"})
    assert got.status_code == 201, got.json()
    assert got.json() == {"created": 10, "duplicates": 0}
    prompt = Prompt.objects.filter(project=project).order_by("id").first()
    assert prompt.metadata["template"]["id"] == template.pk and prompt.reference == "2"
    listed = admin.get("/api/v1/prompts/", {"project": project.pk}).json()["results"]
    assert listed[0]["metadata"]["fields"]["question"] == "What is 1 + 1?"
    bad_rows = [*ROWS[:5], {"question": "Q?", "topic": "t", "colour": "red"}]
    got = admin.post(url, {"file": rows_file(bad_rows), "templates": str(template.pk)})
    assert got.status_code == 400
    assert got.json()["detail"] == "import refused, nothing was written"
    assert "row 6 (line 6): field 'colour' is not a placeholder" in got.json()["errors"]["file"][0]
    assert Prompt.objects.count() == 10
    got = admin.post(url, {"file": rows_file(ROWS), "templates": "t", "choice": "sometimes"})
    assert got.status_code == 400 and "choice" in got.json()["errors"]
    annotator = client_for(add_member(project, role="annotator"))
    assert annotator.post(url, {"file": rows_file(ROWS), "templates": "t"}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_the_admin_curl_example_in_the_api_docs_runs(live_server):
    import os
    import re
    import subprocess
    from pathlib import Path

    from labelapp.services.tokens import api_token_create

    doc = (Path(__file__).resolve().parents[2] / "docs" / "API.md").read_text()
    [script] = re.findall(r"<!-- admin-example -->\n```sh\n(.*?)```", doc, flags=re.DOTALL)
    project = make_project()
    _, key = api_token_create(user=add_member(project, role="admin"), name="docs")
    env = {**os.environ, "STUDIO": live_server.url, "TOKEN": key, "PROJECT": str(project.pk)}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr + run.stdout
    assert '"created":2' in run.stdout.replace(" ", "")
    assert Prompt.objects.filter(project=project, metadata__template__name="nli").count() == 2
