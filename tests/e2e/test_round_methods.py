"""An admin picks GRPO as a round's method in the studio form (headless Chromium, live server) and the
round starts with that method; RLOO and GRPO are listed beside PPO and DPO."""
import pytest

from labelapp.models import Round
from labelapp.services import runs as run_services
from tests.conftest import add_member, make_project, make_prompt, make_user
from tests.e2e.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_starts_a_grpo_round_from_the_studio_form(page, live_server, monkeypatch):
    sent = []
    monkeypatch.setattr(run_services, "enqueue", lambda run: sent.append(run.pk))  # no worker in this test
    project = make_project(name="Methods", k=2, overlap=1)
    add_member(project, make_user("boss"), role="admin")
    make_prompt(project, text="Tell me a fact about cats.")
    login(page, live_server, "boss")
    page.goto(f"{live_server.url}/studio/p/{project.slug}/")
    options = page.locator("#round-method option").evaluate_all("els => els.map(e => e.value)")
    assert options == ["ppo", "dpo", "rloo", "grpo"]
    page.select_option("#round-method", "grpo")
    page.fill("#round-prompts", "2")
    page.fill("#round-min-rankings", "2")
    page.locator(".advanced summary").click()
    page.fill("#round-settings", '{"policy": {"num_samples": 4, "loss_aggregation": "token"}}')
    with page.expect_navigation():
        page.locator("#start-round").click()
    assert "Round 1 started" in page.locator(".messages").inner_text()
    rnd = Round.objects.get(project=project)
    policy = rnd.params["policy"]  # the effective settings: what was typed over GRPO's defaults
    assert rnd.method == "grpo" and policy["num_samples"] == 4 and policy["loss_aggregation"] == "token"
    assert policy["kl_penalty"] == "loss"
    assert len(sent) == 1 and page.js_errors == []
