"""rlhf.ppo against TRL 1.12's experimental PPOTrainer, side by side in one run, identical settings.

    .venv/bin/python bench/ppo_vs_trl112.py                      # GPU: 360M Llama config x 4 roles, B=32, 128 tokens
    .venv/bin/python bench/ppo_vs_trl112.py --cpu-small           # CPU: bundled 135M model, small batch

TRL removed PPOTrainer after 1.12, so the baseline runs in its own virtual environment ``.venv-trl112``
(created on first use: ``trl==1.12.0`` plus the *same* torch/transformers/accelerate/datasets/peft versions
as ``.venv``, so only the trainer differs; ``--trl-python`` points at an existing interpreter instead, e.g. on
a GPU host without network; ``--base`` then points at a copy of the bundled model's config and tokenizer). Each side runs in its own subprocess (clean peak-memory numbers):

* models: policy and reference = the SFT checkpoint, reward and value = the reward checkpoint. GPU default:
  random-weight SmolLM2-360M-shaped Llama configs (as the peer measurement); ``--cpu-small``: the bundled
  SmolLM2-135M-Instruct and a reward model built from it with a fresh, seeded score head.
* TRL: full fine-tuning of policy + value with a frozen reference copy and a frozen reward model (4 models,
  its standard setup). Ours: its default (LoRA: reference = adapter off, value = LoRA on the reward model's
  weights) and, with ``--ours full``, full fine-tuning too.
* ``--trl-weights bf16,fp32``: TRL with its four models loaded in bf16, and in fp32 (its default dtype) under
  the same bf16 mixed precision; ratios are printed against each.
* ``--ours rloo,grpo`` (and ``-merged`` / ``-compiled`` variants): RLOO and GRPO on our engine, LoRA, K = 4
  answers per prompt (the batch counts answers, so batch / 4 prompts per update), no value model.
* identical rollout batch, minibatch, PPO epochs, response length, temperature, KL coefficient,
  missing-EOS penalty, learning rate, bf16 (GPU) / fp32 (CPU).

Time per update = mean over the updates after the first (warm-up); episodes/s = batch / that; peak memory =
``torch.cuda.max_memory_allocated`` on GPU, peak RSS (``ru_maxrss``) of the process on CPU. Note: TRL always
generates ``response_length`` tokens; ours stops when every response has hit EOS (its mean response length
is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out" / "ppo_vs_trl112"
GROUP_K = 4  # rloo / grpo: answers per prompt
TRL_VENV = REPO / ".venv-trl112"
PROMPTS = [
    "What are some good ways to relax after a long day?", "How do I make a cup of green tea?",
    "Can you explain what a black hole is?", "What should I pack for a weekend camping trip?",
    "How can I improve my handwriting?", "Why is the sky blue?", "Give me three tips for a job interview.",
    "How do plants make their food?", "What is a good name for a pet goldfish?", "How do I start running?",
    "What is the difference between weather and climate?", "How can I keep my houseplants alive?",
    "Write a short thank-you note to a neighbour.", "What are the benefits of reading every day?",
    "How does a bicycle stay upright?", "What can I cook with rice, eggs and spinach?",
]


# ------------------------------------------------------------------------------------------ the models
def build_checkpoints(args) -> tuple[str, str]:
    """(policy dir, reward dir) under bench/out, built once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    sys.path.insert(0, str(REPO))
    from rlhf.models import convert_bundled_model, load_tokenizer

    bundled = Path(args.base) if args.base else convert_bundled_model()
    if args.cpu_small and not list(bundled.glob("*.safetensors")):
        raise SystemExit(f"--cpu-small needs the bundled model's weights; {bundled} has none")
    tok = load_tokenizer(str(bundled))
    tag = "smollm2-135m" if args.cpu_small else "llama-360m-random"
    policy_dir, reward_dir = OUT / f"{tag}-policy", OUT / f"{tag}-reward"
    if not (policy_dir / "config.json").is_file():
        torch.manual_seed(0)
        if args.cpu_small:
            policy = AutoModelForCausalLM.from_pretrained(bundled, dtype=torch.float32)
        else:  # SmolLM2-360M shape, random weights, the bundled (same) 49k tokenizer
            base = json.loads((bundled / "config.json").read_text())
            base.update(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                        num_key_value_heads=5, tie_word_embeddings=True)
            policy = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in base.items()
                                                                     if k not in ("architectures", "model_type")}))
        policy.generation_config.pad_token_id = tok.pad_token_id
        policy.save_pretrained(policy_dir, safe_serialization=True)
        tok.save_pretrained(policy_dir)
    if not (reward_dir / "config.json").is_file():
        torch.manual_seed(1)
        rm = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
        rm.config.pad_token_id = tok.pad_token_id
        rm.save_pretrained(reward_dir, safe_serialization=True)
        tok.save_pretrained(reward_dir)
    return str(policy_dir), str(reward_dir)


