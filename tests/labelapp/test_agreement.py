"""Agreement statistics on hand-computed fixtures. No database: labelapp.analysis.agreement is pure
Python. Orders are lists of tie groups, best first; completion ids are small ints."""
from __future__ import annotations

import pytest

from labelapp.analysis.agreement import (
    AgreementResult,
    alpha_from_units,
    annotator_consensus_agreement,
    annotator_pairwise_agreement,
    krippendorff_alpha_ordinal,
    krippendorff_alpha_pairwise,
    ordinal_alpha_from_units,
    pairwise_agreement,
    preference_units,
)

ABC = [[1], [2], [3]]  # 1 > 2 > 3
BAC = [[2], [1], [3]]  # 2 > 1 > 3: the first two of ABC swapped


# ---------------------------------------------------------------- pairwise_agreement


def test_identical_orders_agree_on_every_pair():
    # Annotator pair (a, b); completion pairs (1,2), (1,3), (2,3): all 3 the same -> 3/3.
    assert pairwise_agreement({"item": {"a": ABC, "b": ABC}}) == AgreementResult(1.0, 3)


def test_one_swapped_adjacent_pair():
    # (1,2): a says 1>2, b says 1<2 -> disagree; (1,3): both 1>3; (2,3): both 2>3 -> 2/3.
    result = pairwise_agreement({"item": {"a": ABC, "b": BAC}})
    assert result.n == 3
    assert result.rate == pytest.approx(2 / 3)


def test_tie_against_preference_disagrees_unless_ties_ignored():
    rankings = {"item": {"a": ABC, "b": [[1], [2, 3]]}}
    # (1,2): 1>2 both; (1,3): 1>3 both; (2,3): a says 2>3, b ties them -> disagree. 2/3.
    default = pairwise_agreement(rankings)
    assert default.n == 3
    assert default.rate == pytest.approx(2 / 3)
    # ignore_ties drops (2,3) because b tied it: 2 agreeing of 2 cases.
    assert pairwise_agreement(rankings, ignore_ties=True) == AgreementResult(1.0, 2)


def test_ignore_ties_keeps_strict_disagreements():
    rankings = {"item": {"a": ABC, "b": [[2], [1, 3]]}}
    # (1,2): a 1>2, b 2>1 -> disagree; (1,3): a 1>3, b tie -> disagree; (2,3): both 2>3.
    default = pairwise_agreement(rankings)
    assert default.n == 3
    assert default.rate == pytest.approx(1 / 3)
    # ignore_ties drops only (1,3): 1 agreeing of 2.
    assert pairwise_agreement(rankings, ignore_ties=True) == AgreementResult(0.5, 2)


def test_tie_against_same_tie_agrees_unless_ties_ignored():
    rankings = {"item": {"a": [[1], [2, 3]], "b": [[1], [2, 3]]}}
    # (1,2), (1,3): 1 better for both; (2,3): tie for both -> agree. 3/3.
    assert pairwise_agreement(rankings) == AgreementResult(1.0, 3)
    # ignore_ties drops (2,3): 2/2.
    assert pairwise_agreement(rankings, ignore_ties=True) == AgreementResult(1.0, 2)


def test_three_annotators():
    # Annotator pairs: (a,b) identical 3/3; (a,c) swapped 2/3; (b,c) swapped 2/3.
    # 3 annotator pairs x 3 completion pairs = 9 cases, 3 + 2 + 2 = 7 agree -> 7/9.
    result = pairwise_agreement({"item": {"a": ABC, "b": ABC, "c": BAC}})
    assert result.n == 9
    assert result.rate == pytest.approx(7 / 9)


def test_cases_are_pooled_over_items_not_averaged():
    # item 1: 3 of 3 agree; item 2: its one pair (1,2) disagrees, 0 of 1.
    # Pooled: (3 + 0) / (3 + 1) = 3/4 (a mean of item rates would be (1 + 0) / 2 = 1/2).
    rankings = {1: {"a": ABC, "b": ABC}, 2: {"a": [[1], [2]], "b": [[2], [1]]}}
    assert pairwise_agreement(rankings) == AgreementResult(0.75, 4)


