"""Label quality in the browser: a gold item looks like any other item to the annotator, and the
admin's quality page shows reliability, flags and gold accuracy, and marks gold with the keyboard."""
from unittest import mock

import pytest
from playwright.sync_api import expect

from labelapp.models import Ranking, RankingTask
from labelapp.services.quality import ranking_task_set_gold, reliability_refit
from tests.conftest import add_member, make_user
from tests.e2e.conftest import login
from tests.labelapp.test_reliability_service import crowd_project

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def rank_page_html(page) -> str:
    """The rank page's element structure (tags and classes), without the flash message of the
    previous submit."""
    return page.locator("main").evaluate(
        "m => Array.from(m.querySelectorAll('*')).filter(e => !e.closest('.messages'))"
        ".map(e => e.tagName + '.' + e.className).join(' ')"
    )


def test_gold_item_looks_like_any_other_item_and_is_scored(page, live_server):
    project = crowd_project(0, ["careful"], overlap=1)  # an empty project with the crowd's texts
    from tests.conftest import make_prompt, make_task
    from tests.labelapp.test_reliability_service import REFERENCE, TEXTS

    admin = add_member(project, make_user("boss"), role="admin")
    real = make_task(project, prompt=make_prompt(project, text="First question?", reference=REFERENCE), texts=TEXTS)
    gold = make_task(project, prompt=make_prompt(project, text="Second question?", reference=REFERENCE), texts=TEXTS)
    by_text = dict(gold.completions.values_list("text", "id"))
    ranking_task_set_gold(task_id=gold.pk, user=admin, order=[[by_text[t]] for t in TEXTS])
    add_member(project, make_user("ann"))
    login(page, live_server, "ann")
    shapes = {}
    with mock.patch("labelapp.services.queue.gold_draw", return_value=0.0):  # this claim draws gold
        page.goto(f"{live_server.url}/p/{project.slug}/")
        with page.expect_navigation():
            page.locator("#start-rank").click()
    for task in (gold, real):  # submitting the gold item leads straight to the real one
        assert "/rank/" in page.url
        expect(page.locator("main")).to_contain_text("question?")
        shapes[task.pk] = rank_page_html(page)
        assert "gold" not in page.content().lower()
        for rank in "1234":  # rank A..D 1..4 with the keyboard and submit
            page.keyboard.press(rank)
            page.keyboard.press("j")
        with mock.patch("labelapp.services.queue.gold_draw", return_value=1.0), page.expect_navigation():
            page.keyboard.press("Control+Enter")
    assert shapes[gold.pk] == shapes[real.pk]  # the same page structure
    scored = Ranking.objects.get(task=gold)
    assert scored.gold_score is not None
    assert Ranking.objects.get(task=real).gold_score is None
    assert RankingTask.objects.get(pk=real.pk).ranking_count == 1


def test_quality_page_shows_reliability_flags_and_marks_gold(page, live_server):
    project = crowd_project(24, ["careful", "careful", "careful", "random", "inverted"])
    reliability_refit(project=project)
    add_member(project, make_user("boss"), role="admin")
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    with page.expect_navigation():
        page.locator("#quality-link").click()
    table = page.locator("#annotators")
    expect(table.locator("tbody tr")).to_have_count(5)
    expect(page.locator(".reliability-chart svg")).to_be_visible()
    expect(page.locator(".reliability-chart g")).to_have_count(5)
    inverted = table.locator(f"tr[data-user='sim-{project.slug}-5']")
    expect(inverted.locator(".flags")).to_contain_text("likely inverted")
    careful = table.locator(f"tr[data-user='sim-{project.slug}-1']")
    expect(careful.locator(".flags")).to_have_text("—")

    task = RankingTask.objects.filter(project=project).first()
    ids = sorted(task.completions.values_list("id", flat=True))
    page.locator("#gold-task").focus()
    page.keyboard.type(str(task.pk))
    page.keyboard.press("Tab")
    page.keyboard.type(" > ".join(map(str, ids)))
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator(".messages")).to_contain_text(f"Ranking task {task.pk} is gold.")
    expect(page.locator("#gold-items")).to_contain_text(f"Ranking task {task.pk}")
    assert not page.js_errors


