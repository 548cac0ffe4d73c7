"""One decoder for sampling runs, PPO rollouts and evaluation (``rlhf.sampling.decode`` calls it).

``decode(model, input_ids, attention_mask, max_new_tokens, eos, pad, ..., num_samples=K, return_logprobs=True)``
prefills each left-padded prompt once, expands its KV cache K times (rows ``i*K .. i*K+K-1`` are prompt i's
samples), then decodes one token per step with sampling on the device (repetition penalty, temperature,
top-k, top-p: the same processors and order as HF ``generate``; argmax when ``do_sample`` is off) and
returns the response ids ``(B*K, R)`` and, if asked, each sampled token's log-probability under the model
at the sampling temperature (``log_softmax(logits / T)`` of the unfiltered logits; 0 after EOS).

Engines (``engine=`` or the environment variable ``RLHF_DECODER``):

* ``"eager"`` - the model's own forward with a growing ``DynamicCache``. On CPU finished rows leave the
  batch (their cache rows are dropped; one host check per step, which costs nothing on a CPU) - the
  fastest loop there. On an accelerator finished rows stay in the batch, masked to the pad token, and
  the host asks "all finished?" only every ``sync_every`` (16) steps.
* ``"static"`` - Llama-family models only: a preallocated KV cache per (batch, prompt bucket + response
  bucket), prompts left-padded into the bucket, and a decode step with fixed shapes and no transformers
  mask code (SDPA over the whole cache with a persistent validity mask; the new K/V written by
  ``index_copy_`` at a device-side slot; sampling and the finished flags inside the step). With
  ``compile`` (default: on CUDA, off elsewhere; ``RLHF_DECODER_COMPILE=0/1``) the step is
  ``torch.compile(mode="reduce-overhead", fullgraph=True)``: on CUDA one CUDA-graph replay per token.
  It recompiles only for a new (batch, bucket, decoding settings) combination; prompt lengths inside
  one bucket reuse the graph. Sampling inside it uses ``race`` (no scan over the vocabulary); if the
  step fails to compile, a warning is logged and the eager static step decodes instead. The decoder object (and its compiled step) is kept per model, so a LoRA
  policy's merged copy refreshed in place (``weight.copy_``: same tensors) is decoded with the new
  weights by the same graph.
* ``"auto"`` (default) - ``static`` on CUDA for plain (not peft-wrapped) Llama-family models without
  repetition penalty, otherwise ``eager``.

No engine ever calls ``.item()`` inside the per-token loop except the shrinking CPU loop and the
every-``sync_every`` finished check.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import weakref
from typing import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SYNC_EVERY = 16
ENGINES = ("auto", "eager", "static")


# --------------------------------------------------------------------------------------------- sampling
def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, repetition_penalty: float = 1.0, do_sample: bool = True) -> torch.Tensor:
    """HF ``generate``'s processors in its order (repetition penalty, temperature, top-k, top-p), device only:
    (B, V) fp32 logits -> scores with filtered tokens at -inf."""
    scores = logits
    if repetition_penalty != 1.0 and seen is not None:
        picked = torch.gather(scores, 1, seen)
        picked = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
        scores = scores.scatter(1, seen, picked)
    if not do_sample:
        return scores
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[:, -1:] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (B, V) by inverting its cumulative distribution (no host sync; about
    20x cheaper than ``torch.multinomial`` on a CPU for a 49k vocabulary)."""
    cdf = probs.cumsum(dim=-1)
    u = (1.0 - torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=probs.shape[1] - 1)


