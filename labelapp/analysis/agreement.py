"""Inter-annotator agreement on ranking labels. Pure Python (stdlib only), so it can be
tested without a database.

A ranking of one item by one annotator is a list of tie groups of completion ids, best
first: [[7], [3, 9], [4]] means 7 is best, 3 and 9 tie, 4 is worst. Every function takes
``{item_id: {annotator_id: order}}``.

Conventions shared by all functions:

* An order with no completion ids ("none acceptable", not ranked) is ignored for that
  annotator and item, as if the annotator had not labelled the item.
* Only items ranked by at least two annotators can contribute; other items are skipped.
* The rank of a completion is 1 + the number of completions the same annotator placed
  strictly better (competition ranking), so tied completions share a rank:
  [[7], [3, 9], [4]] gives 7 -> 1, 3 -> 2, 9 -> 2, 4 -> 4.
* An annotator's relation for a completion pair (x, y) is "x better", "x worse" or "tie",
  read from those ranks. Only an annotator who ranked both x and y judges the pair.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, combinations
from typing import TypeVar

A = TypeVar("A", bound=Hashable)
Order = Sequence[Sequence[int]]
Ranks = dict[int, int]


@dataclass(frozen=True)
class AgreementResult:
    """`rate` is agreeing cases / `n` cases, or None when `n` is 0."""

    rate: float | None
    n: int


def _result(agreeing: int, n: int) -> AgreementResult:
    return AgreementResult(agreeing / n if n else None, n)


def _ranks(order: Order) -> Ranks:
    """Completion id -> 1 + number of completions placed strictly better."""
    ranks: Ranks = {}
    better = 0
    for group in order:
        for completion in group:
            if completion in ranks:
                raise ValueError(f"completion {completion!r} appears twice in order {order!r}")
            ranks[completion] = better + 1
        better += len(group)
    return ranks


def _ranked_items(rankings: Mapping[Hashable, Mapping[A, Order]]) -> Iterator[dict[A, Ranks]]:
    """Per item ranked by >= 2 annotators: annotator -> ranks, empty orders left out."""
    for by_annotator in rankings.values():
        ranked = {annotator: ranks for annotator, order in by_annotator.items() if (ranks := _ranks(order))}
        if len(ranked) >= 2:
            yield ranked


def _relation(ranks: Ranks, x: int, y: int) -> int:
    """1 if x is ranked better than y, -1 if worse, 0 if tied."""
    return (ranks[x] < ranks[y]) - (ranks[x] > ranks[y])


def pairwise_agreement(
    rankings: Mapping[Hashable, Mapping[Hashable, Order]], *, ignore_ties: bool = False
) -> AgreementResult:
    """Inter-annotator agreement as in InstructGPT (Ouyang et al. 2022).

    A case is (item, unordered pair of annotators who both ranked the item, unordered pair
    of completions that both of them ranked). The two annotators agree on the case when
    they give the completion pair the same relation: both "x better", both "x worse", or
    both "tie". So a tie against a strict preference is a disagreement, and a tie against
    a tie is an agreement.

    With ``ignore_ties=True`` every case in which either annotator tied the two
    completions is dropped, and only strict preferences are compared.

    Returns the share of agreeing cases and the number of cases `n` (rate None if n == 0).
    """
    agreeing = n = 0
    for ranked in _ranked_items(rankings):
        for ranks_a, ranks_b in combinations(ranked.values(), 2):
            for x, y in combinations(ranks_a.keys() & ranks_b.keys(), 2):
                relation_a, relation_b = _relation(ranks_a, x, y), _relation(ranks_b, x, y)
                if ignore_ties and 0 in (relation_a, relation_b):
                    continue
                n += 1
                agreeing += relation_a == relation_b
    return _result(agreeing, n)


def annotator_pairwise_agreement(
    rankings: Mapping[Hashable, Mapping[A, Order]], *, ignore_ties: bool = False
) -> dict[A, AgreementResult]:
    """`pairwise_agreement` restricted to the cases each annotator is part of: how often an
    annotator gives a completion pair the same relation as each other annotator who ranked it."""
    counts: dict[A, list[int]] = {}
    for ranked in _ranked_items(rankings):
        for (a, ranks_a), (b, ranks_b) in combinations(ranked.items(), 2):
            for x, y in combinations(ranks_a.keys() & ranks_b.keys(), 2):
                relation_a, relation_b = _relation(ranks_a, x, y), _relation(ranks_b, x, y)
                if ignore_ties and 0 in (relation_a, relation_b):
                    continue
                for annotator in (a, b):
                    tally = counts.setdefault(annotator, [0, 0])
                    tally[0] += relation_a == relation_b
                    tally[1] += 1
    return {annotator: _result(agreeing, n) for annotator, (agreeing, n) in counts.items()}


def annotator_consensus_agreement(rankings: Mapping[Hashable, Mapping[A, Order]]) -> dict[A, AgreementResult]:
    """How often each annotator agrees with the consensus of the other annotators.

    For an annotator on an item, each unordered pair of completions they ranked is a
    case. The other annotators who ranked both completions vote with their relation
    ("x better", "x worse" or "tie", so a tie is a relation like the others). The consensus
    is the relation given by strictly more than half of those voters; the case is skipped
    when no relation has such a majority, which includes when nobody else ranked both
    completions. The annotator agrees when their own relation equals the consensus.

    Returns, for every annotator with a non-empty order on some item that at least two
    annotators ranked, the share of their counted cases that agree and the number of
    counted cases `n` (rate None if n == 0).
    """
    counts: dict[A, list[int]] = {}  # annotator -> [agreeing, n]
    for ranked in _ranked_items(rankings):
        for annotator, ranks in ranked.items():
            tally = counts.setdefault(annotator, [0, 0])
            others = [r for other, r in ranked.items() if other != annotator]
            for x, y in combinations(ranks, 2):
                votes = Counter(_relation(r, x, y) for r in others if x in r and y in r)
                majority = [relation for relation, count in votes.items() if 2 * count > votes.total()]
                if majority:
                    tally[0] += _relation(ranks, x, y) == majority[0]
                    tally[1] += 1
    return {annotator: _result(agreeing, n) for annotator, (agreeing, n) in counts.items()}


def krippendorff_alpha_ordinal(rankings: Mapping[Hashable, Mapping[Hashable, Order]]) -> float | None:
    """Krippendorff's alpha, ordinal metric, over the rank positions the annotators gave (the
    "rank-position alpha"; for the standard alpha on pairwise preferences see
    `krippendorff_alpha_pairwise`). A tie here is a shared rank value, so it reads like "better"
    for the tied completion that would otherwise have ranked lower.

    Units are (item, completion) pairs, coders are annotators, and an annotator's value
    for a unit is the completion's competition rank in their order of that item
    (1 + number of completions strictly better; tied completions share the rank). Rank
    values are pooled across items: rank 2 on one item is the same value as rank 2 on
    another. Units with fewer than two values are dropped; the computation is
    `ordinal_alpha_from_units`.

    Returns None when alpha is undefined (no pairable values, or only one distinct value
    so that the expected disagreement is 0).
    """
    return ordinal_alpha_from_units(
        [ranks[completion] for ranks in ranked.values() if completion in ranks]
        for ranked in _ranked_items(rankings)
        for completion in set().union(*ranked.values())
    )


def preference_units(rankings: Mapping[Hashable, Mapping[Hashable, Order]]) -> Iterator[list[int]]:
    """The pairwise-preference reliability data: one unit per (item, unordered completion pair)
    judged by two or more annotators, holding each such annotator's value for the pair, with the
    pair oriented by completion id (x < y): 0 = x better ("A better"), 1 = tie, 2 = y better.
    The ordinal metric orders these as A better < tie < B better, so a tie sits between the two
    strict preferences."""
    for ranked in _ranked_items(rankings):
        for x, y in combinations(sorted(set().union(*ranked.values())), 2):
            values = [1 - _relation(ranks, x, y) for ranks in ranked.values() if x in ranks and y in ranks]
            if len(values) >= 2:
                yield values


def krippendorff_alpha_pairwise(
    rankings: Mapping[Hashable, Mapping[Hashable, Order]], *, metric: str = "nominal"
) -> float | None:
    """The standard Krippendorff's alpha on pairwise preferences: units are (item, completion
    pair), coders are annotators, values "x better" / "tie" / "y better" (`preference_units`).
    `metric` is "nominal" (any two different values disagree equally) or "ordinal" (ties as the
    middle category, so tie vs preference is a smaller disagreement than one order vs the other).
    None when undefined."""
    return alpha_from_units(preference_units(rankings), metric=metric)


def ordinal_alpha_from_units(units: Iterable[Sequence[float]]) -> float | None:
    """Krippendorff's alpha with the ordinal metric (`alpha_from_units`)."""
    return alpha_from_units(units, metric="ordinal")


