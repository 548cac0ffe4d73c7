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
from .decoder import _cache_argument, draw  # noqa: F401 (kept importable from here)


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


def _prompt_learning(model) -> bool:
    from .models import is_prompt_learning

    return is_prompt_learning(model)


@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos_token_ids: Sequence[int], pad_token_id: int, do_sample: bool = True, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, **options):
    """Autoregressive decoding of a left-padded batch ``(B, Q)`` -> response ids ``(B*K, R)``, ``pad_token_id``
    after each row's EOS: ``rlhf.decoder.decode`` (one prefill per prompt for ``num_samples=K``, log-probs
    with ``return_logprobs=True``, ``engine='eager'|'static'|'auto'``).

    On CPU the default loop drops each row from the batch once it has produced EOS (its KV-cache rows
    too), so each step costs what the unfinished rows need; ``model.generate`` keeps computing finished
    rows until the longest ends. Same logits processors as ``generate``, argmax when ``do_sample`` is
    false; sampling inverts the softmax's cumulative distribution (``draw``) rather than
    ``torch.multinomial``, whose exponential noise over the vocabulary cost ~45 ms a step for 32 rows on
    a 2-core CPU (inverse CDF: ~2 ms).
    """
    from . import decoder

    return decoder.decode(model, input_ids, attention_mask, max_new_tokens, eos_token_ids, pad_token_id, do_sample,
                   temperature, top_p, top_k, repetition_penalty, **options)


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: Sequence[str | Messages], max_new_tokens: int = 128,
                 cache_implementation: str | None = None, num_samples: int = 1, return_logprobs: bool = False,
                 engine: str | None = None, **decoding) -> dict[str, torch.Tensor]:
    """One batch over ``prompts`` (each decoded ``num_samples`` times from one prefill): left-padded
    ``query_ids``/``query_mask`` (B, Q) and EOS-truncated ``response_ids``/``response_mask`` (B, R), ``has_eos``
    (B,), with B = len(prompts) * num_samples (prompt i's samples in rows i*K .. i*K+K-1), and with
    ``return_logprobs`` the sampled tokens' ``logprobs`` (B, R) at the sampling temperature (0 off the mask).

    Decodes with ``rlhf.decoder.decode`` (``engine``: see there); with a ``cache_implementation`` (e.g.
    'static') through ``model.generate`` instead (no log-probs then)."""
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
    query_ids, query_mask = enc["input_ids"], enc["attention_mask"]
    if num_samples > 1:
        query_ids, query_mask = query_ids.repeat_interleave(num_samples, 0), query_mask.repeat_interleave(num_samples, 0)
    logprobs = None
    if _prompt_learning(model):  # prefix/P-/prompt tuning: the virtual tokens go in once (rlhf.virtual_tokens)
        from .virtual_tokens import decode_virtual

        if return_logprobs:
            raise ValueError("return_logprobs is not available for prompt-learning adapters (rlhf.virtual_tokens)")
        response = decode_virtual(model, query_ids, query_mask, max_new_tokens, eos, tokenizer.pad_token_id, **kwargs)
    elif cache_implementation:
        if return_logprobs:
            raise ValueError("return_logprobs needs rlhf's decoder: leave cache_implementation unset")
        generated = model.generate(input_ids=query_ids, attention_mask=query_mask, max_new_tokens=max_new_tokens,
                                   eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                   cache_implementation=cache_implementation, **kwargs)
        response = generated[:, query_ids.shape[1]:]  # (B, R)
    else:
        response = decode(model, enc["input_ids"], enc["attention_mask"], max_new_tokens, eos,
                          tokenizer.pad_token_id, **kwargs, num_samples=num_samples,
                          return_logprobs=return_logprobs, engine=engine)
        if return_logprobs:
            response, logprobs = response
    response, mask, has_eos = truncate_after_eos(response, eos, tokenizer.pad_token_id)
    out = {"query_ids": query_ids, "query_mask": query_mask.bool(),
           "response_ids": response, "response_mask": mask, "has_eos": has_eos}
    if logprobs is not None:
        out["logprobs"] = logprobs * mask
    return out


def sample(model, tokenizer, prompts: Sequence[str | Messages], k: int = 4, max_new_tokens: int = 128,
           do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
           repetition_penalty: float = 1.0, seed: int = 0, batch_size: int = 32,
           cache_implementation: str | None = None, engine: str | None = None,
           progress: Callable[[int, int, dict], None] | None = None) -> list[Sample]:
    """K completions for each prompt, in batches of about ``batch_size`` sequences: whole prompts (their K
    samples share one prefill), longest prompts first so a batch's prompts are of similar length;
    returned in prompt order, then sample order."""
    decoding = decoding_settings(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    lengths = [len(ids) for ids in tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    per_batch = max(1, batch_size // max(k, 1))  # prompts per batch
    samples: list[Sample] = []
    t0 = time.time()
    for start in range(0, len(order), per_batch):
        batch = order[start:start + per_batch]
        out = generate_ids(model, tokenizer, [prompts[i] for i in batch], cache_implementation=cache_implementation,
                           num_samples=k, engine=engine, **decoding)
        lens = out["response_mask"].sum(1).tolist()
        has_eos = out["has_eos"].tolist()
        qlens = out["query_mask"].sum(1).tolist()
        ids_all = out["response_ids"].tolist()
        for row in range(len(batch) * k):
            i, j = batch[row // k], row % k
            n = int(lens[row])
            ids = ids_all[row][:n]
            text = tokenizer.decode(ids[:-1] if has_eos[row] else ids, skip_special_tokens=True)
            samples.append(Sample(i, j, as_messages(prompts[i]), text, int(qlens[row]), n,
                                  "eos" if has_eos[row] else "length", seed, dict(decoding)))
        if progress is not None:
            tokens = sum(s.completion_tokens for s in samples)
            progress(len(samples), len(prompts) * k, {"perf/tokens_per_s": tokens / max(time.time() - t0, 1e-9)})
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
    from .decoder import ENGINES
    from .models import describe_model, load_tokenizer, weights_dtype

    if config.decoder not in ENGINES:
        raise ValueError(f"unknown decoder {config.decoder!r}: choose one of {', '.join(ENGINES)}")
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
                     engine=config.decoder,
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
                   status="succeeded",
                   extra={"weights_dtype": "int8" if config.quantize else weights_dtype(model)})
    return samples