def race(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (B, V) as ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)``: token i wins the
    race of exponential clocks ``E_i / p_i`` with probability ``p_i / sum(p)``, so it draws from the same
    distribution as ``draw`` without a scan over the vocabulary. The compiled step uses it: inductor fuses
    the noise, the division and the argmax into one kernel, while its split cumulative sum over a 49k
    vocabulary failed to compile on CUDA (torch 2.11: ``InductorError`` in ``SplitScan`` codegen). On a CPU
    ``draw`` is cheaper (one random number per row instead of one per token). The noise is floored at the
    smallest normal float: an exact 0 (possible in float32) would make 0 / 0 = NaN, which argmax would pick
    even for a token of probability 0."""
    noise = torch.empty_like(probs).exponential_().clamp_min_(torch.finfo(probs.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


def select(logits: torch.Tensor, seen: torch.Tensor | None, do_sample: bool, temperature: float, top_k: int,
           top_p: float, repetition_penalty: float, want_logprobs: bool, sampler=draw):
    """Next token per row and its log-prob at ``temperature`` (unfiltered logits): (B, V) -> (B,), (B,) | None.
    ``sampler`` maps the processed probabilities to tokens (``draw``, or ``race`` in compiled code)."""
    scores = process_logits(logits, seen, temperature, top_k, top_p, repetition_penalty, do_sample)
    tokens = sampler(F.softmax(scores, dim=-1)) if do_sample else scores.argmax(dim=-1)
    lp = None
    if want_logprobs:
        z = logits / temperature if temperature != 1.0 else logits
        lp = torch.gather(z, 1, tokens.unsqueeze(1)).squeeze(1) - torch.logsumexp(z, dim=-1)
    return tokens, lp


# --------------------------------------------------------------------------------------------- helpers
def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model


def _cache_argument(model) -> str:
    """The forward() argument that takes the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(_base(model)).forward).parameters else "past_key_values"


def supports_static(model) -> bool:
    """Whether the static-cache step knows this architecture (Llama-family decoder layers, no sliding window)."""
    base = _base(model)
    cfg = getattr(base, "config", None)
    inner = getattr(base, "model", None)
    return (getattr(cfg, "model_type", None) == "llama" and inner is not None and hasattr(inner, "layers")
            and hasattr(inner, "rotary_emb") and hasattr(base, "lm_head"))


def bucket(n: int, minimum: int = 16) -> int:
    """Round a length up to a power of two (at least ``minimum``): the static cache's size classes."""
    size = minimum
    while size < n:
        size *= 2
    return size


