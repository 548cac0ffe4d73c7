"""8-bit dynamic-quantized sampling against fp32 on the CPU, with the bundled SmolLM2-135M-Instruct.

    flock /work/.heavy.lock nice env OMP_NUM_THREADS=2 timeout 600 .venv/bin/python bench/int8_sampling.py

The same prompts, seed and decoding settings for both; each mode samples in its own child process, so
that its peak RSS (ru_maxrss) is its own (the modes alternate, `--repeats` times each, and each mode's
fastest run counts: the machine is shared): load the model (fp32, or fp32 then int8 through
rlhf.models.quantize_int8), one short warm-up batch, then the timed run through rlhf.sampling.sample.
Prints one JSON line per mode and a summary line:

* tokens/s of each mode and the ratio int8 / fp32 (> 1: int8 faster), peak RSS of each;
* a quality proxy: the fp32 model's mean log-probability per token of each mode's answers (how far the
  int8 answers drift from what the fp32 policy would say), the paired per-answer difference
  int8 - fp32 with a 95% bootstrap interval (0 inside the interval: no measurable drift). The issue's
  reward-model preference needs a trained reward model; this proxy needs none.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [
    "Write a short poem about the sea.", "Explain what a prime number is.", "Give three tips for better sleep.",
    "What is the capital of Australia?", "Summarize the plot of Romeo and Juliet in two sentences.",
    "Suggest a name for a bakery.", "How do plants make their food?", "Translate 'good morning' into French.",
    "List four animals that live in the desert.", "Why is the sky blue?", "Write a haiku about autumn.",
    "What does a compiler do?", "Give me a recipe idea with eggs and spinach.", "Explain gravity to a child.",
    "What are the benefits of walking every day?", "Describe a cat in one sentence.",
]


def child(mode: str, args) -> dict:
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer, quantize_int8, resolve_model
    from rlhf.sampling import sample

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    path = resolve_model(None)
    tokenizer = load_tokenizer(path, padding_side="left")
    t0 = time.time()
    model = load_causal_lm(path, device="cpu", dtype="float32")
    if mode == "int8":
        model = quantize_int8(model)
    load_s = time.time() - t0
    settings = dict(k=args.k, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                    batch_size=args.batch_size)
    sample(model, tokenizer, PROMPTS[:2], **{**settings, "k": 1, "max_new_tokens": 8})  # warm-up
    t0 = time.time()
    samples = sample(model, tokenizer, PROMPTS[:args.prompts], **settings)
    seconds = time.time() - t0
    tokens = sum(s.completion_tokens for s in samples)
    return {"mode": mode, "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "load_s": round(load_s, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "eos_fraction": round(sum(s.finish_reason == "eos" for s in samples) / len(samples), 3),
            "answers": [[s.prompt_index, s.completion] for s in samples]}


def fp32_logprobs(answers: list) -> list[float]:
    """Mean log-probability per answer token under the fp32 policy, one per answer."""
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer, resolve_model
    from rlhf.sampling import render_prompts

    path = resolve_model(None)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, device="cpu", dtype="float32").eval()
    out = []
    with torch.no_grad():
        for index, text in answers:
            prompt = render_prompts(tokenizer, [PROMPTS[index]])[0]
            q = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            a = tokenizer(text + tokenizer.eos_token, add_special_tokens=False, return_tensors="pt")["input_ids"]
            ids = torch.cat([q, a], dim=1)
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            taken = logps.gather(1, ids[0, 1:].unsqueeze(1)).squeeze(1)[q.shape[1] - 1:]
            out.append(float(taken.mean()))
    return out


def bootstrap(diffs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=["fp32", "int8"], help=argparse.SUPPRESS)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating (the fastest counts)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    from rlhf.models import resolve_model

    resolve_model(None)  # convert the bundled GGUF once, here, so that no child's peak RSS includes it
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "repeats")]
    results: dict = {}
    for _ in range(args.repeats):  # alternate the modes; keep each one's fastest run (a shared machine's load varies)
        for mode in ("fp32", "int8"):
            done = subprocess.run([sys.executable, __file__, "--child", mode, *forwarded], check=True,
                                  capture_output=True, text=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            print(json.dumps({k: v for k, v in run.items() if k != "answers"}), flush=True)
            if mode not in results or run["tokens_per_s"] > results[mode]["tokens_per_s"]:
                results[mode] = run
    fp32_lp = fp32_logprobs(results["fp32"]["answers"])
    int8_lp = fp32_logprobs(results["int8"]["answers"])
    diffs = [b - a for a, b in zip(fp32_lp, int8_lp, strict=True)]
    low, high = bootstrap(diffs)
    print(json.dumps({
        "summary": "int8 vs fp32 sampling, bundled SmolLM2-135M-Instruct, CPU",
        "threads": os.environ.get("OMP_NUM_THREADS"), "prompts": args.prompts, "k": args.k,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed,
        "tokens_per_s_ratio": round(results["int8"]["tokens_per_s"] / results["fp32"]["tokens_per_s"], 2),
        "peak_rss_mb": {m: results[m]["peak_rss_mb"] for m in results},
        "fp32_logprob_per_token": {"fp32_answers": round(sum(fp32_lp) / len(fp32_lp), 3),
                                   "int8_answers": round(sum(int8_lp) / len(int8_lp), 3)},
        "difference_int8_minus_fp32": {"mean": round(sum(diffs) / len(diffs), 3), "low": round(low, 3),
                                       "high": round(high, 3), "answers": len(diffs)},
    }))


if __name__ == "__main__":
    main()
