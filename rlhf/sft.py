"""Supervised fine-tuning on human demonstrations (InstructGPT step 1) with TRL's SFTTrainer.

    python -m rlhf sft --config sft.json

Each ``Demonstration`` becomes a conversational prompt/completion row; SFTTrainer renders it through
the model's chat template and, with ``completion_only_loss``, computes the loss on the assistant's
tokens only (the prompt, system prompt and template tokens get label -100). We do not rely on
``assistant_only_loss``: SmolLM2's template has no ``{% generation %}`` markers.

Differences from plain TRL defaults: LoRA by default (``use_lora``), merged into a full safetensors
checkpoint at the end (``merge``); bf16 autocast only on a bf16-capable GPU unless ``bf16`` is set;
gradient checkpointing off by default (small models).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .config import SFTRunConfig  # noqa: F401 (the config lives in rlhf.config; importable from here too)
from .contract import Artifacts, data_hash, seed_everything
from .data import Demonstration, demonstrations_to_dataset, load_demonstrations
from .models import describe_model, load_causal_lm, load_tokenizer
from .runner import attach_progress, check_peft_here, peft_config_for, run_trainer, trl_args


def build_sft_trainer(config: SFTRunConfig, demonstrations: Sequence[Demonstration],
                      eval_demonstrations: Sequence[Demonstration] | None = None, model=None, tokenizer=None):
    """An ``SFTTrainer`` ready to ``train()``; pass ``model``/``tokenizer`` to skip loading ``config.model``."""
    from trl import SFTConfig, SFTTrainer

    check_peft_here(config, "sft")  # an unsupported method is refused before any model loads
    seed_everything(config.seed)
    tokenizer = tokenizer or load_tokenizer(config.model)
    model = model or load_causal_lm(config.model, device=config.device, dtype=config.dtype,
                                    load_in_bits=config.load_in_bits)
    args = trl_args(config, SFTConfig, completion_only_loss=config.completion_only_loss, packing=config.packing,
                    padding_free=config.padding_free, assistant_only_loss=False)
    return SFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        train_dataset=demonstrations_to_dataset(demonstrations),
        eval_dataset=demonstrations_to_dataset(eval_demonstrations) if eval_demonstrations else None,
        peft_config=peft_config_for(config, "CAUSAL_LM"),
    )


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
