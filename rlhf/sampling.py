"""Sampling K completions per prompt, plus the token-level helpers PPO builds on.

    python -m rlhf sample --config sample.json

``sample(model, tokenizer, prompts, k=4, ...)`` renders each prompt through the chat template (with the
generation prompt), generates in left-padded batches of up to ``batch_size`` sequences of prompts of
similar length, drops each sequence from its batch at its EOS (``decode``) and returns one ``Sample`` per
completion with the decoding settings, the seed and token counts.
Reproducibility: the same seed, batch size and device give the same samples.

Helpers for RL: ``generate_ids`` (padded query/response tensors), ``truncate_after_eos``,
``token_logprobs`` and ``response_logprobs`` (per-token log-probabilities).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .config import SamplingConfig  # noqa: F401 (the config lives in rlhf.config; importable from here too)
from .contract import data_hash, write_metadata
from .data import Messages, as_messages, load_prompts


@dataclass
class Sample:
    prompt_index: int
    sample_index: int
    prompt: Messages
    completion: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "eos" | "length"
    seed: int
    decoding: dict[str, Any] = field(default_factory=dict)


def decoding_settings(max_new_tokens=128, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      repetition_penalty=1.0) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "temperature": temperature,
            "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty}


def eos_ids(model, tokenizer) -> list[int]:
    """All token ids that end a completion (tokenizer EOS plus the model's generation-config EOS)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def render_prompts(tokenizer, prompts: Sequence[str | Messages]) -> list[str]:
    """Chat-template text of each prompt, ending with the assistant generation prompt."""
    return [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]


def truncate_after_eos(response_ids: torch.Tensor, eos_token_ids: Sequence[int], pad_token_id: int):
    """Keep each row up to and including its first EOS; pad the rest. Returns ``(ids, mask, has_eos)``.

    ``response_ids`` (B, R) -> ids (B, R), mask (B, R) bool, has_eos (B,) bool.
    """
    is_eos = torch.isin(response_ids, torch.tensor(list(eos_token_ids), device=response_ids.device))
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, response_ids.shape[1],
                                                                                 dtype=torch.long))
    positions = torch.arange(response_ids.shape[1], device=response_ids.device).unsqueeze(0)  # (1, R)
    mask = positions <= first.unsqueeze(1)  # (B, R)
    return response_ids.masked_fill(~mask, pad_token_id), mask, has_eos


def logits_processors(do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      repetition_penalty: float = 1.0):
    """The HF logits processors ``generate()`` would apply for these settings, in its order."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    out = LogitsProcessorList()
    if repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if do_sample:
        if temperature != 1.0:
            out.append(TemperatureLogitsWarper(temperature))
        if top_k:
            out.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            out.append(TopPLogitsWarper(top_p))
    return out


def _cache_argument(model) -> str:
    """The forward() argument that takes the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


