"""Active learning's second estimate: what the reward model does not know, apart from what is a coin flip.

``rlhf.judge.pairwise_entropy`` scores a task by the reward model's binary entropy over its pairs. That
entropy is highest where the model is sure the answers are about equally good, and such near-ties are
the labels annotators disagree on most: they teach little (the usual failure of uncertainty sampling
under label noise). This module separates the two kinds of uncertainty with a small ensemble on one
trunk: the reward model's final hidden state at the token its score head reads is kept fixed, and
``k`` linear heads are fitted on bootstrap resamples of the labelled pairs (each a logistic regression
on the difference of the two answers' features, pulled towards the trained head plus a random offset:
randomise-then-optimise, as anchored ensembles, Pearce et al. 2020, and randomised priors, Osband et al. 2018). A
task's score is the BALD mutual information (Houlsby et al. 2011, "Bayesian Active Learning for
Classification and Preference Learning"), averaged over its pairs:

    I(i, j) = H(mean_k p_k) - mean_k H(p_k),   p_k = sigmoid(w_k . (f_i - f_j))

which is high only where the heads disagree (where more labels would change the model), and near 0 on a
pair that every head calls 50/50. Last-layer ensembles of this kind are the cheap end of deep ensembles:
one forward per answer, then seconds of logistic regression on the host.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def bootstrap_heads(diffs: torch.Tensor, prior: torch.Tensor, *, k: int = 8, seed: int = 0,
                    prior_scale: float | None = None, steps: int = 50,
                    groups: Sequence[int] | None = None) -> torch.Tensor:
    """``k`` heads (k, H), each a draw from an approximate posterior over the score head's weight given the
    labelled pairs (randomise-then-optimise: anchored ensembles, Pearce et al. 2020): head k
    minimises

        sum_i softplus(-w . d_i)  over a bootstrap resample of the pairs  +  |w - (prior + s * e_k)|^2 / (2 s^2)

    with ``d_i`` the pairs' feature differences (n, H; chosen minus rejected), e_k standard normal and s =
    ``prior_scale`` (default: the trained head's root-mean-square weight). Where the labels pin a direction
    down the heads agree; where they say nothing the heads keep their prior's spread, so they disagree on
    answers that differ in directions no label has explored. ``groups`` (one id per pair, e.g. its ranking):
    resample whole groups, since a ranking's pairs share answers and are not independent.

    Caveat: the prior is the trained head, itself fitted on these labels, so the labelled directions are
    counted twice and the heads are somewhat overconfident there; the ranking of tasks, which is all active
    learning uses, is what matters."""
    if diffs.ndim != 2 or diffs.shape[0] == 0:
        raise ValueError("bootstrap_heads needs at least one labelled pair's feature difference (n, H)")
    if prior.shape != diffs.shape[1:]:
        raise ValueError(f"the prior head has shape {tuple(prior.shape)}, the features {tuple(diffs.shape[1:])}")
    if k < 2:
        raise ValueError("an ensemble needs k >= 2 heads")
    diffs, prior = diffs.detach().double(), prior.detach().double()
    scale = float(prior_scale) if prior_scale is not None else float(prior.pow(2).mean().sqrt())
    if not scale > 0:
        raise ValueError("the prior's scale must be positive (a trained head of zeros gives none: pass prior_scale)")
    if groups is not None and len(groups) != diffs.shape[0]:
        raise ValueError(f"groups has {len(groups)} ids for {diffs.shape[0]} pairs")
    members: dict[int, list[int]] = {}
    for row, group in enumerate(groups if groups is not None else range(diffs.shape[0])):
        members.setdefault(int(group), []).append(row)
    clusters = list(members.values())
    generator = torch.Generator().manual_seed(seed)
    heads = []
    for _ in range(k):
        drawn = torch.randint(0, len(clusters), (len(clusters),), generator=generator).tolist()
        sample = diffs[[row for c in drawn for row in clusters[c]]]
        centre = prior + scale * torch.randn(prior.shape, generator=generator, dtype=prior.dtype)
        heads.append(_fit_head(sample, centre, scale, steps))
    return torch.stack(heads).float()


def _fit_head(diffs: torch.Tensor, centre: torch.Tensor, scale: float, steps: int) -> torch.Tensor:
    """The MAP head for one resample: mean logistic loss + |w - centre|^2 / (2 n s^2), by L-BFGS."""
    w = centre.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")
    pull = 1.0 / (2 * diffs.shape[0] * scale ** 2)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-(diffs @ w)).mean() + pull * (w - centre).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-12, 1 - 1e-12)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def pairwise_bald(features: torch.Tensor, heads: torch.Tensor) -> float:
    """One task's score: the mean over its answer pairs (i < j) of the ensemble's mutual information about
    which of the two is better (nats; 0 when every head agrees, at most ln 2). ``features`` (n, H) are the
    task's answers' features, ``heads`` (k, H)."""
    n = features.shape[0]
    if n < 2:
        return 0.0
    rewards = features.float() @ heads.float().T  # (n, k): each head's reward of each answer
    i, j = torch.triu_indices(n, n, offset=1)
    p = torch.sigmoid(rewards[i] - rewards[j])  # (pairs, k)
    info = _binary_entropy(p.mean(dim=1)) - _binary_entropy(p).mean(dim=1)
    return float(info.clamp(min=0).mean())


def ensemble_scores(task_features: Sequence[torch.Tensor], labelled_diffs: torch.Tensor, prior: torch.Tensor, *,
                    k: int = 8, seed: int = 0, groups: Sequence[int] | None = None) -> list[float]:
    """BALD scores of tasks (each task's answers' features, (n_t, H)) under ``k`` bootstrap heads fitted on
    ``labelled_diffs`` (chosen minus rejected features of the pairs labelled so far; ``groups``: their
    rankings, resampled whole)."""
    heads = bootstrap_heads(labelled_diffs, prior, k=k, seed=seed, groups=groups)
    return [pairwise_bald(f, heads) for f in task_features]


def head_weight(model) -> torch.Tensor:
    """The reward model's score head as a vector (H,): the prior the bootstrap heads start from."""
    weight = model.score.weight if hasattr(model, "score") else None
    if weight is None or weight.shape[0] != 1:
        raise ValueError("the reward model has no single-output `score` head to start the ensemble from")
    return weight.detach()[0].float().cpu()


def probe_head(diffs: torch.Tensor, *, l2: float = 10.0, steps: int = 100) -> torch.Tensor:
    """A Bradley–Terry head (H,) fitted to convergence on labelled pairs' feature differences ``diffs`` (n, H;
    chosen minus rejected): the minimiser of mean softplus(-w . d_i) + l2 |w|^2 / (2 n), by L-BFGS from zero.
    The probe that ``probe_scores`` asks; fitted in seconds, so it can be refitted on every label so far."""
    if diffs.ndim != 2 or diffs.shape[0] == 0:
        raise ValueError("probe_head needs at least one labelled pair's feature difference (n, H)")
    if not l2 > 0:
        raise ValueError("probe_head's l2 must be positive (an unregularised head diverges on separable pairs)")
    diffs = diffs.detach().double()
    w = torch.zeros(diffs.shape[1], dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")
    pull = l2 / (2 * diffs.shape[0])

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.softplus(-(diffs @ w)).mean() + pull * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().float()


def standardised_probe(diffs: torch.Tensor, *, l2: float = 10.0) -> torch.Tensor:
    """``probe_head`` fitted on the differences with each feature divided by its root mean square over them (left
    as it is where no pair differs), so that the penalty weighs every direction the labels explored the same;
    returned as a head (H,) on the features as they are (the fitted weights divided by the same scale)."""
    if diffs.ndim != 2 or diffs.shape[0] == 0:
        raise ValueError("a probe needs at least one labelled pair's feature difference (n, H)")
    rms = diffs.float().pow(2).mean(dim=0).sqrt()
    scale = torch.where(rms > 0, rms, torch.ones_like(rms))
    return probe_head(diffs.float() / scale, l2=l2) / scale


def probe_scores(task_features: Sequence[torch.Tensor], labelled_diffs: torch.Tensor, *,
                 l2: float = 10.0) -> list[float]:
    """Tasks' uncertainty under a linear probe on frozen features: each task's mean binary entropy (nats) of
    sigmoid(w . (f_i - f_j)) over its answer pairs, w = ``probe_head`` fitted on every labelled pair so far.

    Why, beside the reward model's own entropy (rlhf.judge.pairwise_entropy): at tens of rankings a reward model
    trained for one epoch is still near chance (bench/label_quality.py: 0.50-0.54 held-out accuracy after 40
    rankings), so what it is unsure of says little; a head fitted to convergence on the same labels, on the
    trunk's frozen features, already orders held-out pairs better (docs/QUALITY.md, "Active learning"). Each
    feature is divided by its root mean square over the labelled differences (left as it is where no labelled
    pair differs), so the probe's penalty weighs every direction the labels explored the same."""
    if not task_features:
        return []
    if labelled_diffs.ndim != 2 or labelled_diffs.shape[0] == 0:
        raise ValueError("probe_scores needs at least one labelled pair's feature difference (n, H)")
    head = standardised_probe(labelled_diffs, l2=l2)
    out = []
    for f in task_features:
        n = f.shape[0]
        if n < 2:
            out.append(0.0)
            continue
        rewards = f.float() @ head
        i, j = torch.triu_indices(n, n, offset=1)
        out.append(float(_binary_entropy(torch.sigmoid(rewards[i] - rewards[j]).double()).mean()))
    return out
