"""The annotator reliability model (labelapp.analysis.reliability): pure Python, no database."""
from __future__ import annotations

import random

import pytest

from labelapp.analysis.reliability import (
    FlagRules,
    Judgment,
    beta_interval,
    beta_quantile,
    fit,
    flags_for,
    gold_units,
    judgments_from_rankings,
    regularized_beta,
)


@pytest.mark.parametrize("p", [0.025, 0.3, 0.5, 0.9, 0.975])
def test_beta_quantiles_match_closed_forms(p):
    assert beta_quantile(p, 1, 1) == pytest.approx(p, abs=1e-9)  # uniform
    assert beta_quantile(p, 2, 1) == pytest.approx(p ** 0.5, abs=1e-9)  # CDF x^2
    assert beta_quantile(p, 1, 2) == pytest.approx(1 - (1 - p) ** 0.5, abs=1e-9)  # CDF 1 - (1-x)^2


def test_regularized_beta_symmetry_and_a_tabulated_value():
    assert regularized_beta(0.3, 5, 7) == pytest.approx(1 - regularized_beta(0.7, 7, 5), abs=1e-12)
    # I_0.5(3, 3) = 0.5 by symmetry; I_0.2(2, 3) = 1 - (1-x)^3 (1 + 3x) = 0.1808 (Beta(2,3) CDF).
    assert regularized_beta(0.5, 3, 3) == pytest.approx(0.5, abs=1e-12)
    assert regularized_beta(0.2, 2, 3) == pytest.approx(1 - 0.8 ** 3 * (1 + 3 * 0.2), abs=1e-12)
    low, high = beta_interval(50, 50)
    assert low == pytest.approx(1 - high, abs=1e-9) and 0.39 < low < 0.41


def test_design_effect_of_ranking_pairs():
    from labelapp.analysis.reliability import design_effect

    assert design_effect([]) == 1.0
    assert design_effect([1, 1]) == 1.0  # K = 2: one pair per ranking, independent
    assert design_effect([6]) == pytest.approx(13 / 9)  # K = 4
    assert design_effect([6, 1]) == pytest.approx((6 * 13 / 9 + 1) / 7)


def test_judgments_from_rankings_orient_pairs_and_skip_empty_orders():
    judgments = judgments_from_rankings({7: {"a": [[3], [1, 2]], "b": []}})
    assert sorted((j.unit, j.annotator, j.relation) for j in judgments) == [
        ((7, 1, 2), "a", 0), ((7, 1, 3), "a", -1), ((7, 2, 3), "a", -1),
    ]


def test_gold_units_keep_strict_pairs_only():
    assert gold_units({9: [[1], [2, 3]]}) == {(9, 1, 2): 1, (9, 1, 3): 1}


def synthetic(seed: int, qualities: dict[str, float], items: int = 300, k: int = 4, overlap: int = 3,
              tie: float = 0.05):
    """Each item has a random true order of k completions; `overlap` annotators drawn at random
    judge each of its C(k,2) pairs: the true order with probability (1 - tie) * q, a tie with
    probability `tie`, the reverse otherwise."""
    rng = random.Random(seed)
    names = list(qualities)
    judgments, truth = [], {}
    for item in range(items):
        order = list(range(k))
        rng.shuffle(order)
        position = {c: i for i, c in enumerate(order)}
        for annotator in rng.sample(names, overlap):
            for x in range(k):
                for y in range(x + 1, k):
                    t = 1 if position[x] < position[y] else -1
                    truth[(item, x, y)] = t
                    u = rng.random()
                    r = 0 if u < tie else (t if u < tie + (1 - tie) * qualities[annotator] else -t)
                    judgments.append(Judgment((item, x, y), annotator, r))
    return judgments, truth


