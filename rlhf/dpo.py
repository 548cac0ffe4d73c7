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

from .config import DPORunConfig, check_dpo_config, peft_method  # noqa: F401 (they live in rlhf.config; importable from here too)
from .contract import Artifacts, data_hash, seed_everything
from .data import PreferencePair, load_pairs, pairs_to_dataset
from .models import describe_model, load_causal_lm, load_tokenizer
from .runner import attach_progress, check_peft_here, peft_config_for, resolve_throughput, run_trainer, trl_args
from .weighting import select_pairs
from .weighting import summary as weighting_summary


def build_dpo_trainer(config: DPORunConfig, pairs: Sequence[PreferencePair],
                      eval_pairs: Sequence[PreferencePair] | None = None, model=None, tokenizer=None):
    """A ``DPOTrainer`` ready to ``train()``."""
    from trl import DPOConfig, DPOTrainer

    check_dpo_config(config)
    check_peft_here(config, "dpo")  # an unsupported method is refused before any model loads
    seed_everything(config.seed)
    tokenizer = tokenizer or load_tokenizer(config.model)
    throughput = resolve_throughput(config, "dpo")  # TRL's defaults on a GPU; bf16 weights with LoRA on a native-bf16 CPU
    load = dict(device=config.device, dtype=throughput.dtype, load_in_bits=config.load_in_bits)
    model = model or load_causal_lm(config.model, **load)
    # an adapter (any peft method) switched off is the reference; full fine-tuning needs a frozen copy
    ref_model = None if peft_method(config) != "none" else load_causal_lm(config.model, **load).eval()
    losses = {"loss_type": [config.loss_type]}
    if config.sft_weight:
        losses = {"loss_type": [config.loss_type, "sft"], "loss_weights": [1.0, config.sft_weight]}
    args = trl_args(config, DPOConfig, throughput, beta=config.beta, ld_alpha=config.ld_alpha, **losses)
    common = dict(model=model, ref_model=ref_model, args=args, processing_class=tokenizer,
                  eval_dataset=pairs_to_dataset(eval_pairs) if eval_pairs else None,
                  peft_config=peft_config_for(config, "CAUSAL_LM"))
    if config.label_weights == "none":
        trainer = _length_logging(DPOTrainer)(train_dataset=pairs_to_dataset(pairs), **common)
    else:
        dataset = pairs_to_dataset(pairs).add_column("pair_weight", [float(p.weight) for p in pairs])
        trainer = _length_logging(_weighted_trainer_class())(train_dataset=dataset, **common)
    trainer.rlhf_throughput = throughput
    return trainer


_WEIGHTED = None


def _weighted_trainer_class():
    """``DPOTrainer`` whose loss is the weighted mean Σ wᵢ ℓᵢ / Σ wᵢ over each batch's pairs.

    TRL computes the DPO loss inside one method, so the weights act on the gradient instead: a forward
    hook on the policy scales the gradient reaching each row's token log-probabilities by
    wᵢ · B / Σ w (rows are [chosen…, rejected…]). Every term of the loss is a mean over pairs of a
    function of those log-probabilities, so that is exactly the gradient of the weighted mean (the
    logged loss stays TRL's unweighted one). The reference pass runs without gradients and is untouched."""
    global _WEIGHTED
    if _WEIGHTED is not None:
        return _WEIGHTED
    import torch
    from trl import DPOTrainer

    class WeightedDPOTrainer(DPOTrainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            inner = self.data_collator

            def collate(examples):
                batch = inner(examples)
                batch["pair_weight"] = torch.tensor([float(e["pair_weight"]) for e in examples])
                return batch

            self.data_collator = collate

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "pair_weight" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "pair_weight"]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("pair_weight", None)
            if weights is None or not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            weights = weights.float()
            scale = weights * (len(weights) / weights.sum().clamp(min=1e-12))  # (B,)
            rows = torch.cat([scale, scale])  # (2B,): the chosen rows, then the rejected rows

            def hook(module, args, kwargs, output):
                logps = getattr(output, "log_probs", None)
                if logps is not None and logps.requires_grad:
                    factor = rows.to(logps.device, logps.dtype).view(-1, *([1] * (logps.dim() - 1)))
                    logps.register_hook(lambda grad: grad * factor)
                return output

            handle = model.register_forward_hook(hook, with_kwargs=True)
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                handle.remove()

    _WEIGHTED = WeightedDPOTrainer
    return WeightedDPOTrainer


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
    given = list(pairs)
    pairs = select_pairs(given, mode=config.label_weights, min_confidence=config.min_confidence, duplicate_soft=True)
    if not pairs:
        raise ValueError(f"no pair is left to train on: all {len(given)} were dropped by min_confidence "
                         f"{config.min_confidence} or had weight 0.")
    tokenizer = load_tokenizer(config.model)
    trainer = attach_progress(build_dpo_trainer(config, pairs, tokenizer=tokenizer), progress)
    return run_trainer(trainer, config, kind="dpo", tokenizer=tokenizer, base_model=describe_model(config.model),
                       data_hash=data_hash(pairs), progress=progress,
                       extra_meta={"num_pairs": len(pairs),
                                   "label_weighting": weighting_summary(given, pairs, mode=config.label_weights,
                                                                        min_confidence=config.min_confidence)})
