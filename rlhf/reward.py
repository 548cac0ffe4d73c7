"""Reward model (InstructGPT step 2) with TRL's RewardTrainer.

    python -m rlhf reward --config reward.json

An ``AutoModelForSequenceClassification`` with one output is initialised from the SFT checkpoint (a
fresh ``score`` head on top of the policy's body) and trained with the Bradley-Terry loss
``-log sigmoid(r_chosen - r_rejected [- margin])`` on conversational preference pairs. Pairs longer
than ``max_length`` tokens are dropped (TRL does not truncate). After training the pairwise accuracy
on held-out pairs (``eval_pairs``, or an ``eval_fraction`` split) is reported as
``eval/pairwise_accuracy``.

``score(model, tokenizer, items)`` scores conversations exactly as RewardTrainer formats its inputs:
the chat template over prompt + completion (plain strings get the EOS token appended), right padding,
and the score read at the last non-pad token. PPO uses it for rewards.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch

from .config import RewardRunConfig  # noqa: F401 (the config lives in rlhf.config; importable from here too)
from .contract import Artifacts, data_hash, seed_everything
from .data import Messages, PreferencePair, load_pairs, pairs_to_dataset
from .models import describe_model, load_reward_model, load_tokenizer
from .runner import attach_progress, peft_config_for, run_trainer, trl_args


def conversation(prompt: str | Messages, completion: str) -> Messages:
    """Prompt + assistant completion as one conversation."""
    from .data import as_messages

    return as_messages(prompt) + [{"role": "assistant", "content": completion}]


def encode_for_reward(tokenizer, item: str | Messages) -> list[int]:
    """Token ids exactly as RewardTrainer builds them (chat template, or text + EOS)."""
    if isinstance(item, str):
        text = item if item.endswith(tokenizer.eos_token) else item + tokenizer.eos_token
        return tokenizer(text=text)["input_ids"]
    return tokenizer.apply_chat_template(item, tokenize=True, return_dict=True)["input_ids"]


@torch.no_grad()
def score(model, tokenizer, items: Sequence[str | Messages], batch_size: int = 16) -> torch.Tensor:
    """Rewards (N,) float32 on CPU for full conversations (or plain texts), in input order."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    model_pad = model.config.get_text_config().pad_token_id if hasattr(model.config, "get_text_config") else None
    if model_pad is None or model_pad != pad:
        model.config.pad_token_id = pad  # the classifier reads the last token that is not `pad`
    was_training = model.training
    model.eval()
    encoded = [encode_for_reward(tokenizer, it) for it in items]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # length-sorted batches: less padding
    out = torch.empty(len(encoded), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (b, T) right padded
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits  # (b, 1)
        out[idx] = logits[:, 0].float().cpu()
    model.train(was_training)
    return out


def pairwise_accuracy(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 16) -> float:
    """Fraction of pairs with r(chosen) > r(rejected) (a tie counts one half)."""
    if not pairs:
        return float("nan")
    items = [conversation(p.prompt, p.chosen) for p in pairs] + [conversation(p.prompt, p.rejected) for p in pairs]
    rewards = score(model, tokenizer, items, batch_size)
    chosen, rejected = rewards[:len(pairs)], rewards[len(pairs):]
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


def fit_to_length(pairs: Sequence[PreferencePair], tokenizer, max_length: int) -> list[PreferencePair]:
    """Drop the earliest prompt turns until both conversations of a pair fit ``max_length`` tokens.

    RewardTrainer drops over-long pairs instead of truncating; this keeps them with a shorter history.
    Pairs that do not fit even with only the last user turn are dropped.
    """
    out = []
    for p in pairs:
        prompt = list(p.prompt)
        while True:
            longest = max(len(encode_for_reward(tokenizer, conversation(prompt, c))) for c in (p.chosen, p.rejected))
            if longest <= max_length:
                out.append(p if len(prompt) == len(p.prompt) else
                           PreferencePair(prompt, p.chosen, p.rejected, p.margin, dict(p.meta, trimmed=True)))
                break
            starts = [i for i, m in enumerate(prompt) if m["role"] == "user" and i > 0]
            if not starts:
                break
            prompt = prompt[starts[0]:]
    return out


def split_pairs(pairs: Sequence[PreferencePair], eval_fraction: float, seed: int):
    """Deterministic train/held-out split (``random.Random(seed)`` shuffle)."""
    idx = list(range(len(pairs)))
    random.Random(seed).shuffle(idx)
    n_eval = int(round(len(pairs) * eval_fraction))
    return [pairs[i] for i in idx[n_eval:]], [pairs[i] for i in idx[:n_eval]]


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50) -> list[int]:
    """An epoch order whose consecutive ``batch_size`` chunks hold items of similar length.

    Shuffle, cut into mega-batches of ``mega x batch_size`` items, sort each by length (longest first),
    cut into batches and shuffle the batches: every item appears exactly once, the batch order stays
    random, and padding per batch is small. A permutation of ``range(len(lengths))``.
    """
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    span = max(1, mega * batch_size)
    batches = []
    for start in range(0, len(idx), span):
        chunk = sorted(idx[start:start + span], key=lambda i: -lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def build_reward_trainer(config: RewardRunConfig, pairs: Sequence[PreferencePair],
                         eval_pairs: Sequence[PreferencePair] | None = None, model=None, tokenizer=None):
    """A ``RewardTrainer`` ready to ``train()``."""
    from trl import RewardConfig, RewardTrainer

    seed_everything(config.seed)  # the score head is initialised at load time
    tokenizer = tokenizer or load_tokenizer(config.model)
    model = model or load_reward_model(config.model, device=config.device, dtype=config.dtype,
                                       load_in_bits=config.load_in_bits)
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs = list(pairs)
    sampling = {}
    if config.group_by_length and len(pairs) > config.per_device_batch_size:
        # Our own length-grouped order + a sequential sampler (transformers' group_by_length needs an
        # `input_ids` column; RewardTrainer's rows hold chosen/rejected ids). Longest conversation of a pair:
        lengths = [max(len(encode_for_reward(tokenizer, conversation(p.prompt, c))) for c in (p.chosen, p.rejected))
                   for p in pairs]
        batch = config.per_device_batch_size * config.gradient_accumulation_steps
        pairs = [pairs[i] for i in length_grouped_order(lengths, batch, config.seed)]
        sampling = {"train_sampling_strategy": "sequential"}
    args = trl_args(config, RewardConfig, center_rewards_coefficient=config.center_rewards_coefficient,
                    per_device_eval_batch_size=config.eval_batch_size, **sampling)
    return RewardTrainer(
        model=model, args=args, processing_class=tokenizer, train_dataset=pairs_to_dataset(pairs),
        eval_dataset=pairs_to_dataset(eval_pairs) if eval_pairs else None,
        peft_config=peft_config_for(config, "SEQ_CLS"),
    )


def train_reward(config: RewardRunConfig, pairs: Sequence[PreferencePair] | None = None,
                 eval_pairs: Sequence[PreferencePair] | None = None,
                 progress: Callable[[int, int, dict], None] | None = None) -> Artifacts:
    """Train the reward model; metrics include ``eval/pairwise_accuracy`` on held-out pairs."""
    if pairs is None:
        pairs = load_pairs(config.data, config.data_format, config.margin_scale)
    pairs = list(pairs)
    if eval_pairs is None and config.eval_fraction > 0:
        pairs, eval_pairs = split_pairs(pairs, config.eval_fraction, config.seed)
    tokenizer = load_tokenizer(config.model)
    trainer = attach_progress(build_reward_trainer(config, pairs, tokenizer=tokenizer), progress)

    def held_out(trainer) -> dict:
        if not eval_pairs:
            return {}
        acc = pairwise_accuracy(trainer.model, tokenizer, eval_pairs, config.eval_batch_size)
        return {"eval/pairwise_accuracy": acc, "eval/pairs": len(eval_pairs)}

    return run_trainer(trainer, config, kind="reward", tokenizer=tokenizer, base_model=describe_model(config.model),
                       data_hash=data_hash(pairs), progress=progress, after_train=held_out,
                       extra_meta={"num_pairs": len(pairs), "num_eval_pairs": len(eval_pairs or [])})
