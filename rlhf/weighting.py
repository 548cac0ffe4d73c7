"""Per-pair weights and soft labels for the reward model and DPO (training on consensus).

A ``PreferencePair`` may carry a ``weight`` (how much its annotator's word counts, e.g. from the
studio's annotator-reliability model) and a ``confidence`` (the probability that chosen is truly
better than rejected given every label on the item). A run's ``label_weights`` decides what the
loss does with them:

* ``"none"``: every pair counts the same (weights and confidences ignored);
* ``"weight"``: the loss is the weighted mean Σ wᵢ ℓᵢ / Σ wᵢ, so a pair of weight 0 changes nothing
  and the scale of the weights does not matter;
* ``"soft"``: the pair's confidence c is a soft label. Reward model: ℓ = −[c log σ(d) + (1 − c) log σ(−d)]
  with d = r(chosen) − r(rejected), the Bradley–Terry likelihood of a label that is wrong with
  probability 1 − c (a per-pair flip probability, as in conservative DPO). DPO: each pair enters twice,
  as (chosen, rejected) with weight c and as (rejected, chosen) with weight 1 − c, which is the same
  soft-label loss in expectation over the batch.

``min_confidence`` drops pairs below it before training (pairs without a confidence are kept).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace

from .data import PreferencePair


def select_pairs(pairs: Sequence[PreferencePair], *, mode: str, min_confidence: float = 0.0,
                 duplicate_soft: bool = False) -> list[PreferencePair]:
    """The pairs a run trains on: below-threshold and zero-weight pairs dropped (they would change
    nothing), and with ``duplicate_soft`` (DPO) each soft pair split into its two weighted orders."""
    out = []
    for p in pairs:
        if min_confidence and p.confidence is not None and p.confidence < min_confidence:
            continue
        if mode == "weight" and p.weight <= 0:
            continue
        if mode == "soft" and duplicate_soft:
            c = 1.0 if p.confidence is None else float(p.confidence)
            if c > 0:
                out.append(replace(p, weight=c))
            if c < 1:
                out.append(replace(p, chosen=p.rejected, rejected=p.chosen, weight=1 - c,
                                   confidence=None if p.confidence is None else 1 - c))
            continue
        out.append(p)
    return out


def pair_weights(pairs: Sequence[PreferencePair], mode: str) -> list[float] | None:
    """Per-pair loss weights for ``mode`` ("weight"; "soft" after ``select_pairs(duplicate_soft=True)``)."""
    if mode == "none":
        return None
    return [float(p.weight) for p in pairs]


def soft_targets(pairs: Sequence[PreferencePair]) -> list[float]:
    """The soft label of each pair (its confidence; 1 when it has none)."""
    return [1.0 if p.confidence is None else float(p.confidence) for p in pairs]


def bradley_terry(diff, weights=None, targets=None):
    """Mean Bradley–Terry loss over a batch of score differences d = r(chosen) − r(rejected) (B,):
    −log σ(d), or the soft-label form with ``targets``; a weighted mean with ``weights`` (all-zero
    weights give a zero loss that still has a graph)."""
    import torch.nn.functional as F

    if targets is None:
        losses = -F.logsigmoid(diff)
    else:
        targets = targets.to(diff.dtype)
        losses = -(targets * F.logsigmoid(diff) + (1 - targets) * F.logsigmoid(-diff))
    if weights is None:
        return losses.mean()
    weights = weights.to(diff.dtype)
    return (weights * losses).sum() / weights.sum().clamp(min=1e-12)


def summary(pairs: Sequence[PreferencePair], trained: Sequence[PreferencePair], *, mode: str,
            min_confidence: float) -> dict:
    """What a run's lineage records about its weighting: the mode, how many pairs it kept, and a hash of
    the weights and confidences it used (so two models can be told apart by their labels' weighting)."""
    digest = hashlib.sha256(json.dumps(
        [[round(p.weight, 6), None if p.confidence is None else round(p.confidence, 6)] for p in trained]
    ).encode()).hexdigest()
    return {"label_weights": mode, "min_confidence": min_confidence, "pairs_given": len(pairs),
            "pairs_trained": len(trained), "weights_hash": digest}
