"""A studio tab opened before a round starts follows the whole round without a reload: every
stage, the ranking count while it waits for people, the model versions and queues, and the final
blind win-rate (a real Celery worker training tiny models on the test PostgreSQL, through Redis)."""
import re
import time

import pytest

from labelapp.models import ModelVersion, Round
from labelapp.services.rounds import round_advance, round_start
from tests.conftest import add_member, make_project, make_prompt, make_user
from tests.e2e.conftest import login
from tests.workers.conftest import broker, start_worker, wait_for  # noqa: F401  (fixtures)
from workers.simulate import approve_demonstrations, simulate

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TINY = {"max_steps": 2, "per_device_batch_size": 2, "save_steps": 0, "max_length": 512}
PPO = {"max_steps": 1, "rollout_batch_size": 2, "mini_batch_size": 2, "per_device_batch_size": 2,
       "max_new_tokens": 8, "ppo_epochs": 1, "save_steps": 0}


def tiny_project(tmp_path):
    from rlhf.testing import tiny_checkpoint

    project = make_project(name="Live", k=2, overlap=1)
    project.base_model = tiny_checkpoint(tmp_path / "tiny")
    project.save()
    boss = add_member(project, make_user("boss"), role="admin")
    for i in range(3):
        make_prompt(project, text=f"Tell me a fact about cats, number {i}.", category="open_qa",
                    reference="Cats sleep for most of the day and purr when they are happy.")
    for i in range(2):
        make_prompt(project, text=f"Held-out question {i} about cats?", split="validation",
                    reference="Cats purr when they are happy.")
    simulate(project=project, annotators=2, queues=["write"])
    approve_demonstrations(project)  # SFT trains on approved demonstrations
    return project, boss


