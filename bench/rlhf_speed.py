"""Speed of rlhf's SFT, reward model and sampling against plain TRL / HF defaults, in one process.

    .venv/bin/python bench/rlhf_speed.py all            # GPU: random-weight configs at the issue's shapes
    .venv/bin/python bench/rlhf_speed.py sft --preset cpu

Each case runs the plain-defaults baseline and rlhf's configuration on the same model shape, data and
device, and prints one JSON line with both throughputs and ``ratio`` (rlhf / baseline, > 1 = faster).

Presets (``--preset auto`` = gpu when CUDA is present, else cpu):

* gpu: random-weight Llama configs, bf16. SFT: 1.7B-shaped (SmolLM2-1.7B), seq 2048 packed, batch 4,
  full fine-tuning; baseline = ``SFTConfig(packing=True, max_length=2048, per_device_train_batch_size=4)``
  with TRL's other defaults (fp32 weights, bf16 autocast, gradient checkpointing, adamw_torch);
  rlhf = bf16 weights, the ``throughput: auto`` settings (fused AdamW, padding-free packing, Liger kernels
  when ``liger-kernel`` is installed; the JSON line says which were active). Reward: 360M-shaped, 16 pairs per batch,
  max length 512; baseline = ``RewardConfig`` defaults, rlhf = bf16 weights, fused AdamW, no gradient
  checkpointing. Sampling: 360M-shaped, batch 64 x 256 new tokens; baseline = ``model.generate`` with
  default settings (dynamic cache), rlhf = ``rlhf.sampling.sample`` with ``cache_implementation="static"``
  (compiled decode; its first call's compile time is reported separately).
* cpu: the bundled SmolLM2-135M-Instruct with small shapes (seq 256, batch 2, 4 pairs, 4 x 32 tokens),
  to prove the script runs; no static cache (it slows CPU decoding). CPU ratios say little about GPUs:
  there TRL's default bf16 autocast is the baseline's main cost on CPUs without bf16 units, while rlhf
  keeps fp32 on CPU (``bf16: null``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

SHAPES = {  # SmolLM2 family shapes (vocab 49152, tied embeddings)
    "1.7B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32),
    "360M": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
}
PRESETS = {
    "gpu": dict(sft_shape="1.7B", sft_len=2048, sft_batch=4, sft_steps=12, sft_warmup=3,
                rm_shape="360M", rm_pairs=16, rm_len=512, rm_steps=12, rm_warmup=3,
                gen_shape="360M", gen_batch=64, gen_tokens=256, static_cache=True),
    "cpu": dict(sft_shape=None, sft_len=128, sft_batch=2, sft_steps=3, sft_warmup=1,
                rm_shape=None, rm_pairs=2, rm_len=512, rm_steps=3, rm_warmup=1,
                gen_shape=None, gen_batch=4, gen_tokens=16, static_cache=False),
}


def shared_data_dir() -> Path:
    return Path(os.environ.get("SHARED_DATA_DIR") or REPO / ".." / "shared" / "data").resolve()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


BASE: str | None = None  # --base: a folder with the bundled model's tokenizer (a GPU host without the package)


def tokenizer():
    from rlhf.models import load_tokenizer

    return load_tokenizer(BASE)


# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) for MFU; others: --set peak_tflops=...
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def flops_per_token(shape: str | None, seq: int) -> float | None:
    """Training FLOPs per token of a Llama at ``shape``: 6 x the parameters of the matmuls (attention and MLP
    projections, and the tied output head) plus 12 x layers x hidden x sequence for attention's score and value
    products (the PaLM paper's MFU formula, Chowdhery et al. 2022, appendix B). None for the bundled model."""
    if shape is None:
        return None
    c = SHAPES[shape]
    h, layers, inter = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
    kv = h * c["num_key_value_heads"] // c["num_attention_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter  # q, o; k, v; gate, up, down
    matmul_params = layers * per_layer + h * 49152  # + the output head (tied to the embedding, still a matmul)
    return 6.0 * matmul_params + 12.0 * layers * h * seq


def mfu(tokens_per_s: float, shape: str | None, seq: int, peak_tflops: float | None) -> float | None:
    fpt = flops_per_token(shape, seq)
    if fpt is None or not peak_tflops:
        return None
    return tokens_per_s * fpt / (peak_tflops * 1e12)


def device_peak_tflops(p: dict) -> float | None:
    if p.get("peak_tflops"):
        return float(p["peak_tflops"])
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def make_model(shape: str | None, kind: str, dtype: torch.dtype):
    """Random weights at ``shape`` (SmolLM2 vocabulary), or the bundled model when ``shape`` is None."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    from rlhf.models import load_causal_lm, load_reward_model, pick_device

    device = pick_device("auto")
    if shape is None:
        load = load_reward_model if kind == "reward" else load_causal_lm
        return load(None, dtype=dtype)
    tok = tokenizer()
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, tie_word_embeddings=True,
                         rope_theta=100000.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, num_labels=1, **SHAPES[shape])
    torch.manual_seed(0)
    cls = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
    return cls.from_config(config, dtype=dtype).to(device)


class StepTimer:
    """TrainerCallback measuring wall time of the steps after ``warmup``."""

    def __new__(cls, warmup: int):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.t0, self.steps, self.seconds = None, 0, 0.0

            def on_step_end(self, args, state, control, **kw):
                sync()
                if state.global_step == warmup:
                    self.t0 = time.perf_counter()
                elif state.global_step > warmup:
                    self.steps, self.seconds = state.global_step - warmup, time.perf_counter() - self.t0

        return _Timer()


def demonstrations():
    from rlhf.data import read_no_robots

    return read_no_robots(shared_data_dir() / "dolly_no_robots_animal_topic_subsets" / "no_robots_subset.csv")


def hh_pairs(n: int):
    from rlhf.data import read_hh_rlhf

    return read_hh_rlhf(shared_data_dir() / "hh_rlhf_test_splits" / "helpful-base.test.jsonl.gz", limit=n)


def peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None


# ------------------------------------------------------------------------------------------------- SFT
def bench_sft(p: dict) -> dict:
    from trl import SFTConfig, SFTTrainer

    from rlhf.data import demonstrations_to_dataset
    from rlhf.sft import SFTRunConfig, build_sft_trainer

    tok, demos = tokenizer(), demonstrations()
    steps = p["sft_warmup"] + p["sft_steps"]
    tokens_per_step = p["sft_batch"] * p["sft_len"]
    gpu = torch.cuda.is_available()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # baseline: plain TRL defaults (only the shape settings changed)
        timer = StepTimer(p["sft_warmup"])
        model = make_model(p["sft_shape"], "causal", torch.float32)
        args = SFTConfig(output_dir=f"{tmp}/base", packing=True, max_length=p["sft_len"], max_steps=steps,
                         per_device_train_batch_size=p["sft_batch"], report_to="none", save_strategy="no",
                         **({} if gpu else {"use_cpu": True}))
        trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                             train_dataset=demonstrations_to_dataset(demos), callbacks=[timer])
        trainer.train()
        results["baseline_tokens_per_s"] = tokens_per_step * timer.steps / timer.seconds
        results["baseline_peak_gb"] = peak_gb()
        del trainer, model
        free()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        # rlhf: full fine-tuning with bf16 weights, fused AdamW, padding-free packing
        timer = StepTimer(p["sft_warmup"])
        dtype = torch.bfloat16 if gpu else torch.float32
        model = make_model(p["sft_shape"], "causal", dtype)
        config = SFTRunConfig(output_dir=f"{tmp}/ours", model=None, use_lora=False, max_steps=steps,
                              per_device_batch_size=p["sft_batch"], max_length=p["sft_len"], packing=True,
                              bf16=None, gradient_checkpointing=gpu, save_steps=0, learning_rate=2e-5)
        # throughput "auto": fused AdamW and Liger (when installed) on a GPU; packing is padding-free
        trainer = build_sft_trainer(config, demos, model=model, tokenizer=tok)
        trainer.add_callback(timer)
        trainer.train()
        results["rlhf_tokens_per_s"] = tokens_per_step * timer.steps / timer.seconds
        results["rlhf_active"] = list(trainer.rlhf_throughput.active)
        results["rlhf_peak_gb"] = peak_gb()
        del trainer, model
        free()
    peak = device_peak_tflops(p)
    for side in ("baseline", "rlhf"):  # model FLOPs utilisation: None without a known peak (CPU, other GPUs)
        value = mfu(results[f"{side}_tokens_per_s"], p["sft_shape"], p["sft_len"], peak)
        results[f"{side}_mfu"] = None if value is None else round(value, 4)
    results["peak_tflops"] = peak
    return {"case": "sft", "shape": p["sft_shape"] or "bundled-135M", "seq": p["sft_len"], "batch": p["sft_batch"],
            **{k: (round(v, 1) if isinstance(v, float) and not k.endswith("_mfu") else v)
               for k, v in results.items()},
            "ratio": round(results["rlhf_tokens_per_s"] / results["baseline_tokens_per_s"], 3)}


# ---------------------------------------------------------------------------------------------- reward
def bench_reward(p: dict) -> dict:
    from trl import RewardConfig, RewardTrainer

    from rlhf.data import pairs_to_dataset
    from rlhf.reward import RewardRunConfig, build_reward_trainer, fit_to_length

    tok = tokenizer()
    steps = p["rm_warmup"] + p["rm_steps"]
    pairs = fit_to_length(hh_pairs(max(200, p["rm_pairs"] * steps * 2)), tok, p["rm_len"])[: p["rm_pairs"] * steps]
    gpu = torch.cuda.is_available()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        timer = StepTimer(p["rm_warmup"])
        model = make_model(p["rm_shape"], "reward", torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(output_dir=f"{tmp}/base", max_length=p["rm_len"], max_steps=steps,
                            per_device_train_batch_size=p["rm_pairs"], report_to="none", save_strategy="no",
                            **({} if gpu else {"use_cpu": True}))
        trainer = RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=pairs_to_dataset(pairs),
                                callbacks=[timer])
        trainer.train()
        results["baseline_pairs_per_s"] = p["rm_pairs"] * timer.steps / timer.seconds
        results["baseline_peak_gb"] = peak_gb()
        del trainer, model
        free()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        timer = StepTimer(p["rm_warmup"])
        model = make_model(p["rm_shape"], "reward", torch.bfloat16 if gpu else torch.float32)
        config = RewardRunConfig(output_dir=f"{tmp}/ours", model=None, use_lora=False, max_steps=steps,
                                 per_device_batch_size=p["rm_pairs"], max_length=p["rm_len"], bf16=None,
                                 save_steps=0, eval_fraction=0)  # throughput "auto": fused AdamW, Liger if installed
        trainer = build_reward_trainer(config, pairs, model=model, tokenizer=tok)
        trainer.add_callback(timer)
        trainer.train()
        results["rlhf_pairs_per_s"] = p["rm_pairs"] * timer.steps / timer.seconds
        results["rlhf_active"] = list(trainer.rlhf_throughput.active)
        results["rlhf_peak_gb"] = peak_gb()
        del trainer, model
        free()
    return {"case": "reward", "shape": p["rm_shape"] or "bundled-135M", "pairs_per_batch": p["rm_pairs"],
            "max_length": p["rm_len"], **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in results.items()},
            "ratio": round(results["rlhf_pairs_per_s"] / results["baseline_pairs_per_s"], 3)}


# -------------------------------------------------------------------------------------------- sampling
def bench_sample(p: dict) -> dict:
    from rlhf.data import load_prompts
    from rlhf.sampling import render_prompts, sample

    tok = tokenizer()
    prompts = load_prompts(shared_data_dir() / "vicuna_bench_questions" / "question.jsonl")
    prompts = (prompts * (p["gen_batch"] // len(prompts) + 1))[: p["gen_batch"]]
    gpu = torch.cuda.is_available()
    model = make_model(p["gen_shape"], "causal", torch.bfloat16 if gpu else torch.float32).eval()
    results = {}
    # baseline: HF generate with default settings (sampling from the model's generation config, dynamic cache)
    side = tok.padding_side
    tok.padding_side = "left"
    enc = tok(render_prompts(tok, prompts), add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
    tok.padding_side = side
    with torch.no_grad():  # warm-up (CUDA context, kernels, allocator) so neither side pays for it in its timing
        model.generate(**enc, max_new_tokens=4, do_sample=True, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=p["gen_tokens"], do_sample=True, pad_token_id=tok.pad_token_id)
    sync()
    seconds = time.perf_counter() - t0
    new = out[:, enc["input_ids"].shape[1]:]
    base_tokens = int((new != tok.pad_token_id).sum())
    results["baseline_tokens_per_s"] = base_tokens / seconds
    # rlhf.sampling.sample: one batch of all prompts; with a static cache the first call compiles
    kw = dict(k=1, max_new_tokens=p["gen_tokens"], seed=0, batch_size=p["gen_batch"],
              cache_implementation="static" if p["static_cache"] else None)
    if p["static_cache"]:
        t0 = time.perf_counter()
        sample(model, tok, prompts, **kw)
        sync()
        results["rlhf_first_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = sample(model, tok, prompts, **kw)
    sync()
    seconds = time.perf_counter() - t0
    results["rlhf_tokens_per_s"] = sum(s.completion_tokens for s in samples) / seconds
    del model
    free()
    return {"case": "sample", "shape": p["gen_shape"] or "bundled-135M", "batch": p["gen_batch"],
            "new_tokens": p["gen_tokens"], "static_cache": p["static_cache"],
            **{k: round(v, 1) for k, v in results.items()},
            "ratio": round(results["rlhf_tokens_per_s"] / results["baseline_tokens_per_s"], 3)}


CASES = {"sft": bench_sft, "reward": bench_reward, "sample": bench_sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=[*CASES, "all"])
    ap.add_argument("--preset", choices=["auto", "gpu", "cpu"], default="auto")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset value "
                    "(also peak_tflops=..., the device's dense bf16 peak for MFU where it is not in PEAK_TFLOPS)")
    ap.add_argument("--base", help="a folder with the bundled model's config and tokenizer (bench/gpu_suite.sh "
                    "prepare writes .gpu/base), for a host without the bundled package")
    args = ap.parse_args()
    global BASE
    BASE = args.base
    preset = args.preset if args.preset != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    p = dict(PRESETS[preset])
    for item in args.set:
        key, _, value = item.partition("=")
        p[key] = json.loads(value) if value not in ("None", "null") else None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    for name in (CASES if args.case == "all" else [args.case]):
        print(json.dumps({"preset": preset, "device": device, **CASES[name](p)}), flush=True)


if __name__ == "__main__":
    main()