def _prompt_learning(model) -> bool:
    from .models import is_prompt_learning

    return is_prompt_learning(model)


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (B, V), with those probabilities (zero-probability tokens never):
    the first token whose cumulative probability reaches u, with u uniform on (0, row total]."""
    cdf = probs.cumsum(dim=-1)
    u = (1.0 - torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=probs.shape[1] - 1)


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos_token_ids: Sequence[int], pad_token_id: int, do_sample: bool = True, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Autoregressive decoding of a left-padded batch that drops each row from the batch once it has
    produced EOS: ``(B, Q)`` -> response ids ``(B, R)``, ``pad_token_id`` after each row's EOS.

    ``model.generate`` keeps computing finished rows until the longest one ends, so with sampled
    answers of very different lengths most of a batch's decoding work is padding. Here the
    batch shrinks as rows finish (their KV-cache rows are dropped), so each step costs what the
    unfinished rows need. Same logits processors as ``generate``, argmax when ``do_sample`` is false;
    sampling draws from the same softmax by inverting its cumulative distribution (``draw``), not
    with ``torch.multinomial``, whose exponential noise over the whole vocabulary cost about 45 ms a
    step for 32 rows on a 2-core CPU (inverse CDF: about 2 ms).
    """
    from transformers import DynamicCache

    processors = logits_processors(do_sample, temperature, top_p, top_k, repetition_penalty)
    batch, device = input_ids.shape[0], input_ids.device
    eos = torch.tensor(list(eos_token_ids), device=device)
    out = torch.full((batch, max(max_new_tokens, 0)), pad_token_id, dtype=torch.long, device=device)
    if max_new_tokens < 1:
        return out
    rows = torch.arange(batch, device=device)  # which original rows are still decoding
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    seen = input_ids  # what the repetition penalty looks at (prompt + answer so far), alive rows only
    kv = DynamicCache()
    cache = {_cache_argument(model): kv}  # forward()'s name for it differs across transformers versions
    step_ids, step_positions = input_ids, positions
    for t in range(max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True,
                       logits_to_keep=1, **cache).logits[:, -1, :].float()
        scores = processors(seen, logits)
        if do_sample:
            tokens = draw(F.softmax(scores, dim=-1))
        else:
            tokens = scores.argmax(dim=-1)
        out[rows, t] = tokens
        alive = ~torch.isin(tokens, eos)
        if not alive.any() or t == max_new_tokens - 1:
            break
        if not alive.all():  # drop the finished rows from everything that is batched
            keep = alive.nonzero().squeeze(1)
            kv.batch_select_indices(keep)
            rows, tokens, mask, seen = rows[keep], tokens[keep], mask[keep], seen[keep]
            step_positions = step_positions[keep]
        if repetition_penalty != 1.0:
            seen = torch.cat([seen, tokens.unsqueeze(1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step_positions = step_positions[:, -1:] + 1
        step_ids = tokens.unsqueeze(1)
    return out[:, :t + 1]


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: Sequence[str | Messages], max_new_tokens: int = 128,
                 cache_implementation: str | None = None, **decoding) -> dict[str, torch.Tensor]:
    """One batch over ``prompts``: left-padded ``query_ids``/``query_mask`` (B, Q) and EOS-truncated
    ``response_ids``/``response_mask`` (B, R), ``has_eos`` (B,).

    Decodes with ``decode`` (finished rows leave the batch); with a ``cache_implementation`` (e.g.
    'static', compiled decoding on a GPU) through ``model.generate`` instead."""
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False, padding=True,
                        return_tensors="pt").to(device)
    finally:
        tokenizer.padding_side = side
    eos = eos_ids(model, tokenizer)
    kwargs = {k: v for k, v in decoding.items() if k != "max_new_tokens"}
    if not kwargs.get("do_sample", True):
        kwargs = {"do_sample": False, "repetition_penalty": kwargs.get("repetition_penalty", 1.0)}
    if _prompt_learning(model):  # prefix/P-/prompt tuning: the virtual tokens go in once (rlhf.virtual_tokens)
        from .virtual_tokens import decode_virtual

        response = decode_virtual(model, enc["input_ids"], enc["attention_mask"], max_new_tokens, eos,
                                  tokenizer.pad_token_id, **kwargs)
    elif cache_implementation:
        generated = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                   pad_token_id=tokenizer.pad_token_id, cache_implementation=cache_implementation,
                                   **kwargs)
        response = generated[:, enc["input_ids"].shape[1]:]  # (B, R)
    else:
        response = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens, eos,
                          tokenizer.pad_token_id, **kwargs)
    response, mask, has_eos = truncate_after_eos(response, eos, tokenizer.pad_token_id)
    return {"query_ids": enc["input_ids"], "query_mask": enc["attention_mask"].bool(),
            "response_ids": response, "response_mask": mask, "has_eos": has_eos}


