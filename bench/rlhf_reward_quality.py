"""Reward-model quality on real human preferences (CPU): SmolLM2-135M-Instruct -> reward model.

Trains a reward model with ``rlhf.reward`` (TRL RewardTrainer) on the first 2,000 pairs of Anthropic
HH-RLHF helpful-base (test split, ``../shared/data/hh_rlhf_test_splits``) and reports the pairwise
accuracy on the other 354 pairs, next to a length baseline ("the longer answer wins").
Target: accuracy >= 0.62. Prints ``ratio_vs_target`` and ``ratio_vs_length_baseline``.

    nice -n 10 .venv/bin/python bench/rlhf_reward_quality.py --threads 1 --time-budget-min 40
    .venv/bin/python bench/rlhf_reward_quality.py --train-pairs 16 --eval-pairs 16 --max-steps 2   # smoke

CPU-budget choices (a 135M model trains at ~50-150 tokens/s on 2 shared cores, fp32; bf16 autocast
is several times slower on CPUs without AVX512-BF16/AMX, so it is off by default here):
* ``--last-turn`` (default on): the prompt is cut to the final human turn, for training and testing
  alike (halves the tokens); ``--full-history`` keeps whole dialogues (trimmed to ``--max-length``).
* ``--lora-layers`` (default: the top 4 of 30 layers): LoRA only there plus the new score head, so the
  backward pass stops early; ``--lora-layers all`` adapts every layer.
* ``--time-budget-min``: training stops at the budget; the JSON says how many pairs were seen.
* Pairs are batched by length (``RewardRunConfig.group_by_length``): on a quiet 2-core machine one epoch
  of the 2,000 pairs takes about 10 minutes instead of the hours of randomly padded batches.
* The merged reward model is saved in ``<output-dir>/model`` (``bench/ppo_learns.py`` reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared_data_dir() -> Path:
    return Path(os.environ.get("SHARED_DATA_DIR") or REPO / ".." / "shared" / "data").resolve()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-pairs", type=int, default=2000)
    ap.add_argument("--eval-pairs", type=int, default=None, help="default: all pairs after the first 2,000")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-layers", default="26,27,28,29", help="comma list of layer indices, or 'all'")
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--full-history", action="store_true", help="keep whole dialogues (default: last turn)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (fast only on CPUs with bf16 units)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--time-budget-min", type=float, default=None, help="stop training after this many minutes")
    ap.add_argument("--model", default=None, help="base model (default: bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--output-dir", default=str(REPO / "bench" / "out" / "rlhf_reward_quality"))
    ap.add_argument("--target", type=float, default=0.62)
    args = ap.parse_args()

    import torch
    from transformers import TrainerCallback

    from rlhf.data import PreferencePair, read_hh_rlhf
    from rlhf.models import load_tokenizer
    from rlhf.reward import RewardRunConfig, build_reward_trainer, fit_to_length, pairwise_accuracy
    from rlhf.runner import attach_progress, save_final_model

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = read_hh_rlhf(shared_data_dir() / "hh_rlhf_test_splits" / "helpful-base.test.jsonl.gz")
    if not args.full_history:
        pairs = [PreferencePair(p.prompt[-1:], p.chosen, p.rejected, p.margin, p.meta) for p in pairs]
    train = pairs[:args.train_pairs]
    test = pairs[2000:] if args.eval_pairs is None else pairs[2000:2000 + args.eval_pairs]
    tok = load_tokenizer(args.model)
    fitted = fit_to_length(train, tok, args.max_length)
    length_baseline = sum((len(p.chosen) > len(p.rejected)) + 0.5 * (len(p.chosen) == len(p.rejected))
                          for p in test) / len(test)
    layers = None if args.lora_layers == "all" else [int(x) for x in args.lora_layers.split(",")]
    config = RewardRunConfig(
        output_dir=args.output_dir, model=args.model, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_batch_size=args.batch_size, learning_rate=args.lr, use_lora=not args.full, lora_layers=layers,
        max_length=args.max_length, bf16=args.bf16, save_steps=0, eval_fraction=0.0, warmup_ratio=0.05, seed=0,
    )
    t0 = time.time()

    def progress(step, total, metrics):
        if step % 5 == 0 or step == total:
            eta = (time.time() - t0) / step * (total - step)
            print(f"step {step}/{total} loss {metrics.get('loss/train', float('nan')):.4f} "
                  f"batch_acc {metrics.get('accuracy', float('nan')):.3f} "
                  f"elapsed {(time.time() - t0) / 60:.1f} min eta {eta / 60:.1f} min", flush=True)

    class Budget(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if args.time_budget_min and time.time() - t0 > args.time_budget_min * 60:
                control.should_training_stop = True

    trainer = attach_progress(build_reward_trainer(config, fitted, tokenizer=tok), progress)
    trainer.add_callback(Budget())
    trainer.train()
    train_seconds = time.time() - t0
    steps = trainer.state.global_step
    t1 = time.time()
    acc = pairwise_accuracy(trainer.model, tok, test, batch_size=8)
    model_dir = save_final_model(trainer, config, tok)  # merged; bench/ppo_learns.py --reward-model uses it
    result = {
        "benchmark": "rlhf_reward_quality", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "base_model": args.model or "bundled SmolLM2-135M-Instruct",
        "method": "full" if args.full else f"lora r16 on layers {args.lora_layers}",
        "prompt": "full history" if args.full_history else "last human turn",
        "train_pairs_available": len(fitted), "train_pairs_seen": min(len(fitted), steps * args.batch_size),
        "steps": steps, "train_minutes": round(train_seconds / 60, 1), "eval_minutes": round((time.time() - t1) / 60, 1),
        "test_pairs": len(test), "pairwise_accuracy": round(acc, 4),
        "length_baseline_accuracy": round(length_baseline, 4), "target": args.target,
        "ratio_vs_target": round(acc / args.target, 3), "ratio_vs_length_baseline": round(acc / length_baseline, 3),
        "meets_target": acc >= args.target, "model_dir": model_dir,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
