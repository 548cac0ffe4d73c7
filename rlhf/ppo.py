"""Proximal Policy Optimization from human feedback (InstructGPT step 3), in one readable module.

    python -m rlhf ppo --config ppo.json            # or: python -m rlhf.ppo --config ppo.json

The algorithm is PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") applied to
language models as in Ziegler et al. 2019, Stiennon et al. 2020 and Ouyang et al. 2022 (InstructGPT):

    for update in 1..U:
        1. rollouts: sample a response y ~ pi(.|x) for B prompts x; cut each response after its first EOS
        2. scores: s = RM(x, y) at the last token; penalise responses without EOS (and length, length_penalty); normalise/clip s
        3. per-token rewards: r_t = -beta * kl_t, plus s on the last response token,
           kl_t = log pi(y_t|.) - log pi_ref(y_t|.)   (the "k1" estimator of KL(pi || pi_ref))
        4. values V(s_t) from the value model; GAE(gamma, lambda) advantages and returns; whiten advantages
        5. for ppo_epochs: for shuffled minibatches: clipped policy-ratio loss + vf_coef * clipped value
           loss (+ ptx_coef * SFT loss on demonstrations); clip the gradient norm; step AdamW;
           stop early when approx_kl exceeds target_kl
        6. adaptive KL: beta *= 1 + clip(KL / kl_target - 1, -0.2, 0.2) * B / kl_horizon (Ziegler et al.)

Where this differs from the paper (Schulman et al.) and why:

* The environment is one "bandit" episode per prompt: the action is a token, the episode ends at EOS
  (or after ``max_new_tokens``); the only non-KL reward arrives on the last token.
* KL estimator: per-token ``k1 = log pi - log pi_ref`` on the sampled tokens, for the reward penalty and
  for ``objective/kl`` (summed over the response, averaged over the batch). ``policy/approx_kl`` (the
  early-stop signal) is the ``k3`` estimator ``(ratio - 1) - log ratio`` between the rollout policy and the
  current policy, as in CleanRL.
* Value function: a separate value model initialised from the reward model (as InstructGPT does: its
  score head already predicts the return at the last token, and policy and value gradients do not fight
  over one trunk). With LoRA it is a *second LoRA adapter on the reward model's own weights* (with the
  score head as a trainable copy): adapter on = value model, adapter off = the frozen reward model, so the
  value model costs no second copy of the weights. Without a reward model (``reward_fn``), the value model
  starts from the policy's checkpoint with a fresh scalar head. ``value_head: "shared"`` instead puts a
  scalar head (``ValueHead``, zero-initialised) on the policy's own final hidden states, as TRL's earlier
  ``AutoModelForCausalLMWithValueHead`` did: the values come out of the pass that computes the log-probs, so
  a rollout makes one trunk pass fewer and a training micro-step one forward and backward fewer, and the
  value loss (weighted by ``vf_coef``) trains the policy's trunk too.
* The reference policy is the SFT model: with LoRA, the policy with its adapter disabled (no second
  copy); with full fine-tuning a frozen copy.
* Reward normalisation uses running mean/std over all scores seen so far (InstructGPT instead offsets
  the reward model once so SFT demonstrations score 0). Missing-EOS penalty: subtracted from the score.
* Advantages are whitened over the valid tokens of the whole rollout batch; the losses are token means
  over each micro-batch. Values and the value loss use 0.5 * max(clipped, unclipped) squared error.
* Early stop checks approx_kl after every minibatch (CleanRL checks after each epoch).
* Dropout is switched off in every model (otherwise the ratio is not 1 before the first step).
* PPO-ptx mixes a weighted SFT loss on *demonstrations* (InstructGPT mixes pretraining data).
* Log-probs are computed at the sampling temperature (logits / temperature), so the ratio compares the
  distributions that actually produced the samples.
* The learning rate has a linear warm-up (``warmup_ratio``) and decays linearly to 0 over the updates.
* Adam epsilon is 1e-5 (CleanRL, TRL).

How an update is computed (issue 15; the previous implementation is kept in rlhf/ppo_legacy.py for the
equivalence test and bench/engine_counts.py):

* Log-probs and entropy come from the trunk's hidden states at the response positions, through the output
  head a chunk of positions at a time (``token_logprobs_from_hidden``): no (B, R, V) fp32 tensor; in
  training a custom autograd function recomputes each chunk's logits in backward instead of saving them.
* The reward model scores token ids built on the device (query + answer + the chat template's closing ids)
  when it shares the policy's tokenizer and template (``reward_token_suffix`` checks), else the text path.
* Statistics stay on the device and are read once per update; micro-batches keep the rollout's width (no
  sync to trim padding); GAE is one product with a discount matrix; boolean indexing is avoided.
* AdamW runs fused on CUDA and CPU (foreach kernels elsewhere); parameters that are not fp32 (full
  fine-tuning in bf16) get fp32 master weights (``MasterAdamW``); autocast is used only over fp32 weights.
* RLOO and GRPO (``RLOOConfig``, ``GRPOConfig``) use the same rollout, loss and checkpoint code with K answers
  per prompt, group baselines instead of a value model, and the KL as a reward penalty or a k3 loss term.

Reproducibility and resume: every update reseeds from ``seed + update``, and the prompt order is a
function of ``seed`` and the update index, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .config import GRPOConfig, PPOConfig, RLOOConfig  # noqa: F401  (torch-free rlhf.config; importable here)
from .contract import MODEL_SUBDIR, Artifacts, Cancelled, data_hash, last_checkpoint, seed_everything, write_metadata
from .data import Demonstration, Messages, as_messages
from .sampling import decoding_settings, generate_ids, render_prompts

log = logging.getLogger(__name__)
RewardFn = Callable[[list, list, torch.Tensor, torch.Tensor], torch.Tensor]
STATE_FILE = "trainer_state.json"


# ================================================================================================ 0. config
# PPOConfig: every field with its help string is in rlhf/config.py (torch-free).


# ======================================================================================== 1. tensor maths
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if not unbiased:
        return var
    n = mask.to(x.dtype).sum()
    return torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)  # no host sync on the count


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the entries where ``mask`` is on (unbiased variance); masked entries -> 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def discount_matrix(length: int, factor: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """(R, R) upper-triangular D with D[t, s] = factor ** (s - t) for s >= t, 0 below the diagonal."""
    idx = torch.arange(length, device=device)
    gap = (idx[None, :] - idx[:, None]).to(dtype)  # s - t
    return torch.where(gap >= 0, torch.full_like(gap, factor).pow(gap.clamp(min=0)), torch.zeros_like(gap))


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation over right-padded responses, without a loop over positions.

    rewards, values, mask: (B, R). delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma*lam*A_{t+1},
    with V = 0 after the last valid token. In closed form A_t = sum_{s>=t} (gamma*lam)^(s-t) delta_s, i.e.
    ``A = delta @ D.T`` with the discount matrix ``D`` (one small GEMM; exact for right padding, where the
    valid positions are a prefix of each row). Returns ``(advantages, returns)``, both (B, R), 0 where masked.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    next_values = F.pad(values[:, 1:], (0, 1))  # V_{t+1}, 0 after the last position
    delta = (rewards + gamma * next_values - values) * mask
    D = discount_matrix(rewards.shape[1], gamma * lam, values.dtype, values.device)
    advantages = (delta @ D.T) * mask
    return advantages, (advantages + values) * mask


def compute_gae_loop(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """The per-position reference loop of ``compute_gae`` (kept for the equivalence test)."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    B, R = rewards.shape
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(R)):
        next_values = values[:, t + 1] if t + 1 < R else torch.zeros_like(lastgaelam)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        lastgaelam = (delta + gamma * lam * lastgaelam) * mask[:, t]
        advantages[:, t] = lastgaelam
    return advantages, (advantages + values) * mask


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float):
    """r_t = -kl_coef * (logprobs - ref_logprobs) (k1), plus the score on each response's last token.

    scores (B,), logprobs/ref_logprobs/mask (B, R) -> rewards (B, R), kl (B, R)."""
    kl = (logprobs - ref_logprobs) * mask  # (B, R)
    rewards = -kl_coef * kl
    last = (mask.long().sum(1) - 1).clamp(min=0)  # (B,) index of the last response token (its EOS)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards * mask, kl


