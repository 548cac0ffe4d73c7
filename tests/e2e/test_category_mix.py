"""The category mix page in the browser: reached from the studio by keyboard, one row per category with
counts and shares beside InstructGPT's mix."""
import pytest
from playwright.sync_api import expect

from tests.conftest import add_member, make_project, make_prompt, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_reads_the_category_mix(page, live_server):
    project = make_project(name="Mix", categories=["generation", "chat", "recipes"])
    add_member(project, make_user("mixer"), role="admin")
    for i, category in enumerate(["generation", "generation", "generation", "recipes"]):
        make_prompt(project, text=f"Prompt {i}?", category=category)
    login(page, live_server, "mixer")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    page.locator("#categories-link").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    rows = page.locator("#category-mix tbody tr")
    expect(rows).to_have_count(3)
    generation = page.locator("#category-mix tr[data-category='generation']")
    expect(generation.locator("[data-field='prompts']")).to_have_text("3 (75.0%)")
    expect(generation.locator("[data-field='instructgpt']")).to_have_text("45.6%")
    recipes = page.locator("#category-mix tr[data-category='recipes']")
    expect(recipes.locator("[data-field='prompts']")).to_have_text("1 (25.0%)")
    expect(recipes.locator("[data-field='instructgpt']")).to_have_text("—")
    assert not page.js_errors
