"""The PPO update as it stood before issue 15 (commit 518151e), kept only as the baseline of
``bench/engine_counts.py`` and of the equivalence test in tests/rlhf/test_ppo_engine.py. Use ``rlhf.ppo``.

Proximal Policy Optimization from human feedback (InstructGPT step 3), in one readable module.

    python -m rlhf ppo --config ppo.json            # or: python -m rlhf.ppo --config ppo.json

The algorithm is PPO-clip (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") applied to
language models as in Ziegler et al. 2019, Stiennon et al. 2020 and Ouyang et al. 2022 (InstructGPT):

    for update in 1..U:
        1. rollouts: sample a response y ~ pi(.|x) for B prompts x; cut each response after its first EOS
        2. scores: s = RM(x, y) at the last token; penalise responses without EOS; normalise/clip s
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
  starts from the policy's checkpoint with a fresh scalar head.
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

from .config import PPOConfig  # the config lives in rlhf.config (torch-free); importable from here too
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
    n = mask.sum()
    return var * n / (n - 1) if unbiased and n > 1 else var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the entries where ``mask`` is on (unbiased variance); masked entries -> 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation over right-padded responses.

    rewards, values, mask: (B, R). delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma*lam*A_{t+1},
    with V = 0 after the last valid token. Returns ``(advantages, returns)``, both (B, R), 0 where masked.
    """
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


def ppo_losses(new_logprobs, old_logprobs, advantages, vpred, old_values, returns, mask,
               cliprange: float, cliprange_value: float) -> dict[str, torch.Tensor]:
    """Clipped surrogate and clipped value losses (token means over ``mask``); all inputs (b, R)."""
    logratio = new_logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.max(pg_losses, pg_losses2), mask)
    vpred_clipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    vf_losses = (vpred - returns) ** 2
    vf_losses2 = (vpred_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf_losses, vf_losses2), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > cliprange).float(), mask)
        approx_kl = masked_mean((ratio - 1.0) - logratio, mask)  # k3, always >= 0
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses).float(), mask)
    return {"pg_loss": pg_loss, "vf_loss": vf_loss, "clipfrac": clipfrac, "approx_kl": approx_kl,
            "vf_clipfrac": vf_clipfrac}


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
                   moments: RunningMoments | None = None) -> torch.Tensor:
    """(B,) raw scores -> scores used as the final reward: missing-EOS penalty, normalisation, clipping."""
    scores = scores.float().clone()
    if config.missing_eos_penalty is not None:
        scores[~has_eos] -= config.missing_eos_penalty
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


def policy_forward(model, query_ids, query_mask, response_ids, response_mask, temperature: float = 1.0,
                   with_entropy: bool = False):
    """Response log-probs (B, R) (and per-token entropy (B, R)); logits only for the response positions."""
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
    value: Any                  # PeftModel on the reward model's weights (LoRA) or a full trainable copy
    reward: Any | None          # None when value shares the reward model's weights, or when reward_fn is used
    reward_shares_value: bool   # score with value model's adapter off
    tokenizer: Any
    reward_tokenizer: Any | None
    generator: Any | None = None  # merged_generation: a plain copy of the policy that only samples


def build_models(config: PPOConfig, use_reward_model: bool = True) -> Models:
    """Load policy, reference, value and reward model as described in the module docstring."""
    from peft import get_peft_model

    from .models import load_causal_lm, load_reward_model, load_tokenizer, lora_config

    if config.merged_generation and not config.use_lora:
        raise ValueError("merged_generation folds LoRA adapters into a plain copy of the policy; with full fine-tuning "
                         "(use_lora off) the policy already samples from plain weights: turn merged_generation off")
    if config.merged_generation and config.load_in_bits:
        raise ValueError("merged_generation needs full-precision base weights: it cannot fold LoRA into a "
                         f"{config.load_in_bits}-bit model; turn one of them off")
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
    value_ref = config.value_model or rm_ref or config.model
    value = _unwrap_adapter(load_reward_model(value_ref, **load))
    shares = config.use_lora and rm_ref is not None and value_ref == rm_ref
    reward = None
    if config.use_lora:
        value = get_peft_model(value, lora_config("SEQ_CLS", **lora))
    if rm_ref is not None and not shares:
        reward = _unwrap_adapter(load_reward_model(rm_ref, **load)).eval().requires_grad_(False)
    reward_tokenizer = load_tokenizer(rm_ref) if rm_ref is not None else None
    if value_ref == rm_ref and reward_tokenizer is not None and reward_tokenizer.get_vocab() != tokenizer.get_vocab():
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
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    generator = None
    if config.merged_generation and config.use_lora:
        generator = _unwrap_adapter(load_causal_lm(config.model, **load)).eval().requires_grad_(False)
        disable_dropout(generator)
        generator.config.pad_token_id = tokenizer.pad_token_id
    return Models(policy, ref, value, reward, shares, tokenizer, reward_tokenizer, generator)


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
    out.update({f"value.{n}": p for n, p in models.value.named_parameters() if p.requires_grad})
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