def test_single_annotator_item_contributes_nothing():
    # Item 2 has only annotator a, so the result is item 1's alone: 2/3 of 3.
    rankings = {1: {"a": ABC, "b": BAC}, 2: {"a": [[4], [5], [6], [7]]}}
    result = pairwise_agreement(rankings)
    assert result.n == 3
    assert result.rate == pytest.approx(2 / 3)
    assert pairwise_agreement({2: {"a": ABC}}) == AgreementResult(None, 0)


def test_only_completions_both_ranked_are_compared():
    # b ranked only 1 and 2; the only common pair is (1,2): a 1>2, b 2>1 -> 0 of 1.
    assert pairwise_agreement({"item": {"a": ABC, "b": [[2], [1]]}}) == AgreementResult(0.0, 1)


def test_empty_order_is_ignored():
    # b said "none acceptable": only the pair (a, c) remains, swapped -> 2/3 of 3.
    result = pairwise_agreement({"item": {"a": ABC, "b": [], "c": BAC}})
    assert result.n == 3
    assert result.rate == pytest.approx(2 / 3)
    assert pairwise_agreement({"item": {"a": ABC, "b": []}}) == AgreementResult(None, 0)


def test_no_rankings_gives_none():
    assert pairwise_agreement({}) == AgreementResult(None, 0)


def test_completion_twice_in_one_order_is_rejected():
    with pytest.raises(ValueError, match="appears twice"):
        pairwise_agreement({"item": {"a": [[1], [2, 1]], "b": ABC}})


# ---------------------------------------------------- annotator_consensus_agreement


def test_consensus_with_two_annotators_is_the_other_annotator():
    # The only other annotator is a majority of 1. a vs b: (1,2) disagree, (1,3), (2,3)
    # agree -> 2/3 for both, the same as pairwise agreement.
    result = annotator_consensus_agreement({"item": {"a": ABC, "b": BAC}})
    assert set(result) == {"a", "b"}
    for annotator in "ab":
        assert result[annotator].n == 3
        assert result[annotator].rate == pytest.approx(2 / 3)


def test_consensus_three_annotators_skips_pairs_without_majority():
    result = annotator_consensus_agreement({"item": {"a": ABC, "b": ABC, "c": BAC}})
    # a: others b (1>2) and c (2>1) split 1-1 on (1,2) -> skipped; on (1,3) and (2,3)
    #    both say the first is better, as a does -> 2/2. b is symmetric to a -> 2/2.
    assert result["a"] == AgreementResult(1.0, 2)
    assert result["b"] == AgreementResult(1.0, 2)
    # c: others a, b both say 1>2, c says 2>1 -> disagree; (1,3), (2,3) agree -> 2/3.
    assert result["c"].n == 3
    assert result["c"].rate == pytest.approx(2 / 3)


def test_consensus_tie_is_a_relation():
    result = annotator_consensus_agreement({"item": {"a": [[1, 2], [3]], "b": [[1, 2], [3]], "c": ABC}})
    # c: on (1,2) a and b both tie -> consensus "tie", c says 1>2 -> disagree;
    #    (1,3), (2,3): a and b both say the first is better, as c does -> 2/3.
    assert result["c"].n == 3
    assert result["c"].rate == pytest.approx(2 / 3)
    # a: on (1,2) b ties, c says 1>2 -> 1-1, skipped; (1,3), (2,3) agree -> 2/2.
    assert result["a"] == AgreementResult(1.0, 2)


def test_consensus_empty_order_is_no_voter_and_no_entry():
    # c said "none acceptable": a's only voter is b, a majority of 1 (were c counted as a
    # voter, b alone would be 1 of 2, no majority, and a would have n = 0).
    # a vs b swapped -> 2/3 of 3. c gets no entry at all.
    result = annotator_consensus_agreement({"item": {"a": ABC, "b": BAC, "c": []}})
    assert set(result) == {"a", "b"}
    assert result["a"].n == 3
    assert result["a"].rate == pytest.approx(2 / 3)


