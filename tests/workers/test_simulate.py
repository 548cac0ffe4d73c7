import random

import pytest
from django.core.management import call_command

from labelapp.analysis.agreement import pairwise_agreement
from labelapp.models import Demonstration, Ranking
from labelapp.selectors.stats import project_rankings
from tests.conftest import make_project, make_prompt, make_task
from workers.simulate import expected_agreement, noisy_order, rule_scores, sigma_for


def test_sigma_is_solved_for_the_target_agreement():
    for k in (2, 4, 9):
        sigma = sigma_for(0.726, k)
        assert expected_agreement(sigma, k) == pytest.approx(0.726, abs=1e-6)
    assert sigma_for(1.0, 4) == 0.0


def test_noisy_orders_reach_the_agreement_they_were_set_for():
    rng = random.Random(1)
    ids, scores = [1, 2, 3, 4], [0.9, 0.5, 0.4, 0.1]
    sigma = sigma_for(0.726, 4)
    rankings = {item: {a: noisy_order(ids, scores, sigma, rng) for a in "ab"} for item in range(3000)}
    assert pairwise_agreement(rankings).rate == pytest.approx(0.726, abs=0.02)


def test_pairs_far_apart_in_a_noisy_ranking_agree_with_the_oracle_more_often():
    """Why rounds offer min_rank_gap: rank noise flips neighbours far more often than distant ranks."""
    from labelapp.selectors.labels import ranking_pairs

    rng = random.Random(2)
    ids, scores = [1, 2, 3, 4], [0.9, 0.5, 0.4, 0.1]  # the oracle's order is 1 > 2 > 3 > 4
    sigma = sigma_for(0.726, 4)
    rankings = [Ranking(order=noisy_order(ids, scores, sigma, rng)) for _ in range(3000)]

    def accuracy(gap):
        pairs = [p for r in rankings for p in ranking_pairs(r, min_gap=gap)]
        return sum(chosen < rejected for chosen, rejected, _ in pairs) / len(pairs)

    assert accuracy(1) == pytest.approx(0.83, abs=0.02)
    assert accuracy(2) > accuracy(1) + 0.05 and accuracy(3) > accuracy(2) + 0.03


def test_rule_oracle_prefers_the_answer_closest_to_the_reference():
    scores = rule_scores("Paris is the capital of France", ["The capital of France is Paris", "I like cheese", ""])
    assert scores[0] > scores[1] >= scores[2]


@pytest.mark.django_db
def test_simulated_annotators_label_through_the_services(capsys):
    project = make_project(k=4, overlap=3)
    for i in range(3):
        prompt = make_prompt(project, text=f"What is the capital of France? ({i})", reference="Paris is the capital.")
        make_task(project, prompt=prompt, texts=["Paris is the capital.", "It is Paris.", "Lyon.", "Bananas."])
    make_prompt(project, text="No reference here")
    call_command("simulate_annotators", project.slug, "--annotators", "3", "--agreement", "0.9")
    assert "rankings" in capsys.readouterr().out
    assert Demonstration.objects.count() == 3  # one per prompt with a reference; the other skipped
    assert Ranking.objects.count() == 9  # 3 tasks x overlap 3
    agreement = pairwise_agreement(project_rankings(project=project)).rate
    assert agreement > 0.6
    best = [r.order[0][0] for r in Ranking.objects.all()]
    texts = dict(project.ranking_tasks.first().completions.values_list("id", "text"))
    assert sum(1 for b in best if texts.get(b) == "Paris is the capital.") >= 1


@pytest.mark.django_db
def test_simulated_comparisons_prefer_the_answer_closer_to_the_reference():
    from labelapp.models import Comparison, ModelVersion
    from labelapp.services.projects import evaluation_task_create
    from workers.simulate import simulate

    project = make_project(overlap=3)
    new, old = (ModelVersion.objects.create(project=project, name=n) for n in ("new", "old"))
    for i in range(4):
        prompt = make_prompt(project, text=f"Capital of France? {i}", reference="Paris is the capital of France.")
        evaluation_task_create(project=project, prompt=prompt, model_a=new, model_b=old,
                               text_a="The capital of France is Paris.", text_b="I like trains.")
    report = simulate(project=project, annotators=3, agreement=0.95, queues=["compare"])
    assert report.comparisons == 12
    wins = list(Comparison.objects.values_list("winner", flat=True))
    assert wins.count("a") >= 10


def test_profiles_random_and_inverted_orders():
    from workers.simulate import profile_order

    rng = random.Random(3)
    ids, scores = [1, 2, 3, 4], [0.9, 0.5, 0.4, 0.1]
    assert profile_order("inverted", ids, scores, 0.0, rng) == [[4], [3], [2], [1]]
    assert profile_order("careful", ids, scores, 0.0, rng) == [[1], [2], [3], [4]]
    firsts = {profile_order("random", ids, scores, 0.0, rng)[0][0] for _ in range(200)}
    assert firsts == {1, 2, 3, 4}


@pytest.mark.django_db
def test_interleaved_crowd_spreads_items_over_annotators_with_profiles():
    from workers.simulate import simulate

    project = make_project(k=4, overlap=2)
    for i in range(12):
        prompt = make_prompt(project, text=f"What is the capital of France? ({i})", reference="Paris is the capital.")
        make_task(project, prompt=prompt, texts=["Paris is the capital.", "It is Paris.", "Lyon.", "Bananas."])
    report = simulate(project=project, annotators=4, queues=["rank"], agreement=1.0, interleave=True,
                      profiles=["careful", "careful", "careful", "inverted"])
    assert report.rankings == 24
    per_user = {}
    for r in Ranking.objects.select_related("annotator"):
        per_user.setdefault(r.annotator.username, []).append(r)
    assert sorted(len(v) for v in per_user.values()) == [6, 6, 6, 6]
    from labelapp.models import Completion

    text = dict(Completion.objects.values_list("pk", "text"))
    for username, rankings in per_user.items():
        best, worst = ({text[r.order[0][0]] for r in rankings}, {text[r.order[-1][0]] for r in rankings})
        if username.endswith("-4"):  # inverted: the oracle's best answer comes last
            assert worst == {"Paris is the capital."} and "Paris is the capital." not in best
        else:
            assert best == {"Paris is the capital."}
    assert all(r.time_spent_ms >= 30_000 for rs in per_user.values() for r in rs)
    with pytest.raises(ValueError, match="profiles"):
        simulate(project=project, annotators=2, queues=["rank"], profiles=["careful"])
