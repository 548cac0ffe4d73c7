"""Keyboard ranking cannot mislabel: every key acts on the response the page shows as current,
and what is stored is what the annotator saw on screen (issue 16's reproduced sequence)."""
import pytest
from playwright.sync_api import expect

from labelapp.models import Ranking
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FLAGS = {"harmful", "untruthful", "ignores_instruction"}


def four_way(username="annotator2", k=4, texts=None):
    project = make_project(name="Ranking keys", k=k, overlap=1)
    add_member(project, make_user(username))
    prompt = make_prompt(project, text="Explain why the sky is blue, briefly.", category="open_qa")
    texts = texts or ["Rayleigh scattering.", "Because it reflects the sea.", "Blue light scatters more.", "No idea."][:k]
    make_task(project, prompt=prompt, texts=texts)
    return project


def open_rank_page(page, live_server, username="annotator2"):
    login(page, live_server, username)
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")


def screen(page) -> dict:
    """What the page shows, card by card: letter → (completion id, rank, flags, score)."""
    return page.locator("#responses .response").evaluate_all(
        """cards => Object.fromEntries(cards.map(c => [c.dataset.letter, {
             cid: Number(c.dataset.cid),
             rank: c.querySelector('.rank-input').value,
             flags: [...c.querySelectorAll('input[data-flag]:checked')].map(b => b.value).sort(),
             score: c.querySelector('.score-input').value,
           }]))"""
    )


def current(page) -> str:
    cards = page.locator("#responses .response.current")
    assert cards.count() == 1, "exactly one response is marked current"
    assert cards.first.get_attribute("aria-current") == "true"
    return cards.first.get_attribute("data-letter")


def stored_as_screen(ranking: Ranking, shown: dict) -> dict:
    """The stored ranking in the screen's terms: letter → (rank, flags, score)."""
    rank_of = {cid: i + 1 for i, group in enumerate(ranking.order) for cid in group}
    # tie groups are stored densely (1, 2, 2, 3 → [[a], [b, c], [d]]); compare as the order the ranks give
    out = {}
    for letter, card in shown.items():
        cid = card["cid"]
        out[letter] = (rank_of.get(cid), ranking.flags.get(str(cid), []), ranking.scores.get(str(cid)))
    return out


def dense(shown: dict) -> dict:
    """Screen ranks turned into tie-group positions (3, 3, 2, 1 → 3, 3, 2, 1; 1, 4 → 1, 2)."""
    distinct = sorted({int(c["rank"]) for c in shown.values() if c["rank"]})
    return {
        letter: (distinct.index(int(c["rank"])) + 1 if c["rank"] else None, c["flags"], int(c["score"]) if c["score"] else None)
        for letter, c in shown.items()
    }