def aggregate(x: torch.Tensor, mask: torch.Tensor, aggregation: str = "token") -> torch.Tensor:
    """Loss over (b, R) per-token terms: 'token' = mean over all valid tokens of the batch (long answers weigh
    more; PPO's token mean, DAPO), 'sequence' = mean over answers of each answer's token mean (GRPO's paper)."""
    if aggregation == "sequence":
        return masked_mean(x, mask, dim=1).mean()
    return masked_mean(x, mask)


def policy_gradient_losses(new_logprobs, old_logprobs, advantages, mask, cliprange: float,
                           aggregation: str = "token") -> dict[str, torch.Tensor]:
    """Clipped surrogate loss and its diagnostics; all inputs (b, R)."""
    logratio = new_logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = aggregate(torch.max(pg_losses, pg_losses2), mask, aggregation)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > cliprange).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - logratio, mask)  # k3, always >= 0
    return {"pg_loss": pg_loss, "clipfrac": clipfrac, "approx_kl": approx_kl}


def value_losses(vpred, old_values, returns, mask, cliprange_value: float) -> dict[str, torch.Tensor]:
    """0.5 * max(clipped, unclipped) squared error (token mean) and the clipped fraction; inputs (b, R)."""
    vpred_clipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    vf_losses = (vpred - returns) ** 2
    vf_losses2 = (vpred_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses2), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses).float(), mask)
    return {"vf_loss": vf_loss, "vf_clipfrac": vf_clipfrac}


def ppo_losses(new_logprobs, old_logprobs, advantages, vpred, old_values, returns, mask,
               cliprange: float, cliprange_value: float) -> dict[str, torch.Tensor]:
    """Clipped surrogate and clipped value losses (token means over ``mask``); all inputs (b, R)."""
    return {**policy_gradient_losses(new_logprobs, old_logprobs, advantages, mask, cliprange),
            **value_losses(vpred, old_values, returns, mask, cliprange_value)}


def reference_kl_k3(new_logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): exp(ref - new) - (ref - new) - 1 (>= 0; GRPO's loss term)."""
    d = ref_logprobs - new_logprobs
    return torch.exp(d) - d - 1.0


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    var_returns = masked_var(returns, mask, unbiased=False)
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns) if var_returns > 0 else float("nan")


class RunningMoments:
    """Running mean/std of all scores seen so far (Chan et al. parallel update)."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-4):
        self.mean, self.var, self.count = mean, var, count

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        b_mean, b_var, b_count = float(x.mean()), float(x.var(unbiased=False)), x.numel()
        delta, total = b_mean - self.mean, self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta ** 2 * self.count * b_count / total
        self.mean, self.var, self.count = self.mean + delta * b_count / total, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))


class KLController:
    """beta: fixed, or adapted towards ``target`` (Ziegler et al. 2019, eq. 2)."""

    def __init__(self, value: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.value, self.adaptive, self.target, self.horizon = value, adaptive, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.adaptive:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon


def process_scores(scores: torch.Tensor, has_eos: torch.Tensor, config: PPOConfig,
                   moments: RunningMoments | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) raw scores -> scores used as the final reward: missing-EOS penalty, length penalty (``lengths``:
    (B,) answer tokens without EOS; needed when ``config.length_penalty`` is set), normalisation, clipping."""
    scores = scores.float().clone()
    if config.missing_eos_penalty is not None:  # torch.where: no boolean indexing (a device sync)
        scores = scores - config.missing_eos_penalty * (~has_eos.to(scores.device)).float()
    penalty = getattr(config, "length_penalty", 0.0)
    if penalty:
        if lengths is None:
            raise ValueError("length_penalty needs the answers' lengths")
        scores = scores - penalty * lengths.to(scores.device).float()
    if config.normalize_reward and moments is not None:
        moments.update(scores)
        scores = (scores - moments.mean) / (moments.std + 1e-8)
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    return scores