def test_a_reviewer_decides_a_disputed_ranking(page, live_server):
    from labelapp.models import Adjudication, Queue
    from labelapp.services.labels import ranking_submit
    from labelapp.services.queue import task_claim
    from tests.conftest import make_project, make_task

    project = make_project(name="Disputes", k=3, overlap=2)
    project.gold_rate = 0
    project.save()
    a, b = add_member(project), add_member(project)
    add_member(project, make_user("rev"), role="reviewer")
    task = make_task(project, texts=["Paris.", "Lyon.", "Bananas."])
    ids = sorted(task.completions.values_list("id", flat=True))
    for user, order in ((a, ids), (b, ids[::-1])):
        lease = task_claim(project=project, user=user, queue=Queue.RANK)
        ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in order])
    login(page, live_server, "rev")
    page.goto(f"{live_server.url}/p/{project.slug}/")
    with page.expect_navigation():
        page.locator("#start-adjudicate").click()
    with page.expect_navigation():
        page.locator("#disputed a").first.click()
    expect(page.locator("#labels thead")).to_contain_text("Annotator 1")
    expect(page.locator("#labels thead")).to_contain_text("Annotator 2")
    inputs = page.locator(".rank-input")
    inputs.nth(0).focus()
    for rank in ("1", "3", "2"):  # keyboard only: type a rank, Tab to the next response
        page.keyboard.type(rank)
        page.keyboard.press("Tab")
    with page.expect_navigation():
        page.locator("#decide").click()
    expect(page.locator(".messages")).to_contain_text(f"Task {task.pk} decided")
    expect(page.locator("#none-disputed")).to_be_visible()
    assert Adjudication.objects.get(task=task).order == [[ids[0]], [ids[2]], [ids[1]]]
    assert not page.js_errors


def test_a_pasted_answer_is_flagged_for_the_reviewer(page, live_server):
    from labelapp.models import Demonstration
    from tests.conftest import make_project, make_prompt

    project = make_project(name="Paste")
    make_prompt(project, text="Explain photosynthesis.")
    add_member(project, make_user("writer"))
    add_member(project, make_user("rev2"), role="reviewer")
    answer = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. " * 3
    login(page, live_server, "writer")
    page.goto(f"{live_server.url}/p/{project.slug}/")
    with page.expect_navigation():
        page.locator("#start-write").click()
    # A paste as the browser fires it (the clipboard's text arrives with the event), then the text itself.
    page.locator("#answer").evaluate(
        """(area, text) => { const data = new DataTransfer(); data.setData('text/plain', text);
           area.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true})); }""", answer)
    page.locator("#answer").fill(answer)
    with page.expect_navigation():
        page.keyboard.press("Control+Enter")
    demo = Demonstration.objects.get()
    assert demo.flagged and demo.pasted_chars == len(answer.strip())
    assert demo.paste_log[0]["chars"] == len(answer)
    page.context.clear_cookies()
    login(page, live_server, "rev2")
    page.goto(f"{live_server.url}/p/{project.slug}/review/")
    expect(page.locator("#quality-flags")).to_contain_text("100% of the answer was pasted")
    with page.expect_navigation():  # the form names the text read (text_sha256): unchanged, so it is approved
        page.locator("#approve").click()
    demo.refresh_from_db()
    assert demo.review_status == "approved"
    assert not page.js_errors


def test_admin_turns_active_learning_on_and_sees_the_least_certain_tasks(page, live_server):
    from labelapp.models import ModelVersion
    from labelapp.services.quality import uncertainty_record
    from tests.conftest import make_project, make_task

    project = make_project(name="Active", k=2, overlap=1)
    add_member(project, make_user("chief"), role="admin")
    rm = ModelVersion.objects.create(project=project, name="rm-7", kind="reward")
    sure, unsure = make_task(project), make_task(project)
    uncertainty_record(project=project, model_version_id=rm.pk, scores={sure.pk: 0.05, unsure.pk: 0.66})
    login(page, live_server, "chief")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/quality/")
    expect(page.locator("#active-state")).to_have_text("off")
    rows = page.locator("#uncertain-tasks tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("0.660")  # least certain first
    expect(page.locator("#active-title").locator("..")).to_contain_text("2 of 2 ranking tasks scored by rm-7")
    page.locator("#active-on").focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator(".messages")).to_contain_text("Active learning is on.")
    expect(page.locator("#active-state")).to_have_text("on")
    expect(page.locator("#active-score")).to_be_disabled()  # no current reward model to score with
