"""Length-controlled win-rate (labelapp.analysis.length_control) against hand computations, per category, its
separation handling, and the over-optimisation warning of an evaluation."""
import math

import pytest

from labelapp.analysis.length_control import RIDGE, covariate, length_controlled_win_rate, logistic_fit, separation


def logit(p):
    return math.log(p / (1 - p))


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def two_value_table(d1, wins1, n1, d2, wins2, n2):
    """Outcomes and length differences of a table with two length differences, and its hand computation.

    With two distinct covariate values the logistic model is saturated: it fits each group's win share
    exactly, sigmoid(alpha + beta * x_k) = p_k, so alpha = (x2 logit p1 - x1 logit p2) / (x2 - x1)."""
    outcomes = [1.0] * wins1 + [0.0] * (n1 - wins1) + [1.0] * wins2 + [0.0] * (n2 - wins2)
    diffs = [d1] * n1 + [d2] * n2
    mean = (n1 * d1 + n2 * d2) / (n1 + n2)
    sd = math.sqrt((n1 * (d1 - mean) ** 2 + n2 * (d2 - mean) ** 2) / (n1 + n2))
    x1, x2 = math.tanh(d1 / sd), math.tanh(d2 / sd)
    p1, p2 = wins1 / n1, wins2 / n2
    alpha = (x2 * logit(p1) - x1 * logit(p2)) / (x2 - x1)
    return outcomes, diffs, sigmoid(alpha)


def test_equals_a_hand_computation_on_a_small_table():
    # 8 tasks where the candidate wrote 240 characters more (6 wins), 4 where it wrote 60 fewer (1 win)
    outcomes, diffs, expected = two_value_table(240, 6, 8, -60, 1, 4)
    assert covariate(diffs)[0] == pytest.approx(math.tanh(240 / math.sqrt(8 * 4 * 300 ** 2 / 12 ** 2)))
    exact = logistic_fit([(x, o, 1.0) for x, o in zip(covariate(diffs), outcomes)], ridge=0.0)
    assert sigmoid(exact[0]) == pytest.approx(expected, abs=1e-9)
    result = length_controlled_win_rate(outcomes, diffs)  # default ridge: a hair from the exact fit
    assert result["win_rate"] == pytest.approx(expected, abs=1e-3)
    assert result["win_rate"] < sum(outcomes) / len(outcomes)  # raw 7/12: the longer side was favoured
    assert result["low"] <= result["win_rate"] <= result["high"] and result["n"] == 12 and result["items"] == 12
    assert not result["separated"] and result["slope"] > 0


def test_equals_the_raw_rate_when_all_lengths_are_equal():
    outcomes = [1.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0]
    result = length_controlled_win_rate(outcomes, [0] * len(outcomes))
    assert result["win_rate"] == pytest.approx(sum(outcomes) / len(outcomes), abs=1e-12)
    assert result["slope"] == pytest.approx(0.0, abs=1e-12) and not result["separated"]


def test_groups_share_a_task_and_its_length_difference():
    # three annotators per task: the point estimate is the pooled fit, the interval resamples tasks
    outcomes, diffs, expected = two_value_table(100, 4, 6, -100, 2, 6)
    tripled = [o for o in outcomes for _ in range(3)]
    grouped = length_controlled_win_rate(tripled, [d for d in diffs for _ in range(3)],
                                         groups=[i for i in range(12) for _ in range(3)])
    flat = length_controlled_win_rate(outcomes, diffs)
    assert grouped["win_rate"] == pytest.approx(expected, abs=1e-3) == flat["win_rate"]
    assert grouped["n"] == 36 and grouped["items"] == 12
    assert grouped["high"] - grouped["low"] == pytest.approx(flat["high"] - flat["low"], abs=0.05)
    with pytest.raises(ValueError, match="share its length difference"):
        length_controlled_win_rate([1.0, 0.0], [10, 20], groups=[1, 1])
    with pytest.raises(ValueError, match="for 2 outcomes"):
        length_controlled_win_rate([1.0, 0.0], [10])


def test_separation_is_finite_and_flagged():
    # all wins: no finite intercept; the controlled rate is the raw rate
    all_wins = length_controlled_win_rate([1.0] * 5, [10, 50, -20, 0, 5])
    assert all_wins["win_rate"] == 1.0 and all_wins["separation"] == "all_same" and all_wins["separated"]
    assert all_wins["low"] == all_wins["high"] == 1.0
    # the candidate wins exactly when it is longer: length decides; the ridge keeps the slope finite
    decided = length_controlled_win_rate([1.0, 1.0, 1.0, 0.0, 0.0], [200, 150, 30, -40, -300])
    assert decided["separation"] == "length" and 0.0 < decided["win_rate"] < 1.0 and math.isfinite(decided["slope"])
    assert separation([(0.0, 1.0, 1.0), (0.0, 0.0, 1.0)]) is None  # no length information
    assert separation([(-0.5, 0.0, 1.0), (0.0, 1.0, 2.0), (0.5, 1.0, 1.0)]) == "length"  # quasi-complete
    # the ridge is what keeps it finite: without it the slope runs away
    rows = [(x, o, 1.0) for x, o in zip(covariate([200, 150, 30, -40, -300]), [1.0, 1.0, 1.0, 0.0, 0.0])]
    assert abs(logistic_fit(rows, ridge=RIDGE)[1]) < abs(logistic_fit(rows, ridge=1e-9)[1])
    assert length_controlled_win_rate([], [])["win_rate"] is None


def test_ties_count_one_half():
    outcomes, diffs = [0.5, 0.5, 1.0, 0.0], [0, 0, 0, 0]
    assert length_controlled_win_rate(outcomes, diffs)["win_rate"] == pytest.approx(0.5, abs=1e-12)