def settings(args) -> dict:
    return dict(batch=args.batch, mini_batch=args.mini_batch, epochs=args.epochs, response_length=args.response_length,
                updates=args.updates, temperature=1.0, kl_coef=0.05, missing_eos_penalty=1.0, learning_rate=1e-5,
                seed=0, cache_implementation=args.cache_implementation)


# ------------------------------------------------------------------------------------------- the sides
def peak_memory_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def run_ours(s: dict, policy: str, reward: str, mode: str, device: str) -> dict:
    import torch

    sys.path.insert(0, str(REPO))
    from rlhf.config import GRPOConfig, RLOOConfig
    from rlhf.ppo import PPOConfig, train

    stamps = []
    lengths = []
    shares = []

    def progress(step, total, metrics):
        stamps.append(time.time())
        lengths.append(metrics["policy/response_length"])
        shares.append(metrics["perf/generation_share"])

    method = mode.split("-")[0] if mode.split("-")[0] in ("rloo", "grpo") else "ppo"
    config_class = {"ppo": PPOConfig, "rloo": RLOOConfig, "grpo": GRPOConfig}[method]
    group = {} if method == "ppo" else {"num_samples": GROUP_K}  # the batch counts answers: batch / K prompts
    cfg = config_class(output_dir=str(OUT / f"ours-{mode}"), model=policy, reward_model=reward, device=device,
                    use_lora=not mode.startswith("full"), merged_generation="merged" in mode, **group,
                    compile_update="compiled" in mode, max_steps=s["updates"], rollout_batch_size=s["batch"],
                    mini_batch_size=s["mini_batch"], per_device_batch_size=s["batch"], ppo_epochs=s["epochs"],
                    max_new_tokens=s["response_length"], temperature=s["temperature"], kl_coef=s["kl_coef"],
                    missing_eos_penalty=s["missing_eos_penalty"], learning_rate=s["learning_rate"], seed=s["seed"],
                    save_steps=0, merge=False, max_length=256, cache_implementation=s["cache_implementation"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    train(cfg, PROMPTS * (s["batch"] // len(PROMPTS) + 1), progress)
    return {"stamps": [t0] + stamps, "peak_gb": peak_memory_gb(device), "mean_response_length":
            sum(lengths) / len(lengths), "generation_share": sum(shares[1:] or shares) / len(shares[1:] or shares)}


def run_trl(s: dict, policy: str, reward: str, device: str, weights: str = "bf16") -> dict:
    """TRL 1.12's PPOTrainer with bf16 mixed precision on a GPU; ``weights`` 'bf16': the four models loaded in
    bf16, 'fp32': loaded in fp32 (TRL's default dtype) under the same bf16 autocast."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    assert trl.__version__ == "1.12.0", trl.__version__
    tok = AutoTokenizer.from_pretrained(policy, padding_side="left")
    dtype = torch.bfloat16 if device == "cuda" and weights == "bf16" else torch.float32
    load = dict(dtype=dtype)
    pol = AutoModelForCausalLM.from_pretrained(policy, **load)
    ref = AutoModelForCausalLM.from_pretrained(policy, **load)
    val = AutoModelForSequenceClassification.from_pretrained(reward, num_labels=1, **load)
    rm = AutoModelForSequenceClassification.from_pretrained(reward, num_labels=1, **load)
    prompts = PROMPTS * (s["batch"] * s["updates"] // len(PROMPTS) + 1)
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                   return_dict=True)["input_ids"] for p in prompts]
    ds = Dataset.from_dict({"input_ids": ids})
    n_mini = s["batch"] // s["mini_batch"]
    args = PPOConfig(output_dir=str(OUT / "trl"), per_device_train_batch_size=s["mini_batch"],
                     gradient_accumulation_steps=n_mini, num_mini_batches=n_mini, num_ppo_epochs=s["epochs"],
                     total_episodes=s["batch"] * s["updates"], local_rollout_forward_batch_size=s["batch"],
                     response_length=s["response_length"], temperature=s["temperature"], kl_coef=s["kl_coef"],
                     missing_eos_penalty=s["missing_eos_penalty"], stop_token="eos", learning_rate=s["learning_rate"],
                     seed=s["seed"], bf16=device == "cuda", use_cpu=device == "cpu", gradient_checkpointing=False,
                     num_sample_generations=0, save_strategy="no", report_to="none", logging_steps=1,
                     disable_tqdm=True)
    stamps = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.time())

        def on_step_end(self, *a, **k):
            stamps.append(time.time())

    trainer = PPOTrainer(args=args, processing_class=tok, model=pol, ref_model=ref, reward_model=rm,
                         value_model=val, train_dataset=ds, callbacks=[Clock()])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {"stamps": stamps, "peak_gb": peak_memory_gb(device), "mean_response_length": s["response_length"]}


def worker(args) -> None:
    import torch

    torch.manual_seed(0)
    s = json.loads(args.settings)
    device = "cuda" if torch.cuda.is_available() and not args.cpu_small else "cpu"
    if args.worker.startswith("trl"):
        out = run_trl(s, args.policy, args.reward, device, "fp32" if args.worker == "trl-fp32" else "bf16")
    else:
        out = run_ours(s, args.policy, args.reward, args.worker.split("-", 1)[1], device)
    out["device"] = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()}"
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------- orchestration
def trl_python(args) -> str:
    if args.trl_python:
        return args.trl_python
    py = TRL_VENV / "bin" / "python"
    if not py.exists():
        from importlib.metadata import version

        pins = [f"{p}=={version(p)}" for p in ("torch", "transformers", "accelerate", "datasets", "peft")]
        print(f"creating {TRL_VENV} with trl==1.12.0 {' '.join(pins)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "trl==1.12.0", *pins], check=True)
    return str(py)


def launch(python: str, name: str, args, policy: str, reward: str) -> dict:
    cmd = [python, __file__, "--worker", name, "--policy", policy, "--reward", reward,
           "--settings", json.dumps(settings(args))] + (["--cpu-small"] if args.cpu_small else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               TOKENIZERS_PARALLELISM="false")
    print(f"running {name} ...", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.side_timeout)
    except subprocess.TimeoutExpired as exc:  # report it and go on to the next side
        tail = exc.stderr or ""
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        print(f"{name} did not finish within --side-timeout {args.side_timeout} s:\n{tail[-3000:]}", flush=True)
        return None
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", flush=True)
        return None
    out = json.loads(lines[-1][7:])
    stamps = out["stamps"]
    per_update = [b - a for a, b in zip(stamps, stamps[1:])]
    steady = per_update[1:] or per_update
    out["s_per_update"] = sum(steady) / len(steady)
    out["episodes_per_s"] = args.batch / out["s_per_update"]
    out["per_update"] = per_update
    print(f"{name}: {out['s_per_update']:.2f} s/update, peak {out['peak_gb']:.2f} GB", flush=True)  # before a later side can time out
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-small", action="store_true", help="bundled 135M model on CPU at a small batch")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--mini-batch", type=int, default=None)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--response-length", type=int, default=None)
    p.add_argument("--updates", type=int, default=None)
    p.add_argument("--ours", default="lora", help="comma list of our modes: lora, lora-merged (LoRA, rollouts sampled "
                   "from a merged copy: merged_generation), lora-compiled (LoRA with compile_update: scoring passes "
                   "and micro-steps compiled, CUDA graphs on CUDA), lora-merged-compiled (both), full, full-compiled; "
                   f"rloo, grpo (LoRA, K={GROUP_K} answers per prompt, no value model) with the same -merged / "
                   "-compiled suffixes")
    p.add_argument("--trl-weights", default="bf16", help="comma list of TRL sides: bf16 (the models loaded in bf16), "
                   "fp32 (loaded in fp32, TRL's default dtype, under the same bf16 mixed precision)")
    p.add_argument("--trl-first", action="store_true", help="run the TRL baseline before our sides")
    p.add_argument("--side-timeout", type=float, default=None,
                   help="seconds one side may take; a side that fails or runs over is reported and skipped")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--cache-implementation", default=None, help="ours only: e.g. 'static' (compiled decode, GPU)")
    p.add_argument("--base", help="a checkpoint folder with config.json and the tokenizer, in place of the converted "
                   "bundled model (a GPU host without the bundled package needs only those files for the random "
                   "360M configs)")
    p.add_argument("--trl-python", help="an interpreter with trl==1.12.0 (default: create .venv-trl112)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--reward", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    small = args.cpu_small
    args.batch = args.batch or (4 if small else 32)
    args.mini_batch = args.mini_batch or (2 if small else 8)
    args.response_length = args.response_length or (32 if small else 128)
    args.updates = args.updates or (2 if small else 4)
    modes = [m for m in args.ours.split(",") if m]
    known = {"lora", "lora-merged", "lora-compiled", "lora-merged-compiled", "full", "full-compiled"}
    known |= {f"{m}{suffix}" for m in ("rloo", "grpo") for suffix in ("", "-merged", "-compiled", "-merged-compiled")}
    unknown = set(modes) - known
    if unknown:
        raise SystemExit(f"--ours: unknown mode(s) {', '.join(sorted(unknown))}; see --help")
    trl_sides = [w for w in args.trl_weights.split(",") if w]
    if set(trl_sides) - {"bf16", "fp32"}:
        raise SystemExit(f"--trl-weights: bf16 and/or fp32 (got {args.trl_weights!r})")
    if any(m.startswith(("rloo", "grpo")) for m in modes) and args.batch % GROUP_K:
        raise SystemExit(f"--batch must be a multiple of K={GROUP_K} for rloo/grpo (got {args.batch})")
    OUT.mkdir(parents=True, exist_ok=True)
    policy, reward = build_checkpoints(args)
    print("settings:", json.dumps(settings(args)), flush=True)
    sides = [(sys.executable, f"ours-{m}") for m in modes]
    if not args.skip_trl:
        trl = [(None, "trl" if w == "bf16" else "trl-fp32") for w in trl_sides]
        sides = trl + sides if args.trl_first else sides + trl
    results = {}
    for python, name in sides:
        out = launch(python or trl_python(args), name, args, policy, reward)
        if out is not None:
            results[{"trl": "trl-1.12", "trl-fp32": "trl-1.12-fp32"}.get(name, name)] = out
    print(f"\n{'side':12s} {'s/update':>9s} {'episodes/s':>11s} {'peak GB':>8s} {'resp len':>8s} {'gen share':>9s}  device")
    for name, r in results.items():
        share = f"{r['generation_share']:9.2f}" if "generation_share" in r else f"{'-':>9s}"  # ours only
        print(f"{name:12s} {r['s_per_update']:9.2f} {r['episodes_per_s']:11.3f} {r['peak_gb']:8.2f} "
              f"{r['mean_response_length']:8.1f} {share}  {r['device']}   per update: "
              + " ".join(f"{x:.1f}" for x in r["per_update"]))
    if "ours-lora" in results and "ours-lora-merged" in results:
        a, b = results["ours-lora"], results["ours-lora-merged"]
        gen_a, gen_b = (r["generation_share"] * r["s_per_update"] for r in (a, b))
        print(f"ours-lora-merged / ours-lora: episodes/s x{b['episodes_per_s'] / a['episodes_per_s']:.2f}, "
              f"generation s/update {gen_b:.2f} vs {gen_a:.2f} (x{gen_a / gen_b:.2f} faster), "
              f"peak memory x{b['peak_gb'] / a['peak_gb']:.2f}")
    for baseline in ("trl-1.12", "trl-1.12-fp32"):
        if baseline not in results:
            continue
        base = results[baseline]
        for name, r in results.items():
            if not name.startswith("trl-"):
                print(f"{name} / {baseline}: episodes/s x{r['episodes_per_s'] / base['episodes_per_s']:.2f}, "
                      f"peak memory x{r['peak_gb'] / base['peak_gb']:.2f}"
                      + ("   (CPU: peak RSS of the whole process)" if small else ""))
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
