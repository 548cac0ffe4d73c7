"""Blind A/B evaluation: the compare queue, sides hidden and randomized, win-rate with a CI."""
import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from labelapp.models import Comparison, ModelVersion, Queue
from labelapp.selectors.labels import comparison_sides
from labelapp.selectors.stats import evaluation_summary, win_rate
from labelapp.services.labels import comparison_submit
from labelapp.services.projects import evaluation_task_create
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt

pytestmark = pytest.mark.django_db


@pytest.fixture
def evaluation():
    project = make_project(overlap=2)
    new = ModelVersion.objects.create(project=project, name="new")
    old = ModelVersion.objects.create(project=project, name="old")
    tasks = [
        evaluation_task_create(project=project, prompt=make_prompt(project), model_a=new, model_b=old,
                               text_a=f"new answer {i}", text_b=f"old answer {i}", reward_a=1.0, reward_b=0.0 if i else 2.0)
        for i in range(3)
    ]
    return project, tasks


def test_sides_are_random_per_annotator_but_stable(evaluation):
    project, (task, *_) = evaluation
    users = [add_member(project) for _ in range(12)]
    sides = [comparison_sides(task=task, user=u)[0] for u in users]
    assert 0 < sum(sides) < len(sides)
    assert comparison_sides(task=task, user=users[0]) == comparison_sides(task=task, user=users[0])


def test_preference_is_mapped_back_to_the_hidden_sides(evaluation):
    project, _ = evaluation
    user = add_member(project)
    lease = task_claim(project=project, user=user, queue=Queue.COMPARE)
    a_left, _ = comparison_sides(task=lease.evaluation_task, user=user)
    with pytest.raises(ValidationError, match="Choose"):
        comparison_submit(assignment_id=lease.pk, user=user, preferred="best", a_shown_left=a_left)
    assert not Comparison.objects.exists()
    saved = comparison_submit(assignment_id=lease.pk, user=user, preferred="left", a_shown_left=a_left)
    assert saved.winner == ("a" if a_left else "b")
    again = comparison_submit(assignment_id=lease.pk, user=user, preferred="right", a_shown_left=a_left)
    assert again.pk == saved.pk and Comparison.objects.count() == 1


def test_win_rate_and_bootstrap_interval():
    result = win_rate([1.0] * 30 + [0.0] * 10 + [0.5] * 10)
    assert result["win_rate"] == pytest.approx(0.7) and result["n"] == 50
    assert result["low"] < 0.7 < result["high"] and result["high"] - result["low"] < 0.3
    assert win_rate([])["win_rate"] is None


def test_bootstrap_resamples_whole_items_when_several_annotators_judge_one():
    # 20 prompts, each judged by 5 annotators who all agree: 100 outcomes but only 20 independent items.
    outcomes = [1.0] * 60 + [0.0] * 40
    groups = [i // 5 for i in range(100)]
    flat, grouped = win_rate(outcomes), win_rate(outcomes, groups=groups)
    assert flat["win_rate"] == grouped["win_rate"] == pytest.approx(0.6)
    assert grouped["n"] == 100 and grouped["items"] == 20 and flat["items"] == 100
    assert grouped["high"] - grouped["low"] > 1.8 * (flat["high"] - flat["low"])
    with pytest.raises(ValueError, match="3 group keys for 100 outcomes"):
        win_rate(outcomes, groups=[1, 2, 3])


def test_summary_has_human_and_reward_model_win_rates(evaluation):
    project, tasks = evaluation
    for user in (add_member(project), add_member(project)):
        for _ in tasks:
            lease = task_claim(project=project, user=user, queue=Queue.COMPARE)
            a_left, _ = comparison_sides(task=lease.evaluation_task, user=user)
            comparison_submit(assignment_id=lease.pk, user=user, preferred="left" if a_left else "right", a_shown_left=a_left)
    summary = evaluation_summary(project=project)
    assert summary["human"]["win_rate"] == 1.0 and summary["human"]["n"] == 6 and summary["human"]["items"] == 3
    assert summary["reward_model"]["win_rate"] == pytest.approx(2 / 3)


def test_compare_page_with_the_keyboard_keys_and_no_model_names(client, evaluation):
    project, _ = evaluation
    user = add_member(project)
    client.force_login(user)
    url = client.post(reverse("labelapp:claim", args=[project.slug, "compare"]))["Location"]
    page = client.get(url).content.decode()
    assert "new answer" in page and "old answer" in page
    assert ">new<" not in page and ">old<" not in page  # model names never shown
    assert 'id="prefer-left"' in page and 'id="prefer-tie"' in page
    assert client.post(url, {"preferred": "tie"}).status_code == 302
    assert Comparison.objects.get().winner == "tie"


def test_evaluation_needs_two_different_models(evaluation):
    project, _ = evaluation
    same = ModelVersion.objects.first()
    with pytest.raises(ValidationError, match="two different"):
        evaluation_task_create(project=project, prompt=make_prompt(project), model_a=same, model_b=same, text_a="x", text_b="y")