# ==================================================================================== 2. model plumbing
def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def position_ids_from(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding safe


# Log-probs and entropy straight from the final hidden states, a chunk of positions at a time: the logits of
# one chunk (rows x V, fp32) are the largest tensor, never B x R x V. Chunk size in logits elements.
LOGITS_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of fp32 logits per chunk


def _chunk_rows(vocab: int, rows: int, elements: int | None = None) -> int:
    return max(1, min(rows, (elements or LOGITS_CHUNK_ELEMENTS) // max(vocab, 1)))


class _ChunkedTokenLogProb(torch.autograd.Function):
    """log softmax(h W^T / T)[y] for rows of ``hidden``, computed and differentiated a chunk at a time.

    d logp / d z = (onehot(y) - softmax(z / T)) / T. When all rows fit in one chunk, forward keeps that
    chunk's softmax (at most ``LOGITS_CHUNK_ELEMENTS`` fp32 values, what autograd would have saved anyway);
    otherwise backward recomputes each chunk's logits (one more matmul), so that no (N, V) tensor is ever
    saved. (log_softmax, not logsumexp: its fused CPU kernel is several times faster.)"""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk):
        n = hidden.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        probs = None
        for s in range(0, n, chunk):
            logp = torch.log_softmax(F.linear(hidden[s:s + chunk], weight, bias).float().div_(temperature), -1)
            out[s:s + chunk] = logp.gather(1, targets[s:s + chunk, None]).squeeze(1)
            if n <= chunk:
                probs = logp.exp_()  # the one chunk's softmax
        ctx.save_for_backward(hidden, weight, bias, targets, probs)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, probs = ctx.saved_tensors
        T, chunk, n = ctx.temperature, ctx.chunk, hidden.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for s in range(0, n, chunk):
            h, g = hidden[s:s + chunk], grad_out[s:s + chunk].float()
            if probs is not None:
                p = probs
            else:
                p = torch.softmax(F.linear(h, weight, bias).float().div_(T), -1)
            gz = p.mul(-g[:, None])  # -g * softmax
            gz.scatter_add_(1, targets[s:s + chunk, None], g[:, None]).div_(T)  # (c, V)
            if need_h:
                grad_h[s:s + chunk] = (gz.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += gz.T @ h.float()
            if need_b:
                grad_b += gz.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None)


def token_logprobs_from_hidden(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                               temperature: float = 1.0, with_entropy: bool = False,
                               chunk_elements: int | None = None):
    """Log-probs of ``targets`` (and the entropy) under softmax(head(hidden) / temperature), in chunks.

    hidden (..., H), targets (...) -> logprobs (...) fp32 [, entropy (...) fp32, not differentiated].
    With gradients on, the log-probs go through ``_ChunkedTokenLogProb`` (no saved (N, V) tensor)."""
    shape = targets.shape
    h, t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    weight, bias = head.weight, head.bias
    chunk = _chunk_rows(weight.shape[0], h.shape[0], chunk_elements)
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    entropy = None
    if grad:
        logprobs = _ChunkedTokenLogProb.apply(h, weight, bias, t, float(temperature), chunk)
    if not grad or with_entropy:
        with torch.no_grad():
            lp = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            entropy = torch.empty_like(lp) if with_entropy else None
            for s in range(0, h.shape[0], chunk):
                logp = torch.log_softmax(F.linear(h[s:s + chunk], weight, bias).float().div_(temperature), -1)
                lp[s:s + chunk] = logp.gather(1, t[s:s + chunk, None]).squeeze(1)
                if with_entropy:  # H = -sum p log p
                    entropy[s:s + chunk] = -(logp.exp() * logp).sum(-1)
        if not grad:
            logprobs = lp
    logprobs = logprobs.reshape(shape)
    return (logprobs, entropy.reshape(shape)) if with_entropy else logprobs


def causal_lm_parts(model):
    """(backbone, lm_head) of a causal LM (through a PeftModel), or None when the chunked path does not apply
    (no plain Linear output head, e.g. LoRA on lm_head, or a final logit soft-capping)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text_config, "final_logit_softcapping", None):
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or type(head) is not torch.nn.Linear:
        return None
    return backbone, head


def policy_forward(model, query_ids, query_mask, response_ids, response_mask, temperature: float = 1.0,
                   with_entropy: bool = False, chunk_elements: int | None = None, value_head=None):
    """Response log-probs (B, R) (and per-token entropy (B, R)) at ``temperature``; with ``value_head`` (a
    ``ValueHead`` on this trunk) the values V(s_t) (B, R) as well, last in the returned tuple.

    The trunk runs over query + response minus the last token; the output head is applied in chunks to the
    hidden states of the R response positions only (see ``token_logprobs_from_hidden``). Models without a
    plain output head fall back to ``policy_forward_full`` (not with a ``value_head``: ``build_models``
    refuses that combination)."""
    parts = causal_lm_parts(model)
    if parts is None:
        if value_head is not None:
            raise ValueError("a shared value head needs a causal LM with a plain linear output head")
        return policy_forward_full(model, query_ids, query_mask, response_ids, response_mask, temperature,
                                   with_entropy)
    backbone, head = parts
    ids = torch.cat([query_ids, response_ids], 1)[:, :-1]  # (B, Q+R-1): the last token predicts nothing
    mask = torch.cat([query_mask, response_mask], 1)[:, :-1].long()
    Q = query_ids.shape[1]
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask),
                      use_cache=False).last_hidden_state[:, Q - 1:]  # (B, R, H): the states predicting y_t
    out = token_logprobs_from_hidden(hidden, head, response_ids, temperature, with_entropy, chunk_elements)
    m = response_mask.to(torch.float32)
    out = (out[0] * m, out[1] * m) if with_entropy else out * m
    if value_head is None:
        return out
    values = value_head(hidden).squeeze(-1).float() * m  # (B, R) V(s_t) from the same hidden states
    return (*out, values) if with_entropy else (out, values)


def policy_forward_full(model, query_ids, query_mask, response_ids, response_mask, temperature: float = 1.0,
                        with_entropy: bool = False):
    """The reference computation: full-vocabulary fp32 logits (B, R, V) for the response positions."""
    ids = torch.cat([query_ids, response_ids], 1)  # (B, Q+R)
    mask = torch.cat([query_mask, response_mask], 1).long()
    R = response_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask), use_cache=False,
                   logits_to_keep=R + 1).logits[:, :-1].float() / temperature  # (B, R, V)
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = torch.gather(logp_all, 2, response_ids.unsqueeze(-1)).squeeze(-1) * response_mask  # (B, R)
    if not with_entropy:
        return logprobs
    entropy = -(logp_all.exp() * logp_all).sum(-1) * response_mask  # (B, R)
    return logprobs, entropy


def value_forward(value_model, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
    """V(s_t) for every response position: the score head applied to each hidden state. -> (B, R)."""
    clf = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    backbone = getattr(clf, clf.base_model_prefix)
    ids = torch.cat([query_ids, response_ids], 1)
    mask = torch.cat([query_mask, response_mask], 1).long()
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask),
                      use_cache=False).last_hidden_state  # (B, Q+R, H)
    Q = query_ids.shape[1]
    return clf.score(hidden[:, Q - 1:-1]).squeeze(-1).float() * response_mask  # (B, R)


class ValueHead(torch.nn.Linear):
    """``value_head: "shared"``: V(s_t) = w . h_t + b on the policy's final hidden states h_t, fp32 whatever the
    trunk's dtype. Zero-initialised, so the first values are 0 and the value loss reaches the trunk only once
    the head has learnt something (d V / d h = w)."""

    def __init__(self, hidden_size: int, device=None):
        super().__init__(hidden_size, 1, device=device, dtype=torch.float32)
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.to(self.weight.dtype))


@contextmanager
def adapter_disabled(model):
    """The frozen base: a PeftModel with its adapter off (the SFT reference / the reward model)."""
    with (model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()):
        yield model


def _unwrap_adapter(model):
    """A checkpoint given as a LoRA adapter dir comes back as PeftModel: fold it in before adding ours."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


@dataclass
class Models:
    policy: Any                 # PeftModel (LoRA) or the full model being trained
    ref: Any | None             # None with LoRA (policy with adapter off); a frozen copy otherwise
    value: Any | None           # PeftModel on the reward model's weights (LoRA) or a full trainable copy;
                                # None for RLOO/GRPO (no value model)
    reward: Any | None          # None when value shares the reward model's weights, or when reward_fn is used
    reward_shares_value: bool   # score with value model's adapter off
    tokenizer: Any
    reward_tokenizer: Any | None
    generator: Any | None = None  # merged_generation: a plain copy of the policy that only samples
    reward_suffix: list[int] | None = None  # reward scored from token ids (see reward_token_suffix), else text
    value_head: Any | None = None  # value_head "shared": a ValueHead on the policy's trunk (then value is None)


def build_models(config: PPOConfig, use_reward_model: bool = True, with_value: bool = True) -> Models:
    """Load policy, reference, value and reward model as described in the module docstring.

    ``with_value=False`` (RLOO, GRPO): no value model; the reward model is loaded frozen on its own. With
    ``config.value_head == "shared"`` (PPO) the value is a ``ValueHead`` on the policy's trunk: no value model,
    and the reward model is loaded frozen on its own as well."""
    from peft import get_peft_model

    from .models import load_causal_lm, load_reward_model, load_tokenizer, lora_config

    if config.merged_generation and not config.use_lora:
        raise ValueError("merged_generation folds LoRA adapters into a plain copy of the policy; with full fine-tuning "
                         "(use_lora off) the policy already samples from plain weights: turn merged_generation off")
    if config.merged_generation and config.load_in_bits:
        raise ValueError("merged_generation needs full-precision base weights: it cannot fold LoRA into a "
                         f"{config.load_in_bits}-bit model; turn one of them off")
    shared_head = with_value and getattr(config, "value_head", "separate") == "shared"
    with_value = with_value and not shared_head  # a value *model*
    seed_everything(config.seed)  # fresh score heads are initialised at load time
    load = dict(device=config.device, dtype=config.dtype, load_in_bits=config.load_in_bits)
    tokenizer = load_tokenizer(config.model)
    lora = dict(r=config.lora_r, alpha=config.lora_alpha, dropout=0.0, target_modules=config.lora_target_modules)
    policy = _unwrap_adapter(load_causal_lm(config.model, **load))
    ref = None
    if config.use_lora:
        policy = get_peft_model(policy, lora_config("CAUSAL_LM", **lora))
    else:
        ref = _unwrap_adapter(load_causal_lm(config.model, **load)).eval().requires_grad_(False)
    rm_ref = config.reward_model if use_reward_model else None
    value_ref = (config.value_model or rm_ref or config.model) if with_value else None
    value = _unwrap_adapter(load_reward_model(value_ref, **load)) if with_value else None
    shares = with_value and config.use_lora and rm_ref is not None and value_ref == rm_ref
    reward = None
    if config.use_lora and value is not None:
        value = get_peft_model(value, lora_config("SEQ_CLS", **lora))
    if rm_ref is not None and not shares:
        reward = _unwrap_adapter(load_reward_model(rm_ref, **load)).eval().requires_grad_(False)
    reward_tokenizer = load_tokenizer(rm_ref) if rm_ref is not None else None
    if with_value and value_ref == rm_ref and reward_tokenizer is not None and reward_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("the value model (initialised from the reward model) reads the policy's tokens: "
                         "policy and reward model must share a tokenizer, or set value_model")
    for m in (policy, ref, value):
        if m is not None:
            disable_dropout(m)
            m.config.pad_token_id = tokenizer.pad_token_id
    if reward is not None:
        disable_dropout(reward)
        reward.config.pad_token_id = reward_tokenizer.pad_token_id
    if config.gradient_checkpointing:
        for m in (policy, value):
            if m is not None:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    generator = None
    if config.merged_generation and config.use_lora:
        generator = _unwrap_adapter(load_causal_lm(config.model, **load)).eval().requires_grad_(False)
        disable_dropout(generator)
        generator.config.pad_token_id = tokenizer.pad_token_id
    suffix = reward_token_suffix(tokenizer, reward_tokenizer) if config.reward_from_ids else None
    head = None
    if shared_head:
        if causal_lm_parts(policy) is None:
            raise ValueError("value_head 'shared' reads the policy's final hidden states, which needs a causal LM "
                             "with a plain linear output head (this model has none, or LoRA targets lm_head): "
                             "use value_head 'separate'")
        text_config = policy.config.get_text_config() if hasattr(policy.config, "get_text_config") else policy.config
        head = ValueHead(text_config.hidden_size, device=next(policy.parameters()).device)
    return Models(policy, ref, value, reward, shares, tokenizer, reward_tokenizer, generator, suffix, head)


@torch.no_grad()
def sync_generator(models: Models) -> None:
    """Write the policy's current weights into the generation copy: W + scale * B @ A for every LoRA layer."""
    from peft.tuners.lora import LoraLayer

    base = models.policy.get_base_model()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            merged = module.get_base_layer().weight.detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    merged += module.get_delta_weight(adapter).to(merged.dtype)
            models.generator.get_submodule(name).weight.copy_(merged)


def trainable_parameters(models: Models) -> dict[str, torch.nn.Parameter]:
    out = {f"policy.{n}": p for n, p in models.policy.named_parameters() if p.requires_grad}
    if models.value is not None:
        out.update({f"value.{n}": p for n, p in models.value.named_parameters() if p.requires_grad})
    if models.value_head is not None:
        out.update({f"value_head.{n}": p for n, p in models.value_head.named_parameters()})
    return out


# ============================================================================================ 3. rollouts
@dataclass
class Rollout:
    prompts: list                # B prompts (messages)
    completions: list[str]       # B decoded responses (without EOS)
    query_ids: torch.Tensor      # (B, Q) left padded
    query_mask: torch.Tensor     # (B, Q) bool
    response_ids: torch.Tensor   # (B, R) right padded, cut after the first EOS
    response_mask: torch.Tensor  # (B, R) bool
    has_eos: torch.Tensor        # (B,) bool
    raw_scores: torch.Tensor     # (B,) reward model (or reward_fn) output
    scores: torch.Tensor         # (B,) after missing-EOS penalty, normalisation, clipping
    logprobs: torch.Tensor       # (B, R) rollout policy, at the sampling temperature
    ref_logprobs: torch.Tensor   # (B, R) reference (SFT) policy
    entropy: torch.Tensor        # (B, R) policy entropy per token
    values: torch.Tensor         # (B, R) V(s_t)
    kl: torch.Tensor = None      # (B, R) k1 per token
    rewards: torch.Tensor = None     # (B, R)
    advantages: torch.Tensor = None  # (B, R)
    returns: torch.Tensor = None     # (B, R)
    generation_s: float = 0.0


def _chunks(n: int, size: int):
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(start + size, n))


def reward_token_suffix(policy_tokenizer, reward_tokenizer) -> list[int] | None:
    """The ids the reward model's chat template puts after an assistant answer (e.g. ``<|im_end|>\\n``), when a
    conversation's ids are exactly ``prompt-with-generation-prompt ids + answer ids + suffix`` for both
    tokenizers (same vocabulary and template); None when scoring must go through text.

    Checked on probe conversations: the text path (decode, chat template, re-tokenize) must give the same ids."""
    from .reward import conversation, encode_for_reward

    if reward_tokenizer is None or reward_tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        return None
    if getattr(reward_tokenizer, "chat_template", None) != getattr(policy_tokenizer, "chat_template", None):
        return None
    try:
        probes = [("What is the capital of France?", "The capital of France is Paris."),
                  ("Tell me a fact about cats.", " Cats sleep a lot, 12 hours!\nYes.")]
        suffix = None
        for prompt, answer in probes:
            query = policy_tokenizer(render_prompts(policy_tokenizer, [prompt])[0],
                                     add_special_tokens=False)["input_ids"]
            body = policy_tokenizer(answer, add_special_tokens=False)["input_ids"]
            full = encode_for_reward(reward_tokenizer, conversation(prompt, answer))
            if full[:len(query) + len(body)] != query + body:
                return None
            tail = full[len(query) + len(body):]
            if suffix is not None and tail != suffix:
                return None
            suffix = tail
        return suffix if suffix else None
    except Exception:  # a template that cannot render the probes: keep the text path
        return None


def reward_forward(rm, ids, mask, last) -> torch.Tensor:
    """(b,) scores of the reward model (a classifier, or a PeftModel of one) over ``ids`` (b, T) with ``mask``,
    read at the positions ``last`` (b,). ``compile_update`` compiles it (``compiled_forward(.., "reward")``)."""
    clf = rm.get_base_model() if hasattr(rm, "get_base_model") else rm
    backbone = getattr(clf, clf.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask),
                      use_cache=False).last_hidden_state  # (b, T, H)
    at = hidden[torch.arange(hidden.shape[0], device=ids.device), last]  # (b, H)
    return clf.score(at)[:, 0].float()