def test_a_tab_opened_before_the_round_follows_it_to_the_win_rate(page, live_server, start_worker, tmp_path,  # noqa: F811
                                                                   settings):
    settings.STUDIO_POLL_IDLE_MAX_MS = 2000  # idle back-off capped low so the test does not wait 30 s
    project, boss = tiny_project(tmp_path)
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    assert page.locator("#no-rounds").is_visible() and page.locator("#no-models").is_visible()
    page.evaluate("window.studioMarker = 'no reload'")

    worker = start_worker()
    rnd = round_start(project=project, user=boss, method="ppo", params={
        "prompts": 2, "min_rankings": 2, "sft": TINY, "reward": TINY, "policy": PPO,
        "sample": {"max_new_tokens": 8}, "evaluation": {"max_new_tokens": 8},
        "gate": {"min_reward_win_rate": None},  # tiny random models: promote whatever the win-rate (gate: its own tests)
    })
    article = page.locator(f'article[data-round-id="{rnd.pk}"]')
    seen_stages, waiting_texts = [], set()

    def watch(until, seconds, what):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if article.count():
                stage = article.locator(".steps li").evaluate_all(
                    """els => { const cur = els.find(e => !e.classList.contains('step-done') && !e.classList.contains('step-todo'));
                                return cur ? cur.dataset.stage : (els.length ? 'done' : null); }""")
                if stage and (not seen_stages or seen_stages[-1] != stage):
                    seen_stages.append(stage)
                waiting = article.get_by_test_id("round-waiting")
                if waiting.is_visible():
                    waiting_texts.add(waiting.inner_text())
                if until():
                    return
            page.wait_for_timeout(250)
        rnd.refresh_from_db()
        raise AssertionError(f"timed out waiting for {what}: stages seen {seen_stages}, round {rnd.stage} "
                             f"{rnd.error}\n{worker.output()[-3000:]}")

    # the round appears by itself, then waits for people and says how many rankings are in
    watch(lambda: "0 / 2 rankings of this round's tasks" in waiting_texts, 300, "the ranking stage")
    assert article.locator("h3").inner_text().startswith("Round 1 · PPO · Waiting for rankings")
    assert page.get_by_test_id("queue-rank").inner_text() == "2"
    assert page.locator("#models-table").is_visible()  # the SFT model arrived without a reload
    assert "sft-" in page.locator("#models-body").inner_text()
    simulate(project=project, annotators=2, queues=["rank"])
    watch(lambda: "2 / 2 rankings of this round's tasks" in waiting_texts, 30, "the ranking count to move")
    assert page.get_by_test_id("queue-rank").inner_text() == "0"
    assert "sim-" in page.locator("#throughput-body").inner_text()
    round_advance(round_id=rnd.pk)  # what beat's rounds_advance does every 30 s

    watch(lambda: article.locator('.step-done[data-stage="evaluation"]').count() == 1, 300, "the round to finish")
    assert "Done" in article.locator("h3").inner_text()
    assert not article.get_by_test_id("round-waiting").is_visible()
    simulate(project=project, annotators=2, queues=["compare"])
    evaluation = article.locator(".round-evaluation")
    watch(lambda: evaluation.is_visible() and "the new policy wins" in evaluation.inner_text(), 30, "the win-rate")
    assert re.search(r"the new policy wins \d+\.\d% \[95% CI", evaluation.inner_text()), evaluation.inner_text()

    # every stage was shown as it came (the fast ones may pass between two polls), all done at the end
    assert {"ranking", "done"} <= set(seen_stages) and seen_stages.index("ranking") < seen_stages.index("done")
    stages = article.locator(".steps li").evaluate_all("els => els.map(e => [e.dataset.stage, e.className])")
    assert [s for s, _ in stages] == ["sft", "sampling", "ranking", "reward", "policy", "resampling", "evaluation", "done"]
    assert all("step-done" in c for _, c in stages)
    policy = Round.objects.get(pk=rnd.pk).new_policy
    assert page.locator(f'#models-body tr[data-version-id="{policy.pk}"]').is_visible()
    assert ModelVersion.objects.filter(project=project).count() == page.locator("#models-body tr").count()
    # the disk its adapter takes, measured by the worker when the run succeeded, arrived with the poll
    from django.template.defaultfilters import filesizeformat

    disk_bytes = ModelVersion.objects.get(pk=policy.pk).disk_bytes
    assert disk_bytes and disk_bytes < 50_000_000
    disk = page.locator(f'#models-body tr[data-version-id="{policy.pk}"] td[data-field="disk_text"]').inner_text()
    assert disk.replace("\xa0", " ") == str(filesizeformat(disk_bytes)).replace("\xa0", " ")
    assert page.evaluate("window.studioMarker") == "no reload"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert not page.js_errors


def test_a_one_point_chart_draws_a_dot_and_notes_show_only_when_there_are_some(page, live_server, monkeypatch):
    """No worker: a run that reported one step; the reconciler's note appears once there is one."""
    from labelapp.models import TrainingRun
    from labelapp.services import runs as run_services
    from labelapp.services.runs import run_begin, run_create, run_report

    monkeypatch.setattr(run_services, "enqueue", lambda run: None)
    project = make_project(name="One point")
    add_member(project, make_user("boss"), role="admin")
    run = run_create(project=project, kind="reward", params={})
    _, token = run_begin(run_id=run.pk)
    run_report(run_id=run.pk, token=token, step=1, total=1, metrics={"loss/train": 0.69})
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/runs/{run.pk}/")
    chart = page.locator('.chart[data-key="loss/train"]')
    chart.locator("circle.chart-point").wait_for()
    assert chart.locator(".chart-summary").inner_text() == "last 0.69, min 0.69, max 0.69 (1 point)"
    assert not page.locator("#run-notes").is_visible()
    TrainingRun.objects.filter(pk=run.pk).update(logs_tail="re-queued: the worker's heartbeat stopped\n")
    page.locator("#run-notes").wait_for(state="visible")
    assert "re-queued" in page.locator("#run-notes pre").inner_text()
    assert not page.js_errors
