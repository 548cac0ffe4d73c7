"""SFT with each PEFT method on the CPU: full fine-tuning, LoRA, IA3, prefix tuning, P-tuning, prompt tuning.

    flock /work/.heavy.lock nice env OMP_NUM_THREADS=2 timeout 900 .venv/bin/python bench/peft_methods.py

The bundled SmolLM2-135M-Instruct, the same demonstrations (no_robots subset in ../shared/data, short
answers first so that the steps are cheap), the same steps, batch and seed for every method; each method
in its own child process so that its peak RSS is its own. Per method: trainable parameters, peak RSS,
seconds per optimizer step (steps after the first) and the loss on held-out demonstrations before and
after training. Learning rates follow common practice per method (prompt-learning methods need much
larger ones). Prints one JSON line per method and a markdown table. A few steps on 135M parameters
say how the methods cost, not how well they end up: the P-tuning paper (Liu et al. 2022) finds such
methods reach fine-tuning only at larger scales and longer training.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = {  # method -> learning rate
    "none": 2e-5, "lora": 2e-4, "ia3": 3e-3, "prefix_tuning": 1e-2, "p_tuning": 1e-2, "prompt_tuning": 3e-2,
}


def demonstrations(limit: int):
    from rlhf.data import read_no_robots

    shared = Path(os.environ.get("SHARED_DATA_DIR") or REPO / ".." / "shared" / "data").resolve()
    demos = read_no_robots(shared / "dolly_no_robots_animal_topic_subsets" / "no_robots_subset.csv")
    demos = sorted(demos, key=lambda d: len(str(d.prompt)) + len(d.response))[:limit]
    return demos[: limit - limit // 4], demos[limit - limit // 4:]  # train, held out


def child(method: str, args) -> dict:
    import torch
    from transformers import TrainerCallback

    from rlhf.config import SFTRunConfig
    from rlhf.models import resolve_model
    from rlhf.sft import build_sft_trainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    train, held_out = demonstrations(args.examples)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.time())

    with tempfile.TemporaryDirectory() as tmp:
        config = SFTRunConfig(output_dir=tmp, model=resolve_model(args.model), peft=method, max_steps=args.steps,
                              per_device_batch_size=args.batch, max_length=args.max_length, save_steps=0,
                              learning_rate=METHODS[method], seed=args.seed, num_virtual_tokens=20, lora_r=16,
                              device="cpu", logging_steps=args.steps)
        trainer = build_sft_trainer(config, train, eval_demonstrations=held_out)
        trainer.add_callback(Clock())
        params = trainer.model.parameters()
        counts = [(p.numel(), p.requires_grad) for p in params]
        before = trainer.evaluate()["eval_loss"]
        start = time.time()
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else stamps[0] - start
    return {"method": method, "learning_rate": METHODS[method],
            "trainable": sum(n for n, grad in counts if grad), "total": sum(n for n, _ in counts),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "s_per_step": round(per_step, 2), "held_out_loss_before": round(before, 3),
            "held_out_loss_after": round(after, 3), "steps": args.steps, "batch": args.batch,
            "train_examples": len(train), "held_out_examples": len(held_out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled", help="a checkpoint dir instead (a smoke run on a tiny model)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    from rlhf.models import resolve_model

    resolve_model(args.model)  # convert the bundled model once, outside the measured children
    forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "methods")]
    rows = []
    for method in args.methods.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", method, *forwarded], capture_output=True, text=True)
        if done.returncode:
            print(json.dumps({"method": method, "error": done.stderr.strip().splitlines()[-1:]}), flush=True)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("| method | trainable parameters | share | peak RSS | s/step | held-out loss before → after |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['trainable']:,} | {r['trainable'] / r['total']:.3%} | {r['peak_rss_mb']:,} MB "
              f"| {r['s_per_step']} | {r['held_out_loss_before']} → {r['held_out_loss_after']} |")


if __name__ == "__main__":
    main()