def reward_from_token_ids(rm, query_ids, query_mask, response_ids, response_mask, has_eos, suffix: list[int],
                          pad_token_id: int, batch_size: int, forward: Callable = reward_forward) -> torch.Tensor:
    """(B,) reward-model scores of query + response (its EOS dropped) + the template's ``suffix`` ids, built on
    the device (no decode, no re-tokenizing); the score is read at the last suffix token, as RewardTrainer's
    classifier reads it at the last token of the formatted conversation. ``forward``: ``reward_forward`` or
    its compiled form (at fixed widths the conversation's width is fixed too)."""
    B, R = response_ids.shape
    S = len(suffix)
    device = response_ids.device
    n = response_mask.long().sum(1) - has_eos.long()  # (B,) answer tokens without the EOS
    pos = torch.arange(R + S, device=device)
    ext = torch.full((B, R + S), pad_token_id, dtype=response_ids.dtype, device=device)
    ext[:, :R] = torch.where(pos[None, :R] < n[:, None], response_ids, ext[:, :R])
    tail = torch.tensor(suffix, dtype=response_ids.dtype, device=device).expand(B, S)
    ext.scatter_(1, n[:, None] + torch.arange(S, device=device), tail)
    ids = torch.cat([query_ids, ext], 1)  # (B, Q+R+S)
    mask = torch.cat([query_mask.long(), (pos[None] < (n + S)[:, None]).long()], 1)
    last = query_ids.shape[1] + n + S - 1  # (B,) the last suffix token
    out = torch.empty(B, dtype=torch.float32, device=device)
    for s in _chunks(B, batch_size):
        out[s] = forward(rm, ids[s], mask[s], last[s])
    return out


def score_rollout(models: Models, prompts, completions, response_ids, response_mask, batch_size: int,
                  reward_fn: RewardFn | None, query_ids=None, query_mask=None, has_eos=None,
                  compiled: bool = False) -> torch.Tensor:
    """(B,) scores: ``reward_fn``, or the reward model from token ids (``models.reward_suffix`` set: same
    tokenizer and template; compiled with ``compiled``) or over the chat-formatted conversation text (as
    trained; eager: its width is the texts')."""
    if reward_fn is not None:
        return torch.as_tensor(reward_fn(prompts, completions, response_ids, response_mask), dtype=torch.float32)
    from .length import answer_lengths, calibrate, calibration_of
    from .reward import conversation, score

    with (adapter_disabled(models.value) if models.reward_shares_value else nullcontext(models.reward)) as rm:
        if models.reward_suffix is not None and query_ids is not None:
            forward = reward_forward
            if compiled:
                device, graph = response_ids.device, compiled_forward(response_ids.device, "reward")

                def forward(*args):  # each chunk's scores are copied out before the next replay
                    new_cuda_graph_step(device, True)
                    return graph(*args)
            scores = reward_from_token_ids(rm, query_ids, query_mask, response_ids, response_mask, has_eos,
                                           models.reward_suffix, models.reward_tokenizer.pad_token_id, batch_size,
                                           forward)
            # a calibrated reward model (rlhf.length): as `score` applies it on the text path, on the answers' text
            return calibrate(scores, answer_lengths(completions), calibration_of(rm))
        items = [conversation(p, c) for p, c in zip(prompts, completions)]
        return score(rm, models.reward_tokenizer, items, batch_size)