def test_consensus_pooled_over_items():
    # item 1: a agrees with b on all 3 pairs; item 2: a and b disagree on (1,2), 0 of 1.
    # item 3 has a alone and adds nothing. a: (3 + 0) / (3 + 1) = 3/4.
    rankings = {1: {"a": ABC, "b": ABC}, 2: {"a": [[1], [2]], "b": [[2], [1]]}, 3: {"a": ABC}}
    assert annotator_consensus_agreement(rankings)["a"] == AgreementResult(0.75, 4)


def test_consensus_only_single_annotator_items_give_no_entries():
    assert annotator_consensus_agreement({1: {"a": ABC}, 2: {"b": ABC}}) == {}


def test_consensus_pair_nobody_else_ranked_is_skipped():
    # b ranked only 1 and 2, so for a only (1,2) has a voter: b says 2>1, a 1>2 -> 0/1.
    # For b the one pair (1,2) is judged by a: 0/1.
    result = annotator_consensus_agreement({"item": {"a": ABC, "b": [[2], [1]]}})
    assert result == {"a": AgreementResult(0.0, 1), "b": AgreementResult(0.0, 1)}


# ------------------------------------------------------ krippendorff_alpha_ordinal
# Values are competition ranks: 1 + number of completions strictly better.


def test_alpha_perfect_agreement_is_one():
    rankings = {1: {"a": ABC, "b": ABC}, 2: {"a": [[4], [5, 6]], "b": [[4], [5, 6]]}}
    assert krippendorff_alpha_ordinal(rankings) == 1.0


def test_alpha_swapped_pair_hand_computed():
    # a: 1->1, 2->2, 3->3.  b (BAC): 1->2, 2->1, 3->3.
    # Units (item, completion): (1: 1, 2), (2: 2, 1), (3: 3, 3); m_u = 2, weight 1/(2-1) = 1.
    # Coincidence matrix o_ck (rows c, columns k, values 1..3):
    #        1  2  3
    #   1 [  0  2  0 ]     unit 1 gives (1,2) and (2,1); unit 2 the same
    #   2 [  2  0  0 ]
    #   3 [  0  0  2 ]     unit 3 gives (3,3) twice
    # n_1 = n_2 = n_3 = 2, n = 6.
    # delta2(1,2) = (n_1 + n_2 - (n_1 + n_2)/2)^2       = (4 - 2)^2 = 4
    # delta2(2,3) = (n_2 + n_3 - (n_2 + n_3)/2)^2       = (4 - 2)^2 = 4
    # delta2(1,3) = (n_1 + n_2 + n_3 - (n_1 + n_3)/2)^2 = (6 - 2)^2 = 16
    # sum o_ck delta2 = o_12*4 + o_21*4 = 16
    # sum n_c n_k delta2 = 2 * (2*2*4 + 2*2*4 + 2*2*16) = 2 * 96 = 192
    # alpha = 1 - (n - 1) * 16 / 192 = 1 - 5 * 16 / 192 = 1 - 5/12 = 7/12
    assert krippendorff_alpha_ordinal({"item": {"a": ABC, "b": BAC}}) == pytest.approx(7 / 12)


