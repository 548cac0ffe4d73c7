"""Markdown renders on every annotator page, payloads in it execute nothing, cut-off answers are
marked, and the raw/rendered toggle shows the text as it was written."""
import pytest
from playwright.sync_api import expect

from labelapp.models import Completion, ModelVersion, Queue
from labelapp.services.labels import demonstration_submit
from labelapp.services.projects import evaluation_task_create
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user
from tests.e2e.conftest import login
from tests.labelapp.test_rendering import PAYLOADS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ALL_PAYLOADS = "\n\n".join(PAYLOADS.values())
RICH = "A **bold** claim and `inline code`.\n\n```python\ndef double(x):\n    return 2 * x\n```\n\n- first\n- second"

# Every element inside rendered text: nothing that runs or loads, no handler, no unsafe link.
FIND_UNSAFE = """() => {
  const bad = [];
  for (const root of document.querySelectorAll('.md')) {
    for (const el of root.querySelectorAll('*')) {
      const tag = el.tagName.toLowerCase();
      if (['script', 'img', 'iframe', 'svg', 'style', 'object', 'embed', 'div', 'form', 'input'].includes(tag)) bad.push(tag);
      for (const a of el.attributes) if (a.name.startsWith('on') || a.name === 'style' || a.name === 'src') bad.push(tag + '@' + a.name);
      const href = el.getAttribute('href');
      if (href !== null && !/^(https?:|mailto:)/i.test(href)) bad.push('href=' + href);
    }
  }
  return bad;
}"""


def assert_inert(page, dialogs):
    scope = "dialog[open] .md" if page.locator("dialog[open]").count() else "main .md"  # a modal covers the page
    for md in page.locator(scope).all()[:12]:
        if md.is_visible():
            md.hover()  # would fire any mouseover handler
    assert page.evaluate(FIND_UNSAFE) == []
    assert page.evaluate("window.pwned") is None and not dialogs
    assert not page.js_errors


def build():
    project = make_project(name="Rendered", k=2, overlap=1)
    project.guidelines = "**Be kind.** Prefer short answers.\n\n" + ALL_PAYLOADS
    project.save()
    ann = add_member(project, make_user("ann"))
    add_member(project, make_user("rev"), role="reviewer")
    writer = add_member(project, make_user("writer"))
    # the oldest prompt: a demonstration by another annotator, with a reference, for the reviewer
    reviewed = make_prompt(project, text="Review prompt. " + ALL_PAYLOADS, reference="Reference: " + RICH + ALL_PAYLOADS)
    lease = task_claim(project=project, user=writer, queue=Queue.WRITE)
    assert lease.prompt_id == reviewed.pk
    demonstration_submit(assignment_id=lease.pk, user=writer, text="Demonstration. " + RICH + "\n\n" + ALL_PAYLOADS)
    make_prompt(project, text="Write prompt. " + RICH + "\n\n" + ALL_PAYLOADS)
    ranked = make_prompt(project, text="Rank prompt. " + RICH + "\n\n" + ALL_PAYLOADS)
    task = make_task(project, prompt=ranked, texts=[RICH, "Cut answer that stops mid " + ALL_PAYLOADS])
    cut = task.completions.get(text__startswith="Cut answer")
    cut.decoding = {"finish_reason": "length", "completion_tokens": 64, "max_new_tokens": 64}
    cut.save()
    held_out = make_prompt(project, text="Compare prompt. " + ALL_PAYLOADS, split="validation")
    new, old = (ModelVersion.objects.create(project=project, name=n) for n in ("new", "old"))
    evaluation_task_create(
        project=project, prompt=held_out, model_a=new, model_b=old, text_a="New answer " + RICH,
        text_b="Old answer " + ALL_PAYLOADS, decoding={"max_new_tokens": 32},
        decoding_b={"max_new_tokens": 32, "finish_reason": "length", "completion_tokens": 32},
        decoding_a={"max_new_tokens": 32, "finish_reason": "eos", "completion_tokens": 20},
    )
    return project, ann