@torch.no_grad()
def collect_rollout(models: Models, prompts: Sequence[Messages], config: PPOConfig, moments: RunningMoments | None,
                    reward_fn: RewardFn | None = None, autocast=nullcontext) -> Rollout:
    """Steps 1-2: sample, then log-probs, reference log-probs, entropy, values (PPO) and processed scores."""
    tok, policy = models.tokenizer, models.policy
    policy.eval()
    t0 = time.time()
    if models.generator is not None:
        sync_generator(models)
    with autocast():
        gen = generate_ids(models.generator or policy, tok, list(prompts), cache_implementation=config.cache_implementation,
                           **decoding_settings(config.max_new_tokens, True, config.temperature, config.top_p,
                                               config.top_k))
    generation_s = time.time() - t0
    q, qm, r, rm, has_eos = gen["query_ids"], gen["query_mask"], gen["response_ids"], gen["response_mask"], gen["has_eos"]
    forward, v_forward = policy_forward, value_forward
    compiled = bool(getattr(config, "compile_update", False))
    if compiled:  # fixed widths from here on: the scoring passes compile too
        q, qm, r, rm = fixed_widths(q, qm, r, rm, config.max_new_tokens, tok.pad_token_id)
        forward, v_forward = compiled_forward(r.device, "policy"), compiled_forward(r.device, "value")
    B = len(prompts)
    logprobs, ref_logprobs, entropy, values = (torch.zeros(r.shape, device=r.device) for _ in range(4))
    for s in _chunks(B, config.per_device_batch_size):
        args = (q[s], qm[s], r[s], rm[s])
        with autocast():
            new_cuda_graph_step(r.device, compiled)
            if models.value_head is not None:  # the values from the same pass (shared trunk)
                logprobs[s], entropy[s], values[s] = forward(policy, *args, config.temperature, with_entropy=True,
                                                             value_head=models.value_head)
            else:
                logprobs[s], entropy[s] = forward(policy, *args, config.temperature, with_entropy=True)
            if models.ref is None:
                with adapter_disabled(policy):
                    ref_logprobs[s] = forward(policy, *args, config.temperature)
            else:
                ref_logprobs[s] = forward(models.ref, *args, config.temperature)
            if models.value is not None:
                values[s] = v_forward(models.value, *args)
    # one device->host copy for the texts (the answer without its EOS)
    answer_tokens = rm.long().sum(1) - has_eos.long()
    lengths = answer_tokens.tolist()
    rows = r.tolist()
    completions = tok.batch_decode([row[:n] for row, n in zip(rows, lengths)], skip_special_tokens=True)
    with autocast():
        raw = score_rollout(models, list(prompts), completions, r, rm, config.per_device_batch_size, reward_fn,
                            q, qm, has_eos, compiled)
    raw = raw.to(r.device).float()
    return Rollout(list(prompts), completions, q, qm, r, rm, has_eos, raw,
                   process_scores(raw, has_eos, config, moments, answer_tokens), logprobs, ref_logprobs, entropy, values,
                   generation_s=generation_s)


def group_advantages(rewards: torch.Tensor, k: int, method: str, scale_rewards: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """(B,) rewards of B = prompts x k answers (each prompt's k answers consecutive) -> (B,) advantages.

    'rloo': r_i minus the mean of the other k-1 rewards of its prompt (leave-one-out baseline).
    'grpo': (r_i - group mean) / (group std + eps) (unbiased std), or only centred when ``scale_rewards`` is off."""
    r = rewards.reshape(-1, k)
    if method == "rloo":
        adv = r - (r.sum(1, keepdim=True) - r) / (k - 1)
    elif method == "grpo":
        adv = r - r.mean(1, keepdim=True)
        if scale_rewards:
            adv = adv / (r.std(1, keepdim=True) + eps)
    else:
        raise ValueError(f"unknown group method {method!r}: 'rloo' or 'grpo'")
    return adv.reshape(-1)


def compute_advantages(ro: Rollout, kl_coef: float, config: PPOConfig) -> Rollout:
    """Steps 3-4. PPO: per-token rewards with the KL penalty, GAE, whitening. RLOO/GRPO: one reward per answer
    (minus kl_coef x its summed k1 KL when ``kl_penalty`` is 'reward'), the group baseline, the advantage
    broadcast over the answer's tokens; no values, no returns."""
    mask = ro.response_mask.float()
    ro.rewards, ro.kl = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask, kl_coef)
    if config.method == "ppo":
        ro.advantages, ro.returns = compute_gae(ro.rewards, ro.values, mask, config.gamma, config.lam)
    else:
        seq_reward = ro.scores - kl_coef * ro.kl.sum(1) if config.kl_penalty == "reward" else ro.scores
        adv = group_advantages(seq_reward, config.num_samples, config.method, getattr(config, "scale_rewards", True))
        ro.advantages, ro.returns = adv[:, None] * mask, torch.zeros_like(mask)
    if config.whiten_advantages:
        ro.advantages = masked_whiten(ro.advantages, mask)
    return ro


# ============================================================================================ 4. PPO-ptx
def encode_demonstrations(tokenizer, demos: Sequence[Demonstration], max_length: int) -> list[tuple[list[int], int]]:
    """Each demonstration as (token ids, number of prompt tokens): chat-template prompt + response + EOS."""
    out = []
    for demo, text in zip(demos, render_prompts(tokenizer, [d.prompt for d in demos])):
        p = tokenizer(text, add_special_tokens=False)["input_ids"]
        c = tokenizer(demo.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p + c)[:max_length]
        if len(ids) > len(p):
            out.append((ids, len(p)))
    return out


def ptx_loss(policy, encoded: list[tuple[list[int], int]], pad_token_id: int, device) -> torch.Tensor:
    """Mean NLL of the demonstration responses under the policy (the SFT loss)."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)  # (b, T) right padded
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (seq, n_prompt) in enumerate(encoded):
        ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, n_prompt:len(seq)] = torch.tensor(seq[n_prompt:])
        mask[row, :len(seq)] = 1
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    logits = policy(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()  # (b, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


# ============================================================================================== 5. update
def training_settings(device: torch.device, weight_dtype: torch.dtype, bf16: bool | None) -> dict[str, bool]:
    """How the update runs on ``device`` with weights of ``weight_dtype``:

    * ``fused``: fused AdamW kernels on CUDA and CPU (one kernel over all parameters: on a CPU, over the 897
      LoRA tensors of bench/engine_counts.py's 32-layer model, 12 launched ops a step with the clip against
      ``foreach``'s 1,817, and not slower); ``foreach`` on other devices;
    * ``autocast``: bf16 autocast only over fp32 weights (with bf16 weights it only recasts the fp32 LoRA
      adapters, +35-100% host cost, see ENGINE_NOTES); ``bf16`` null = on when the GPU supports it."""
    from .models import bf16_capable

    want_bf16 = bf16 if bf16 is not None else bf16_capable(device)
    return {"fused": device.type in ("cuda", "cpu"), "autocast": bool(want_bf16) and weight_dtype == torch.float32}


def clip_grad_norm(tensors: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` with foreach kernels on every device (CPU included) and no host sync."""
    grads = [t.grad for t in tensors if t.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0).to(grads[0].dtype))
    return total


