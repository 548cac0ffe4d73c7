"""What an admin sees of answer length in the browser: the round's over-optimisation warning and per-category
table on the overview, and on a policy run's page the held-out warning and the reward/length trend line,
which appears while the run reports steps, without reloading the page."""
import pytest

from labelapp.models import ModelVersion, Round
from tests.conftest import add_member, make_project, make_prompt, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def verbose_evaluation(project, rnd):
    """The new policy answers longer and the reward model follows the length (30 of 40 'wins'), on two categories."""
    from labelapp.services.projects import evaluation_task_create

    new = ModelVersion.objects.create(project=project, name="ppo r1")
    old = ModelVersion.objects.create(project=project, name="sft r1")
    table = [(300, 1.0)] * 27 + [(300, 0.0)] * 3 + [(-100, 1.0)] * 3 + [(-100, 0.0)] * 7
    for i, (diff, outcome) in enumerate(table):
        evaluation_task_create(project=project, round=rnd, model_a=new, model_b=old,
                               prompt=make_prompt(project, category="open_qa" if i % 2 else "brainstorming"),
                               text_a="a" * (120 + diff), text_b="b" * 120, reward_a=outcome, reward_b=1.0 - outcome)


def test_overview_and_policy_run_page_show_the_length_watch(page, live_server, monkeypatch):
    from labelapp.services import runs as run_services
    from labelapp.services.runs import run_begin, run_create, run_report

    monkeypatch.setattr(run_services, "enqueue", lambda run: None)
    project = make_project(name="Verbose")
    add_member(project, make_user("boss"), role="admin")
    rnd = Round.objects.create(project=project, number=1, method="ppo", stage="evaluation", params={})
    verbose_evaluation(project, rnd)
    run = run_create(project=project, kind="ppo", params={"max_steps": 20})
    run.round = rnd
    run.save()
    _, token = run_begin(run_id=run.pk)
    for step in range(1, 4):  # too few steps for a trend yet
        run_report(run_id=run.pk, token=token, step=step, total=20,
                   metrics={"objective/reward": 0.1 * step, "objective/response_length": 40.0, "objective/kl": 0.1})
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    login(page, live_server, "boss")

    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    warning = page.locator(f'article[data-round-id="{rnd.pk}"] .round-warning')
    assert warning.is_visible()
    warning_text = warning.inner_text()
    assert warning_text.startswith("The reward model prefers the new policy (75.0%, interval from ")
    assert "its answers average 320 characters against the parent's 120: the gain may be verbosity." in warning_text
    line = page.locator(f'article[data-round-id="{rnd.pk}"] .round-evaluation').inner_text()
    assert "; reward model 75.0% [95% CI " in line and "length-controlled" in line
    page.locator(".round-categories summary").click()
    assert page.locator('.round-categories tr[data-category="open_qa"] td').nth(1).inner_text() == "20"

    page.goto(f"{live_server.url}/studio/p/{project.slug}/runs/{run.pk}/")
    assert page.locator(".length-warning").inner_text() == warning_text
    trend = page.locator(".length-trend")
    assert trend.is_hidden()
    page.locator('.chart[data-key="objective/response_length"] svg polyline').wait_for(state="attached")
    for step in range(4, 13):  # the reward rises with the length: the trend line appears without a reload
        run_report(run_id=run.pk, token=token, step=step, total=20,
                   metrics={"objective/reward": 0.1 * step, "objective/response_length": 40.0 + 8 * step,
                            "objective/kl": 0.1 * step})
    trend.wait_for(state="visible")
    assert trend.inner_text().startswith("Over 12 steps the reward went from 0.2 to 1.1 and the mean response length ")
    assert trend.inner_text().endswith("the reward rose with the length, so check the length-controlled evaluation.")
    assert not page.js_errors and not console
