"""Length-controlled win-rate, in pure Python (the web process imports no numpy).

A blind evaluation's raw win-rate rewards whichever side writes longer answers, because people (and reward
models) tend to prefer the longer of two answers. Following length-controlled AlpacaEval (Dubois et al.
2024), the outcome of each judgment (1 win, 1/2 tie, 0 loss for the candidate) is modelled as

    P(candidate wins) = sigmoid(alpha + beta * x),   x = tanh(d / sd(d)),

where d is the candidate's answer length minus the baseline's, in characters, and sd(d) the standard
deviation of d over the evaluation's tasks (AlpacaEval's tanh keeps a few very long answers from steering
the fit). The length-controlled win-rate is the model read at zero length difference: sigmoid(alpha).
When every length difference is zero, x is 0 everywhere and sigmoid(alpha) is the raw win-rate.

The two parameters are fitted by Newton's method on the (quasi-)binomial log-likelihood, grouped by
evaluation task (each task: its x, the sum of its outcomes, the number of judgments), with step halving.
The 95% interval is a percentile bootstrap that resamples whole evaluation tasks and refits, like the raw
interval in ``labelapp.selectors.stats.win_rate``.

Separation: when length alone orders the outcomes (every task where the candidate lost at least once has a
smaller x than every task where it won at least once, or the reverse), the maximum-likelihood slope is
infinite. The slope therefore carries a weak ridge penalty, ``RIDGE / 2 * beta**2`` (a normal prior with
standard deviation about 32 on the slope of x, which lies in (-1, 1)), so the fit stays finite; its effect on
an unseparated fit is below 0.001 on the rate. The result says ``"separated": true`` and the studio says
that length decides every judgment, so the controlled rate rests on the prior. When every outcome is the
same (all wins, or all losses) no finite intercept fits: the controlled rate is then the raw rate (1 or 0),
also flagged ``separated``. The intercept is never penalised.
"""
from __future__ import annotations

import math
import random
from functools import lru_cache

RIDGE = 1e-3
MAX_ITER = 60
TOL = 1e-9
BOOTSTRAP_TOL = 1e-6  # a resample's rate to about 1e-7: far below the interval's own resolution

Row = tuple[float, float, float]  # (x, sum of outcomes, number of judgments)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _evaluate(rows, a: float, b: float, ridge: float):
    """Penalised log-likelihood, gradient and negative Hessian at (a, b) (the hot loop of the bootstrap:
    one exp per row, no function calls)."""
    exp, log1p = math.exp, math.log1p
    ll = -0.5 * ridge * b * b
    ga, gb = 0.0, -ridge * b
    haa = hab = 0.0
    hbb = ridge
    for x, s, n in rows:
        eta = a + b * x
        if eta >= 0:
            e = exp(-eta)
            p, softplus = 1.0 / (1.0 + e), eta + log1p(e)
        else:
            e = exp(eta)
            p, softplus = e / (1.0 + e), log1p(e)
        ll += s * eta - n * softplus  # s log p + (n - s) log(1 - p)
        r = s - n * p
        ga += r
        gb += r * x
        v = n * p * (1.0 - p)
        haa += v
        hab += v * x
        hbb += v * x * x
    return ll, ga, gb, haa, hab, hbb


def logistic_fit(rows: list[Row], weights: list[float] | None = None, *, ridge: float = RIDGE,
                 start: tuple[float, float] = (0.0, 0.0), tol: float = TOL) -> tuple[float, float]:
    """(alpha, beta) maximising sum_w [s log p + (n - s) log(1 - p)] - ridge/2 beta^2, p = sigmoid(alpha + beta x).

    ``weights`` (a bootstrap's multiplicities) scale each row's outcomes and judgments. The caller makes sure
    the outcomes are not all equal (then alpha is infinite, see the module docstring).
    """
    if weights is not None:
        rows = [(x, s * w, n * w) for (x, s, n), w in zip(rows, weights) if w]
    a, b = start
    ll, ga, gb, haa, hab, hbb = _evaluate(rows, a, b, ridge)
    for _ in range(MAX_ITER):
        det = haa * hbb - hab * hab
        if det <= 1e-300:  # x constant and no ridge: only the intercept moves
            da, db = (ga / haa if haa > 0 else 0.0), 0.0
        else:
            da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        if abs(da) < tol and abs(db) < tol:
            a, b = a + da, b + db  # quadratic convergence: this last step leaves an error of about tol**2
            break
        step = 1.0
        while True:
            cand = _evaluate(rows, a + step * da, b + step * db, ridge)
            if cand[0] >= ll - 1e-12 or step < 1e-8:
                break
            step /= 2
        a, b = a + step * da, b + step * db
        ll, ga, gb, haa, hab, hbb = cand
    return a, b


