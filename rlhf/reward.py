"""Reward model (InstructGPT step 2) with TRL's RewardTrainer.

    python -m rlhf reward --config reward.json

An ``AutoModelForSequenceClassification`` with one output is initialised from the SFT checkpoint (a
fresh ``score`` head on top of the policy's body) and trained with the Bradley-Terry loss
``-log sigmoid(r_chosen - r_rejected [- margin])`` on conversational preference pairs. Pairs longer
than ``max_length`` tokens are dropped (TRL does not truncate; ``drop_too_long`` drops them first and the run's
metadata counts them as ``num_pairs_too_long``). After training the pairwise accuracy
on held-out pairs (``eval_pairs``, or an ``eval_fraction`` split) is reported as
``eval/pairwise_accuracy``.

``score(model, tokenizer, items)`` scores conversations exactly as RewardTrainer formats its inputs:
the chat template over prompt + completion (plain strings get the EOS token appended), right padding,
and the score read at the last non-pad token. PPO uses it for rewards.

Held-out pairs also give the length diagnostics of ``rlhf.length`` (accuracy where the chosen answer is
longer / shorter, how often the longer answer is preferred, the "longer wins" baseline, the correlation
of reward with length in characters). ``length_control: "odin"`` trains ODIN's quality and length heads
(``rlhf.length.odin_loss``), ``"poe"`` the reward beside a length-only expert (``rlhf.length.poe_loss``);
both keep only the quality head as the model's score head.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Callable, Sequence

import torch

from .config import (  # noqa: F401 (they live in rlhf.config; importable from here too)
    LENGTH_CONTROLS,
    RewardRunConfig,
    check_reward_config,
)
from .contract import Artifacts, data_hash, seed_everything
from .data import Messages, PreferencePair, load_pairs, pairs_to_dataset
from .length import CONFIG_KEY, answer_lengths, calibrate, calibration_of
from .models import describe_model, load_reward_model, load_tokenizer
from .runner import (
    attach_progress,
    check_lora_layers,
    check_peft_here,
    peft_config_for,
    resolve_throughput,
    run_trainer,
    trl_args,
)
from .weighting import select_pairs
from .weighting import summary as weighting_summary

log = logging.getLogger(__name__)


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


def answer_text(item: str | Messages) -> str:
    """The answer a reward is for: a conversation's last message, or the whole of a plain text."""
    return item if isinstance(item, str) else (item[-1].get("content") or "" if item else "")


@torch.no_grad()
def score(model, tokenizer, items: Sequence[str | Messages], batch_size: int = 16, features: bool = False,
          calibrated: bool = True):
    """Rewards (N,) float32 on CPU for full conversations (or plain texts), in input order. With ``features``:
    (rewards, features (N, H) float32), the final hidden state at the token the score head reads (what
    ``rlhf.active``'s ensemble heads are fitted on). A model that carries a length calibration
    (``rlhf.length.calibration_of``; ``length_calibration`` of the reward run) has it applied to the rewards,
    with each answer's characters (``answer_text``), unless ``calibrated`` is False."""
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
    feats, hidden = None, []
    hook = model.score.register_forward_hook(lambda module, args, output: hidden.append(args[0])) if features else None
    try:
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
            if features:
                states = hidden.pop()  # (b, T, H): the score head's input at every position
                # the position the classifier pools: the rightmost token that is not the pad id (as transformers'
                # sequence classification does; not the last real token, when a text ends in a token equal to pad)
                real = (ids != pad).long()
                last = (torch.arange(width) * real).argmax(-1).to(states.device)
                picked = states[torch.arange(len(idx), device=states.device), last].float().cpu()
                if feats is None:
                    feats = torch.empty(len(encoded), picked.shape[-1], dtype=torch.float32)
                feats[idx] = picked
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    calibration = calibration_of(model) if calibrated else None
    if calibration:
        out = calibrate(out, answer_lengths([answer_text(it) for it in items]), calibration)
    return (out, feats) if features else out


