"""An admin starts a round from the studio and watches its SFT run's progress bar move without
reloading the page: headless Chromium, the live server, and a real Celery worker training a
tiny model on the same PostgreSQL database (through Redis)."""
import json
import re
import time

import pytest

from labelapp.models import Round, TrainingRun
from tests.conftest import add_member, make_project, make_prompt, make_user
from tests.e2e.conftest import login
from tests.workers.conftest import broker, start_worker, wait_for  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Enough steps (about half a second each on a shared CPU) for the page to see several updates;
# the test cancels the round once it has seen them.
SFT = {"max_steps": 60, "per_device_batch_size": 2, "save_steps": 0, "max_length": 512}


def tiny_project(tmp_path):
    from rlhf.testing import tiny_checkpoint
    from workers.simulate import approve_demonstrations, simulate

    project = make_project(name="Loop", k=2, overlap=1)
    project.base_model = tiny_checkpoint(tmp_path / "tiny")
    project.save()
    add_member(project, make_user("boss"), role="admin")
    for i in range(3):
        make_prompt(project, text=f"Tell me a fact about cats, number {i}.", category="open_qa",
                    reference="Cats sleep for most of the day and purr when they are happy.")
    simulate(project=project, queues=["write"])  # demonstrations, so the round starts with SFT
    approve_demonstrations(project)  # SFT trains on approved demonstrations
    return project