class MasterAdamW:
    """AdamW (eps 1e-5) over the trainable parameters, with fp32 master weights for those that are not fp32.

    Full fine-tuning in bf16: each step copies the bf16 gradients into fp32 masters, clips, steps AdamW on the
    masters and writes them back rounded to bf16, so updates far below bf16's resolution accumulate in the
    masters instead of rounding to zero (pure bf16 AdamW at lr 1e-5 leaves most weights unchanged). fp32
    parameters (fp32 models, peft's fp32 LoRA adapters) are their own masters: no copy."""

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float, eps: float = 1e-5, fused: bool = False):
        self.params = list(params)
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True)
                        for p in self.params]
        self.has_masters = any(m is not p for m, p in zip(self.masters, self.params))
        kwargs = {"fused": True} if fused else {"foreach": True}
        self.inner = torch.optim.AdamW(self.masters, lr=lr, eps=eps, **kwargs)

    @property
    def param_groups(self):
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p, m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None

    def step(self, max_grad_norm: float | None = None) -> None:
        if self.has_masters:
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    m.grad = None if p.grad is None else p.grad.float()
        if max_grad_norm is not None:
            clip_grad_norm(self.masters, max_grad_norm)
        self.inner.step()
        if self.has_masters:
            with torch.no_grad():
                for p, m in zip(self.params, self.masters):
                    if m is not p:
                        p.copy_(m)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    @torch.no_grad()
    def set_masters(self, values: Sequence[torch.Tensor]) -> None:
        """Restore the fp32 masters (a checkpoint's trainable weights) and the parameters from them."""
        for p, m, v in zip(self.params, self.masters, values):
            m.copy_(v.to(m.device, m.dtype))
            if m is not p:
                p.copy_(m)


STAT_KEYS = ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "vf_clipfrac", "ptx_loss", "kl_loss")


MICRO_INPUTS = ("query_ids", "query_mask", "response_ids", "response_mask", "old_logprobs", "advantages",
                "old_values", "returns", "ref_logprobs")


def micro_step_loss(policy, value, query_ids, query_mask, response_ids, response_mask, old_logprobs, advantages,
                    old_values, returns, ref_logprobs, kl_coef: torch.Tensor, temperature: float, cliprange: float,
                    cliprange_value: float, vf_coef: float, aggregation: str, kl_term: bool):
    """One micro-batch: (loss, statistics row in STAT_KEYS order). Tensor code only (no host reads), so
    ``compiled_micro_step`` can compile it whole: the policy (and value) forward, the losses, and through
    AOTAutograd their backward. PPO-ptx is added outside (its batches vary in shape). ``value``: the value
    model, a ``ValueHead`` on the policy's trunk (one forward gives log-probs and values), or None."""
    mask = response_mask.float()
    shared = isinstance(value, ValueHead)
    new_logprobs = policy_forward(policy, query_ids, query_mask, response_ids, response_mask, temperature,
                                  value_head=value if shared else None)
    if shared:
        new_logprobs, vpred = new_logprobs
    out = policy_gradient_losses(new_logprobs, old_logprobs, advantages, mask, cliprange, aggregation)
    loss = out["pg_loss"]
    if value is not None:
        if not shared:
            vpred = value_forward(value, query_ids, query_mask, response_ids, response_mask)
        out.update(value_losses(vpred, old_values, returns, mask, cliprange_value))
        loss = loss + vf_coef * out["vf_loss"]
    if kl_term:
        out["kl_loss"] = aggregate(reference_kl_k3(new_logprobs, ref_logprobs), mask, aggregation)
        loss = loss + kl_coef * out["kl_loss"]
    zero = torch.zeros((), device=mask.device)
    return loss, torch.stack([out[k].detach().float() if k in out else zero for k in STAT_KEYS])


_COMPILED_STEPS: dict[str, Callable] = {}


def new_cuda_graph_step(device: torch.device, compiled: bool) -> None:
    """Tell CUDA-graph trees that a new step begins before a compiled call on CUDA: the previous call's outputs
    were consumed already (copied into the rollout, or backpropagated), so the next replay may reuse their
    memory instead of recording a new graph beside the old one. Nothing happens on CPU or when eager."""
    if compiled and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


def compiled_micro_step(device: torch.device) -> Callable:
    """``micro_step_loss`` under ``torch.compile`` (one compiled function per process and device type; dynamo
    keys its graphs on the shapes and the modules): CUDA graphs on CUDA (``reduce-overhead``), inductor's C++
    kernels on CPU. Shapes are fixed by ``pad_for_compile``, so it recompiles only for a new prompt bucket
    (or micro-batch size), not for every update."""
    fn = _COMPILED_STEPS.get(device.type)
    if fn is None:
        mode = "reduce-overhead" if device.type == "cuda" else None
        fn = _COMPILED_STEPS[device.type] = torch.compile(micro_step_loss, mode=mode, dynamic=False)
    return fn


_SCORING_PASSES = {"policy": policy_forward, "value": value_forward, "reward": reward_forward}


def compiled_forward(device: torch.device, which: str) -> Callable:
    """``policy_forward``, ``value_forward`` or ``reward_forward`` (``which``) under ``torch.compile``, for the
    rollout's no-grad scoring passes at fixed widths (``fixed_widths``); one per process, device type and
    function. The reference pass (the policy with its adapter off) is a second graph of the same function, and
    so is the reward pass through the value model with its adapter off (a reward model sharing its trunk)."""
    key = f"{device.type}:{which}"
    fn = _COMPILED_STEPS.get(key)
    if fn is None:
        mode = "reduce-overhead" if device.type == "cuda" else None
        fn = _COMPILED_STEPS[key] = torch.compile(_SCORING_PASSES[which], mode=mode, dynamic=False)
    return fn


def fixed_widths(query_ids, query_mask, response_ids, response_mask, response_length: int, pad_token_id: int):
    """Queries left-padded to a power-of-two bucket (as the decoder's static cache), responses right-padded to
    ``response_length`` (the rollout's max_new_tokens): the shapes ``compile_update`` compiles for, so prompts
    of other lengths inside the bucket reuse the graphs. Padding is masked out, so nothing computed changes."""
    from .decoder import bucket

    dq = bucket(query_ids.shape[1]) - query_ids.shape[1]
    dr = max(response_length - response_ids.shape[1], 0)
    if dq:
        query_ids, query_mask = F.pad(query_ids, (dq, 0), value=pad_token_id), F.pad(query_mask, (dq, 0), value=False)
    if dr:
        response_ids = F.pad(response_ids, (0, dr), value=pad_token_id)
        response_mask = F.pad(response_mask, (0, dr), value=False)
    return query_ids, query_mask, response_ids, response_mask


def training_tensors(ro: Rollout) -> dict[str, torch.Tensor]:
    """What a micro-step reads from the rollout, by ``micro_step_loss``'s argument names (MICRO_INPUTS)."""
    return dict(zip(MICRO_INPUTS, (ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask, ro.logprobs,
                                   ro.advantages, ro.values, ro.returns, ro.ref_logprobs)))