def score_pairs(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 16, calibrated: bool = True):
    """(rewards of the chosen answers (N,), rewards of the rejected answers (N,)). Each distinct conversation is
    scored once: the C(K, 2) pairs of a ranking of K answers hold only K of them."""
    where, items = distinct_conversations(pairs)
    rewards = score(model, tokenizer, items, batch_size, calibrated=calibrated)
    return rewards[where[:len(pairs)]], rewards[where[len(pairs):]]


def distinct_conversations(pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, list]:
    """(index (2N,) into the distinct conversations of every chosen then every rejected answer, those
    conversations in first-seen order)."""
    seen: dict[str, int] = {}
    items, where = [], []
    for prompt, answer in [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]:
        item = conversation(prompt, answer)
        key = json.dumps(item, sort_keys=True)
        if key not in seen:
            seen[key] = len(items)
            items.append(item)
        where.append(seen[key])
    return torch.tensor(where, dtype=torch.long), items


def pairwise_accuracy(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 16) -> float:
    """Fraction of pairs with r(chosen) > r(rejected) (a tie counts one half)."""
    if not pairs:
        return float("nan")
    chosen, rejected = score_pairs(model, tokenizer, pairs, batch_size)
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


def held_out_report(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 16) -> dict:
    """Pairwise accuracy and the length diagnostics (``rlhf.length``) on held-out pairs; for a model with a
    length calibration, of the calibrated reward, with the same diagnostics of the uncalibrated one under
    ``eval/uncalibrated/``."""
    from .length import length_diagnostics

    chosen, rejected = score_pairs(model, tokenizer, pairs, batch_size, calibrated=False)
    lc, lr = answer_lengths([p.chosen for p in pairs]), answer_lengths([p.rejected for p in pairs])
    calibration = calibration_of(model)
    report = length_diagnostics(calibrate(chosen, lc, calibration), calibrate(rejected, lr, calibration), lc, lr)
    if calibration:
        raw = length_diagnostics(chosen, rejected, lc, lr)
        report.update({f"eval/uncalibrated/{key.removeprefix('eval/')}": raw[key] for key in UNCALIBRATED_KEYS})
    return report


UNCALIBRATED_KEYS = ("eval/pairwise_accuracy", "eval/accuracy_chosen_longer", "eval/accuracy_chosen_shorter",
                     "eval/prefers_longer", "eval/reward_length_corr")


def fit_reward_calibration(model, tokenizer, pairs: Sequence[PreferencePair], config: RewardRunConfig) -> dict:
    """``length_calibration``: score ``length_calibration_pairs`` training pairs (a sample drawn with the run's
    seed), fit ``rlhf.length.fit_length_calibration`` on them and store it in the model's config (saved with
    it). Returns the fit."""
    from .length import fit_length_calibration

    sample = list(pairs)
    if len(sample) > config.length_calibration_pairs:
        sample = random.Random(config.seed).sample(sample, config.length_calibration_pairs)
    chosen, rejected = score_pairs(model, tokenizer, sample, config.eval_batch_size, calibrated=False)
    fit = fit_length_calibration(chosen, rejected, answer_lengths([p.chosen for p in sample]),
                                 answer_lengths([p.rejected for p in sample]), scale=config.length_calibration)
    setattr(model.config, CONFIG_KEY, {"beta": fit["beta"], "scale": fit["scale"]})
    return fit


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


def drop_too_long(pairs: Sequence[PreferencePair], tokenizer, max_length: int | None
                  ) -> tuple[list[PreferencePair], list[int], int]:
    """(the pairs whose chosen and rejected conversations both fit ``max_length`` tokens, the longest conversation
    of each in tokens, how many were dropped): the pairs RewardTrainer would drop itself (it does not truncate),
    dropped before anything sees them (the head probe, the epoch order, the count in the run's metadata). Each
    distinct conversation is tokenized once. Raises ``ValueError`` when none fits."""
    pairs = list(pairs)
    where, items = distinct_conversations(pairs)
    where = where.tolist()
    sizes = [len(encode_for_reward(tokenizer, item)) for item in items]
    lengths = [max(sizes[where[i]], sizes[where[len(pairs) + i]]) for i in range(len(pairs))]
    if not max_length:
        return pairs, lengths, 0
    kept = [i for i, n in enumerate(lengths) if n <= max_length]
    if not kept:
        raise ValueError(f"no pair fits max_length={max_length} tokens: the shortest of the {len(pairs)} pairs "
                         f"takes {min(lengths)} tokens (chat template included). Raise max_length, or shorten "
                         "the prompts (rlhf.reward.fit_to_length keeps a pair with a shorter history).")
    if len(kept) < len(pairs):
        log.info("dropping %d of %d pairs longer than max_length=%d tokens", len(pairs) - len(kept), len(pairs),
                 max_length)
    return [pairs[i] for i in kept], [lengths[i] for i in kept], len(pairs) - len(kept)


