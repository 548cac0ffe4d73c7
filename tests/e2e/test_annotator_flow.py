"""An annotator writes and ranks with the keyboard alone; the database holds exactly that."""
import pytest
from playwright.sync_api import expect

from labelapp.models import Demonstration, Ranking
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

XSS_PROMPT = 'Say hi <script>window.pwned=1</script> <img src=x onerror="window.pwned=1"> <a href="javascript:window.pwned=1">x</a>'


def setup_project(overlap=2):
    project = make_project(name="Keys", k=4, overlap=overlap)
    users = [add_member(project, make_user(f"ann{i}")) for i in range(1, 4)]
    prompt = make_prompt(project, text="Write a two-line poem about tea.", category="generation")
    task = make_task(project, prompt=prompt, texts=["Tea warms.", "A poem about coffee.", "Leaves steep slowly.", "No."])
    return project, users, task


def test_keyboard_only_write_and_rank_then_overlap(page, live_server):
    project, (first, second, third), task = setup_project(overlap=2)
    login(page, live_server, "ann1")
    assert page.get_by_test_id("waiting-write").inner_text() == "1"

    # help overlay from the keymap
    page.keyboard.press("?")
    assert page.locator("#help").is_visible()
    assert page.locator("#help").get_by_text("Start ranking responses").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()

    # write: W claims, the answer box has focus, Ctrl+Enter submits
    page.keyboard.press("w")
    page.wait_for_url("**/write/*/")
    expect(page.locator("#answer")).to_be_focused()
    page.keyboard.type("Steam curls from my cup,\nquiet leaves unfold in heat.")
    page.keyboard.press("Control+Enter")
    page.wait_for_url(f"**/p/{project.slug}/")
    assert "Demonstration saved." in page.content()

    # rank: R claims, the first card is current, a digit ranks it, J moves on, Ctrl+Enter submits
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    shown = [int(cid) for cid in page.locator(".response").evaluate_all("els => els.map(e => e.dataset.cid)")]
    assert page.evaluate("document.activeElement.classList.contains('response')")
    for key in ["2", "j", "1", "j", "2", "j", "4"]:  # a tie between the first and third card shown
        page.keyboard.press(key)
    page.keyboard.press("i")  # the last card is still current: flag it as ignoring the instruction
    page.keyboard.press("q")  # its score box
    page.keyboard.type("1")
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Enter")
    page.wait_for_url(f"**/p/{project.slug}/")
    assert page.get_by_test_id("labels-today").inner_text() == "2"
    assert not page.js_errors

    demonstration = Demonstration.objects.get()
    assert demonstration.author == first
    assert demonstration.text == "Steam curls from my cup,\nquiet leaves unfold in heat."
    ranking = Ranking.objects.get()
    assert ranking.annotator == first
    assert ranking.order == [[shown[1]], sorted([shown[0], shown[2]]), [shown[3]]]
    assert ranking.flags == {str(shown[3]): ["ignores_instruction"]}
    assert ranking.scores == {str(shown[3]): 1}
    assert ranking.time_spent_ms > 0

    # overlap 2: the second annotator still gets the task, the third does not
    page.context.clear_cookies()
    login(page, live_server, "ann2")
    assert page.get_by_test_id("waiting-rank").inner_text() == "1"
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    for key in ["1", "j", "2", "j", "3", "j", "4"]:
        page.keyboard.press(key)
    page.keyboard.press("Control+Enter")
    page.wait_for_url(f"**/p/{project.slug}/")
    page.context.clear_cookies()
    login(page, live_server, "ann3")
    assert page.get_by_test_id("waiting-rank").inner_text() == "0"
    assert page.locator("#start-rank").is_disabled()
    assert Ranking.objects.count() == 2 and Demonstration.objects.count() == 1


def test_draft_survives_reload_and_bad_input_shows_a_clear_error(page, live_server):
    setup_project()
    login(page, live_server, "ann1")
    page.keyboard.press("w")
    page.wait_for_url("**/write/*/")
    expect(page.locator("#answer")).to_be_focused()
    page.keyboard.type("Half-written answer")
    page.reload()
    assert page.locator("#answer").input_value() == "Half-written answer"
    page.locator("#answer").fill("   ")
    page.keyboard.press("Control+Enter")
    assert "The demonstration is empty" in page.locator("#errors").inner_text()
    assert not Demonstration.objects.exists()


def test_incomplete_ranking_is_refused_and_kept(page, live_server):
    setup_project()
    login(page, live_server, "ann1")
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    page.keyboard.press("1")
    page.keyboard.press("Control+Enter")
    assert "Give every response a rank" in page.locator("#errors").inner_text()
    assert page.locator(".rank-input").first.input_value() == "1"
    assert not Ranking.objects.exists()


def test_drag_reorders_and_ranks(page, live_server):
    setup_project()
    page.set_viewport_size({"width": 1280, "height": 1400})  # every card in view: a drag does not scroll
    login(page, live_server, "ann1")
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    cards = page.locator(".response")
    before = cards.evaluate_all("els => els.map(e => Number(e.dataset.cid))")
    cards.nth(3).locator(".letter").drag_to(cards.nth(0), target_position={"x": 20, "y": 5})
    after = cards.evaluate_all("els => els.map(e => Number(e.dataset.cid))")
    assert after == [before[3], before[0], before[1], before[2]]
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/p/*/")
    assert Ranking.objects.get().order == [[cid] for cid in after]


def test_untrusted_text_is_shown_as_text_and_never_runs(page, live_server):
    project = make_project(name="XSS", k=2)
    add_member(project, make_user("ann1"))
    prompt = make_prompt(project, text=XSS_PROMPT)
    make_task(project, prompt=prompt, texts=['<img src=x onerror="window.pwned=2">', '<a href="javascript:window.pwned=3">go</a>'])
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    login(page, live_server, "ann1")
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    assert "<script>window.pwned=1</script>" in page.get_by_test_id("prompt").inner_text()
    assert page.locator("main img").count() == 0 and page.locator("main a[href^=javascript]").count() == 0
    page.locator(".completion-text").first.click()
    assert page.evaluate("window.pwned") is None and not dialogs
