"""Every annotator page through axe-core (the npm package, installed by scripts/test-prereqs.sh),
in the light and the dark scheme and at 390 px: no serious or critical violation. Axe does not
measure the contrast of input borders or focus rings (WCAG 1.4.11, 3:1), so this test measures them."""
from pathlib import Path

import pytest

from labelapp.models import ModelVersion, Queue
from labelapp.services.labels import demonstration_submit
from labelapp.services.projects import evaluation_task_create
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = Path(__file__).resolve().parents[2] / ".test-deps" / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]

RUN_AXE = """async (tags) => {
  const result = await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                      nodes: v.nodes.slice(0, 4).map(n => n.target.join(' '))}));
}"""

# Contrast of what axe leaves out: input borders against what they sit on, and the focus ring.
NON_TEXT = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; })
                                       .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const behind = (el) => { for (let e = el.parentElement; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor); if (c.length === 3 || c[3] > 0) return c.slice(0, 3); }
    return rgb(getComputedStyle(document.documentElement).backgroundColor).slice(0, 3); };
  const low = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]):not([type=checkbox]), textarea, select')) {
    if (!el.offsetParent) continue;
    const r = ratio(rgb(getComputedStyle(el).borderTopColor).slice(0, 3), behind(el));
    if (r < 3) low.push(`${el.id || el.name} border ${r.toFixed(2)}`);
  }
  const probe = document.querySelector('dialog[open] button') || document.querySelector('main a, main button');
  if (probe) {
    probe.focus({focusVisible: true});
    const style = getComputedStyle(probe);
    const r = ratio(rgb(style.outlineColor).slice(0, 3), behind(probe));
    if (style.outlineStyle === 'none' || r < 3) low.push(`focus ring ${style.outlineStyle} ${r.toFixed(2)}`);
    probe.blur();
  }
  return low;
}"""


@pytest.fixture
def checked(browser):
    if not AXE.exists():
        pytest.fail(f"{AXE} is missing: run scripts/test-prereqs.sh (npm install axe-core)")
    # axe is injected as a script, which the pages' CSP (script-src 'self') would refuse.
    context = browser.new_context(bypass_csp=True)
    context.add_init_script(path=str(AXE))
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    found: dict[str, list] = {}

    def check(name: str):
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            for width in (1280, 390):
                page.set_viewport_size({"width": width, "height": 900})
                violations = page.evaluate(RUN_AXE, TAGS)
                serious = [v for v in violations if v["impact"] in ("serious", "critical")]
                low = page.evaluate(NON_TEXT)
                if serious or low:
                    found[f"{name} ({scheme}, {width} px)"] = serious + low
                if width == 390:
                    wide = page.evaluate("document.documentElement.scrollWidth")
                    if wide > 390:
                        found[f"{name} ({scheme}, 390 px)"] = found.get(f"{name} ({scheme}, 390 px)", []) + [
                            f"page is {wide} px wide"]
        page.emulate_media(color_scheme="light")
        page.set_viewport_size({"width": 1280, "height": 900})

    page.audit = check
    yield page
    context.close()
    assert not errors
    assert not found, "\n".join(f"{where}: {what}" for where, what in found.items())


def test_annotator_pages_have_no_serious_accessibility_violations(checked, live_server):
    page = checked
    project = make_project(name="Access", k=4, overlap=1)
    project.guidelines = "## Ranking\n\nPrefer **honest** answers. See [the handbook](https://example.com)."
    project.save()
    add_member(project, make_user("ann"), role="reviewer")
    writer = add_member(project, make_user("writer"))
    reviewed = make_prompt(project, text="Describe a cat.", reference="A small furry animal.")
    lease = task_claim(project=project, user=writer, queue=Queue.WRITE)
    assert lease.prompt_id == reviewed.pk
    demonstration_submit(assignment_id=lease.pk, user=writer, text="A cat is a **small** mammal.\n\n```python\ncat = 'meow'\n```")
    make_prompt(project, text="Write a haiku about *rain*.")
    task = make_task(project, texts=["Rain on the roof.", "`code` and **bold**", "A list:\n\n- one\n- two", "Cut"])
    cut = task.completions.get(text="Cut")
    cut.decoding = {"finish_reason": "length", "completion_tokens": 64}
    cut.save()
    new, old = (ModelVersion.objects.create(project=project, name=n) for n in ("new", "old"))
    evaluation_task_create(project=project, prompt=make_prompt(project, split="validation"), model_a=new, model_b=old,
                           text_a="Answer one.", text_b="Answer **two**.")

    page.goto(live_server.url + "/accounts/login/")
    page.audit("login")
    login(page, live_server, "ann")
    page.audit("project")

    page.keyboard.press("w")
    page.wait_for_url("**/write/*/")
    page.audit("write")
    page.keyboard.press("F1")
    page.audit("write, help open")
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.keyboard.press("g")
    page.audit("write, guidelines open")
    page.keyboard.press("Escape")
    page.fill("#answer", "Soft rain on the leaves.")
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")

    page.goto(f"{live_server.url}/p/{project.slug}/")
    page.keyboard.press("r")
    page.wait_for_url("**/rank/*/")
    page.audit("rank")
    page.keyboard.press("1")
    page.keyboard.press("Control+Enter")
    page.locator("#errors").wait_for()
    page.audit("rank, refused")
    page.keyboard.press("l")
    page.audit("rank, side by side")
    for key in "1 j 2 j 3 j 4".split():
        page.keyboard.press(key)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")

    page.goto(f"{live_server.url}/p/{project.slug}/")
    page.keyboard.press("c")
    page.wait_for_url("**/compare/*/")
    page.audit("compare")
    with page.expect_navigation():
        page.keyboard.press("1")

    page.goto(f"{live_server.url}/p/{project.slug}/review/")
    page.audit("review")

    page.goto(f"{live_server.url}/p/{project.slug}/mine/")
    page.audit("my labels")
    with page.expect_navigation():
        page.locator('tr[data-kind="ranking"] a').first.click()
    page.audit("a label")
    with page.expect_navigation():
        page.locator("#edit-label").click()
    page.audit("changing a label")