def probe_head_for(model, tokenizer, pairs: Sequence[PreferencePair], batch_size: int = 16
                   ) -> tuple[torch.Tensor, dict]:
    """``head_init: "probe"``: (a score head (H,) fitted to convergence on the pairs' features under ``model`` as
    it is, a summary). Pairs of weight 0 are left out; the others count once each, in their stated order."""
    from .active import standardised_probe

    kept = [p for p in pairs if p.weight > 0]
    if not kept:
        raise ValueError("head_init 'probe' needs at least one pair of positive weight to fit the head on.")
    where, items = distinct_conversations(kept)
    _, features = score(model, tokenizer, items, batch_size, features=True, calibrated=False)
    diffs = features[where[:len(kept)]] - features[where[len(kept):]]
    head = standardised_probe(diffs)
    return head, {"mode": "probe", "pairs": len(kept), "answers": len(items),
                  "train_accuracy": round(float((diffs @ head > 0).float().mean()), 4)}


HEAD_INIT_FILE = "head_init.json"  # in the run's output_dir: how the probe went, for a resumed run's metadata


def _probe_or_resumed(config: RewardRunConfig, model, tokenizer, pairs: Sequence[PreferencePair]
                      ) -> tuple[torch.Tensor | None, dict]:
    """``head_init: "probe"``: the probe's head and summary (the summary kept in ``HEAD_INIT_FILE``); or, for a run
    that resumes from a checkpoint of a run that fitted it, (None, that summary + ``resumed``): the checkpoint
    holds the head training made of the probe, so no forward pass is spent on a head that would be overwritten."""
    from pathlib import Path

    from .contract import last_checkpoint

    saved = Path(config.output_dir) / HEAD_INIT_FILE
    if config.resume and saved.is_file() and last_checkpoint(config.output_dir):
        return None, {**json.loads(saved.read_text()), "resumed": True}
    head, summary = probe_head_for(model, tokenizer, pairs, config.eval_batch_size)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(summary))
    return head, summary


def set_score_head(model, head: torch.Tensor) -> None:
    """Copy ``head`` (H,) into the model's single-output score head (before LoRA wraps it: peft's trainable copy
    starts from it)."""
    weight = _score_module(model).weight
    if weight.shape != (1, head.shape[-1]):
        raise ValueError(f"the score head has shape {tuple(weight.shape)}; the head to start from has "
                         f"{tuple(head.shape)}")
    with torch.no_grad():
        weight.copy_(head.reshape(1, -1).to(weight.dtype))