METRICS = ("nominal", "ordinal", "interval")


def alpha_from_units(units: Iterable[Sequence[float]], *, metric: str) -> float | None:
    """Krippendorff's alpha; each unit is the list of the values its coders assigned (one value
    per coder who coded the unit).

    As in Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability":

    * units with fewer than 2 values are not pairable and are dropped;
    * coincidences: o_ck = sum over units u of (number of ordered pairs of values (c, k)
      from different coders in u) / (m_u - 1), where m_u is the number of values in u;
    * n_c = sum_k o_ck, n = sum_c n_c;
    * distances: nominal delta2(c, k) = 0 if c == k else 1; interval delta2(c, k) = (c - k) ** 2;
      ordinal, over the distinct values g in sorted order, for c <= k:
      delta2(c, k) = (sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2, symmetric in c and k;
    * alpha = 1 - D_o / D_e = 1 - (n - 1) * sum_ck o_ck delta2(c, k) / sum_ck n_c n_k delta2(c, k).

    Returns None when there are no pairable values or the expected disagreement is 0.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    coincidences: Counter[tuple[float, float]] = Counter()
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        value_counts = Counter(unit)
        for c, n_c in value_counts.items():
            for k, n_k in value_counts.items():
                coincidences[c, k] += n_c * (n_k - (c == k)) / (m - 1)

    marginals: Counter[float] = Counter()
    for (c, _), o in coincidences.items():
        marginals[c] += o
    values = sorted(marginals)
    position = {value: i for i, value in enumerate(values)}
    cumulative = list(accumulate((marginals[v] for v in values), initial=0.0))

    def delta2(c: float, k: float) -> float:
        if metric == "nominal":
            return float(c != k)
        if metric == "interval":
            return float(c - k) ** 2
        low, high = sorted((position[c], position[k]))
        return (cumulative[high + 1] - cumulative[low] - (marginals[c] + marginals[k]) / 2) ** 2

    observed = sum(o * delta2(c, k) for (c, k), o in coincidences.items())
    expected = sum(marginals[c] * marginals[k] * delta2(c, k) for c in values for k in values)
    if expected == 0:  # also the case with no pairable values at all
        return None
    return 1 - (marginals.total() - 1) * observed / expected
