"""Tiny random-weight models for tests (rlhf, PPO and worker tests alike).

    from rlhf.testing import tiny_checkpoint
    path = tiny_checkpoint(tmp_path / "tiny")      # a normal HF checkpoint dir: config, safetensors, tokenizer
    model = rlhf.models.load_causal_lm(path)       # loads like any other model reference

The tokenizer is a byte-level BPE of ``TINY_VOCAB`` tokens trained in milliseconds on a few KB of text
that includes the chat-template text, with ChatML special tokens (``<|endoftext|>`` = pad,
``<|im_start|>``, ``<|im_end|>`` = eos) and a SmolLM2-style chat template. The model is a 2-layer
Llama (hidden 64). Everything is deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path

TINY_VOCAB = 384
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """\
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
What is the capital of France?<|im_end|>
<|im_start|>assistant
The capital of France is Paris.<|im_end|>
Human: Can you help me write a short poem about the sea and the sky?
Assistant: Sure. The sea is wide, the sky is blue, the waves roll in and out anew.
Tell me a fact about cats. Cats sleep for most of the day and purr when they are happy.
Dogs are loyal animals. A good answer is clear, kind, correct and short. A bad answer is rude.
Explain how plants grow: they use sunlight, water and carbon dioxide to make sugar.
great good yes thank you please sorry no bad awful wrong terrible excellent helpful harmless honest
one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 , . ! ? ; : ' " ( ) - + = * / #
"""


def tiny_corpus() -> list[str]:
    return [line for line in _CORPUS.splitlines() if line] * 4


def build_tiny_tokenizer(extra_text: list[str] | None = None, vocab_size: int = TINY_VOCAB):
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with the chat template set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tiny_corpus() + list(extra_text or []), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "right"
    return hf


def build_tiny_llama(tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, for_reward: bool = False):
    """A random-weight 2-layer Llama sized to ``tokenizer`` (sequence classifier with one label if ``for_reward``)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_labels=1,
    )
    torch.manual_seed(seed)
    model = (LlamaForSequenceClassification if for_reward else LlamaForCausalLM)(config)
    if not for_reward:
        model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                                   eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
    return model


def tiny_checkpoint(path: str | os.PathLike, hidden_size: int = 64, num_layers: int = 2, seed: int = 0) -> str:
    """Write a tiny causal-LM checkpoint (safetensors + tokenizer + chat template) to ``path``; return it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        tok = build_tiny_tokenizer()
        model = build_tiny_llama(tok, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
    return str(path)