def pad_for_compile(ro: Rollout, response_length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    """``training_tensors`` at ``fixed_widths`` (a rollout collected with ``compile_update`` has them already:
    then nothing is copied); the per-token tensors right-padded with zeros."""
    tensors = training_tensors(ro)
    q, qm, r, rm = fixed_widths(*(tensors[k] for k in MICRO_INPUTS[:4]), response_length, pad_token_id)
    dr = r.shape[1] - ro.response_ids.shape[1]
    padded = {k: F.pad(v, (0, dr)) if dr else v for k, v in tensors.items()}
    return {**padded, "query_ids": q, "query_mask": qm, "response_ids": r, "response_mask": rm}


def ppo_update(models: Models, ro: Rollout, optimizer, config: PPOConfig, params: list, generator: torch.Generator,
               ptx_data: list | None = None, autocast=nullcontext, kl_coef: float = 0.0) -> dict[str, float]:
    """Step 5: ppo_epochs over shuffled minibatches; returns the mean of the logged statistics.

    The same loop trains PPO (clipped surrogate + value loss) and RLOO/GRPO (no value model; with
    ``config.kl_penalty == 'loss'`` a k3 KL-to-reference term weighted by ``kl_coef``). Statistics stay on the
    device and are read once at the end (and once per optimizer step only when ``target_kl`` is set); the
    micro-batches keep the rollout's full width (no sync to trim padding columns)."""
    policy = models.policy
    value = models.value if models.value is not None else models.value_head  # a model, a ValueHead or None
    policy.train()  # dropout is off; train() only matters for gradient checkpointing
    if value is not None:
        value.train()
    device = ro.response_ids.device
    compiled = bool(getattr(config, "compile_update", False))
    batch = pad_for_compile(ro, config.max_new_tokens, models.tokenizer.pad_token_id) if compiled \
        else training_tensors(ro)
    step_fn = compiled_micro_step(device) if compiled else micro_step_loss
    B = ro.response_ids.shape[0]
    mini = min(config.mini_batch_size, B)
    micro = max(mini // max(config.gradient_accumulation_steps, 1), 1)
    aggregation = getattr(config, "loss_aggregation", "token")
    kl_term = getattr(config, "kl_penalty", "reward") == "loss" and kl_coef > 0
    use_ptx = bool(ptx_data) and config.ptx_coef > 0
    kl = torch.tensor(float(kl_coef), device=device)  # a tensor: a new beta does not recompile
    settings = dict(temperature=config.temperature, cliprange=config.cliprange, cliprange_value=config.cliprange_value,
                    vf_coef=config.vf_coef, aggregation=aggregation, kl_term=kl_term)
    n_steps = config.ppo_epochs * (B // mini)
    acc = torch.zeros(max(n_steps, 1), len(STAT_KEYS), device=device)  # one row per optimizer step
    ptx_column = torch.zeros(len(STAT_KEYS), device=device)
    ptx_column[STAT_KEYS.index("ptx_loss")] = 1.0
    approx_col = STAT_KEYS.index("approx_kl")
    epochs_run, steps, stop = 0, 0, False
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(B, generator=generator).to(device)
        for start in range(0, B - mini + 1, mini):
            optimizer.zero_grad(set_to_none=True)
            mb_idx = order[start:start + mini]
            n_micro = math.ceil(len(mb_idx) / micro)
            for m_start in range(0, len(mb_idx), micro):
                i = mb_idx[m_start:m_start + micro]
                new_cuda_graph_step(device, compiled)
                with autocast():
                    loss, stats = step_fn(policy, value, *(batch[k][i] for k in MICRO_INPUTS), kl, **settings)
                if use_ptx:
                    picks = torch.randint(len(ptx_data), (config.ptx_batch_size,), generator=generator).tolist()
                    with autocast():
                        ptx = ptx_loss(policy, [ptx_data[j] for j in picks], models.tokenizer.pad_token_id, device)
                    loss = loss + config.ptx_coef * ptx
                    stats = stats + ptx.detach().float() * ptx_column
                (loss / n_micro).backward()
                acc[steps] += stats / n_micro
            optimizer.step(config.max_grad_norm)
            steps += 1
            if config.target_kl is not None and float(acc[steps - 1, approx_col]) > config.target_kl:
                stop = True
                break
        epochs_run = epoch + 1
        if stop:
            break
    optimizer.zero_grad(set_to_none=True)
    policy.eval()
    if value is not None:
        value.eval()
    means = acc[:max(steps, 1)].mean(0).tolist()  # the one read of the update's statistics
    present = {"pg_loss", "clipfrac", "approx_kl"} | ({"vf_loss", "vf_clipfrac"} if value is not None else set()) \
        | ({"ptx_loss"} if use_ptx else set()) | ({"kl_loss"} if kl_term else set())
    out = {k: v for k, v in zip(STAT_KEYS, means) if k in present and steps}
    out["ppo_epochs_run"] = epochs_run
    return out


# ==================================================================================== 6. checkpointing
def _save_checkpoint(models: Models, optimizer, state: dict, config: PPOConfig) -> str:
    from safetensors.torch import save_file

    root = Path(config.output_dir)
    final = root / f"checkpoint-{state['global_step']}"
    tmp = root / f".tmp-checkpoint-{state['global_step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = list(trainable_parameters(models))
    masters = getattr(optimizer, "masters", None) or list(trainable_parameters(models).values())
    save_file({n: p.detach().contiguous().cpu() for n, p in zip(names, masters)},  # fp32 masters when kept
              str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))  # last: marks the checkpoint complete
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if config.save_total_limit:
        older = sorted((int(p.name.split("-")[1]), p) for p in root.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
        for _, p in older[:-config.save_total_limit]:
            shutil.rmtree(p, ignore_errors=True)
    return str(final)


def _load_checkpoint(path: str, models: Models, optimizer) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(path) / "trainable.safetensors"))
    params = trainable_parameters(models)
    missing = sorted(set(params) - set(tensors))
    if missing:
        raise RuntimeError(f"checkpoint {path} lacks {missing[:3]}... (different model or LoRA settings?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name].to(p.device, p.dtype))
    if hasattr(optimizer, "set_masters"):
        optimizer.set_masters([tensors[name] for name in params])
    optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((Path(path) / STATE_FILE).read_text())


def save_policy(models: Models, config: PPOConfig) -> str:
    """``output_dir/model``: merged safetensors (LoRA + merge), the adapter alone, or the full weights."""
    out = Path(config.output_dir) / MODEL_SUBDIR
    policy = models.policy
    if config.use_lora and config.merge and hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
        models.policy = policy
    if hasattr(policy, "peft_config"):  # the adapter alone, on the checkpoint PPO started from
        from .models import save_adapter

        return save_adapter(policy, out, config.model, models.tokenizer)
    policy.save_pretrained(out, safe_serialization=True)
    models.tokenizer.save_pretrained(out)
    return str(out)


# ============================================================================================ 7. the loop
def load_ppo_prompts(config: PPOConfig) -> list[Messages]:
    from .data import load_prompts, read_hh_rlhf

    if not config.data:
        raise ValueError("no prompts: set `data` in the config or pass prompts to train()")
    if config.data_format == "hh_rlhf":
        return [p.prompt for p in read_hh_rlhf(config.data)]
    if config.data_format != "prompts":
        raise ValueError(f"unknown PPO data_format {config.data_format!r}: 'prompts' or 'hh_rlhf'")
    return load_prompts(config.data)


def prompt_order(n_prompts: int, update: int, batch: int, seed: int) -> list[int]:
    """Prompt indices for one update: consecutive slices of per-epoch permutations seeded by ``seed + epoch``."""
    perms: dict[int, list[int]] = {}
    out = []
    for k in range(update * batch, (update + 1) * batch):
        epoch, pos = divmod(k, n_prompts)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        out.append(perms[epoch][pos])
    return out


def total_updates(config: PPOConfig, n_prompts: int, prompts_per_update: int | None = None) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.num_train_epochs * n_prompts / (prompts_per_update or config.rollout_batch_size)))


def lr_factor(update: int, total: int, warmup_ratio: float) -> float:
    warmup = int(round(warmup_ratio * total))
    if update < warmup:
        return (update + 1) / warmup
    return max(0.0, (total - update) / max(total - warmup, 1))


def rollout_statistics(ro: Rollout) -> dict[str, float]:
    """The rollout's device-side numbers of ``update_metrics``, read with one host transfer."""
    mask = ro.response_mask.float()
    var_returns = masked_var(ro.returns, mask, unbiased=False)
    ev = torch.where(var_returns > 0, 1.0 - masked_var(ro.returns - ro.values, mask, unbiased=False)
                     / var_returns.clamp(min=1e-30), torch.full_like(var_returns, float("nan")))
    names = ("reward", "scores", "kl", "entropy", "eos_fraction", "response_length", "explained_variance",
             "value_mean", "tokens")
    values = torch.stack([ro.raw_scores.float().mean(), ro.scores.float().mean(), ro.kl.sum(1).mean(),
                          ro.entropy.sum(1).mean(), ro.has_eos.float().mean(), mask.sum(1).mean(), ev,
                          masked_mean(ro.values, mask), mask.sum()]).tolist()
    return dict(zip(names, values))