def score_rollout(models: Models, prompts, completions, response_ids, response_mask, batch_size: int,
                  reward_fn: RewardFn | None) -> torch.Tensor:
    """(B,) scores: ``reward_fn`` or the reward model over the chat-formatted conversation (as trained)."""
    if reward_fn is not None:
        return torch.as_tensor(reward_fn(prompts, completions, response_ids, response_mask), dtype=torch.float32)
    from .reward import conversation, score

    items = [conversation(p, c) for p, c in zip(prompts, completions)]
    if models.reward_shares_value:
        with adapter_disabled(models.value) as rm:
            return score(rm, models.reward_tokenizer, items, batch_size)
    return score(models.reward, models.reward_tokenizer, items, batch_size)


@torch.no_grad()
def collect_rollout(models: Models, prompts: Sequence[Messages], config: PPOConfig, moments: RunningMoments | None,
                    reward_fn: RewardFn | None = None, autocast=nullcontext) -> Rollout:
    """Steps 1-2: sample, then log-probs, reference log-probs, entropy, values and processed scores."""
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
    q, qm, r, rm = gen["query_ids"], gen["query_mask"], gen["response_ids"], gen["response_mask"]
    B = len(prompts)
    logprobs, ref_logprobs, entropy, values = (torch.zeros(r.shape, device=r.device) for _ in range(4))
    for s in _chunks(B, config.per_device_batch_size):
        args = (q[s], qm[s], r[s], rm[s])
        with autocast():
            logprobs[s], entropy[s] = policy_forward(policy, *args, config.temperature, with_entropy=True)
            if models.ref is None:
                with adapter_disabled(policy):
                    ref_logprobs[s] = policy_forward(policy, *args, config.temperature)
            else:
                ref_logprobs[s] = policy_forward(models.ref, *args, config.temperature)
            values[s] = value_forward(models.value, *args)
    completions = []
    for row in range(B):
        n = int(rm[row].sum())
        ids = r[row, :n - 1] if bool(gen["has_eos"][row]) else r[row, :n]
        completions.append(tok.decode(ids, skip_special_tokens=True))
    with autocast():
        raw = score_rollout(models, list(prompts), completions, r, rm, config.per_device_batch_size, reward_fn)
    raw = raw.to(r.device).float()
    return Rollout(list(prompts), completions, q, qm, r, rm, gen["has_eos"], raw,
                   process_scores(raw, gen["has_eos"], config, moments), logprobs, ref_logprobs, entropy, values,
                   generation_s=generation_s)


