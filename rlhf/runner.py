"""Glue shared by the TRL-based trainers (SFT, reward model, DPO): TRL args from a ``TrainerConfig``,
and ``run_trainer`` which resumes, trains, handles cancellation, saves the final model and the metadata."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable

from .config import MERGEABLE, PROMPT_LEARNING, check_peft, peft_method
from .contract import (
    METADATA_FILE,
    MODEL_SUBDIR,
    Artifacts,
    TrainerConfig,
    last_checkpoint,
    make_hf_callback,
    write_metadata,
)
from .models import bf16_capable, cpu_bf16_native, peft_config, pick_device, resolve_model, save_adapter

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Throughput:
    """What a TRL run trains with, resolved once from its config and the hardware (``resolve_throughput``);
    written to metadata.json as ``throughput``."""

    device: str
    dtype: str  # the weights' dtype at load time
    bf16: bool  # bf16 autocast
    optim: str
    padding_free: bool  # SFT: one concatenated row per micro-batch (or BFD packing), no padding computed
    liger: bool
    mode: str  # the config's `throughput`
    active: tuple[str, ...] = ()  # the settings on here that TRL's defaults leave off


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def resolve_throughput(config: TrainerConfig, kind: str, *, device=None, bf16_ok: bool | None = None,
                       liger_ok: bool | None = None, cpu_bf16_ok: bool | None = None) -> Throughput:
    """The throughput settings of an SFT, reward or DPO run (``config.throughput``; explicit settings win).

    On a CUDA GPU with ``throughput: auto``, SFT and reward runs use what TRL leaves off by default: fused
    AdamW; Liger kernels when the package is installed; for SFT padding-free batches and, with an adapter,
    bf16 weights without autocast (peft computes the adapter in fp32; autocast over bf16 weights only adds
    host work). Full fine-tuning keeps fp32 master weights under bf16 autocast: pure-bf16 AdamW rounds most
    small updates to zero. The reward model keeps autocast (its trained score head is in the weights'
    dtype). DPO keeps today's settings on a GPU.

    On a CPU that multiplies bf16 natively (``rlhf.models.cpu_bf16_native``: AVX512-BF16 or AMX-BF16 and measured
    faster than fp32), SFT and DPO runs with a LoRA adapter load bf16 weights without autocast (peft keeps the
    adapter in fp32): about 2x faster a DPO step on the bundled model. Reward runs with LoRA keep fp32 weights
    there (TRL's optimizer would otherwise train the score head in bf16) under bf16 autocast: 2.2x faster a
    reward step on the bundled model (162 -> 75 s for 340 pairs on an AMX Xeon, 2 threads). Full fine-tuning,
    other adapters and every other CPU keep fp32 without autocast. ``device``/``bf16_ok``/
    ``liger_ok``/``cpu_bf16_ok`` override what this host reports (tests).
    """
    import torch

    device = torch.device(device) if device is not None else pick_device(config.device)
    bf16_ok = bf16_capable(device) if bf16_ok is None else bf16_ok
    liger_ok = liger_installed() if liger_ok is None else liger_ok
    gpu = device.type == "cuda" and config.throughput == "auto" and kind in ("sft", "reward")
    method = peft_method(config)
    native_cpu_lora = (device.type == "cpu" and config.throughput == "auto" and method == "lora"
                       and (cpu_bf16_native() if cpu_bf16_ok is None else cpu_bf16_ok))
    cpu_bf16 = native_cpu_lora and kind in ("sft", "dpo")
    cpu_autocast = native_cpu_lora and kind == "reward"
    if config.dtype != "auto":
        dtype = config.dtype
    elif gpu and method == "none":
        dtype = "float32"
    elif cpu_bf16:
        dtype = "bfloat16"
    else:
        dtype = "bfloat16" if bf16_ok else "float32"
    if config.bf16 is not None:
        bf16 = config.bf16
    elif (gpu and kind == "sft" and method != "none" or cpu_bf16) and dtype == "bfloat16":
        bf16 = False
    elif cpu_autocast and dtype == "float32":
        bf16 = True
    else:
        bf16 = bf16_ok
    optim = config.optim or ("adamw_torch_fused" if gpu else "adamw_torch")
    padding_free = False
    if kind == "sft":
        padding_free = getattr(config, "packing", False) or (
            config.padding_free if config.padding_free is not None else gpu and method not in PROMPT_LEARNING)
        if padding_free and method in PROMPT_LEARNING:
            raise ValueError(f"padding_free cannot be used with peft {method!r}: its virtual tokens are prepended to "
                             "every row, so one concatenated row would carry them once.")
    liger = config.liger if config.liger is not None else gpu and liger_ok
    if liger and (device.type != "cuda" or not liger_ok):
        raise ValueError("liger needs a CUDA GPU and the liger-kernel package (pip install liger-kernel); "
                         f"this run is on {device.type}" + ("" if liger_ok else " without the package") + ".")
    active = tuple(name for name, on in (
        ("padding_free", padding_free), ("fused_adamw", optim.endswith("fused")), ("liger", liger),
        ("bf16_weights_no_autocast", dtype == "bfloat16" and not bf16),
        ("fp32_master_weights", gpu and method == "none" and dtype == "float32" and bf16),
        ("cpu_bf16_autocast", device.type == "cpu" and dtype == "float32" and bf16)) if on)
    return Throughput(device=str(device), dtype=dtype, bf16=bf16, optim=optim, padding_free=padding_free,
                      liger=liger, mode=config.throughput, active=active)


def trl_args(config: TrainerConfig, trl_config_cls, throughput: Throughput | None = None, **specific: Any):
    """Build a TRL config (``SFTConfig``, ``RewardConfig``, ``DPOConfig``) from our config and its resolved
    ``throughput`` (``resolve_throughput(config, "dpo")`` when not given: TRL's defaults as configured)."""
    throughput = throughput or resolve_throughput(config, "dpo")
    device = pick_device(config.device)
    kwargs: dict[str, Any] = dict(
        output_dir=config.output_dir,
        seed=config.seed,
        data_seed=config.seed,
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        bf16=throughput.bf16,
        use_cpu=device.type == "cpu",
        gradient_checkpointing=config.gradient_checkpointing,
        optim=throughput.optim,
        use_liger_kernel=throughput.liger,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    kwargs.update(specific)
    kwargs.update(config.extra_args)
    return trl_config_cls(**kwargs)


def peft_config_for(config: TrainerConfig, task_type: str):
    """The peft config of the config's method (`peft`, or LoRA/none from `use_lora`); None: full fine-tuning."""
    method = peft_method(config)
    lora = dict(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                target_modules=config.lora_target_modules, layers=getattr(config, "lora_layers", None))
    init_text = config.prompt_tuning_init_text
    return peft_config(method, task_type, lora=lora, num_virtual_tokens=config.num_virtual_tokens,
                       encoder_hidden_size=config.prompt_encoder_hidden_size, prefix_projection=config.prefix_projection,
                       init_text=init_text, tokenizer_path=resolve_model(config.model) if init_text else None)


def check_lora_layers(config: TrainerConfig, model) -> None:
    """ValueError when ``lora_layers`` names decoder layers the loaded model does not have (peft would adapt
    only those it finds, or fail with 'No modules were targeted'); before the adapter is made."""
    layers = getattr(config, "lora_layers", None)
    if not layers or peft_method(config) not in ("lora", "qlora"):
        return
    count = getattr(model.config, "num_hidden_layers", None)
    if count is None:
        return
    missing = sorted({i for i in layers if not 0 <= i < count})
    if missing:
        raise ValueError(f"lora_layers: {missing} are not decoder layers of {config.model or 'the bundled model'}, "
                         f"which has {count} (indices 0-{count - 1}); use null for all of them")


def check_peft_here(config: TrainerConfig, kind: str) -> str:
    """rlhf.config.check_peft with this host's CUDA: refuses before any model loads."""
    import torch

    return check_peft(config, kind, cuda_available=torch.cuda.is_available())


def save_final_model(trainer, config: TrainerConfig, tokenizer) -> str:
    """``output_dir/model``: merged safetensors when LoRA/IA3 + ``merge``, the adapter alone otherwise
    (prompt-learning adapters have nothing to merge)."""
    out = Path(config.output_dir) / MODEL_SUBDIR
    model = trainer.accelerator.unwrap_model(trainer.model)
    if peft_method(config) in MERGEABLE and config.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        trainer.model = model
    if trainer.accelerator.is_main_process:  # several processes (accelerate launch): one writer
        if hasattr(model, "peft_config"):  # the adapter alone, on the checkpoint training started from
            save_adapter(model, out, config.model, tokenizer)
        else:
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
    trainer.accelerator.wait_for_everyone()
    return str(out)


def run_trainer(trainer, config: TrainerConfig, *, kind: str, tokenizer, base_model: Any, data_hash: str,
                progress: Callable[[int, int, dict], None] | None,
                after_train: Callable[[Any], dict[str, Any]] | None = None,
                extra_meta: dict[str, Any] | None = None) -> Artifacts:
    """Train (resuming if asked), then write the final model and ``metadata.json``.

    ``progress`` must already be attached through ``make_hf_callback`` (see ``attach_progress``);
    ``after_train(trainer) -> metrics`` adds metrics (e.g. held-out accuracy) on success.
    """
    bridge = next((c for c in trainer.callback_handler.callbacks if hasattr(c, "cancelled")), None)
    resume_from = last_checkpoint(config.output_dir) if config.resume else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    result = trainer.train(resume_from_checkpoint=resume_from)
    cancelled = bool(bridge and bridge.cancelled)
    metrics: dict[str, Any] = dict(bridge.latest if bridge else {})
    metrics.update({"loss/train_mean": result.training_loss, "global_step": trainer.state.global_step,
                    "resumed_from": resume_from})
    model_dir = None
    if not cancelled:
        if after_train is not None:
            metrics.update(after_train(trainer))
        model_dir = save_final_model(trainer, config, tokenizer)
    status = "cancelled" if cancelled else "succeeded"
    if not trainer.accelerator.is_main_process:
        meta = str(Path(config.output_dir) / METADATA_FILE)  # rank 0 writes it
        return Artifacts(str(config.output_dir), model_dir, meta, status, metrics, trainer.state.global_step)
    throughput = getattr(trainer, "rlhf_throughput", None)
    meta = write_metadata(config.output_dir, kind=kind, base_model=base_model, data_hash=data_hash, config=config,
                          metrics=metrics, status=status,
                          extra={"model_dir": model_dir, "last_checkpoint": last_checkpoint(config.output_dir),
                                 **({"throughput": dataclasses.asdict(throughput)} if throughput else {}),
                                 **(extra_meta or {})})
    return Artifacts(str(config.output_dir), model_dir, meta, status, metrics, trainer.state.global_step)


def attach_progress(trainer, progress: Callable[[int, int, dict], None] | None):
    """Add the progress/cancel bridge to a built trainer (idempotent per trainer)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # metrics go to `progress` and metadata.json, not stdout
    trainer.add_callback(make_hf_callback(progress))
    return trainer


def replace_config(config, **changes):
    return dataclasses.replace(config, **changes)