def covariate(differences: list[float]) -> list[float]:
    """x = tanh(d / sd(d)) (population sd over the given differences; all 0 when they are all equal)."""
    n = len(differences)
    if not n:
        return []
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / n)
    if sd == 0:
        return [0.0] * n
    return [math.tanh(d / sd) for d in differences]


def separation(rows: list[Row]) -> str | None:
    """Why the unpenalised fit would diverge: "all_same" (every outcome the same), "length" (the length
    covariate orders the outcomes), or None."""
    win_x = [x for x, s, n in rows if s > 0]
    loss_x = [x for x, s, n in rows if s < n]
    if not win_x or not loss_x:
        return "all_same"
    if len({x for x, _, _ in rows}) < 2:
        return None  # no length information: the slope stays 0
    if max(loss_x) <= min(win_x) or max(win_x) <= min(loss_x):
        return "length"
    return None


def length_controlled_win_rate(outcomes: list[float], differences: list[float], *, groups: list | None = None,
                               resamples: int = 2000, seed: int = 0) -> dict:
    """The length-controlled win-rate of the candidate with a 95% bootstrap interval over groups.

    outcomes: 1 win, 0.5 tie, 0 loss; differences: candidate minus baseline answer length (characters), one per
    outcome; groups: the evaluation task of each outcome (its judgments share one length difference). Returns
    ``win_rate`` (sigmoid(alpha)), ``low``/``high``, ``n``, ``items``, ``slope`` (beta, per unit of x),
    ``separated`` and ``separation`` (see ``separation``); ``win_rate`` is None without outcomes.
    """
    n = len(outcomes)
    if len(differences) != n or (groups is not None and len(groups) != n):
        raise ValueError(f"{len(differences)} length differences and {len(groups or [])} group keys for {n} outcomes")
    if not n:
        return {"win_rate": None, "low": None, "high": None, "n": 0, "items": 0, "slope": None, "separated": False,
                "separation": None}
    items: dict = {}
    for key, value, diff in zip(groups if groups is not None else range(n), outcomes, differences):
        entry = items.setdefault(key, [float(diff), 0.0, 0.0])
        if entry[0] != float(diff):
            raise ValueError(f"the judgments of one task must share its length difference (task {key!r})")
        entry[1] += value
        entry[2] += 1
    keys = sorted(items)
    xs = covariate([items[k][0] for k in keys])
    rows = tuple((x, items[k][1], items[k][2]) for x, k in zip(xs, keys))
    return dict(_fit_with_interval(rows, resamples, seed), n=n, items=len(rows))


@lru_cache(maxsize=256)
def _fit_with_interval(rows: tuple[Row, ...], resamples: int, seed: int) -> dict:
    """Point estimate and percentile bootstrap (cached: the studio polls)."""
    rate, alpha, beta = _rate(list(rows), None)
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        weights = [0.0] * len(rows)
        for i in rng.choices(range(len(rows)), k=len(rows)):
            weights[i] += 1.0
        start = (alpha, beta) if alpha is not None else (0.0, 0.0)
        draws.append(_rate(list(rows), weights, start=start, tol=BOOTSTRAP_TOL)[0])
    draws.sort()
    why = separation(list(rows))
    return {"win_rate": rate, "low": draws[int(0.025 * resamples)], "high": draws[min(resamples - 1, int(0.975 * resamples))],
            "slope": beta, "separated": why is not None, "separation": why}


def _rate(rows: list[Row], weights: list[float] | None, start: tuple[float, float] = (0.0, 0.0), tol: float = TOL):
    """(sigmoid(alpha), alpha, beta); all wins / all losses give (1, None, None) / (0, None, None)."""
    chosen = [r for r, w in zip(rows, weights or [1.0] * len(rows)) if w]
    total, count = sum(s for _, s, _ in chosen), sum(n for _, _, n in chosen)
    if total == count or total == 0:
        return (1.0 if total else 0.0), None, None
    alpha, beta = logistic_fit(rows, weights, start=start, tol=tol)
    return _sigmoid(alpha), alpha, beta