def build_reward_trainer(config: RewardRunConfig, pairs: Sequence[PreferencePair],
                         eval_pairs: Sequence[PreferencePair] | None = None, model=None, tokenizer=None,
                         initial_head: torch.Tensor | None = None):
    """A ``RewardTrainer`` ready to ``train()`` (the studio subclass with a ``length_control`` or
    ``label_weights``; with "balance" the pairs carry their balanced weights, ``trainer.rlhf_length_balance``
    the balance's summary). The score head starts as ``config.head_init`` says, or from ``initial_head`` (H,)
    when given (e.g. a probe fitted on features computed before); ``trainer.rlhf_head_init`` says which."""
    from trl import RewardConfig, RewardTrainer

    check_reward_config(config)
    check_peft_here(config, "reward")  # an unsupported method is refused before any model loads
    pairs, balance = list(pairs), None
    if config.length_control == "balance":  # before any model loads: it may find nothing to balance
        pairs, balance = balance_pairs(pairs, mode=config.label_weights, bins=config.length_balance_bins)
    seed_everything(config.seed)  # the score head is initialised at load time
    tokenizer = tokenizer or load_tokenizer(config.model)
    pairs, lengths, too_long = drop_too_long(pairs, tokenizer, config.max_length)  # before the model loads
    throughput = resolve_throughput(config, "reward")
    model = model or load_reward_model(config.model, device=config.device, dtype=throughput.dtype,
                                       load_in_bits=config.load_in_bits)
    check_lora_layers(config, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    head_init = {"mode": "random"}
    if initial_head is not None:
        head_init = {"mode": "given"}
    elif config.head_init == "probe":
        initial_head, head_init = _probe_or_resumed(config, model, tokenizer, pairs)
    if initial_head is not None:
        set_score_head(model, initial_head)
    sampling = {}
    if (config.group_by_prompt or config.group_by_length) and len(pairs) > config.per_device_batch_size:
        # Our own epoch order + a sequential sampler (transformers' group_by_length needs an `input_ids` column;
        # RewardTrainer's rows hold chosen/rejected ids); `lengths`: the longest conversation of each pair.
        batch = config.per_device_batch_size * config.gradient_accumulation_steps
        order = (prompt_grouped_order([p.prompt for p in pairs], lengths, batch, config.seed)
                 if config.group_by_prompt else length_grouped_order(lengths, batch, config.seed))
        pairs = [pairs[i] for i in order]
        sampling = {"train_sampling_strategy": "sequential"}
    args = trl_args(config, RewardConfig, throughput, center_rewards_coefficient=config.center_rewards_coefficient,
                    per_device_eval_batch_size=config.eval_batch_size, **sampling)
    common = dict(model=model, args=args, processing_class=tokenizer,
                  eval_dataset=pairs_to_dataset(eval_pairs) if eval_pairs else None,
                  peft_config=peft_config_for(config, "SEQ_CLS"))
    if config.length_control == "none" and config.label_weights == "none" and not config.group_by_prompt:
        trainer = RewardTrainer(train_dataset=pairs_to_dataset(pairs), **common)
        trainer.rlhf_throughput = throughput
        trainer.rlhf_head_init = head_init
        trainer.rlhf_too_long = too_long
        return trainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from .weighting import soft_targets

    dataset = pairs_to_dataset(pairs)
    extra = {"chosen_chars": [len(p.chosen) for p in pairs], "rejected_chars": [len(p.rejected) for p in pairs],
             "pair_weight": [float(p.weight) for p in pairs], "pair_target": soft_targets(pairs)}
    for name, values in extra.items():
        dataset = dataset.add_column(name, values)
    collator = _ExtraCollator(DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id))
    trainer = _studio_trainer_class()(config, train_dataset=dataset, data_collator=collator, **common)
    trainer.rlhf_throughput = throughput
    trainer.rlhf_length_balance = balance
    trainer.rlhf_head_init = head_init
    trainer.rlhf_too_long = too_long
    return trainer


def balance_pairs(pairs: Sequence[PreferencePair], *, mode: str, bins: int) -> tuple[list[PreferencePair], dict]:
    """``length_control: "balance"``: each pair's weight times its ``rlhf.length.length_balance`` factor (its
    own weight with ``label_weights: "weight"``, else 1 times the factor), pairs of factor 0 dropped; and the
    balance's summary. Raises ``ValueError`` when no pair is left."""
    from dataclasses import replace

    from .length import length_balance

    base = [float(p.weight) if mode == "weight" else 1.0 for p in pairs]
    factors, summary = length_balance([len(p.chosen) for p in pairs], [len(p.rejected) for p in pairs],
                                      weights=base, bins=bins)
    kept = [replace(p, weight=b * f) for p, b, f in zip(pairs, base, factors) if f > 0]
    if not kept:
        raise ValueError(f"length_control 'balance' left no pair to train on: in every band of length difference "
                         f"the {len(pairs)} pairs' chosen answers are all longer (or all shorter) than the rejected "
                         "ones, so nothing balances them. Use more pairs, fewer length_balance_bins or another "
                         "length_control.")
    return kept, summary