def test_alpha_tie_group_takes_competition_rank():
    # a: [[1, 2], [3]] -> 1->1, 2->1, 3->3 (3 has two completions strictly better; a dense
    # rank would give 2).  b: ABC -> 1->1, 2->2, 3->3.
    # Units: (1: 1, 1), (2: 1, 2), (3: 3, 3); m_u = 2, weight 1.
    # Coincidence matrix:
    #        1  2  3
    #   1 [  2  1  0 ]     n_1 = 3
    #   2 [  1  0  0 ]     n_2 = 1
    #   3 [  0  0  2 ]     n_3 = 2, n = 6
    # delta2(1,2) = (3 + 1 - (3 + 1)/2)^2     = (4 - 2)^2   = 4
    # delta2(2,3) = (1 + 2 - (1 + 2)/2)^2     = (3 - 1.5)^2 = 2.25
    # delta2(1,3) = (3 + 1 + 2 - (3 + 2)/2)^2 = (6 - 2.5)^2 = 12.25
    # sum o_ck delta2 = (o_12 + o_21) * 4 = 8
    # sum n_c n_k delta2 = 2 * (3*1*4 + 1*2*2.25 + 3*2*12.25) = 2 * (12 + 4.5 + 73.5) = 180
    # alpha = 1 - (6 - 1) * 8 / 180 = 1 - 2/9 = 7/9
    # (Dense ranks would put the values (2, 3) in unit 3 and give 1 - 5 * 17 / 180 = 19/36.)
    assert krippendorff_alpha_ordinal({"item": {"a": [[1, 2], [3]], "b": ABC}}) == pytest.approx(7 / 9)


def test_alpha_ties_three_annotators_hand_computed():
    # Item 1: a and b: 1->1, 2->2; c ties both: 1->1, 2->1. d said "none acceptable".
    # Item 2 was ranked by a alone: its units have one value each and are dropped.
    rankings = {
        1: {"a": [[1], [2]], "b": [[1], [2]], "c": [[1, 2]], "d": []},
        2: {"a": [[3], [4]]},
    }
    # Unit (1, 1): values {1, 1, 1}, m = 3 -> 6 ordered pairs (1,1), each 1/2 -> o_11 += 3.
    # Unit (1, 2): values {2, 2, 1}, m = 3 -> ordered pairs (2,2) x2, (2,1) x2, (1,2) x2,
    #              each 1/2 -> o_22 += 1, o_21 += 1, o_12 += 1.
    # Coincidence matrix:
    #        1  2
    #   1 [  3  1 ]     n_1 = 4
    #   2 [  1  1 ]     n_2 = 2, n = 6 (= the 6 pairable values)
    # delta2(1,2) = (n_1 + n_2 - (n_1 + n_2)/2)^2 = (6 - 3)^2 = 9
    # sum o_ck delta2 = (o_12 + o_21) * 9 = 18
    # sum n_c n_k delta2 = 2 * 4 * 2 * 9 = 144
    # alpha = 1 - (6 - 1) * 18 / 144 = 1 - 90/144 = 1 - 5/8 = 3/8
    assert krippendorff_alpha_ordinal(rankings) == pytest.approx(3 / 8)


def test_alpha_krippendorff_2011_worked_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C:
    # 4 observers, 12 units, values 1..5 with missing data; published ordinal alpha = .815.
    # Rows are observers A..D, None is a missing value.
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*observers)]
    assert ordinal_alpha_from_units(units) == pytest.approx(0.815, abs=5e-4)


@pytest.mark.parametrize(
    "rankings",
    [
        pytest.param({}, id="no rankings"),
        pytest.param({1: {"a": ABC}, 2: {"b": BAC}}, id="only single-annotator items"),
        pytest.param({1: {"a": ABC, "b": []}}, id="second annotator's order empty"),
        pytest.param({1: {"a": [[1, 2, 3]], "b": [[1, 2, 3]]}}, id="one distinct value: no expected disagreement"),
    ],
)
def test_alpha_undefined_is_none(rankings):
    assert krippendorff_alpha_ordinal(rankings) is None


@pytest.mark.parametrize("metric, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_krippendorff_2011_published_values_per_metric(metric, published):
    observers = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*observers)]
    assert alpha_from_units(units, metric=metric) == pytest.approx(published, abs=5e-4)


def test_alpha_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric 'ratio'"):
        alpha_from_units([[1, 2]], metric="ratio")


