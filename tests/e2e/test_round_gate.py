"""The promotion gate in the studio: a round whose new policy loses to its parent appears "held for
review" in an open tab (no reload), and the admin promotes or discards it with one click; the
round form's policy settings follow the method."""
import json

import pytest

from labelapp.models import ModelVersion, Round
from labelapp.services import runs as run_services
from labelapp.services.rounds import round_advance
from tests.conftest import add_member, make_project, make_user
from tests.e2e.conftest import login
from tests.labelapp.test_round_guardrails import evaluated_round

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def current(project):
    return ModelVersion.objects.get(project=project, kind="policy", is_current=True)


@pytest.mark.parametrize("button, decision", [("Promote the new policy", "promoted"), ("Discard it", "discarded")])
def test_a_held_round_is_promoted_or_discarded_with_one_click(page, live_server, monkeypatch, settings, button,
                                                              decision):
    monkeypatch.setattr(run_services, "enqueue", lambda run: None)
    settings.STUDIO_POLL_IDLE_MAX_MS = 2000
    project = make_project(name="Gate")
    add_member(project, make_user("boss"), role="admin")
    rnd, parent, new = evaluated_round(project, wins=1, losses=3)
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    article = page.locator(f'article[data-round-id="{rnd.pk}"]')
    assert not article.locator(".round-held").is_visible()
    page.evaluate("window.studioMarker = 'no reload'")

    round_advance(round_id=rnd.pk)  # what the worker does when the evaluation run ends
    article.locator(".round-held").wait_for(state="visible", timeout=15000)
    gate = article.get_by_test_id("round-gate")
    assert gate.inner_text().startswith("Promotion gate: held for review — reward-model win-rate 25.0% over the parent")
    assert "Held for review" in article.locator("h3").inner_text()
    assert article.locator('.steps li[data-stage="held"]').count() == 1
    assert page.evaluate("window.studioMarker") == "no reload"
    assert current(project) == parent

    with page.expect_navigation():
        article.get_by_role("button", name=button).click()
    rnd.refresh_from_db()
    assert rnd.stage == "done" and rnd.gate["decision"] == decision
    assert current(project) == (new if decision == "promoted" else parent)
    message = page.locator(".messages").inner_text()
    assert ("the new policy is now current" if decision == "promoted" else "the previous one stays current") in message
    article = page.locator(f'article[data-round-id="{rnd.pk}"]')
    assert not article.locator(".round-held").is_visible()
    assert f"{decision.capitalize()} by boss" in article.get_by_test_id("round-gate").inner_text()
    row = page.locator(f'#models-body tr[data-version-id="{current(project).pk}"]')
    assert "current" in row.locator(".current-cell").inner_text()
    assert not page.js_errors


def test_the_round_form_shows_the_settings_that_will_run_and_follows_the_method(page, live_server):
    project = make_project(name="Form", k=3)
    add_member(project, make_user("boss"), role="admin")
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    page.locator(".advanced summary").click()
    shown = json.loads(page.locator("#round-settings").input_value())
    assert shown["policy"]["kl_coef"] == 0.05 and shown["gate"]["min_reward_win_rate"] == 0.5 and shown["k"] == 3
    # the length controls of issue 20 are offered with their defaults (off)
    assert shown["policy"]["length_penalty"] == 0.0 and shown["reward"]["length_control"] == "none"
    assert shown["gate"]["min_reward_lc_win_rate"] is None and shown["gate"]["min_human_lc_win_rate"] is None
    assert "length_penalty" in page.locator("label[for=round-settings]").inner_text()
    shown["sft"]["max_steps"] = 7
    page.fill("#round-settings", json.dumps(shown))
    page.select_option("#round-method", "dpo")
    swapped = json.loads(page.locator("#round-settings").input_value())
    assert swapped["policy"]["beta"] == 0.1 and "kl_coef" not in swapped["policy"]
    assert swapped["policy"]["ld_alpha"] is None and "length_penalty" not in swapped["policy"]
    assert swapped["sft"]["max_steps"] == 7  # the rest is kept as typed
    swapped["reward"]["lerning_rate"] = 0.1
    page.fill("#round-settings", json.dumps(swapped))
    with page.expect_navigation():
        page.locator("#start-round").click()
    assert "reward.lerning_rate is not a setting (did you mean reward.learning_rate?)." in page.locator("#errors").inner_text()
    assert not Round.objects.exists()
    assert not page.js_errors