class _ExtraCollator:
    """TRL's preference collator plus ``lengths`` (2B,): characters of the chosen answers, then the
    rejected; and ``weights`` and ``targets`` (B,): each pair's loss weight and soft label."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        batch = self.inner(examples)
        batch["lengths"] = torch.tensor([float(e["chosen_chars"]) for e in examples]
                                        + [float(e["rejected_chars"]) for e in examples])
        batch["weights"] = torch.tensor([float(e["pair_weight"]) for e in examples])
        batch["targets"] = torch.tensor([float(e["pair_target"]) for e in examples])
        return batch


LENGTH_HEAD_FILE = "length_head.safetensors"
_STUDIO_TRAINER = None


def prompt_grouped_order(prompts: Sequence, lengths: Sequence[int], batch_size: int, seed: int,
                         mega: int = 50) -> list[int]:
    """``group_by_prompt``'s epoch order: the pairs of one prompt consecutive (in random order among
    themselves), prompts in ``length_grouped_order``'s way: shuffled, cut into mega-batches of about
    ``mega x batch_size`` pairs, each sorted by its prompt's longest pair, then cut into batches of
    ``batch_size`` pairs whose order is shuffled. A permutation of ``range(len(prompts))``."""
    import json

    rng = random.Random(seed)
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True), []).append(i)
    units = list(groups.values())
    rng.shuffle(units)
    for unit in units:
        rng.shuffle(unit)
    span = max(1, mega * batch_size)
    order, chunk, size = [], [], 0
    for unit in units + [None]:
        if unit is None or size >= span:
            order += [i for u in sorted(chunk, key=lambda u: -max(lengths[i] for i in u)) for i in u]
            chunk, size = [], 0
        if unit is not None:
            chunk.append(unit)
            size += len(unit)
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def distinct_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): the index of each distinct (ids, mask) row's first occurrence, and for every row the
    position of its distinct row in ``first``; rows equal wherever the mask is 1 (and equally masked) are one
    row. ``x[first][inverse]`` equals ``x`` row for row."""
    key = input_ids.masked_fill(attention_mask == 0, -1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = len(key)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(n, device=key.device), reduce="amin")
    order = torch.argsort(first)  # distinct rows in order of first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=key.device)
    return first[order], rank[inverse]