# ------------------------------------------------- alpha on pairwise preferences
# The worked example of docs/API.md: one item, completions 1, 2, 3.
WORKED = {"item": {"a": [[1], [2], [3]], "b": [[1, 2], [3]], "c": [[2], [1], [3]]}}


def test_preference_units_orient_pairs_by_id_with_tie_in_the_middle():
    # (1,2): a says 1 better -> 0, b ties -> 1, c says 2 better -> 2; (1,3) and (2,3): all 0.
    assert sorted(map(sorted, preference_units(WORKED))) == [[0, 0, 0], [0, 0, 0], [0, 1, 2]]


def test_pairwise_alpha_worked_example_nominal():
    # Units [0,1,2], [0,0,0], [0,0,0]; m = 3, each ordered pair of coders weighs 1/2.
    # o_00 = 3 + 3 = 6; o_01 = o_10 = o_02 = o_20 = o_12 = o_21 = 1/2.
    # n_0 = 7, n_1 = 1, n_2 = 1, n = 9.
    # nominal: sum o_ck delta = 6 * 1/2 = 3; sum n_c n_k delta = 2 * (7*1 + 7*1 + 1*1) = 30
    # alpha = 1 - (9 - 1) * 3 / 30 = 0.2
    assert krippendorff_alpha_pairwise(WORKED, metric="nominal") == pytest.approx(0.2)


def test_pairwise_alpha_worked_example_ordinal():
    # Same coincidences. Ordinal distances over A better (7) < tie (1) < B better (1):
    # delta2(0,1) = (7 + 1 - 8/2)^2 = 16; delta2(1,2) = (1 + 1 - 2/2)^2 = 1;
    # delta2(0,2) = (7 + 1 + 1 - 8/2)^2 = 25.
    # sum o_ck delta2 = 2 * (16 + 25 + 1) / 2 = 42; sum n_c n_k delta2 = 2 * (7*16 + 7*25 + 1*1) = 576
    # alpha = 1 - 8 * 42 / 576 = 5/12
    assert krippendorff_alpha_pairwise(WORKED, metric="ordinal") == pytest.approx(5 / 12)


def test_pairwise_alpha_tie_counts_less_than_reversal_only_in_ordinal():
    tie = {1: {"a": [[1], [2]], "b": [[1, 2]]}, 2: {"a": [[3], [4]], "b": [[3], [4]]}, 3: {"a": [[6], [5]], "b": [[6], [5]]}}
    flip = {1: {"a": [[1], [2]], "b": [[2], [1]]}, 2: {"a": [[3], [4]], "b": [[3], [4]]}, 3: {"a": [[6], [5]], "b": [[6], [5]]}}
    assert krippendorff_alpha_pairwise(tie, metric="ordinal") > krippendorff_alpha_pairwise(flip, metric="ordinal")


def test_worked_example_agreement_with_and_without_ties():
    # 3 annotator pairs x 3 completion pairs = 9 cases; on (1,2) all three annotator pairs
    # disagree, elsewhere all agree: 6/9. Without ties the cases involving b on (1,2) go: 6/7.
    assert pairwise_agreement(WORKED) == AgreementResult(6 / 9, 9)
    assert pairwise_agreement(WORKED, ignore_ties=True) == AgreementResult(6 / 7, 7)


def test_annotator_pairwise_agreement_counts_cases_each_annotator_is_in():
    # a: with b 2 of 3 agree, with c 2 of 3 -> 4/6. b: with a 2/3, with c 2/3 -> 4/6. Same for c.
    per = annotator_pairwise_agreement(WORKED)
    assert per == {"a": AgreementResult(4 / 6, 6), "b": AgreementResult(4 / 6, 6), "c": AgreementResult(4 / 6, 6)}
    flipped = {"i": {"a": ABC, "b": ABC, "z": [[3], [2], [1]]}}
    assert annotator_pairwise_agreement(flipped)["z"] == AgreementResult(0.0, 6)
    assert annotator_pairwise_agreement(flipped)["a"] == AgreementResult(3 / 6, 6)
