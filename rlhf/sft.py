"""Supervised fine-tuning on human demonstrations (InstructGPT step 1) with TRL's SFTTrainer.

    python -m rlhf sft --config sft.json

Each ``Demonstration`` becomes a conversational prompt/completion row; SFTTrainer renders it through
the model's chat template and, with ``completion_only_loss``, computes the loss on the assistant's
tokens only (the prompt, system prompt and template tokens get label -100). We do not rely on
``assistant_only_loss``: SmolLM2's template has no ``{% generation %}`` markers.

Differences from plain TRL defaults: LoRA by default (``use_lora``), merged into a full safetensors
checkpoint at the end (``merge``); gradient checkpointing off by default (small models); on a GPU the
throughput settings TRL leaves off (``rlhf.runner.resolve_throughput``: padding-free batches, fused AdamW,
Liger kernels when installed, bf16 weights without autocast for adapters, fp32 master weights for full
fine-tuning); on CPU fp32 without autocast.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from .config import SFTRunConfig  # noqa: F401 (the config lives in rlhf.config; importable from here too)
from .contract import Artifacts, data_hash, seed_everything
from .data import Demonstration, demonstrations_to_dataset, load_demonstrations
from .models import describe_model, load_causal_lm, load_tokenizer
from .runner import attach_progress, check_peft_here, peft_config_for, resolve_throughput, run_trainer, trl_args


def build_sft_trainer(config: SFTRunConfig, demonstrations: Sequence[Demonstration],
                      eval_demonstrations: Sequence[Demonstration] | None = None, model=None, tokenizer=None):
    """An ``SFTTrainer`` ready to ``train()``; pass ``model``/``tokenizer`` to skip loading ``config.model``."""
    from trl import SFTConfig, SFTTrainer

    check_peft_here(config, "sft")  # an unsupported method is refused before any model loads
    seed_everything(config.seed)
    tokenizer = tokenizer or load_tokenizer(config.model)
    throughput = resolve_throughput(config, "sft")
    model = model or load_causal_lm(config.model, device=config.device, dtype=throughput.dtype,
                                    load_in_bits=config.load_in_bits)
    # TRL's own `padding_free` refuses a max_length without packing (it would not truncate); its dataset
    # preparation truncates when padding_free is off, so the padding-free collator is put in afterwards.
    args = trl_args(config, SFTConfig, throughput, completion_only_loss=config.completion_only_loss,
                    packing=config.packing, padding_free=False, assistant_only_loss=False)
    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=demonstrations_to_dataset(demonstrations),
        eval_dataset=demonstrations_to_dataset(eval_demonstrations) if eval_demonstrations else None,
        peft_config=peft_config_for(config, "CAUSAL_LM"),
    )
    if throughput.padding_free and not config.packing:  # packing (BFD) is padding-free in TRL already
        trainer.data_collator = dataclasses.replace(trainer.data_collator, padding_free=True)
    trainer.rlhf_throughput = throughput
    return trainer


def train_sft(config: SFTRunConfig, demonstrations: Sequence[Demonstration] | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> Artifacts:
    """Run SFT; ``demonstrations`` default to ``load_demonstrations(config.data, config.data_format)``."""
    check_peft_here(config, "sft")
    if demonstrations is None:
        demonstrations = load_demonstrations(config.data, config.data_format)
    tokenizer = load_tokenizer(config.model)
    trainer = attach_progress(build_sft_trainer(config, demonstrations, tokenizer=tokenizer), progress)
    return run_trainer(trainer, config, kind="sft", tokenizer=tokenizer, base_model=describe_model(config.model),
                       data_hash=data_hash(demonstrations), progress=progress,
                       extra_meta={"num_examples": len(demonstrations)})
