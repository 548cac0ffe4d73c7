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
    from workers.simulate import simulate

    project = make_project(name="Loop", k=2, overlap=1)
    project.base_model = tiny_checkpoint(tmp_path / "tiny")
    project.save()
    add_member(project, make_user("boss"), role="admin")
    for i in range(3):
        make_prompt(project, text=f"Tell me a fact about cats, number {i}.", category="open_qa",
                    reference="Cats sleep for most of the day and purr when they are happy.")
    simulate(project=project, queues=["write"])  # demonstrations, so the round starts with SFT
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
    assert run.params == SFT

    # From here on the page must update itself: mark the window, then watch the bar.
    page.evaluate("window.studioMarker = 'no reload'")
    row = page.locator(f'tr[data-run-id="{run.pk}"]')
    bar = row.locator("progress")
    values = [bar.evaluate("el => el.value")]
    etas, statuses = set(), set()
    deadline = time.monotonic() + 240
    ended = TrainingRun.objects.filter(pk=run.pk, status__in=TrainingRun.TERMINAL)
    ended_at = None  # once the run ends the page gets a few more seconds to show it, not the whole deadline
    while len(values) < 3 and time.monotonic() < deadline:
        if ended_at is None and ended.exists():
            ended_at = time.monotonic()
        if ended_at is not None and time.monotonic() - ended_at > 5:
            break
        page.wait_for_timeout(250)
        value = bar.evaluate("el => el.value")
        statuses.add(row.locator('[data-field="status_label"]').inner_text())
        etas.add(row.locator('[data-field="eta_text"]').inner_text())
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
