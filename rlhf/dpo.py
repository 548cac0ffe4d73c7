"""Direct Preference Optimization (Rafailov et al. 2023) with TRL's DPOTrainer.

    python -m rlhf dpo --config dpo.json

The policy starts from ``model`` (normally the SFT checkpoint) and is trained on conversational
preference pairs with the DPO loss ``-log sigmoid(beta * (log-ratio(chosen) - log-ratio(rejected)))``.
With LoRA (the default) the reference policy is the same weights with the adapter disabled, so no
second copy sits in memory; with full fine-tuning a frozen copy is loaded (safetensors only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .contract import Artifacts, TrainerConfig, _help, data_hash, seed_everything
from .data import PreferencePair, load_pairs, pairs_to_dataset
from .models import describe_model, load_causal_lm, load_tokenizer
from .runner import attach_progress, peft_config_for, run_trainer, trl_args


@dataclass
class DPORunConfig(TrainerConfig):
    output_dir: str = _help("Directory for checkpoints, the final model and metadata.json.", "runs/dpo")
    learning_rate: float = _help("Peak learning rate (linear decay).", 5e-5)
    beta: float = _help("DPO temperature: strength of the implicit KL constraint to the reference.", 0.1)
    loss_type: str = _help("TRL DPO loss ('sigmoid' = DPO, 'ipo', 'hinge', ...).", "sigmoid")
    sft_weight: float = _help("Weight of an added negative log-likelihood term on the chosen answers (RPO, Pang et "
                              "al. 2024); 0 = plain DPO. It keeps the chosen answers likely instead of only "
                              "widening the margin.", 0.0)
    ld_alpha: float | None = _help("LD-DPO (Liu et al. 2024): the weight, in [0, 1], of the log-probabilities of the "
                                   "tokens by which the longer answer of a pair outruns the shorter; lower values "
                                   "stop DPO from learning plain length. null = plain DPO (same as 1).")


def check_dpo_config(config: DPORunConfig) -> None:
    """Raise ``ValueError`` for settings TRL would only reject after the model has loaded."""
    if config.sft_weight < 0:
        raise ValueError(f"sft_weight must be 0 or more (got {config.sft_weight}).")
    if config.sft_weight and config.loss_type == "sft":
        raise ValueError("sft_weight adds an 'sft' term to the DPO loss; with loss_type 'sft' use sft_weight 0.")
    if config.ld_alpha is not None and not 0.0 <= config.ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must lie in [0, 1] (got {config.ld_alpha}).")


def build_dpo_trainer(config: DPORunConfig, pairs: Sequence[PreferencePair],
                      eval_pairs: Sequence[PreferencePair] | None = None, model=None, tokenizer=None):
    """A ``DPOTrainer`` ready to ``train()``."""
    from trl import DPOConfig, DPOTrainer

    check_dpo_config(config)
    seed_everything(config.seed)
    tokenizer = tokenizer or load_tokenizer(config.model)
    load = dict(device=config.device, dtype=config.dtype, load_in_bits=config.load_in_bits)
    model = model or load_causal_lm(config.model, **load)
    ref_model = None if config.use_lora else load_causal_lm(config.model, **load).eval()
    losses = {"loss_type": [config.loss_type]}
    if config.sft_weight:
        losses = {"loss_type": [config.loss_type, "sft"], "loss_weights": [1.0, config.sft_weight]}
    args = trl_args(config, DPOConfig, beta=config.beta, ld_alpha=config.ld_alpha, **losses)
    return DPOTrainer(
        model=model, ref_model=ref_model, args=args, processing_class=tokenizer,
        train_dataset=pairs_to_dataset(pairs), eval_dataset=pairs_to_dataset(eval_pairs) if eval_pairs else None,
        peft_config=peft_config_for(config, "CAUSAL_LM"),
    )


def train_dpo(config: DPORunConfig, pairs: Sequence[PreferencePair] | None = None,
              progress: Callable[[int, int, dict], None] | None = None) -> Artifacts:
    """Run DPO; ``pairs`` default to ``load_pairs(config.data, config.data_format)``."""
    check_dpo_config(config)
    if pairs is None:
        pairs = load_pairs(config.data, config.data_format)
    pairs = list(pairs)
    tokenizer = load_tokenizer(config.model)
    trainer = attach_progress(build_dpo_trainer(config, pairs, tokenizer=tokenizer), progress)
    return run_trainer(trainer, config, kind="dpo", tokenizer=tokenizer, base_model=describe_model(config.model),
                       data_hash=data_hash(pairs), progress=progress, extra_meta={"num_pairs": len(pairs)})