def test_every_annotator_page_renders_markdown_and_runs_nothing(page, live_server):
    project, ann = build()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.set_viewport_size({"width": 1400, "height": 1000})
    login(page, live_server, "ann")

    # project page: the guidelines
    assert page.locator(".guidelines strong").first.inner_text() == "Be kind."
    assert_inert(page, dialogs)

    # write: the prompt rendered, code monospace with syntax classes; the guidelines one key away
    page.keyboard.press("w")
    page.wait_for_url("**/write/*/")
    prompt = page.get_by_test_id("prompt")
    assert prompt.locator(".md strong").first.inner_text() == "bold"
    code = prompt.locator(".md pre code").first
    assert code.locator("span.k").first.inner_text() == "def"
    assert "mono" in code.evaluate("el => getComputedStyle(el).fontFamily").lower()
    assert "<script>window.pwned=1</script>" in prompt.inner_text()  # shown as text
    assert_inert(page, dialogs)
    page.keyboard.press("Escape")  # leave the answer box
    page.keyboard.press("g")
    expect(page.locator("#guidelines")).to_be_visible()
    assert page.locator("#guidelines .md strong").first.inner_text() == "Be kind."
    assert_inert(page, dialogs)
    page.keyboard.press("Escape")
    expect(page.locator("#guidelines")).to_be_hidden()
    page.locator("#answer").fill("My answer with **markdown**.\n\n" + ALL_PAYLOADS)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert "Demonstration saved." in page.locator(".messages").inner_text()  # and the next prompt is shown
    page.goto(f"{live_server.url}/p/{project.slug}/")

    # rank: completions rendered, the cut-off one marked, raw text one key away
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    cut_card = page.locator("#responses .response", has_text="Cut answer")
    expect(cut_card.get_by_test_id("cutoff")).to_have_text(
        "✂ Cut off at 64 tokens: the model hit the length limit, so this response did not finish.")
    full_card = page.locator("#responses .response", has_text="A bold claim")
    assert full_card.get_by_test_id("cutoff").count() == 0
    assert full_card.locator(".md pre code span.k").first.inner_text() == "def"
    assert_inert(page, dialogs)
    page.keyboard.press("m")  # raw text
    raw = full_card.locator("[data-view=raw]")
    expect(raw).to_be_visible()
    assert raw.inner_text().startswith("A **bold** claim and `inline code`.")
    expect(full_card.locator("[data-view=rendered]")).to_be_hidden()
    assert page.locator("#toggle-raw").get_attribute("aria-pressed") == "true"
    page.keyboard.press("m")
    expect(full_card.locator("[data-view=rendered]")).to_be_visible()
    page.keyboard.press("1")
    page.keyboard.press("j")
    page.keyboard.press("2")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    assert "Ranking saved." in page.locator(".messages").inner_text()

    # compare: side by side at 1400 px, stacked at 390 px; the baseline's answer was cut off
    page.keyboard.press("c")
    page.wait_for_url("**/compare/*/")
    left, right = page.locator("#pair .side").all()
    a, b = left.bounding_box(), right.bounding_box()
    assert abs(a["y"] - b["y"]) < 2 and b["x"] >= a["x"] + a["width"], (a, b)
    assert page.locator("#pair").get_by_test_id("cutoff").count() == 1
    expect(page.locator("#pair .side", has_text="Old answer").get_by_test_id("cutoff")).to_contain_text(
        "Cut off at 32 tokens")
    assert_inert(page, dialogs)
    page.set_viewport_size({"width": 390, "height": 844})
    a, b = left.bounding_box(), right.bounding_box()
    assert b["y"] >= a["y"] + a["height"] - 1, (a, b)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.keyboard.press("t")
    page.wait_for_url("**/p/*/")

    # my labels: full prompts, rendered; a label's own page and its edit page
    page.goto(f"{live_server.url}/p/{project.slug}/mine/")
    assert page.locator("main .md strong", has_text="bold").count() >= 2
    assert_inert(page, dialogs)
    with page.expect_navigation():
        page.locator('tr[data-kind="ranking"] a').first.click()
    assert page.locator("main .response").get_by_test_id("cutoff").count() == 1
    assert_inert(page, dialogs)
    with page.expect_navigation():
        page.locator("#edit-label").click()
    assert_inert(page, dialogs)

    # the reviewer: the demonstration and the prompt's reference
    page.context.clear_cookies()
    login(page, live_server, "rev")
    page.goto(f"{live_server.url}/p/{project.slug}/review/")
    # ann's demonstration came in too fast, so it is flagged and reviewed first (docs/QUALITY.md)
    assert page.locator("#quality-flags li[data-kind='too fast']").count() == 1
    assert_inert(page, dialogs)
    with page.expect_navigation():
        page.locator("#approve").click()
    page.locator("details.reference summary").click()
    assert page.get_by_test_id("reference").locator(".md strong").first.inner_text() == "bold"
    assert page.get_by_test_id("demonstration").locator(".md pre code span.k").first.inner_text() == "def"
    assert_inert(page, dialogs)
    assert Completion.objects.filter(text__startswith="Cut answer").get().cut_off_at == 64