def test_admin_starts_a_round_and_watches_its_progress_bar_move_without_reloading(
    page, live_server, start_worker, tmp_path  # noqa: F811
):
    project = tiny_project(tmp_path)
    worker = start_worker()
    login(page, live_server, "boss")  # their only project's page, which links to the studio
    with page.expect_navigation():
        page.locator("#studio-link").click()
    assert page.url == f"{live_server.url}/studio/p/{project.slug}/"

    page.keyboard.press("n")  # the keymap's "start a round" key
    assert page.evaluate("document.activeElement.id") == "round-method"
    page.select_option("#round-method", "ppo")
    page.fill("#round-prompts", "2")
    page.fill("#round-min-rankings", "2")
    page.locator(".advanced summary").click()
    page.fill("#round-settings", json.dumps({"sft": SFT}))
    with page.expect_navigation():
        page.locator("#start-round").click()
    assert "Round 1 started" in page.locator(".messages").inner_text()
    rnd = Round.objects.get(project=project)
    run = rnd.runs.get(kind=TrainingRun.Kind.SFT)
    assert {key: run.params[key] for key in SFT} == SFT  # over the defaults the form showed

    # From here on the page must update itself: mark the window, then watch the bar. On a fast host the
    # tiny run can end between two polls, so the test paces the worker: once the run has moved past what
    # the bar shows, it holds the run's row (the worker's next report and its finish wait on that lock;
    # the page's reads do not) until the page shows the held step, then lets the worker go on.
    from django.db import transaction

    from labelapp.selectors.studio import percent

    page.evaluate("window.studioMarker = 'no reload'")
    row = page.locator(f'tr[data-run-id="{run.pk}"]')
    bar = row.locator("progress")
    values = [bar.evaluate("el => el.value")]
    etas, statuses = set(), set()

    def look() -> float:
        statuses.add(row.locator('[data-field="status_label"]').inner_text())
        etas.add(row.locator('[data-field="eta_text"]').inner_text())
        return bar.evaluate("el => el.value")

    deadline = time.monotonic() + 240
    while len(values) < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        look()
        current = TrainingRun.objects.get(pk=run.pk)
        if current.status in TrainingRun.TERMINAL:
            break
        if percent(current) <= values[-1]:
            continue
        with transaction.atomic():
            held = TrainingRun.objects.select_for_update().get(pk=run.pk)
            if held.status != TrainingRun.Status.RUNNING:
                break
            shown = percent(held)
            hold_until = time.monotonic() + 30
            while look() < shown and time.monotonic() < hold_until:
                page.wait_for_timeout(250)
            value = look()
        if value > values[-1]:
            values.append(value)
    assert len(values) >= 3, f"the bar only showed {values}; the run is {TrainingRun.objects.get(pk=run.pk).status}" + (
        "\n" + worker.output()[-3000:])
    assert values == sorted(values) and values[-1] > values[0]
    assert page.evaluate("window.studioMarker") == "no reload"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.url == f"{live_server.url}/studio/p/{project.slug}/"
    assert "Running" in statuses
    assert any(re.fullmatch(r"\d+ s|\d+ min \d+ s", eta) for eta in etas), etas
    assert not page.js_errors

    # Cancel the round from its button; the worker stops the run at its next step.
    with page.expect_navigation():
        page.locator("#cancel-round-1").click()
    assert "Round 1 cancelled" in page.locator(".messages").inner_text()
    live = [TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
    wait_for(lambda: not TrainingRun.objects.filter(round=rnd, status__in=live).exists(), 120,
             "the worker to stop the cancelled round's run", worker)
    rnd.refresh_from_db()
    assert rnd.stage == Round.Stage.CANCELLED
    assert TrainingRun.objects.get(pk=run.pk).status in (TrainingRun.Status.CANCELLED, TrainingRun.Status.SUCCEEDED)


def test_run_page_draws_metric_charts_readable_with_the_keyboard(page, live_server, monkeypatch):
    """No worker: a run with reported metrics; the page draws one SVG line per metric from the JSON."""
    from labelapp.services import runs as run_services
    from labelapp.services.runs import run_begin, run_create, run_report

    monkeypatch.setattr(run_services, "enqueue", lambda run: None)
    project = make_project(name="Charts")
    add_member(project, make_user("boss"), role="admin")
    run = run_create(project=project, kind="ppo", params={"max_steps": 10})
    _, token = run_begin(run_id=run.pk)
    for step in range(1, 6):
        run_report(run_id=run.pk, token=token, step=step, total=10,
                   metrics={"loss/policy": 1.0 / step, "objective/kl": 0.01 * step, "note": "text is skipped"})
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/runs/{run.pk}/")
    page.locator("#charts svg polyline").nth(1).wait_for()  # (wait_for_function would need eval, which the CSP refuses)
    assert page.locator("#charts svg polyline").count() == 2
    keys = page.locator("#charts .chart").evaluate_all("els => els.map(e => e.dataset.key)")
    assert keys == ["objective/kl", "loss/policy"]  # studio.PREFERRED_METRICS first; the text "note" has no chart
    points = page.locator("#charts svg polyline").last.get_attribute("points").split()
    assert len(points) == 5
    kl = page.locator('.chart[data-key="objective/kl"]')
    assert kl.locator(".chart-summary").inner_text() == "last 0.05, min 0.01, max 0.05 (5 points)"
    kl.locator("svg").focus()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowRight")
    assert kl.locator(".chart-readout").inner_text() == "step 2: 0.02 (point 2 of 5)"
    page.keyboard.press("u")  # back to the overview
    page.wait_for_url(f"**/studio/p/{project.slug}/")
    assert not page.js_errors and not console


def test_round_shows_the_blind_evaluation_win_rate(page, live_server):
    """No worker: a finished round with four evaluation tasks, three won by the new policy."""
    from labelapp.models import ModelVersion, Queue
    from labelapp.selectors.labels import comparison_sides
    from labelapp.services.labels import comparison_submit
    from labelapp.services.projects import evaluation_task_create
    from labelapp.services.queue import task_claim

    project = make_project(name="Evaluated", overlap=1)
    add_member(project, make_user("boss"), role="admin")
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new = ModelVersion.objects.create(project=project, name="policy r1")
    old = ModelVersion.objects.create(project=project, name="sft r1")
    for i in range(4):
        evaluation_task_create(project=project, round=rnd, prompt=make_prompt(project), model_a=new, model_b=old,
                               text_a=f"new {i}", text_b=f"old {i}", reward_a=1.0, reward_b=0.0)
    judge = add_member(project, make_user("judge"))
    for preferred in ["a", "a", "a", "b"]:
        lease = task_claim(project=project, user=judge, queue=Queue.COMPARE)
        a_left, _ = comparison_sides(task=lease.evaluation_task, user=judge)
        side = "left" if (preferred == "a") == a_left else "right"
        comparison_submit(assignment_id=lease.pk, user=judge, preferred=side, a_shown_left=a_left)
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    line = page.locator(f'article[data-round-id="{rnd.pk}"] .round-evaluation')
    assert line.is_visible()
    assert line.inner_text().startswith("Blind evaluation, 4 held-out prompts: the new policy wins 75.0% [95% CI ")
    assert "(4 judgments on 4 prompts), length-controlled 75.0% [95% CI " in line.inner_text()
    assert line.inner_text().endswith("; reward model 100.0% [95% CI 100.0%–100.0%], length-controlled 100.0% "
                                      "[95% CI 100.0%–100.0%]. Mean answer length: new policy 5, parent 5 characters.")
    assert not page.js_errors