def _studio_trainer_class():
    """``RewardTrainer`` with a length head and ODIN's or PoE's loss, and/or per-pair weights and soft
    labels (rlhf.weighting), and/or ``group_by_prompt``'s one forward pass per distinct conversation of a
    batch; built on first use, as TRL loads lazily."""
    global _STUDIO_TRAINER
    if _STUDIO_TRAINER is not None:
        return _STUDIO_TRAINER
    from pathlib import Path

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    from trl import RewardTrainer

    from .length import fit_length_expert, odin_loss, poe_loss
    from .weighting import bradley_terry

    class StudioRewardTrainer(RewardTrainer):
        """The model's own score head is the quality head q. ODIN: a second linear head on the same hidden
        state (the input of ``score``, read at the same last token) is the length head. PoE: the length
        expert is w * log(1 + characters), w fitted on the training pairs first and held fixed
        (rlhf.length.fit_length_expert). Either is a submodule ``length_head`` of the
        model while training (so optimizer and DDP see it) and is dropped before saving. With
        ``label_weights`` the Bradley-Terry term is the weighted or soft-label one of rlhf.weighting
        (with ``length_control`` "none" that term is the whole loss)."""

        def __init__(self, config: RewardRunConfig, **kwargs):
            super().__init__(**kwargs)
            self.control = config
            self._score = _score_module(self.model)
            if config.length_control in ("none", "balance"):  # balance: per-pair weights only, no length head
                return
            if config.length_control == "odin":
                head = torch.nn.Linear(_head_weight(self._score).shape[-1], 1, bias=False)
                torch.nn.init.normal_(head.weight, std=getattr(self.model.config, "initializer_range", 0.02))
            else:  # poe: the bias-only expert, fitted first and held fixed (Clark et al. 2019)
                head = torch.nn.Linear(1, 1, bias=False)
                data = self.train_dataset
                mode = config.label_weights
                w = fit_length_expert(
                    data["chosen_chars"], data["rejected_chars"],
                    weights=data["pair_weight"] if mode == "weight" else None,
                    targets=data["pair_target"] if mode == "soft" else None) if len(data) else 0.0
                head.weight.data.fill_(w)
                head.weight.requires_grad_(False)
            self.model.add_module("length_head", head.to(next(self.model.parameters()).device))

        def _set_signature_columns_if_needed(self):
            if self._signature_columns is None:  # keep the answers' lengths, weights and labels for the collator
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "chosen_chars", "rejected_chars",
                                           "pair_weight", "pair_target"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            lengths = inputs.pop("lengths")
            weights, targets = inputs.pop("weights", None), inputs.pop("targets", None)
            control = self.control.length_control
            if mode == "eval":
                weights = targets = None  # held-out loss is the plain one
            else:
                if self.control.label_weights != "soft":
                    targets = None
                if self.control.label_weights != "weight" and control != "balance":
                    weights = None  # "balance" puts its factors in the pairs' weights (balance_pairs)
            captured = {}
            hook = None
            if control == "odin":
                hook = self._score.register_forward_hook(
                    lambda module, args, out: captured.__setitem__("hidden", args[0]))
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            inverse = None
            if self.control.group_by_prompt:  # score each distinct conversation of the batch once
                first, inverse = distinct_rows(ids, mask)
                self._metrics[mode]["scored_share"].append(len(first) / len(ids))  # forward rows / 2B
                if len(first) < len(ids):
                    ids, mask = ids[first], mask[first]
                else:
                    inverse = None
            try:
                outputs = model(input_ids=ids, attention_mask=mask, use_cache=False)
            finally:
                if hook is not None:
                    hook.remove()
            if inverse is not None:  # back to one reward per row: chosen then rejected, as TRL lays them out
                outputs.logits = outputs.logits[inverse]
            quality = outputs.logits.squeeze(-1).float()  # (2B,) the score head = quality head
            lengths = lengths.to(quality.device)
            weights = None if weights is None else weights.to(quality.device)
            targets = None if targets is None else targets.to(quality.device)
            if control == "odin":
                head = self.model.length_head
                hidden = captured["hidden"]  # (2B, T, H) (distinct rows with group_by_prompt), what the score head read
                last = mask.sum(-1) - 1  # right padding: the token the score is read at
                length = head(hidden[torch.arange(len(last), device=hidden.device), last].float()).squeeze(-1)
                if inverse is not None:
                    length = length[inverse]  # (2B,)
                loss, parts = odin_loss(quality, length, lengths, _head_weight(self._score), head.weight,
                                        length_weight=self.control.odin_length_weight,
                                        orthogonal_weight=self.control.odin_orthogonal_weight,
                                        margin=inputs.get("margin"), weights=weights, targets=targets)
            elif control == "poe":
                loss, parts = poe_loss(quality, self.model.length_head.weight.reshape(()), lengths,
                                       margin=inputs.get("margin"), weights=weights, targets=targets)
            else:
                chosen, rejected = quality.chunk(2)
                diff = chosen - rejected
                if inputs.get("margin") is not None:
                    diff = diff - inputs["margin"]
                loss, parts = bradley_terry(diff, weights, targets), {}
            if self.args.center_rewards_coefficient is not None:  # TRL's penalty: each pair's rewards sum to zero
                pair_chosen, pair_rejected = quality.chunk(2)
                loss = loss + self.args.center_rewards_coefficient * torch.mean((pair_chosen + pair_rejected) ** 2)
            chosen, rejected = quality.detach().chunk(2)
            self._metrics[mode]["accuracy"].append(float((chosen > rejected).float().mean()))  # the quality head's
            self._metrics[mode]["margin"].append(float((chosen - rejected).mean()))
            for key, value in parts.items():
                self._metrics[mode][key].append(float(value))
            return (loss, outputs) if return_outputs else loss

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)  # peft checkpoints hold the adapter only: keep the head too
            if not hasattr(self.model, "length_head"):
                return
            from safetensors.torch import save_file

            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if self.accelerator.is_main_process and folder.is_dir():
                save_file({"weight": self.model.length_head.weight.detach().cpu().contiguous()},
                          str(folder / LENGTH_HEAD_FILE))

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            path = Path(resume_from_checkpoint) / LENGTH_HEAD_FILE
            if path.is_file() and hasattr(self.model, "length_head"):
                from safetensors.torch import load_file

                with torch.no_grad():
                    self.model.length_head.weight.copy_(load_file(str(path))["weight"])

    _STUDIO_TRAINER = StudioRewardTrainer
    return StudioRewardTrainer