def resolve_engine(engine: str | None, model, device: torch.device, repetition_penalty: float = 1.0) -> str:
    engine = engine or os.environ.get("RLHF_DECODER") or "auto"
    if engine not in ENGINES:
        raise ValueError(f"unknown decoder engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "static":
        if not supports_static(model):
            raise ValueError(f"the static decoder supports Llama-family models only, not "
                             f"{getattr(_base(model).config, 'model_type', type(model).__name__)!r}: use engine 'eager'")
        if repetition_penalty != 1.0:
            raise ValueError("the static decoder has no repetition penalty: use engine 'eager' for it")
    if engine == "auto":
        # peft models stay eager: their adapter layers are not compiled here; LoRA policies decode static from
        # the merged copy (``merged_generation``)
        engine = ("static" if device.type == "cuda" and supports_static(model) and repetition_penalty == 1.0
                  and not hasattr(model, "get_base_model") else "eager")
    return engine


def _compile_default(device: torch.device, compile: bool | None) -> bool:
    if compile is not None:
        return compile
    env = os.environ.get("RLHF_DECODER_COMPILE")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    return device.type == "cuda"


# --------------------------------------------------------------------------------------------- entry point
@torch.no_grad()
def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos_token_ids: Sequence[int], pad_token_id: int, do_sample: bool = True, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, *, num_samples: int = 1,
           return_logprobs: bool = False, engine: str | None = None, compile: bool | None = None,
           sync_every: int = SYNC_EVERY, shrink: bool | None = None):
    """Left-padded prompts ``(P, Q)`` -> response ids ``(P*K, R)`` (pad after each row's EOS, R <= max_new_tokens),
    plus their log-probs ``(P*K, R)`` when ``return_logprobs``. See the module docstring for the engines;
    ``shrink`` (eager engine; default: on CPU only) drops finished rows instead of masking them."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if sync_every < 1:
        raise ValueError(f"sync_every must be >= 1, got {sync_every}")
    device = input_ids.device
    rows = input_ids.shape[0] * num_samples
    settings = dict(do_sample=do_sample, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                    repetition_penalty=float(repetition_penalty))
    if max_new_tokens < 1:
        out = torch.full((rows, 0), pad_token_id, dtype=torch.long, device=device)
        return (out, out.float()) if return_logprobs else out
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=device)
    kind = resolve_engine(engine, model, device, repetition_penalty)
    if kind == "static":
        dec = static_decoder(model, rows, bucket(input_ids.shape[1]), bucket(max_new_tokens),
                             _compile_default(device, compile))
        out, lps = dec.generate(input_ids, attention_mask.bool(), num_samples, max_new_tokens, eos, pad_token_id,
                                settings, sync_every)
    else:
        out, lps = _decode_eager(model, input_ids, attention_mask, max_new_tokens, eos, pad_token_id, settings,
                                 num_samples, shrink=device.type == "cpu" if shrink is None else shrink, sync_every=sync_every,
                                 want_logprobs=return_logprobs)
    return (out, lps) if return_logprobs else out


def _decode_eager(model, input_ids, attention_mask, max_new_tokens, eos, pad_token_id, settings, k, shrink,
                  sync_every, want_logprobs):
    from transformers import DynamicCache

    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    kv = DynamicCache()
    cache = {_cache_argument(model): kv}
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **cache).logits[:, -1, :].float()
    seen = input_ids
    if k > 1:  # K samples per prompt: one prefill, the cache expanded K times
        kv.batch_repeat_interleave(k)
        logits, mask, positions, seen = (x.repeat_interleave(k, dim=0) for x in (logits, mask, positions, seen))
    batch, device = logits.shape[0], logits.device
    out = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    lps = torch.zeros((batch, max_new_tokens), device=device) if want_logprobs else None
    rows = torch.arange(batch, device=device)  # shrinking loop: which original rows are still decoding
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # masked loop
    step_positions = positions[:, -1:]
    keep_seen = settings["repetition_penalty"] != 1.0
    for t in range(max_new_tokens):
        tokens, lp = select(logits, seen if keep_seen else None, want_logprobs=want_logprobs, **settings)
        if shrink:
            out[rows, t] = tokens
            if want_logprobs:
                lps[rows, t] = lp
            alive = ~torch.isin(tokens, eos)
            if t == max_new_tokens - 1 or not alive.any():
                break
            if not alive.all():  # drop the finished rows from everything that is batched
                keep = alive.nonzero().squeeze(1)
                kv.batch_select_indices(keep)
                rows, tokens, mask, seen, step_positions = (x[keep] for x in (rows, tokens, mask, seen, step_positions))
        else:
            tokens = tokens.masked_fill(finished, pad_token_id)
            out[:, t] = tokens
            if want_logprobs:
                lps[:, t] = lp.masked_fill(finished, 0.0)
            finished |= torch.isin(tokens, eos)
            if t == max_new_tokens - 1 or ((t + 1) % sync_every == 0 and bool(finished.all())):
                break
        if keep_seen:
            seen = torch.cat([seen, tokens.unsqueeze(1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        step_positions = step_positions + 1
        logits = model(input_ids=tokens.unsqueeze(1), attention_mask=mask, position_ids=step_positions,
                       use_cache=True, logits_to_keep=1, **cache).logits[:, -1, :].float()
    out, lps = out[:, :t + 1], (lps[:, :t + 1] if want_logprobs else None)
    if not shrink:
        out, lps = _trim(out, lps, eos)
    return out, lps


def _trim(out, lps, eos):
    """Drop trailing columns where every row had already finished (one host read, after the loop)."""
    is_eos = torch.isin(out, eos)
    ends = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(out[:, 0], out.shape[1]))
    n = int(ends.max())
    return out[:, :n], (lps[:, :n] if lps is not None else None)


# --------------------------------------------------------------------------------------------- static cache
_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def static_decoder(model, batch: int, prompt_bucket: int, response_bucket: int, compile: bool = False) -> "StaticDecoder":
    """The model's static decoder for this (batch, buckets, compile), built once and kept with the model, so
    its compiled step is reused (and recompiles only for new shapes or decoding settings)."""
    per_model = _DECODERS.setdefault(model, {})
    key = (batch, prompt_bucket, response_bucket, compile)
    if key not in per_model:
        per_model[key] = StaticDecoder(model, batch, prompt_bucket, response_bucket, compile)
    return per_model[key]


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticDecoder(torch.nn.Module):
    """Preallocated K/V buffers ``(batch, kv_heads, prompt_bucket + response_bucket, head_dim)`` per layer and
    a fixed-shape decode step over the model's own modules (embedding, norms, projections, MLP, head) with
    its own attention glue. Slots ``[0, prompt_bucket)`` hold the left-padded prompt, slot
    ``prompt_bucket + t`` the t-th generated token."""

    def __init__(self, model, batch: int, prompt_bucket: int, response_bucket: int, compile: bool = False):
        super().__init__()
        if not supports_static(model):
            raise ValueError("the static decoder supports Llama-family models only")
        base = _base(model)
        self.inner, self.lm_head = base.model, base.lm_head
        cfg = base.config
        p = next(model.parameters())
        self.batch, self.prompt_bucket, self.response_bucket = batch, prompt_bucket, response_bucket
        self.length = prompt_bucket + response_bucket
        attn = self.inner.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.scaling = attn.scaling
        shape = (batch, self.kv_heads, self.length, self.head_dim)
        self.n_layers = len(self.inner.layers)
        for i in range(self.n_layers):
            self.register_buffer(f"k{i}", torch.zeros(shape, dtype=p.dtype, device=p.device), persistent=False)
            self.register_buffer(f"v{i}", torch.zeros(shape, dtype=p.dtype, device=p.device), persistent=False)
        self.register_buffer("valid", torch.zeros(batch, self.length, dtype=torch.bool, device=p.device),
                             persistent=False)
        slots = torch.arange(self.length, device=p.device)
        cos, sin = self.inner.rotary_emb(torch.zeros(1, dtype=p.dtype, device=p.device), slots.unsqueeze(0))
        self.register_buffer("cos", cos[0], persistent=False)  # (L, D), by position
        self.register_buffer("sin", sin[0], persistent=False)
        self.compiled = compile
        self.compile_error: str | None = None  # why compiling the step failed, when it did (eager step used)
        self._steps: dict = {}

    # ---- the model's layers with this decoder's attention
    def _layers(self, x, cos, sin, attend):
        """x (B, T, H) through every layer; ``attend(i, q, k, v)`` writes the cache and returns attention (B, h, T, D)."""
        B, T = x.shape[:2]
        for i, layer in enumerate(self.inner.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, T, self.heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            o = attend(i, q, k, v)
            x = x + a.o_proj(o.transpose(1, 2).reshape(B, T, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    def _logits(self, x_last):
        return self.lm_head(self.inner.norm(x_last)).float()

    def _sdpa(self, q, k, v, mask):
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        """Left-padded prompts (P, Q) with ``P*k == batch``: attention over the prompt only, K/V written K times
        (rows i*k..i*k+k-1) into slots [bucket-Q, bucket); returns last-position logits (P, V). Eager."""
        P, Q = input_ids.shape
        if P * k != self.batch or Q > self.prompt_bucket:
            raise ValueError(f"prefill of {P}x{k} rows, {Q} tokens into a decoder for {self.batch} rows, "
                             f"{self.prompt_bucket} prompt tokens")
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        slots = torch.arange(self.prompt_bucket - Q, self.prompt_bucket, device=input_ids.device)
        self.valid.zero_()
        self.valid[:, slots] = mask.repeat_interleave(k, dim=0)
        eye = torch.eye(Q, dtype=torch.bool, device=mask.device)
        causal = torch.ones(Q, Q, dtype=torch.bool, device=mask.device).tril()
        attn_mask = (causal & mask[:, None, None, :]) | eye  # a padded query sees itself: no all-masked rows
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

        def attend(i, q, kk, vv):
            getattr(self, f"k{i}").index_copy_(2, slots, kk.repeat_interleave(k, dim=0))
            getattr(self, f"v{i}").index_copy_(2, slots, vv.repeat_interleave(k, dim=0))
            return self._sdpa(q, kk, vv, attn_mask)

        x = self._layers(self.inner.embed_tokens(input_ids), cos, sin, attend)
        return self._logits(x[:, -1])

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """One token per row at device-side ``slot`` (shape (1,)): fixed shapes, no host reads -> logits (B, V)."""
        self.valid.index_fill_(1, slot, True)
        mask = self.valid[:, None, None, :]
        cos, sin = self.cos[positions][:, None, None, :], self.sin[positions][:, None, None, :]

        def attend(i, q, kk, vv):
            kc, vc = getattr(self, f"k{i}"), getattr(self, f"v{i}")
            kc.index_copy_(2, slot, kk)
            vc.index_copy_(2, slot, vv)
            return self._sdpa(q, kc, vc, mask)

        x = self._layers(self.inner.embed_tokens(tokens.unsqueeze(1)), cos, sin, attend)
        return self._logits(x[:, -1])

    def _step_select(self, tokens, positions, slot, finished, eos, pad_token_id: int, settings, sampler=draw):
        """Decode step + sampling + finished flags, all on the device: returns the next step's inputs."""
        logits = self.step(tokens, positions, slot)
        nxt, lp = select(logits, None, want_logprobs=True, sampler=sampler, **settings)
        nxt = nxt.masked_fill(finished, pad_token_id)
        lp = lp.masked_fill(finished, 0.0)
        finished = finished | torch.isin(nxt, eos)
        return nxt, lp, positions + 1, slot + 1, finished

    def step_fn(self, settings: dict):
        """The (compiled, when enabled) step for these decoding settings."""
        key = tuple(sorted(settings.items()))
        if key not in self._steps:
            fn = self._step_select
            if self.compiled:
                for buf in self.buffers():  # fixed addresses: CUDA graphs read and write them in place
                    torch._dynamo.mark_static_address(buf)
                fn = self._guarded(key, torch.compile(functools.partial(fn, sampler=race), mode="reduce-overhead",
                                                      fullgraph=True))
            self._steps[key] = fn
        return self._steps[key]

    def _guarded(self, key, compiled):
        """``compiled`` whose first call, where torch.compile traces and compiles, falls back to the eager
        step (with a warning, and ``compile_error`` set) if compiling fails: a compiler bug in one torch
        release must not stop a rollout. Compilation happens before the step runs, so nothing was written
        to the cache. Later calls go straight to whichever function won."""

        def first_call(*args, **kwargs):
            try:
                out = compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as exc:
                self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.warning("the compiled decode step failed to compile (%s); decoding with the eager static step "
                            "instead (RLHF_DECODER_COMPILE=0 skips the attempt)", self.compile_error)
                self._steps[key] = self._step_select
                return self._step_select(*args, **kwargs)
            self._steps[key] = compiled
            return out

        return first_call

    @torch.no_grad()
    def generate(self, input_ids, mask, k, max_new_tokens, eos, pad_token_id, settings, sync_every=SYNC_EVERY):
        if max_new_tokens > self.response_bucket:
            raise ValueError(f"{max_new_tokens} new tokens do not fit a response bucket of {self.response_bucket}")
        if settings["repetition_penalty"] != 1.0:
            raise ValueError("the static decoder has no repetition penalty: use engine 'eager' for it")
        self.step_fn(settings)  # built (and its compile attempted) on first use; looked up per token below
        key = tuple(sorted(settings.items()))
        logits = self.prefill(input_ids, mask, k).repeat_interleave(k, dim=0)
        tokens, lp = select(logits, None, want_logprobs=True, **settings)
        finished = torch.isin(tokens, eos)
        positions = ((mask.long().sum(-1) - 1).clamp(min=0)).repeat_interleave(k, dim=0) + 1
        slot = torch.full((1,), self.prompt_bucket, dtype=torch.long, device=tokens.device)
        outs, lps = [tokens], [lp]
        for t in range(1, max_new_tokens):
            if t % sync_every == 0 and bool(finished.all()):
                break
            step = self._steps[key]  # the compiled step, or the eager one if compiling it failed
            graphs = self.compiled and tokens.device.type == "cuda" and step != self._step_select
            if graphs:  # a new CUDA-graph "step": the previous replay's outputs were copied below
                torch.compiler.cudagraph_mark_step_begin()
            tokens, lp, positions, slot, finished = step(tokens, positions, slot, finished, eos, pad_token_id,
                                                         settings)
            if graphs:  # CUDA-graph outputs are overwritten by the next replay
                tokens, lp, positions, slot, finished = (x.clone() for x in (tokens, lp, positions, slot, finished))
            outs.append(tokens)
            lps.append(lp)
        return _trim(torch.stack(outs, 1), torch.stack(lps, 1), eos)
