"""How reliable each annotator is, and how sure the labels are, from the pairwise preferences
the rankings imply. Pure Python (stdlib only), tested without a database.

The model (a Dawid–Skene model with two true classes and a tie outcome)
-----------------------------------------------------------------------
A *unit* is one pair of completions (x, y) of one item, oriented by id. Its true preference
t is "x better" (+1) or "y better" (-1), each a priori equally likely (the orientation is
arbitrary). Annotator j, judging a unit, reports

    the true order           with probability a_j
    a tie                    with probability tau_j
    the reversed order       with probability w_j = 1 - a_j - tau_j

independently of the other annotators given t. An annotator's *reliability* is the chance
that a strict preference they state is the true one: q_j = a_j / (a_j + w_j). A careful
annotator at InstructGPT's 72.6% agreement between two annotators has q = 0.836 (q² + (1 − q)²
= 0.726); one who answers at random has q = 0.5; one who inverted the scale has q near 0.

Fitting is expectation-maximisation: the E step gives every unit the posterior
p_u = P(t = +1 | reports) — ties cancel out of it, as they are equally likely under both
orders — and the M step re-estimates (a_j, tau_j, w_j) as expected counts plus a Dirichlet
prior of `prior_strength` pseudo-judgments split as (correct, tie, wrong) = (2/3, 0, 1/3)
of it — a weak pull towards a better-than-chance annotator that keeps a new annotator's
estimate near 2/3 until labels say otherwise. Gold units have a known t and are never
re-estimated; a unit judged by one annotator only tells nothing about that annotator, so it
is left out of the M step (its posterior is still given, from that annotator's reliability).

Intervals: q_j's 95% interval is the central interval of Beta(1 + C_j/d_j, 1 + W_j/d_j), where
C_j and W_j are the expected numbers of correct and reversed strict reports at the fit and d_j
is a design effect for the pairs of one ranking not being independent: one ranking of K
responses gives C(K,2) pairs, and for an annotator who orders at random the number of them that
agree with the truth has variance K(K-1)(2K+5)/72 (Kendall's distance) instead of the binomial
C(K,2)/4, a ratio d = (2K+5)/9 (1 for K = 2, 1.44 for K = 4), averaged over the annotator's
rankings by their pair counts. The interval still treats the truth as known at its posterior,
so it is somewhat narrow when few units have more than two judgments.

In the EM itself the pairs of one ranking are treated as independent units, the usual
simplification.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

Order = Sequence[Sequence[int]]
Unit = tuple[Hashable, int, int]  # (item, x, y) with x < y


@dataclass(frozen=True)
class Judgment:
    unit: Unit
    annotator: Hashable
    relation: int  # +1 x better, 0 tie, -1 y better


@dataclass
class AnnotatorFit:
    reliability: float  # q = a / (a + w)
    low: float
    high: float
    tie_rate: float
    judgments: int  # units judged that informed the fit (shared with another annotator or gold)
    strict: float  # expected strict (non-tie) judgments among them
    gold_judgments: int


@dataclass
class ReliabilityFit:
    annotators: dict[Hashable, AnnotatorFit]
    posterior: dict[Unit, float]  # P(x better than y)
    iterations: int
    converged: bool
    units: int
    gold_units: int
    extra: dict = field(default_factory=dict)

    def confidence(self, unit: Unit, relation: int) -> float | None:
        """Posterior probability that `relation` (+1 x better, -1 y better) is the true order."""
        p = self.posterior.get(unit)
        if p is None or relation == 0:
            return None
        return p if relation > 0 else 1 - p


def _relation(ranks: Mapping[int, int], x: int, y: int) -> int:
    return (ranks[x] < ranks[y]) - (ranks[x] > ranks[y])


def _ranks(order: Order) -> dict[int, int]:
    ranks: dict[int, int] = {}
    better = 0
    for group in order:
        for completion in group:
            ranks[completion] = better + 1
        better += len(group)
    return ranks


def judgments_from_rankings(rankings: Mapping[Hashable, Mapping[Hashable, Order]]) -> list[Judgment]:
    """One judgment per (item, annotator, completion pair that annotator ranked). Empty orders
    ("none acceptable") carry no preference and give none."""
    out = []
    for item, by_annotator in rankings.items():
        for annotator, order in by_annotator.items():
            ranks = _ranks(order)
            for x, y in combinations(sorted(ranks), 2):
                out.append(Judgment((item, x, y), annotator, _relation(ranks, x, y)))
    return out


def gold_units(expected: Mapping[Hashable, Order]) -> dict[Unit, int]:
    """The known true order of every strictly ordered pair of each gold item's expected ranking
    ({item: order}); pairs the expected ranking ties carry no binary truth and are left out."""
    out = {}
    for item, order in expected.items():
        ranks = _ranks(order)
        for x, y in combinations(sorted(ranks), 2):
            if relation := _relation(ranks, x, y):
                out[(item, x, y)] = relation
    return out


def fit(
    judgments: Iterable[Judgment],
    *,
    gold: Mapping[Unit, int] | None = None,
    prior_strength: float = 3.0,
    max_iterations: int = 1000,
    tolerance: float = 1e-6,
) -> ReliabilityFit:
    """Fit the model above. `gold` maps units to their known order (+1 / -1)."""
    gold = dict(gold or {})
    by_unit: dict[Unit, list[tuple[Hashable, int]]] = defaultdict(list)
    for j in judgments:
        by_unit[j.unit].append((j.annotator, j.relation))
    annotators = sorted({a for reports in by_unit.values() for a, _ in reports}, key=repr)
    informative = [u for u, reports in by_unit.items() if u in gold or len({a for a, _ in reports}) >= 2]

    # Start from the majority of strict votes (gold where known).
    posterior: dict[Unit, float] = {}
    for u, reports in by_unit.items():
        if u in gold:
            posterior[u] = 1.0 if gold[u] > 0 else 0.0
        else:
            s = sum(r for _, r in reports)
            posterior[u] = 0.5 + 0.25 * (s > 0) - 0.25 * (s < 0)

    prior = (2 * prior_strength / 3, 0.0, prior_strength / 3)  # correct, tie, wrong
    params: dict[Hashable, tuple[float, float, float]] = {}
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):  # noqa: B007 (read after the loop)
        # M step: expected (correct, tie, wrong) counts per annotator over informative units.
        counts = {a: list(prior) for a in annotators}
        for u in informative:
            p = posterior[u]
            for a, r in by_unit[u]:
                c = counts[a]
                if r == 0:
                    c[1] += 1
                elif r > 0:
                    c[0] += p
                    c[2] += 1 - p
                else:
                    c[0] += 1 - p
                    c[2] += p
        params = {a: _normalise(c) for a, c in counts.items()}
        # E step.
        change = 0.0
        for u, reports in by_unit.items():
            if u in gold:
                continue
            log_odds = 0.0
            for a, r in reports:
                if r:
                    correct, _, wrong = params[a]
                    log_odds += r * (math.log(correct) - math.log(wrong))
            p = _sigmoid(log_odds)
            change = max(change, abs(p - posterior[u]))
            posterior[u] = p
        if change < tolerance:
            converged = True
            break

    result = {}
    informative_set = set(informative)
    pairs_per_ranking: dict[tuple, int] = defaultdict(int)  # (annotator, item) -> judged pairs
    for u in informative_set:
        for who, _ in by_unit[u]:
            pairs_per_ranking[who, u[0]] += 1
    for a in annotators:
        correct = wrong = ties = 0.0
        n = n_gold = 0
        for u in informative_set:
            for who, r in by_unit[u]:
                if who != a:
                    continue
                n += 1
                n_gold += u in gold
                p = posterior[u]
                if r == 0:
                    ties += 1
                elif r > 0:
                    correct, wrong = correct + p, wrong + 1 - p
                else:
                    correct, wrong = correct + 1 - p, wrong + p
        c, t, w = params.get(a, (2 / 3, 0.0, 1 / 3))
        deff = design_effect([m for (who, _), m in pairs_per_ranking.items() if who == a])
        low, high = beta_interval(1 + correct / deff, 1 + wrong / deff)
        result[a] = AnnotatorFit(
            reliability=c / (c + w), low=low, high=high, tie_rate=t, judgments=n,
            strict=correct + wrong, gold_judgments=n_gold,
        )
    return ReliabilityFit(result, posterior, iteration, converged, len(by_unit), sum(u in by_unit for u in gold))


def design_effect(pair_counts: Sequence[int]) -> float:
    """(2K + 5) / 9 averaged over rankings weighted by their pairs, K recovered from the number of
    pairs m = K(K-1)/2 a ranking gave (see the module docstring); 1 with no rankings."""
    total = sum(pair_counts)
    if not total:
        return 1.0
    weighted = 0.0
    for m in pair_counts:
        k = (1 + math.sqrt(1 + 8 * m)) / 2
        weighted += m * max(1.0, (2 * k + 5) / 9)
    return weighted / total


def _normalise(c: Sequence[float]) -> tuple[float, float, float]:
    floor = 1e-6  # keeps logs finite for an annotator who was never wrong (or never right)
    vals = [max(v, floor) for v in c]
    total = sum(vals)
    return vals[0] / total, vals[1] / total, vals[2] / total


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


# ------------------------------------------------------------------ Beta quantiles


def beta_interval(a: float, b: float, level: float = 0.95) -> tuple[float, float]:
    """Central `level` interval of Beta(a, b)."""
    tail = (1 - level) / 2
    return beta_quantile(tail, a, b), beta_quantile(1 - tail, a, b)


def beta_quantile(prob: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = prob, by bisection on the regularised incomplete beta function."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if regularized_beta(mid, a, b) < prob:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by the continued fraction of the incomplete beta function (modified Lentz),
    using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1 - regularized_beta(1 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-14:
            break
    return math.exp(log_front) * f / a


# ------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class FlagRules:
    """When the reliability page flags an annotator (project settings may override)."""

    random_below: float = 0.65  # q's upper bound below this: answers look like coin flips
    inverted_below: float = 0.5  # q's upper bound below this: the scale looks reversed
    too_fast_share: float = 0.25  # median time on task below this share of the project's median
    min_strict: float = 10.0  # no reliability flag on fewer expected strict judgments
    untimed_share: float = 0.5  # at least this share of the rankings carry no time on task (API clients may omit it)


def flags_for(fit: AnnotatorFit | None, *, median_ms: float | None, project_median_ms: float | None,
              rules: FlagRules = FlagRules(), untimed_share: float | None = None) -> list[str]:
    """The annotator's flags. Pace reads timed labels only: `median_ms` is the median over the annotator's
    rankings that carry a time on task (None when none does), so "too fast" says nothing about untimed ones;
    `untimed_share`, the share of their rankings without a time, flags "untimed" from `rules.untimed_share` on,
    so an annotator whose pace cannot be judged is not shown as though it had been."""
    out = []
    if fit is not None and fit.strict >= rules.min_strict:
        if fit.high < rules.inverted_below:
            out.append("likely inverted")
        elif fit.high < rules.random_below:
            out.append("likely random")
    if median_ms is not None and project_median_ms and median_ms < rules.too_fast_share * project_median_ms:
        out.append("too fast")
    if untimed_share is not None and untimed_share >= rules.untimed_share:
        out.append("untimed")
    return out
