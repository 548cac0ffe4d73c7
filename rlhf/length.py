"""Length bias of reward models: held-out diagnostics, and ODIN's two-head loss that separates length
from quality.

Length, everywhere in the studio, is the **answer's length in characters** (the completion text alone:
not the prompt, not the chat template, not tokens). Characters need no tokenizer, so the web process
(labelapp's length-controlled win-rate) and this library measure the same thing.

Diagnostics (``length_diagnostics``) of a reward model on held-out preference pairs:

* ``eval/pairwise_accuracy`` — share of pairs with r(chosen) > r(rejected) (a tie counts one half);
* ``eval/accuracy_chosen_longer`` / ``eval/accuracy_chosen_shorter`` — the same on the pairs whose chosen
  answer is the longer / the shorter one (pairs of equal length count only in the overall accuracy);
* ``eval/prefers_longer`` — share of the pairs of unequal length where the model scores the longer answer
  higher (a tie counts one half): 0.5 is length-blind, 1.0 always prefers the longer answer;
* ``eval/longer_wins_baseline`` — accuracy of the rule "the longer answer wins" on all pairs (equal
  lengths count one half): the accuracy a pure length detector gets;
* ``eval/reward_length_corr`` — Pearson correlation of the reward with the answer's length over every
  scored answer (chosen and rejected alike).

A plain reward model trained on human preferences usually shows accuracy_chosen_longer well above
accuracy_chosen_shorter and prefers_longer above the longer_wins_baseline share of longer-chosen pairs:
it has learnt length as a shortcut. See docs/RLHF.md ("Length bias").

ODIN (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF", ICML; arXiv:2402.07319):
two linear heads read the same last hidden state, a quality head q and a length head l. Training minimises

    -log sigmoid((q_c + l_c) - (q_r + l_r) [- margin])                 Bradley-Terry on the sum
    + length_weight * (|corr(q, L)| + 1 - corr(l, L))                   q blind to length, l all length
    + orthogonal_weight * |cos(w_q, w_l)|                               the heads read different directions

with the correlations taken over the batch's answers (chosen and rejected) and L their lengths (q's spread
held fixed in the gradient of corr(q, L), whose Pearson gradient vanishes at +-1). Only q
is kept: the saved model is a plain one-label reward model whose score head is the quality head, so
PPO, the evaluation and ``rlhf.reward.score`` use it unchanged.

PoE, a product of experts with a length-only expert (the debiasing of Clark et al. 2019, "Don't Take the
Easy Way Out: Ensemble Based Methods for Avoiding Known Dataset Biases", with the bias expert of Shen et
al. 2023, "Loose lips sink ships: Mitigating Length Bias in Reinforcement Learning from Human Feedback",
reduced to the length itself): training minimises

    -log sigmoid((q_c + w log(1 + L_c)) - (q_r + w log(1 + L_r)) [- margin])

with w fitted beforehand and then held fixed, as Clark et al. train their bias-only model first: w is the
one-parameter logistic regression of the training labels on log(1 + L_c) - log(1 + L_r)
(``fit_length_expert``; a unit ridge keeps it finite when the chosen answer is always the longer). Whatever
length explains of the labels the expert takes, so q is not pushed to learn length; only q is kept, as with
ODIN. (Learning w along with the model did not work on a tiny model: the model learnt length faster than a
single weight on a small input did.)

Length balancing (``length_balance``; the data-side intervention of Singhal et al. 2023, "A Long Way to Go:
Investigating Length Correlations in RLHF", arXiv:2310.03716, who balance the preference data so that length
no longer predicts the label; here by reweighting instead of dropping pairs): the training pairs of unequal
length are put in ``bins`` groups of equal size (at most one per two pairs) by |log(1 + L_c) - log(1 + L_r)|,
and in each group the pairs
whose chosen answer is the longer and those whose chosen answer is the shorter are scaled to the same total
weight (half the group's), so that within every band of length difference, length says nothing about which
answer was chosen and the loss gives it no gradient on average. A group with pairs of one direction only has
nothing to balance them with and is dropped (weight 0); pairs of equal length keep their weight. The reward
model itself is unchanged (one head, plain Bradley-Terry with these per-pair weights).

Post-hoc length calibration (``fit_length_calibration``; after Huang et al. 2024, "Post-hoc Reward Calibration:
A Case Study on Length Bias", arXiv:2409.17407): after training, the reward becomes r - beta * f(L), beta
fitted on training pairs so that the calibrated reward prefers the longer answer no more often than the
labels do. It works on top of any of the controls above; the trained model carries it in its config
(``CONFIG_KEY``) and ``rlhf.reward.score`` and PPO's token-id reward apply it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

EPS = 1e-8


def pearson(x: torch.Tensor, y: torch.Tensor, *, fixed_scale: bool = False) -> torch.Tensor:
    """Pearson correlation of two (N,) tensors; 0 (not NaN) when either is constant. Differentiable.

    ``fixed_scale``: the same value, but x's spread is held constant in the gradient (detached), so that the
    gradient with respect to x does not vanish when |corr| nears 1 (Pearson's does: +-1 is its extremum)."""
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    x_norm = x.pow(2).sum().sqrt()
    if fixed_scale:
        x_norm = x_norm.detach()
    return (x * y).sum() / (x_norm * y.pow(2).sum().sqrt() + EPS)


def _share(wins: torch.Tensor, ties: torch.Tensor) -> float | None:
    """Mean of wins + ties/2 over a boolean selection, None when it is empty."""
    if wins.numel() == 0:
        return None
    return float((wins.double() + 0.5 * ties.double()).mean())


def length_diagnostics(chosen_rewards, rejected_rewards, chosen_lengths, rejected_lengths) -> dict[str, float | None]:
    """The held-out length diagnostics (see the module docstring) from per-pair rewards and answer lengths.

    All four arguments are (N,) sequences in pair order; lengths in characters. Values that are undefined
    (no pair of that kind, a constant reward) are None, so the result stays valid JSON.
    """
    rc, rr = torch.as_tensor(chosen_rewards, dtype=torch.float64), torch.as_tensor(rejected_rewards, dtype=torch.float64)
    lc, lr = torch.as_tensor(chosen_lengths, dtype=torch.float64), torch.as_tensor(rejected_lengths, dtype=torch.float64)
    if not (len(rc) == len(rr) == len(lc) == len(lr)):
        raise ValueError("one reward and one length per chosen and rejected answer")
    n = len(rc)
    if n == 0:
        return {"eval/pairs": 0}
    right, tie = rc > rr, rc == rr
    longer, shorter = lc > lr, lc < lr
    unequal = longer | shorter
    # The longer answer's reward against the shorter's, on pairs of unequal length.
    r_long = torch.where(longer, rc, rr)[unequal]
    r_short = torch.where(longer, rr, rc)[unequal]
    rewards, lengths = torch.cat([rc, rr]), torch.cat([lc, lr])
    corr = None
    if rewards.std() > 0 and lengths.std() > 0:
        corr = float(pearson(rewards, lengths))
    return {
        "eval/pairwise_accuracy": _share(right, tie),
        "eval/accuracy_chosen_longer": _share(right[longer], tie[longer]),
        "eval/accuracy_chosen_shorter": _share(right[shorter], tie[shorter]),
        "eval/prefers_longer": _share(r_long > r_short, r_long == r_short),
        "eval/longer_wins_baseline": _share(longer, lc == lr),
        "eval/reward_length_corr": corr,
        "eval/pairs": n,
        "eval/pairs_chosen_longer": int(longer.sum()),
        "eval/pairs_chosen_shorter": int(shorter.sum()),
        "eval/mean_length_chosen": float(lc.mean()),
        "eval/mean_length_rejected": float(lr.mean()),
    }


def answer_lengths(texts: Sequence[str]) -> list[int]:
    """The length measure of the diagnostics: characters of each answer."""
    return [len(t) for t in texts]


# ------------------------------------------------------------------------------------------------- ODIN
def odin_loss(quality: torch.Tensor, length: torch.Tensor, lengths: torch.Tensor, w_quality: torch.Tensor,
              w_length: torch.Tensor, *, length_weight: float, orthogonal_weight: float,
              margin: torch.Tensor | None = None, weights: torch.Tensor | None = None,
              targets: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ODIN's loss for one batch (module docstring).

    quality, length, lengths: (2B,) with the B chosen answers first, then the B rejected ones (the order
    of TRL's preference collator); w_quality, w_length: the two heads' weight vectors (H,) or (1, H);
    margin, weights, targets: (B,) or None (per-pair weights and soft labels, rlhf.weighting). Returns the
    loss and its parts (detached) for logging.
    """
    from .weighting import bradley_terry

    total = quality + length
    chosen, rejected = total.chunk(2)
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    rank = bradley_terry(diff, weights, targets)
    corr_q, corr_l = pearson(quality, lengths, fixed_scale=True), pearson(length, lengths)
    cosine = F.cosine_similarity(w_quality.reshape(1, -1).float(), w_length.reshape(1, -1).float(), eps=EPS)[0]
    loss = rank + length_weight * (corr_q.abs() + 1.0 - corr_l) + orthogonal_weight * cosine.abs()
    parts = {"odin/loss_rank": rank, "odin/quality_length_corr": corr_q, "odin/length_head_corr": corr_l,
             "odin/head_cosine": cosine}
    return loss, {k: v.detach() for k, v in parts.items()}


# -------------------------------------------------------------------------------------------------- PoE
def fit_length_expert(chosen_lengths, rejected_lengths, *, weights=None, targets=None, ridge: float = 1.0,
                      iterations: int = 50) -> float:
    """w maximising sum_i c_i [t_i log sigmoid(w d_i) + (1 - t_i) log sigmoid(-w d_i)] - ridge/2 * w^2, with
    d_i = log(1 + L_chosen) - log(1 + L_rejected): how strongly length alone predicts the training labels (0
    when it does not). ``weights`` c_i and soft labels ``targets`` t_i are the pairs' own (rlhf.weighting;
    default 1 and 1), so a pair that weighs nothing in the reward model weighs nothing here. Newton in 1-D."""
    d = torch.log1p(torch.as_tensor(chosen_lengths, dtype=torch.float64)) - torch.log1p(
        torch.as_tensor(rejected_lengths, dtype=torch.float64))
    c = torch.ones_like(d) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    t = torch.ones_like(d) if targets is None else torch.as_tensor(targets, dtype=torch.float64)
    w = 0.0
    for _ in range(iterations):
        p = torch.sigmoid(w * d)
        grad = float((c * d * (t - p)).sum()) - ridge * w
        hess = float((c * d * d * p * (1 - p)).sum()) + ridge
        step = grad / hess
        w += step
        if abs(step) < 1e-10:
            break
    return w


def poe_loss(quality: torch.Tensor, weight: torch.Tensor, lengths: torch.Tensor, *,
             margin: torch.Tensor | None = None, weights: torch.Tensor | None = None,
             targets: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Product of experts with a length-only expert (module docstring): Bradley-Terry on q + w * log(1 + L).

    quality, lengths: (2B,) chosen first, then rejected; weight: the expert's scalar w; weights, targets:
    per-pair weights and soft labels (rlhf.weighting). Returns the loss and its parts (detached) for logging.
    """
    from .weighting import bradley_terry

    total = quality + weight * torch.log1p(lengths.float())
    chosen, rejected = total.chunk(2)
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    loss = bradley_terry(diff, weights, targets)
    parts = {"poe/length_weight": weight, "poe/quality_length_corr": pearson(quality, lengths)}
    return loss, {k: v.detach() for k, v in parts.items()}


# ---------------------------------------------------------------------------------------- balancing
def length_balance(chosen_lengths, rejected_lengths, *, weights=None, bins: int = 4) -> tuple[list[float], dict]:
    """Per-pair factors that balance the chosen-longer and chosen-shorter pairs within ``bins`` equal-count
    bands of |log(1 + L_c) - log(1 + L_r)| (module docstring), and a summary for the run's metadata.

    ``weights``: the pairs' own weights (default 1), which the balance takes into account, so the balanced
    weight of a pair is its weight times its factor. Returns (factors, summary); the summary counts the pairs
    of each direction, the pairs dropped (a band with one direction only) and the weighted share of
    chosen-longer pairs before and after."""
    if bins < 1:
        raise ValueError(f"bins must be 1 or more (got {bins}).")
    chosen = [float(x) for x in chosen_lengths]
    rejected = [float(x) for x in rejected_lengths]
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen lengths but {len(rejected)} rejected ones.")
    w = [1.0] * len(chosen) if weights is None else [float(x) for x in weights]
    if len(w) != len(chosen):
        raise ValueError(f"{len(w)} weights for {len(chosen)} pairs.")
    d = [math.log1p(c) - math.log1p(r) for c, r in zip(chosen, rejected)]
    factors = [1.0] * len(d)
    unequal = sorted((i for i in range(len(d)) if d[i] != 0.0), key=lambda i: (abs(d[i]), i))
    groups = max(1, min(bins, len(unequal) // 2))  # a band needs two pairs to hold both directions
    dropped = 0
    for g in range(groups):  # equal-count bands (the later ones one pair larger when it does not divide)
        band = unequal[g * len(unequal) // groups:(g + 1) * len(unequal) // groups]
        longer = sum(w[i] for i in band if d[i] > 0)
        shorter = sum(w[i] for i in band if d[i] < 0)
        for i in band:
            side = longer if d[i] > 0 else shorter
            if longer <= 0 or shorter <= 0:
                factors[i] = 0.0
                dropped += 1
            else:
                factors[i] = (longer + shorter) / 2 / side

    def longer_share(f):
        total = sum(w[i] * f[i] for i in unequal)
        return None if total <= 0 else sum(w[i] * f[i] for i in unequal if d[i] > 0) / total

    summary = {"bins": groups, "pairs_chosen_longer": sum(1 for x in d if x > 0),
               "pairs_chosen_shorter": sum(1 for x in d if x < 0), "pairs_equal_length": sum(1 for x in d if x == 0),
               "pairs_dropped": dropped, "chosen_longer_share_before": longer_share([1.0] * len(d)),
               "chosen_longer_share_after": longer_share(factors)}
    return factors, summary


# -------------------------------------------------------------------------------------- calibration
CALIBRATION_SCALES = ("chars", "log_chars")


def length_feature(lengths, scale: str = "chars") -> torch.Tensor:
    """The length term of a calibration: characters, or log(1 + characters) (float64)."""
    if scale not in CALIBRATION_SCALES:
        raise ValueError(f"unknown length scale {scale!r}; expected one of {', '.join(CALIBRATION_SCALES)}.")
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    return lengths if scale == "chars" else torch.log1p(lengths)


def fit_length_calibration(chosen_rewards, rejected_rewards, chosen_lengths, rejected_lengths, *,
                           scale: str = "chars") -> dict:
    """A post-hoc length calibration of a trained reward model (in the spirit of Huang et al. 2024,
    "Post-hoc Reward Calibration: A Case Study on Length Bias", arXiv:2409.17407, who subtract the reward's
    estimated length trend): the slope ``beta`` >= 0 such that the calibrated reward ``r - beta * f(L)``
    (f: ``length_feature``) prefers the longer answer of the calibration pairs no more often than their labels
    do. Where Huang et al. remove the whole trend (true quality assumed independent of length), this keeps as
    much length preference as the labellers showed and removes only the excess the model learnt on top.

    On the pairs of unequal length, with d = r_longer - r_shorter and D = f(L_longer) - f(L_shorter) > 0, the
    calibrated model prefers the longer answer iff d / D > beta, so beta is the k+1-th largest of the ratios
    d / D, k = floor(share of pairs whose chosen answer is the longer x pairs): closed form, no search. beta is
    0 when the model prefers the longer answer no more often than the labels already.

    Returns {"beta", "scale", "pairs" (of unequal length), "labels_prefer_longer", "model_prefers_longer"
    (before), "calibrated_prefers_longer"}."""
    rc, rr = torch.as_tensor(chosen_rewards, dtype=torch.float64), torch.as_tensor(rejected_rewards, dtype=torch.float64)
    fc, fr = length_feature(chosen_lengths, scale), length_feature(rejected_lengths, scale)
    if not (len(rc) == len(rr) == len(fc) == len(fr)):
        raise ValueError("one reward and one length per chosen and rejected answer")
    longer = fc > fr
    unequal = longer | (fc < fr)
    n = int(unequal.sum())
    if n == 0:
        raise ValueError("a length calibration needs pairs whose answers differ in length; every pair given has "
                         "two answers of the same length.")
    d = torch.where(longer, rc - rr, rr - rc)[unequal]
    gap = torch.where(longer, fc - fr, fr - fc)[unequal]
    ratios = torch.sort(d / gap, descending=True).values
    labels = float(longer[unequal].double().mean())
    k = math.floor(labels * n)
    before = float((d > 0).double().mean() + 0.5 * (d == 0).double().mean())
    beta = 0.0 if before <= labels or k >= n else max(0.0, float(ratios[k]))
    after = d - beta * gap
    return {"beta": beta, "scale": scale, "pairs": n, "labels_prefer_longer": labels, "model_prefers_longer": before,
            "calibrated_prefers_longer": float((after > 0).double().mean() + 0.5 * (after == 0).double().mean())}


def calibrate(rewards, lengths, calibration: dict | None) -> torch.Tensor:
    """Rewards (N,) minus the calibration's length term (``fit_length_calibration``); unchanged when None or
    beta is 0. Lengths in characters; the result keeps the rewards' device and (floating) dtype."""
    rewards = torch.as_tensor(rewards)
    if not calibration or not calibration.get("beta"):
        return rewards
    term = calibration["beta"] * length_feature(lengths, calibration.get("scale", "chars"))
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float64
    return (rewards.double() - term.to(rewards.device)).to(dtype)


# Where a calibrated reward model carries its calibration: an attribute of its transformers config, so that it
# is saved in config.json with the weights and comes back with every load (merged or as an adapter's base).
CONFIG_KEY = "rlhf_length_calibration"


def calibration_of(model) -> dict | None:
    """The length calibration a (reward) model carries, or None."""
    config = getattr(model, "config", None)
    value = getattr(config, CONFIG_KEY, None) if config is not None else None
    return value if isinstance(value, dict) and value.get("beta") else None