def test_the_reported_sequence_acts_on_the_current_card_and_stores_what_was_shown(page, live_server):
    four_way()
    open_rank_page(page, live_server)
    assert current(page) == "A"
    trail = []
    for key in "3 k u j 3 i j 2 j 1 q".split():
        page.keyboard.press(key)
        trail.append(current(page))
        status = page.get_by_test_id("rank-status").inner_text()
        assert f"Current: {trail[-1]}" in status, status
    assert trail == ["A", "A", "A", "B", "B", "B", "C", "C", "D", "D", "D"]  # K at A does not wrap
    page.keyboard.press("Escape")  # out of D's score box: D stays current
    page.keyboard.press("k")
    page.keyboard.press("k")
    page.keyboard.press("k")
    page.keyboard.press("k")
    assert current(page) == "A"
    assert "Already at the first response" in page.get_by_test_id("rank-status").inner_text()
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("q")
    expect(page.locator('#responses .response[data-letter="D"] .score-input')).to_be_focused()
    page.keyboard.type("5")
    page.keyboard.press("Escape")

    shown = screen(page)
    assert {letter: (c["rank"], c["flags"], c["score"]) for letter, c in shown.items()} == {
        "A": ("3", ["untruthful"], ""),
        "B": ("3", ["ignores_instruction"], ""),
        "C": ("2", [], ""),
        "D": ("1", [], "5"),
    }
    # each card's own visible rank badge agrees with the inputs
    assert page.locator("#responses .response.ranked").count() == 4
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/p/*/")
    ranking = Ranking.objects.get()
    assert stored_as_screen(ranking, shown) == dense(shown)
    assert ranking.order == [[shown["D"]["cid"]], [shown["C"]["cid"]], sorted([shown["A"]["cid"], shown["B"]["cid"]])]
    assert not page.js_errors


def test_rank_then_flag_in_the_natural_order(page, live_server):
    four_way()
    open_rank_page(page, live_server)
    for key in "1 h j 2 j 3 u j 4 i".split():
        page.keyboard.press(key)
    shown = screen(page)
    assert {letter: (c["rank"], c["flags"]) for letter, c in shown.items()} == {
        "A": ("1", ["harmful"]), "B": ("2", []), "C": ("3", ["untruthful"]), "D": ("4", ["ignores_instruction"]),
    }
    status = page.get_by_test_id("rank-status")
    assert status.get_attribute("aria-live") == "polite"
    assert "Flagged D ignores the instruction" in status.inner_text()
    assert "Every response has a rank" in status.inner_text()
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/p/*/")
    ranking = Ranking.objects.get()
    assert stored_as_screen(ranking, shown) == dense(shown)
    assert ranking.flags == {
        str(shown["A"]["cid"]): ["harmful"], str(shown["C"]["cid"]): ["untruthful"],
        str(shown["D"]["cid"]): ["ignores_instruction"],
    }


def test_a_missing_rank_is_refused_naming_the_cards_and_a_second_press_unflags(page, live_server):
    four_way()
    open_rank_page(page, live_server)
    for key in "1 u u j j 2 0 j 3".split():  # U twice: flagged then unflagged; 0 clears C's rank
        page.keyboard.press(key)
    assert screen(page)["A"]["flags"] == []
    page.keyboard.press("Control+Enter")
    error = page.locator("#errors").inner_text()
    assert "B and C have none yet" in error, error
    assert not Ranking.objects.exists()
    assert current(page) == "B"  # the first card without a rank is current after the refusal
    assert screen(page)["D"]["rank"] == "3"


def test_two_way_tasks_side_by_side_wide_and_stacked_at_390px(page, live_server):
    project = four_way(k=2, texts=["Short answer.", "A **markdown** answer\n\n```python\nprint('blue')\n```"])
    page.set_viewport_size({"width": 1400, "height": 900})
    open_rank_page(page, live_server)
    a, b = (page.locator(f'#responses .response[data-letter="{x}"]').bounding_box() for x in "AB")
    assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"] + a["width"] - 1, (a, b)  # side by side
    counts = page.locator("#responses .counts").all_inner_texts()
    assert len(counts) == 2 and all("character" in c and "word" in c for c in counts)
    page.set_viewport_size({"width": 390, "height": 844})
    a, b = (page.locator(f'#responses .response[data-letter="{x}"]').bounding_box() for x in "AB")
    assert b["y"] >= a["y"] + a["height"] - 1 and a["width"] <= 390, (a, b)  # stacked
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing runs off the side
    assert project


def test_layout_toggle_for_many_responses(page, live_server):
    four_way()
    page.set_viewport_size({"width": 1400, "height": 900})
    open_rank_page(page, live_server)
    boxes = lambda: [page.locator(f'#responses .response[data-letter="{x}"]').bounding_box() for x in "AB"]  # noqa: E731
    a, b = boxes()
    assert b["y"] > a["y"] + a["height"] - 1  # stacked by default for K > 2
    page.keyboard.press("l")
    a, b = boxes()
    assert abs(a["y"] - b["y"]) < 2
    assert page.locator("#toggle-layout").get_attribute("aria-pressed") == "true"
    page.reload()  # the choice is remembered
    a, b = boxes()
    assert abs(a["y"] - b["y"]) < 2