def _score_module(model):
    """The score head module (peft's ``ModulesToSaveWrapper`` around it when LoRA trains a copy)."""
    names = [name for name, _ in model.named_modules() if name.split(".")[-1] == "score"]
    if not names:
        raise ValueError("the reward model has no `score` head")
    return model.get_submodule(min(names, key=len))


def _head_weight(score_module) -> torch.Tensor:
    """The trainable weight (1, H) of a score head (the adapter's copy under LoRA)."""
    trainable = [p for name, p in score_module.named_parameters() if name.endswith("weight") and p.requires_grad]
    return (trainable or [score_module.weight])[0]


def drop_length_head(model) -> None:
    """Remove the length head (ODIN, PoE) from a trained model before it is saved (``score`` stays: quality)."""
    for module in [model, getattr(model, "module", None)]:
        if module is not None and hasattr(module, "length_head"):
            del module.length_head


def train_reward(config: RewardRunConfig, pairs: Sequence[PreferencePair] | None = None,
                 eval_pairs: Sequence[PreferencePair] | None = None,
                 progress: Callable[[int, int, dict], None] | None = None,
                 initial_head: torch.Tensor | None = None) -> Artifacts:
    """Train the reward model; metrics include ``eval/pairwise_accuracy`` and the length diagnostics
    (``rlhf.length``) on held-out pairs. ``initial_head``: see ``build_reward_trainer``."""
    check_reward_config(config)
    if pairs is None:
        pairs = load_pairs(config.data, config.data_format, config.margin_scale)
    pairs = list(pairs)
    if eval_pairs is None and config.eval_fraction > 0:
        pairs, eval_pairs = split_pairs(pairs, config.eval_fraction, config.seed)
    given = pairs
    pairs = select_pairs(pairs, mode=config.label_weights, min_confidence=config.min_confidence)
    if not pairs:
        raise ValueError(f"no pair is left to train on: all {len(given)} were dropped by min_confidence "
                         f"{config.min_confidence} or had weight 0.")
    trainer = attach_progress(build_reward_trainer(config, pairs, initial_head=initial_head),
                              progress)  # refuses bad input before loading
    tokenizer = trainer.processing_class

    def held_out(trainer) -> dict:
        drop_length_head(trainer.model)  # ODIN / PoE: from here on the model is its quality head alone
        metrics = {}
        if getattr(trainer.model.config, CONFIG_KEY, None) is not None:  # inherited from a calibrated base: not ours;
            setattr(trainer.model.config, CONFIG_KEY, {"beta": 0.0})  # saved as such, it overrides the base's
        if config.length_calibration != "none":  # before the held-out report, which then reads the calibrated reward
            fit = fit_reward_calibration(trainer.model, tokenizer, pairs, config)
            metrics.update({f"length_calibration/{k}": v for k, v in fit.items() if k != "scale"})
        if eval_pairs:
            metrics.update(held_out_report(trainer.model, tokenizer, eval_pairs, config.eval_batch_size))
        return metrics

    head = {"odin": "quality head of ODIN (length head dropped)",
            "poe": "quality head of PoE (length expert dropped)",
            "balance": "single head, trained on length-balanced pair weights"}.get(config.length_control,
                                                                                  "single head")
    return run_trainer(trainer, config, kind="reward", tokenizer=tokenizer, base_model=describe_model(config.model),
                       data_hash=data_hash(pairs), progress=progress, after_train=held_out,
                       extra_meta={"num_pairs": len(pairs) - trainer.rlhf_too_long,
                                   "num_pairs_too_long": trainer.rlhf_too_long,
                                   "num_eval_pairs": len(eval_pairs or []),
                                   "reward_head": head, "head_init": trainer.rlhf_head_init,
                                   "label_weighting": weighting_summary(given, pairs, mode=config.label_weights,
                                                                        min_confidence=config.min_confidence),
                                   **({"length_balance": trainer.rlhf_length_balance}
                                      if getattr(trainer, "rlhf_length_balance", None) else {})})