CROWD = {**{f"good{i}": 0.836 for i in range(6)}, "random1": 0.5, "random2": 0.5, "inverted": 0.164}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_reliabilities_within_0_06_and_flags_the_bad_three(seed):
    judgments, truth = synthetic(seed, CROWD)
    result = fit(judgments)
    assert result.converged
    for name, q in CROWD.items():
        got = result.annotators[name]
        assert got.reliability == pytest.approx(q, abs=0.06), name
        assert got.low <= got.reliability <= got.high
        assert got.tie_rate == pytest.approx(0.05, abs=0.03)
    flagged = {name for name, f in result.annotators.items()
               if flags_for(f, median_ms=None, project_median_ms=None)}
    assert flagged == {"random1", "random2", "inverted"}
    assert flags_for(result.annotators["inverted"], median_ms=None, project_median_ms=None) == ["likely inverted"]
    # The posterior order beats a plain majority of the three votes.
    votes: dict = {}
    for j in judgments:
        votes[j.unit] = votes.get(j.unit, 0) + j.relation
    majority = sum((v > 0) == (truth[u] > 0) for u, v in votes.items() if v) / sum(1 for v in votes.values() if v)
    posterior = sum((p > 0.5) == (truth[u] > 0) for u, p in result.posterior.items()) / len(truth)
    assert posterior > majority + 0.03


def test_gold_answers_pin_the_truth_and_count_per_annotator():
    judgments, truth = synthetic(5, {"a": 0.9, "b": 0.9, "c": 0.2}, items=60)
    gold = {u: t for u, t in truth.items() if u[0] < 20}
    result = fit(judgments, gold=gold)
    assert all(result.posterior[u] == (1.0 if t > 0 else 0.0) for u, t in gold.items())
    assert result.gold_units == len(gold)
    assert sum(f.gold_judgments for f in result.annotators.values()) == sum(1 for j in judgments if j.unit in gold)
    assert result.annotators["c"].reliability < 0.35


def test_single_annotator_units_do_not_confirm_their_own_annotator():
    # b alone labels 100 units (all "x better"), and shares 10 units with a, where b is always wrong.
    shared = [Judgment((i, 0, 1), who, r) for i in range(10) for who, r in (("a", 1), ("a2", 1), ("b", -1))]
    alone = [Judgment((100 + i, 0, 1), "b", 1) for i in range(100)]
    result = fit(shared + alone)
    assert result.annotators["b"].judgments == 10
    assert result.annotators["b"].reliability < 0.3
    assert result.posterior[(100, 0, 1)] < 0.5  # b's own claim is believed less than a coin flip


def test_flags_respect_min_strict_and_too_fast():
    judgments, _ = synthetic(3, {"a": 0.836, "b": 0.836, "r": 0.5}, items=6)
    result = fit(judgments)
    rules = FlagRules(min_strict=1000)
    assert flags_for(result.annotators["r"], median_ms=None, project_median_ms=None, rules=rules) == []
    assert flags_for(None, median_ms=1000, project_median_ms=10000) == ["too fast"]
    assert flags_for(None, median_ms=5000, project_median_ms=10000) == []


def test_confidence_reads_the_posterior_in_the_stated_direction():
    result = fit([Judgment(("i", 0, 1), a, 1) for a in "abc"] + [Judgment(("j", 0, 1), a, 1) for a in "ab"]
                 + [Judgment(("j", 0, 1), "c", -1)])
    p = result.posterior[("i", 0, 1)]
    assert result.confidence(("i", 0, 1), 1) == p and result.confidence(("i", 0, 1), -1) == 1 - p
    assert result.confidence(("i", 0, 1), 0) is None and result.confidence(("zz", 0, 1), 1) is None


def test_untimed_labels_are_flagged_not_passed_as_timed():
    assert flags_for(None, median_ms=None, project_median_ms=10000, untimed_share=1.0) == ["untimed"]
    assert flags_for(None, median_ms=1000, project_median_ms=10000, untimed_share=0.5) == ["too fast", "untimed"]
    assert flags_for(None, median_ms=5000, project_median_ms=10000, untimed_share=0.2) == []
    assert flags_for(None, median_ms=5000, project_median_ms=10000, untimed_share=0.4,
                     rules=FlagRules(untimed_share=0.3)) == ["untimed"]
