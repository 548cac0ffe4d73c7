"""Decoding through a prompt-learning adapter (peft's prefix tuning, P-tuning, prompt tuning).

Such an adapter is a set of virtual tokens placed before the prompt: key/value pairs in every layer
(prefix tuning) or input embeddings (P-tuning: the output of a small prompt encoder; prompt tuning:
learned directly). peft's own forward() prepends them on *every* call, so rlhf's incremental decoder
cannot call it step by step, and peft's generate() loses them here: transformers 5 passes its own
cache beside peft's prefix, and ignores the prefix, and peft drops the position ids that left padding
needs. So this module places the virtual tokens once, as training saw them:

* the attention mask gets `num_virtual_tokens` ones in front of each row;
* positions count from there (the first real token sits at `num_virtual_tokens`, as in training,
  whatever the row's left padding);
* prefix tuning: the cache starts filled with the prefix's keys and values; P-/prompt tuning: the
  first step feeds the virtual embeddings followed by the prompt's token embeddings;
* then one token per step through the base model and its cache, as `rlhf.sampling.decode` does.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def decode_virtual(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                   eos_token_ids: Sequence[int], pad_token_id: int, do_sample: bool = True, temperature: float = 1.0,
                   top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Like ``rlhf.sampling.decode`` for a peft prompt-learning model: (B, Q) left-padded -> (B, R)."""
    from peft import PeftType
    from transformers import DynamicCache

    from .decoder import _cache_argument, draw
    from .sampling import logits_processors

    config = model.active_peft_config
    base = model.get_base_model()
    batch, device, n = input_ids.shape[0], input_ids.device, config.num_virtual_tokens
    processors = logits_processors(do_sample, temperature, top_p, top_k, repetition_penalty)
    eos = torch.tensor(list(eos_token_ids), device=device)
    out = torch.full((batch, max(max_new_tokens, 0)), pad_token_id, dtype=torch.long, device=device)
    if max_new_tokens < 1:
        return out
    mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1).long()  # (B, n+Q)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, n+Q)
    if config.peft_type == PeftType.PREFIX_TUNING:
        kv = model.get_prompt(batch_size=batch)  # a cache holding the prefix's keys and values
        step = {"input_ids": input_ids, "position_ids": positions[:, n:]}
    else:
        kv = DynamicCache()
        embeds = base.get_input_embeddings()(input_ids)  # (B, Q, H)
        virtual = model.get_prompt(batch_size=batch).to(embeds.dtype)  # (B, n, H)
        step = {"inputs_embeds": torch.cat([virtual, embeds], dim=1), "position_ids": positions}
    cache = {_cache_argument(base): kv}
    seen = input_ids  # what the repetition penalty looks at
    last = positions[:, -1:]
    t = 0
    for t in range(max_new_tokens):
        logits = base(**step, attention_mask=mask, use_cache=True, logits_to_keep=1, **cache).logits[:, -1, :].float()
        scores = processors(seen, logits)
        tokens = draw(F.softmax(scores, dim=-1)) if do_sample else scores.argmax(dim=-1)
        out[:, t] = tokens
        done = torch.isin(out[:, :t + 1], eos).any(dim=1)
        if done.all() or t == max_new_tokens - 1:
            break
        if repetition_penalty != 1.0:
            seen = torch.cat([seen, tokens.unsqueeze(1)], dim=1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        last = last + 1
        step = {"input_ids": tokens.unsqueeze(1), "position_ids": last}
    return out[:, :t + 1]