def update_metrics(ro: Rollout, upd: dict[str, float], beta: float, seconds: float, lr: float,
                   stats: dict[str, float] | None = None) -> dict[str, float]:
    """The namespaced metrics of one update (see docs/PPO.md); ``stats`` from ``rollout_statistics``."""
    s = stats if stats is not None else rollout_statistics(ro)
    mean_kl = s["kl"]  # k1 summed over each response, mean over the batch
    nan = float("nan")
    has_value = "vf_loss" in upd
    metrics = {
        "objective/reward": s["reward"],
        "objective/scores": s["scores"],
        "objective/kl": mean_kl,
        "objective/entropy": s["entropy"],
        "objective/non_score_reward": -beta * mean_kl,
        "objective/rlhf_reward": s["scores"] - beta * mean_kl,
        "objective/kl_coef": beta,
        "loss/policy": upd.get("pg_loss", nan),
        "loss/value": upd.get("vf_loss", nan),
        "policy/clipfrac": upd.get("clipfrac", nan),
        "policy/approx_kl": upd.get("approx_kl", nan),
        "policy/eos_fraction": s["eos_fraction"],
        "policy/response_length": s["response_length"],
        "val/explained_variance": s["explained_variance"] if has_value else nan,
        "val/clipfrac": upd.get("vf_clipfrac", nan),
        "val/mean": s["value_mean"] if has_value else nan,
        "ppo/epochs_run": upd["ppo_epochs_run"],
        "train/learning_rate": lr,
        "perf/episodes_per_s": len(ro.prompts) / seconds,
        "perf/generation_share": ro.generation_s / seconds,
        "perf/tokens_per_s": s["tokens"] / seconds,
    }
    if not has_value:  # RLOO/GRPO: no value model, no value metrics (not NaNs: JSON stores refuse them)
        for key in ("loss/value", "val/explained_variance", "val/clipfrac", "val/mean"):
            del metrics[key]
    if "ptx_loss" in upd:
        metrics["loss/ptx"] = upd["ptx_loss"]
    if "kl_loss" in upd:
        metrics["loss/kl"] = upd["kl_loss"]
    return metrics


def train(config: PPOConfig, prompts: Sequence[str | Messages] | None = None,
          progress: Callable[[int, int, dict], None] | None = None, *, reward_fn: RewardFn | None = None,
          demonstrations: Sequence[Demonstration] | None = None) -> Artifacts:
    """Run PPO, RLOO or GRPO (``config.method``: PPOConfig, RLOOConfig, GRPOConfig); returns ``Artifacts``
    (status ``succeeded`` or ``cancelled``).

    ``reward_fn(prompts, completions, response_ids (B, R), response_mask (B, R)) -> (B,)`` replaces the
    reward model (tests, rule-based rewards). ``demonstrations`` feed PPO-ptx (else ``config.ptx_data``).
    """
    from .config import check_policy_config
    from .models import describe_model, weights_dtype

    method = config.method
    check_policy_config(config)
    if reward_fn is None and not config.reward_model:
        raise ValueError(f"{method.upper()} needs a reward model (config.reward_model) or a reward_fn")
    k = getattr(config, "num_samples", 1)  # answers per prompt (RLOO/GRPO groups)
    prompts = [as_messages(p) for p in (prompts if prompts is not None else load_ppo_prompts(config))]
    models = build_models(config, use_reward_model=reward_fn is None, with_value=method == "ppo")
    device = next(models.policy.parameters()).device
    tok = models.tokenizer
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in render_prompts(tok, prompts)]
    kept = [p for p, n in zip(prompts, lengths) if n <= config.max_length]
    if not kept:
        raise ValueError(f"all {len(prompts)} prompts are longer than max_length={config.max_length} tokens")
    if len(kept) < len(prompts):
        log.info("skipping %d prompts longer than %d tokens", len(prompts) - len(kept), config.max_length)
    if demonstrations is None and config.ptx_coef > 0 and config.ptx_data:
        from .data import load_demonstrations

        demonstrations = load_demonstrations(config.ptx_data)
    ptx_data = encode_demonstrations(tok, demonstrations, config.max_length + config.max_new_tokens) \
        if demonstrations and config.ptx_coef > 0 else None

    params = list(trainable_parameters(models).values())
    settings = training_settings(device, next(models.policy.parameters()).dtype, config.bf16)
    optimizer = MasterAdamW(params, lr=config.learning_rate, eps=1e-5, fused=settings["fused"])
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if settings["autocast"] else nullcontext
    kl_ctl = KLController(config.kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon)
    moments = RunningMoments()
    per_update = config.rollout_batch_size // k  # prompts per update
    total = total_updates(config, len(kept), per_update)
    start, resumed_from = 0, None
    if config.resume and (ckpt := last_checkpoint(config.output_dir)):
        state = _load_checkpoint(ckpt, models, optimizer)
        start, resumed_from, kl_ctl.value = state["global_step"], ckpt, state["kl_coef"]
        moments = RunningMoments(**state["reward_moments"])
        log.info("resuming from %s (update %d)", ckpt, start)
    metrics_path = Path(config.output_dir) / "metrics.jsonl"  # one JSON line per update
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    if metrics_path.exists():  # keep the history up to the resumed step only
        lines = metrics_path.read_text().splitlines()
        metrics_path.write_text("".join(x + "\n" for x in lines if start and json.loads(x)["step"] <= start))
    metrics: dict[str, Any] = {}
    status, step = "succeeded", start

    def state_dict(step: int) -> dict:
        return {"global_step": step, "total": total, "kl_coef": kl_ctl.value,
                "reward_moments": {"mean": moments.mean, "var": moments.var, "count": moments.count}}

    for update in range(start, total):
        t0 = time.time()
        seed_everything(config.seed + update)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * lr_factor(update, total, config.warmup_ratio)
        batch = [kept[i] for i in prompt_order(len(kept), update, per_update, config.seed) for _ in range(k)]
        # 1-2. rollouts and scores (RLOO/GRPO: each prompt's k answers are consecutive rows)
        ro = collect_rollout(models, batch, config, moments, reward_fn, autocast)
        # 3-4. KL-penalised rewards; PPO: values, GAE, whitening; RLOO/GRPO: group baselines
        ro = compute_advantages(ro, kl_ctl.value, config)
        # 5. epochs over minibatches
        gen = torch.Generator().manual_seed(config.seed + update)
        beta = kl_ctl.value
        upd = ppo_update(models, ro, optimizer, config, params, gen, ptx_data, autocast, kl_coef=beta)
        stats = rollout_statistics(ro)
        # 6. adaptive KL coefficient
        kl_ctl.update(stats["kl"], config.rollout_batch_size)
        seconds = time.time() - t0
        step = update + 1
        metrics = update_metrics(ro, upd, beta, seconds, optimizer.param_groups[0]["lr"], stats)
        with open(metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        saved = bool(config.save_steps and step % config.save_steps == 0 and step < total)
        if saved:
            _save_checkpoint(models, optimizer, state_dict(step), config)
        if progress is not None:
            try:
                progress(step, total, dict(metrics))
            except Cancelled:
                if not saved:
                    _save_checkpoint(models, optimizer, state_dict(step), config)
                status = "cancelled"
                break
    model_dir = save_policy(models, config) if status == "succeeded" else None
    final = dict(metrics, global_step=step, resumed_from=resumed_from)
    meta = write_metadata(config.output_dir, kind=method, base_model=describe_model(config.model),
                          data_hash=data_hash(kept), config=config, metrics=final, status=status,
                          extra={"model_dir": model_dir, "last_checkpoint": last_checkpoint(config.output_dir),
                                 "reward_model": describe_model(config.reward_model) if config.reward_model
                                 and reward_fn is None else "reward_fn", "num_prompts": len(kept),
                                 "metrics_file": str(metrics_path), "weights_dtype": weights_dtype(models.policy),
                                 "autocast": settings["autocast"]})
    return Artifacts(str(config.output_dir), model_dir, meta, status, final, step)


# ======================================================================================= command line
def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf.ppo --config FILE``: the same as ``python -m rlhf ppo --config FILE``."""
    from . import __main__ as cli

    return cli.main(["ppo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
