"""Task pages: progress, help from a text field, guidelines one key away, the lease in the browser's
time zone, Back after a submit, and My labels with undo until training has used a label."""
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from labelapp.models import Assignment, Demonstration, Ranking
from labelapp.selectors import labels as selectors
from labelapp.services.runs import model_version_register
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG_PROMPT = "Summarise the following notes for a busy reader. " + "The meeting covered budgets, hiring and the roadmap. " * 4


def project_with_work():
    project = make_project(name="Tasks", k=2, overlap=1)
    project.guidelines = "## How to rank\n\nPrefer **honest** answers."
    project.save()
    add_member(project, make_user("ann"))
    for i in range(3):
        make_prompt(project, text=f"Write prompt {i}: say something kind.")
    make_task(project, prompt=make_prompt(project, text=LONG_PROMPT), texts=["Short summary.", "Longer summary here."])
    make_task(project, texts=["one", "two"])
    return project


def test_write_page_progress_help_from_the_text_field_guidelines_and_local_lease_time(browser, live_server):
    project_with_work()
    context = browser.new_context(timezone_id="Australia/Adelaide", locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, live_server, "ann")
    page.keyboard.press("w")
    page.wait_for_url("**/write/*/")
    assert page.get_by_test_id("done-today").inner_text() == "0"
    assert page.get_by_test_id("left-in-queue").inner_text() == "4"  # 5 prompts, one in hand

    # the lease's end in the browser's zone (UTC+9:30 or +10:30), not UTC
    lease = Assignment.objects.get(user__username="ann")
    local = lease.expires_at.astimezone(ZoneInfo("Australia/Adelaide")).strftime("%H:%M")
    assert page.get_by_test_id("lease-end").inner_text() == f"{local} (Australia/Adelaide)"

    # `?` types into the answer; F1 and Ctrl+/ open the help from it; Esc closes and returns
    expect(page.locator("#answer")).to_be_focused()
    page.keyboard.type("Why? ")
    assert page.locator("#answer").input_value() == "Why? "
    expect(page.locator("#help")).to_be_hidden()
    page.keyboard.press("F1")
    expect(page.locator("#help")).to_be_visible()
    assert page.locator("#help").get_by_text("also while typing").is_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()
    expect(page.locator("#answer")).to_be_focused()
    page.keyboard.press("Control+/")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("Escape")
    assert page.locator("#answer").input_value() == "Why? "

    # the guidelines, one key away once out of the text field
    page.keyboard.press("Escape")
    page.keyboard.press("g")
    expect(page.locator("#guidelines")).to_be_visible()
    assert page.locator("#guidelines h2", has_text="How to rank").is_visible()
    page.keyboard.press("g")
    expect(page.locator("#guidelines")).to_be_hidden()

    # a live character count
    page.keyboard.press("t")
    page.keyboard.type("Be well.")
    assert page.locator("#answer-counts").inner_text() == "13 characters · 3 words"
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert page.get_by_test_id("done-today").inner_text() == "1"
    assert page.get_by_test_id("left-in-queue").inner_text() == "3"
    assert Demonstration.objects.get().text == "Why? Be well."
    assert not errors
    context.close()


def test_back_after_a_submit_says_so_and_shows_what_was_sent(page, live_server):
    project = project_with_work()
    login(page, live_server, "ann")
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    rank_url = page.url
    for key in "1 j 2".split():
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert page.url != rank_url  # the next task
    page.go_back()
    page.wait_for_url("**/mine/*/")
    assert "You already submitted this item" in page.locator(".messages").inner_text()
    assert page.get_by_test_id("rank-A").inner_text() == "1" and page.get_by_test_id("rank-B").inner_text() == "2"
    assert Ranking.objects.count() == 1 and project


def test_undo_an_unused_label_and_a_used_one_is_refused_with_its_reason(page, live_server):
    project = project_with_work()
    ann = project.memberships.get(user__username="ann").user
    login(page, live_server, "ann")
    # rank the long prompt's task: B best
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    for key in "2 j 1".split():
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    # skip the next one
    page.fill("#skip-reason", "cannot judge")
    with page.expect_navigation():
        page.locator("#skip-form button").click()

    page.goto(f"{live_server.url}/p/{project.slug}/mine/")
    table = page.get_by_test_id("my-labels")
    rows = table.locator("tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).get_attribute("data-kind") == "skip" and "Skipped: cannot judge" in rows.nth(0).inner_text()
    assert LONG_PROMPT.strip() in rows.nth(1).inner_text()  # the whole prompt, not a preview
    assert "rank groups" not in table.inner_text() and "Ranked 2 responses" in rows.nth(1).inner_text()
    assert all(rows.nth(i).locator("a").count() >= 1 for i in range(2))  # every row links

    # change it: the rank page again, filled with what was sent
    with page.expect_navigation():
        rows.nth(1).locator("a").first.click()
    with page.expect_navigation():
        page.locator("#edit-label").click()
    assert [page.locator(".rank-input").nth(i).input_value() for i in range(2)] == ["2", "1"]
    for key in "1 j 2 u".split():
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert "Your ranking is changed." in page.locator(".messages").inner_text()
    ranking = Ranking.objects.get()
    shown = selectors.completions_for_annotator(task_id=ranking.task_id, user=ann)
    assert ranking.order == [[shown[0].pk], [shown[1].pk]] and ranking.flags == {str(shown[1].pk): ["untruthful"]}

    # a model is trained on it: frozen, said on the page, and the edit page refuses
    model_version_register(project=project, name="reward-7", kind="reward", artifact_path="/x",
                           training_data={"rankings": selectors.label_set([ranking.pk])})
    page.reload()
    assert "the model reward-7 was trained on it" in page.get_by_test_id("frozen").inner_text()
    assert page.locator("#edit-label").count() == 0 and page.locator("#withdraw-label").count() == 0
    page.goto(page.url + "edit/")
    assert "This label can no longer change: the model reward-7" in page.locator(".messages").inner_text()
    page.goto(f"{live_server.url}/p/{project.slug}/mine/")
    assert "No: the model reward-7 was trained on it" in page.get_by_test_id("my-labels").inner_text()

    # withdraw an unused one: write a demonstration, then take it back
    page.goto(f"{live_server.url}/p/{project.slug}/")
    page.keyboard.press("w")
    page.wait_for_url("**/write/*/")
    page.keyboard.type("A kind word.")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    page.goto(f"{live_server.url}/p/{project.slug}/mine/")
    with page.expect_navigation():
        page.locator('tr[data-kind="demonstration"] a').first.click()
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        page.locator("#withdraw-label").click()
    assert "Withdrawn" in page.locator(".messages").inner_text()
    assert not Demonstration.objects.exists()
    assert page.locator('tr[data-kind="withdrawn"]').count() == 1
    assert not page.js_errors