def sample(model, tokenizer, prompts: Sequence[str | Messages], k: int = 4, max_new_tokens: int = 128,
           do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           repetition_penalty: float = 1.0, seed: int = 0, batch_size: int = 32,
           cache_implementation: str | None = None,
           progress: Callable[[int, int, dict], None] | None = None) -> list[Sample]:
    """K completions for each prompt, in batches of ``batch_size`` sequences (longest prompts first, so a
    batch's prompts are of similar length); returned in prompt order, then sample order."""
    decoding = decoding_settings(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    # longest prompts first, each prompt's K samples together: batches of similar length pad little
    lengths = [len(ids) for ids in tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
    jobs = sorted(((i, j) for i in range(len(prompts)) for j in range(k)), key=lambda job: (-lengths[job[0]], job))
    samples: list[Sample] = []
    eos = None
    t0 = time.time()
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        out = generate_ids(model, tokenizer, [prompts[i] for i, _ in batch],
                           cache_implementation=cache_implementation, **decoding)
        eos = eos or eos_ids(model, tokenizer)
        for row, (i, j) in enumerate(batch):
            n = int(out["response_mask"][row].sum())
            ids = out["response_ids"][row, :n].tolist()
            has_eos = bool(out["has_eos"][row])
            text = tokenizer.decode(ids[:-1] if has_eos else ids, skip_special_tokens=True)
            samples.append(Sample(i, j, as_messages(prompts[i]), text, int(out["query_mask"][row].sum()), n,
                                  "eos" if has_eos else "length", seed, dict(decoding)))
        if progress is not None:
            tokens = sum(s.completion_tokens for s in samples)
            progress(len(samples), len(jobs), {"perf/tokens_per_s": tokens / max(time.time() - t0, 1e-9)})
    model.train(was_training)
    return sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(x_t | x_<t) for t = 1..T-1: (B, T) ids -> (B, T-1) log-probs (grad flows if enabled)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding safe
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
    logits = logits / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def response_logprobs(model, query_ids, query_mask, response_ids, response_mask, temperature: float = 1.0):
    """Per-token log-probs of the response tokens: (B, Q) + (B, R) -> (B, R); 0 where ``response_mask`` is off."""
    ids = torch.cat([query_ids, response_ids], dim=1)  # (B, Q+R)
    mask = torch.cat([query_mask, response_mask], dim=1)
    lp = token_logprobs(model, ids, mask, temperature)[:, query_ids.shape[1] - 1:]  # (B, R)
    return lp * response_mask


# --------------------------------------------------------------------------------------------- entry point
def run_sampling(config: SamplingConfig, prompts: Sequence[str | Messages] | None = None,
                 progress: Callable[[int, int, dict], None] | None = None) -> list[Sample]:
    """Load the model, sample, write ``samples.jsonl`` + ``metadata.json`` to ``config.output_dir``."""
    from .models import describe_model, load_tokenizer

    if prompts is None:
        if not config.prompts:
            raise ValueError("no prompts: set `prompts` in the config or pass them")
        prompts = load_prompts(config.prompts)
    tokenizer = load_tokenizer(config.model)
    from .models import load_for_sampling

    model = load_for_sampling(config.model, quantize=config.quantize, device=config.device, dtype=config.dtype)
    t0 = time.time()
    samples = sample(model, tokenizer, prompts, k=config.k, max_new_tokens=config.max_new_tokens,
                     do_sample=config.do_sample, temperature=config.temperature, top_p=config.top_p,
                     top_k=config.top_k, repetition_penalty=config.repetition_penalty, seed=config.seed,
                     batch_size=config.batch_size, cache_implementation=config.cache_implementation,
                     progress=progress)
    seconds = time.time() - t0
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
    tokens = sum(s.completion_tokens for s in samples)
    metrics = {"samples": len(samples), "completion_tokens": tokens, "seconds": seconds,
               "perf/tokens_per_s": tokens / max(seconds, 1e-9),
               "eos_fraction": sum(s.finish_reason == "eos" for s in samples) / max(len(samples), 1)}
    write_metadata(out, kind="sample", base_model=describe_model(config.model),
                   data_hash=data_hash([as_messages(p) for p in prompts]), config=config, metrics=metrics,
                   status="succeeded")
    return samples
