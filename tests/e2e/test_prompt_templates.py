"""Prompt templates in the browser: an admin writes a template with two placeholders and three
few-shot examples, watches the live preview (rendered as annotators see prompts), saves it,
imports ten rows through it, and an annotator then sees the rendered prompt on the write page."""
import json

import pytest
from playwright.sync_api import expect

from labelapp.models import Prompt, PromptTemplate
from tests.conftest import add_member, make_project, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ROWS = [{"topic": "arithmetic", "question": f"What is {i} + {i}?", "target": str(2 * i)} for i in range(1, 11)]


def test_admin_writes_previews_imports_and_annotator_sees_the_prompt(page, live_server):
    project = make_project(name="Templates", slug="templates")
    add_member(project, make_user("boss"), role="admin")
    add_member(project, make_user("ann"), role="annotator")
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    with page.expect_navigation():
        page.locator("#templates-link").click()
    expect(page.locator("#no-templates")).to_be_visible()

    page.locator("#t-name").fill("arith")
    page.locator("#t-text").fill("Topic: {topic}. {question}")
    page.locator("#t-system").fill("Answer with a number.")
    page.locator("#t-few").fill("3")
    page.locator("#t-seed").fill("11")
    page.locator("#t-sample").fill("\n".join(json.dumps(r) for r in ROWS[:5]))
    preview = page.locator("#preview [data-testid=prompt]")  # the annotators' prompt partial, live
    expect(preview).to_contain_text("Topic: arithmetic. What is 1 + 1?")
    turns = preview.locator(".turn")
    expect(turns).to_have_count(8)  # system, 3 × (user, assistant), the row
    expect(turns.first).to_contain_text("Answer with a number.")
    expect(page.locator("#preview")).to_contain_text("with rows")
    # a typo in a placeholder shows the error in place of the preview, live
    page.locator("#t-text").fill("Topic: {topic}. {questoin}")
    expect(page.locator("#preview-error")).to_contain_text("row 1: field 'question' is not a placeholder")
    page.locator("#t-text").fill("Topic: {topic}. {question}")
    page.locator("#t-row").fill("2")
    expect(preview.locator(".turn").last).to_contain_text("What is 2 + 2?")

    with page.expect_navigation():
        page.locator("#save-template").click()
    expect(page.locator(".messages")).to_contain_text("saved (version 1)")
    template = PromptTemplate.objects.get(project=project, name="arith")
    assert (template.few_shot, template.seed, template.version) == (3, 11, 1)

    page.locator("#i-file").set_input_files(files=[{
        "name": "rows.jsonl", "mimeType": "application/jsonl",
        "buffer": "\n".join(json.dumps(r) for r in ROWS).encode(),
    }])
    page.locator("#i-category").select_option("closed_qa")
    with page.expect_navigation():
        page.locator("#import-rows").click()
    expect(page.locator(".messages")).to_contain_text("Imported 10 prompts")
    assert Prompt.objects.filter(project=project, metadata__template__id=template.pk).count() == 10

    # a bad file is refused whole, naming the row and field
    bad = [*ROWS[:3], {"topic": "t"}]
    page.locator("#i-file").set_input_files(files=[{
        "name": "bad.jsonl", "mimeType": "application/jsonl", "buffer": "\n".join(json.dumps(r) for r in bad).encode(),
    }])
    with page.expect_navigation():
        page.locator("#import-rows").click()
    expect(page.locator(".messages")).to_contain_text("row 4 (line 4): field 'question' is missing")
    assert Prompt.objects.filter(project=project).count() == 10

    page.context.clear_cookies()
    login(page, live_server, "ann")
    page.goto(f"{live_server.url}/p/{project.slug}/")
    with page.expect_navigation():
        page.locator("#start-write").click()
    assert "/write/" in page.url
    shown = page.locator("[data-testid=prompt]")
    expect(shown.locator(".turn")).to_have_count(8)
    expect(shown.locator(".turn").last).to_contain_text("Topic: arithmetic. What is")
    expect(shown.locator(".turn").first).to_contain_text("Answer with a number.")
    expect(shown).to_contain_text("Closed QA")
    assert not page.js_errors