def compute_advantages(ro: Rollout, kl_coef: float, config: PPOConfig) -> Rollout:
    """Steps 3-4: per-token rewards with the KL penalty, GAE, whitening."""
    mask = ro.response_mask.float()
    ro.rewards, ro.kl = per_token_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, mask, kl_coef)
    ro.advantages, ro.returns = compute_gae(ro.rewards, ro.values, mask, config.gamma, config.lam)
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
def ppo_update(models: Models, ro: Rollout, optimizer, config: PPOConfig, params: list, generator: torch.Generator,
               ptx_data: list | None = None, autocast=nullcontext) -> dict[str, float]:
    """Step 5: ppo_epochs over shuffled minibatches; returns the mean of the logged statistics."""
    policy, value = models.policy, models.value
    policy.train(), value.train()  # dropout is off; train() only matters for gradient checkpointing
    B = ro.response_ids.shape[0]
    mini = min(config.mini_batch_size, B)
    micro = max(mini // max(config.gradient_accumulation_steps, 1), 1)
    stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "vf_clipfrac",
                                                       "ptx_loss")}
    device = ro.response_ids.device
    epochs_run, stop = 0, False
    for epoch in range(config.ppo_epochs):
        order = torch.randperm(B, generator=generator).to(device)
        for start in range(0, B - mini + 1, mini):
            optimizer.zero_grad(set_to_none=True)
            mb_stats: dict[str, list[float]] = {k: [] for k in stats}
            mb_idx = order[start:start + mini]
            n_micro = math.ceil(len(mb_idx) / micro)
            for m_start in range(0, len(mb_idx), micro):
                i = mb_idx[m_start:m_start + micro]
                r, rm = ro.response_ids[i], ro.response_mask[i]
                width = int(rm.sum(1).max())  # drop columns that are padding for the whole micro-batch
                r, rm = r[:, :width], rm[:, :width]
                args = (ro.query_ids[i], ro.query_mask[i], r, rm)
                with autocast():
                    new_logprobs = policy_forward(policy, *args, config.temperature)  # (b, R)
                    vpred = value_forward(value, *args)  # (b, R)
                out = ppo_losses(new_logprobs, ro.logprobs[i, :width], ro.advantages[i, :width], vpred,
                                 ro.values[i, :width], ro.returns[i, :width], rm.float(),
                                 config.cliprange, config.cliprange_value)
                loss = out["pg_loss"] + config.vf_coef * out["vf_loss"]
                if ptx_data and config.ptx_coef > 0:
                    picks = torch.randint(len(ptx_data), (config.ptx_batch_size,), generator=generator).tolist()
                    with autocast():
                        out["ptx_loss"] = ptx_loss(policy, [ptx_data[j] for j in picks],
                                                   models.tokenizer.pad_token_id, device)
                    loss = loss + config.ptx_coef * out["ptx_loss"]
                (loss / n_micro).backward()
                for k in mb_stats:
                    if k in out:
                        mb_stats[k].append(float(out[k].detach()))
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            for k, v in mb_stats.items():
                if v:
                    stats[k].append(sum(v) / len(v))
            if config.target_kl is not None and stats["approx_kl"][-1] > config.target_kl:
                stop = True
                break
        epochs_run = epoch + 1
        if stop:
            break
    optimizer.zero_grad(set_to_none=True)
    policy.eval(), value.eval()
    out = {k: sum(v) / len(v) for k, v in stats.items() if v}
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
    save_file({n: p.detach().contiguous().cpu() for n, p in trainable_parameters(models).items()},
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
    optimizer.load_state_dict(torch.load(Path(path) / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((Path(path) / STATE_FILE).read_text())


def save_policy(models: Models, config: PPOConfig) -> str:
    """``output_dir/model``: merged safetensors (LoRA + merge), the adapter alone, or the full weights."""
    out = Path(config.output_dir) / MODEL_SUBDIR
    policy = models.policy
    if config.use_lora and config.merge and hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
        models.policy = policy
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


def total_updates(config: PPOConfig, n_prompts: int) -> int:
    if config.max_steps > 0:
        return config.max_steps
    return max(1, math.ceil(config.num_train_epochs * n_prompts / config.rollout_batch_size))


def lr_factor(update: int, total: int, warmup_ratio: float) -> float:
    warmup = int(round(warmup_ratio * total))
    if update < warmup:
        return (update + 1) / warmup
    return max(0.0, (total - update) / max(total - warmup, 1))


def update_metrics(ro: Rollout, upd: dict[str, float], beta: float, seconds: float, lr: float) -> dict[str, float]:
    """The namespaced metrics of one update (see docs/PPO.md)."""
    mask = ro.response_mask.float()
    mean_kl = float(ro.kl.sum(1).mean())  # k1 summed over each response, mean over the batch
    nan = float("nan")
    metrics = {
        "objective/reward": float(ro.raw_scores.mean()),
        "objective/scores": float(ro.scores.mean()),
        "objective/kl": mean_kl,
        "objective/entropy": float(ro.entropy.sum(1).mean()),
        "objective/non_score_reward": -beta * mean_kl,
        "objective/rlhf_reward": float(ro.scores.mean()) - beta * mean_kl,
        "objective/kl_coef": beta,
        "loss/policy": upd.get("pg_loss", nan),
        "loss/value": upd.get("vf_loss", nan),
        "policy/clipfrac": upd.get("clipfrac", nan),
        "policy/approx_kl": upd.get("approx_kl", nan),
        "policy/eos_fraction": float(ro.has_eos.float().mean()),
        "policy/response_length": float(mask.sum(1).mean()),
        "val/explained_variance": explained_variance(ro.values, ro.returns, mask),
        "val/clipfrac": upd.get("vf_clipfrac", nan),
        "val/mean": float(masked_mean(ro.values, mask)),
        "ppo/epochs_run": upd["ppo_epochs_run"],
        "train/learning_rate": lr,
        "perf/episodes_per_s": len(ro.prompts) / seconds,
        "perf/generation_share": ro.generation_s / seconds,
        "perf/tokens_per_s": float(mask.sum()) / seconds,
    }
    if "ptx_loss" in upd:
        metrics["loss/ptx"] = upd["ptx_loss"]
    return metrics


def train(config: PPOConfig, prompts: Sequence[str | Messages] | None = None,
          progress: Callable[[int, int, dict], None] | None = None, *, reward_fn: RewardFn | None = None,
          demonstrations: Sequence[Demonstration] | None = None) -> Artifacts:
    """Run PPO; returns ``Artifacts`` (status ``succeeded`` or ``cancelled``).

    ``reward_fn(prompts, completions, response_ids (B, R), response_mask (B, R)) -> (B,)`` replaces the
    reward model (tests, rule-based rewards). ``demonstrations`` feed PPO-ptx (else ``config.ptx_data``).
    """
    from .models import bf16_capable, describe_model

    if config.mini_batch_size > config.rollout_batch_size or config.rollout_batch_size % config.mini_batch_size:
        raise ValueError("mini_batch_size must divide rollout_batch_size")
    if reward_fn is None and not config.reward_model:
        raise ValueError("PPO needs a reward model (config.reward_model) or a reward_fn")
    prompts = [as_messages(p) for p in (prompts if prompts is not None else load_ppo_prompts(config))]
    models = build_models(config, use_reward_model=reward_fn is None)
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
    fused = config.optim.endswith("fused") and device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, eps=1e-5, **({"fused": True} if fused else {}))
    use_bf16 = config.bf16 if config.bf16 is not None else bf16_capable(device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    kl_ctl = KLController(config.kl_coef, config.adaptive_kl, config.kl_target, config.kl_horizon)
    moments = RunningMoments()
    total = total_updates(config, len(kept))
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
        batch = [kept[i] for i in prompt_order(len(kept), update, config.rollout_batch_size, config.seed)]
        # 1-2. rollouts and scores
        ro = collect_rollout(models, batch, config, moments, reward_fn, autocast)
        # 3-4. KL-penalised rewards, values, GAE, whitening
        ro = compute_advantages(ro, kl_ctl.value, config)
        # 5. PPO epochs over minibatches
        gen = torch.Generator().manual_seed(config.seed + update)
        upd = ppo_update(models, ro, optimizer, config, params, gen, ptx_data, autocast)
        # 6. adaptive KL coefficient
        beta = kl_ctl.value
        kl_ctl.update(float(ro.kl.sum(1).mean()), config.rollout_batch_size)
        seconds = time.time() - t0
        step = update + 1
        metrics = update_metrics(ro, upd, beta, seconds, optimizer.param_groups[0]["lr"])
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
    meta = write_metadata(config.output_dir, kind="ppo", base_model=describe_model(config.model),
                          data_hash=data_hash(kept), config=config, metrics=final, status=status,
                          extra={"model_dir": model_dir, "last_checkpoint": last_checkpoint(config.output_dir),
                                 "reward_model": describe_model(config.reward_model) if config.reward_model
                                 and reward_fn is None else "reward_fn", "num_prompts": len(kept),
                                 "metrics_file": str(metrics_path)})
    return Artifacts(str(config.output_dir), model_dir, meta, status, final, step)


# ======================================================================================= command line
def main(argv: list[str] | None = None) -> int:
    """``python -m rlhf.ppo --config FILE``: the same as ``python -m rlhf ppo --config FILE``."""
    from . import __main__ as cli

    return cli.main(["ppo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
