"""Direct Preference Optimization (Rafailov et al. 2023) with TRL's DPOTrainer.

    python -m rlhf dpo --config dpo.json

The policy starts from ``model`` (normally the SFT checkpoint) and is trained on conversational
preference pairs with the DPO loss ``-log sigmoid(beta * (log-ratio(chosen) - log-ratio(rejected)))``.
With LoRA (the default) the reference policy is the same weights with the adapter disabled, so no
second copy sits in memory; with full fine-tuning a frozen copy is loaded (safetensors only).
Besides TRL's metrics each step logs ``lengths/chosen`` and ``lengths/rejected``: the mean completion
tokens of the batch's chosen and rejected answers (what DPO is pushed toward and away from).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .config import DPORunConfig, check_dpo_config  # noqa: F401 (they live in rlhf.config; importable from here too)
from .contract import Artifacts, data_hash, seed_everything
from .data import PreferencePair, load_pairs, pairs_to_dataset
from .models import describe_model, load_causal_lm, load_tokenizer
from .runner import attach_progress, peft_config_for, run_trainer, trl_args


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
    return _length_logging(DPOTrainer)(
        model=model, ref_model=ref_model, args=args, processing_class=tokenizer,
        train_dataset=pairs_to_dataset(pairs), eval_dataset=pairs_to_dataset(eval_pairs) if eval_pairs else None,
        peft_config=peft_config_for(config, "CAUSAL_LM"),
    )


def _length_logging(dpo_trainer_cls):
    """``DPOTrainer`` that also logs the mean completion tokens of the chosen and rejected answers."""

    class DPOTrainerWithLengths(dpo_trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mask = inputs.get("completion_mask")
            if mask is not None:  # (2B, T): the B chosen rows, then the B rejected rows
                chosen, rejected = mask.sum(-1).float().chunk(2)
                mode = "train" if self.model.training else "eval"
                self._metrics[mode]["lengths/chosen"].append(float(chosen.mean()))
                self._metrics[mode]["lengths/rejected"].append(float(rejected.mean()))
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return DPOTrainerWithLengths


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
