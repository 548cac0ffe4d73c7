"""Length bias of the reward model on real human preferences (CPU): plain Bradley-Terry against the
length controls (ODIN; PoE with a length-only expert; length balancing), on the same data, over several seeds.

Each run trains a reward model with ``rlhf.reward.train_reward`` (the studio's own code path) from the
bundled SmolLM2-135M-Instruct on the first 2,000 pairs of Anthropic HH-RLHF helpful-base (test split,
``../shared/data/hh_rlhf_test_splits``; prompts cut to the last human turn, as in
``bench/rlhf_reward_quality.py``) and reports, on the other 354 pairs, the length diagnostics of
``rlhf.length``: accuracy overall, where the chosen answer is longer and where it is shorter, how often
the longer answer is preferred and the correlation of reward with length (characters). The table gives
every seed, then per method the mean with a 95% t-interval over seeds, then the paired difference
(control minus plain, seed by seed). Target: chosen-shorter accuracy >= 0.50 with overall accuracy at
most 2 points below plain.

    OMP_NUM_THREADS=2 flock /work/.heavy.lock nice .venv/bin/python bench/reward_length.py --threads 2
    .venv/bin/python bench/reward_length.py --table-only          # print the table of the runs so far
    .venv/bin/python bench/reward_length.py --train-pairs 16 --eval-pairs 16 --max-steps 2 --seeds 0 \\
        --results /tmp/smoke.jsonl                                 # smoke

Every finished run is appended to ``--results`` (JSON lines); a re-run skips the (method, settings,
seed) runs already there, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = [("overall", "eval/pairwise_accuracy"), ("chosen longer", "eval/accuracy_chosen_longer"),
           ("chosen shorter", "eval/accuracy_chosen_shorter"), ("prefers longer", "eval/prefers_longer"),
           ("corr(r, chars)", "eval/reward_length_corr")]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def shared_data_dir() -> Path:
    return Path(os.environ.get("SHARED_DATA_DIR") or REPO / ".." / "shared" / "data").resolve()


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval (None with one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def fmt(mean: float | None, half: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.3f}" + (f" ± {half:.3f}" if half is not None else "")


def label_of(rec: dict) -> str:
    if rec["method"] == "odin":
        return f"odin (length {rec['odin_length_weight']:g}, orth {rec['odin_orthogonal_weight']:g})"
    if rec["method"].startswith("balance"):
        return rec["method"].replace("balance", f"balance ({rec['length_balance_bins']} bins)", 1)
    return rec["method"]


def print_table(records: list[dict]) -> None:
    if not records:
        print("no runs yet")
        return
    base = records[0]
    print(f"\nheld-out pairs: {base['test_pairs']} (chosen longer {base['metrics'].get('eval/pairs_chosen_longer')}, "
          f"chosen shorter {base['metrics'].get('eval/pairs_chosen_shorter')}); "
          f"'longer wins' baseline {base['metrics'].get('eval/longer_wins_baseline'):.3f}; "
          f"train pairs {base['train_pairs']}, epochs {base['epochs']}")
    head = f"{'method':<34} {'seed':>4} " + " ".join(f"{name:>15}" for name, _ in METRICS) + f" {'run min':>9}"
    print(head)
    print("-" * len(head))
    by_label: dict[str, dict[int, dict]] = {}
    for rec in sorted(records, key=lambda r: (label_of(r) != "plain", label_of(r), r["seed"])):
        by_label.setdefault(label_of(rec), {})[rec["seed"]] = rec
        print(f"{label_of(rec):<34} {rec['seed']:>4} "
              + " ".join(f"{fmt(rec['metrics'].get(key)):>15}" for _, key in METRICS) + f" {rec['run_minutes']:>9.1f}")
    print("\nmean ± 95% t-interval over seeds")
    for label, runs in by_label.items():
        cells = []
        for _, key in METRICS:
            values = [r["metrics"][key] for r in runs.values() if r["metrics"].get(key) is not None]
            cells.append(fmt(*mean_interval(values)) if values else "—")
        print(f"{label:<34} {len(runs):>4} " + " ".join(f"{c:>15}" for c in cells))
    plain = by_label.get("plain", {})
    for label, runs in by_label.items():
        seeds = sorted(set(runs) & set(plain))
        if label == "plain" or not seeds:
            continue
        print(f"\n{label} minus plain, paired by seed ({len(seeds)} seeds), mean ± 95% t-interval")
        cells = []
        for _, key in METRICS:
            diffs = [runs[s]["metrics"][key] - plain[s]["metrics"][key] for s in seeds
                     if runs[s]["metrics"].get(key) is not None and plain[s]["metrics"].get(key) is not None]
            cells.append(fmt(*mean_interval(diffs)) if diffs else "—")
        print(f"{'difference':<34} {len(seeds):>4} " + " ".join(f"{c:>15}" for c in cells))
        shorter = mean_interval([runs[s]["metrics"]["eval/accuracy_chosen_shorter"] for s in seeds])[0]
        drop = mean_interval([plain[s]["metrics"]["eval/pairwise_accuracy"] - runs[s]["metrics"]["eval/pairwise_accuracy"]
                              for s in seeds])[0]
        print(f"target: chosen-shorter >= 0.50 (mean {shorter:.3f}: {'met' if shorter >= 0.5 else 'missed'}); "
              f"overall at most 0.02 below plain (mean drop {drop:.3f}: {'met' if drop <= 0.02 else 'missed'})")


def save_scores(model_dir, train, test, seed: int, n_calibration: int, path: Path) -> Path:
    """Per-pair rewards and answer lengths (characters) of the held-out pairs and of ``n_calibration`` training
    pairs drawn with ``seed``, from the trained (merged) model, as JSON: what a post-hoc calibration is fitted and
    read on without training again."""
    import random

    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import score_pairs

    model = load_reward_model(model_dir, device="cpu", dtype="float32")
    tokenizer = load_tokenizer(model_dir)
    calibration = random.Random(seed).sample(list(train), min(n_calibration, len(train)))
    out = {}
    for name, pairs in (("calibration", calibration), ("test", list(test))):
        chosen, rejected = score_pairs(model, tokenizer, pairs, batch_size=8)
        out[name] = {"chosen": chosen.tolist(), "rejected": rejected.tolist(),
                     "chosen_chars": [len(p.chosen) for p in pairs], "rejected_chars": [len(p.rejected) for p in pairs]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return path


def calibrated_records(records: list[dict]) -> list[dict]:
    """For every run with saved scores, one derived record per length scale: the post-hoc calibration
    (``rlhf.length.fit_length_calibration``) fitted on the run's calibration pairs (training pairs) and read on the
    held-out pairs; labelled '<method> + calibration (<scale>)'. No training: the scores are the run's own."""
    from rlhf.length import CALIBRATION_SCALES, calibrate, fit_length_calibration, length_diagnostics

    out = []
    for rec in records:
        if not rec.get("scores"):
            continue
        path = Path(rec["scores"]) if Path(rec["scores"]).is_absolute() else REPO / rec["scores"]
        if not path.is_file():
            continue
        scores = json.loads(path.read_text())
        cal, test = scores["calibration"], scores["test"]
        for scale in CALIBRATION_SCALES:
            fit = fit_length_calibration(cal["chosen"], cal["rejected"], cal["chosen_chars"], cal["rejected_chars"],
                                         scale=scale)
            metrics = length_diagnostics(calibrate(test["chosen"], test["chosen_chars"], fit),
                                         calibrate(test["rejected"], test["rejected_chars"], fit),
                                         test["chosen_chars"], test["rejected_chars"])
            out.append({**rec, "method": f"{rec['method']} + calibration ({scale})", "calibration": fit,
                        "metrics": metrics})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="plain,odin,poe",
                    help="comma list of plain, odin, poe, balance (length_control)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-pairs", type=int, default=2000)
    ap.add_argument("--eval-pairs", type=int, default=None, help="default: all pairs after the first 2,000")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-layers", default="26,27,28,29", help="comma list of layer indices, or 'all'")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--odin-length-weight", type=float, default=1.0)
    ap.add_argument("--odin-orthogonal-weight", type=float, default=1.0)
    ap.add_argument("--length-balance-bins", type=int, default=4, help="balance: bands of length difference")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--model", default=None, help="base model (default: bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--output-dir", default=str(REPO / "bench" / "out" / "reward_length"))
    ap.add_argument("--results", default=None, help="JSON lines of finished runs (default: <output-dir>/results.jsonl)")
    ap.add_argument("--keep-models", action="store_true", help="keep each run's merged model (540 MB each)")
    ap.add_argument("--table-only", action="store_true", help="print the table of the runs in --results and exit")
    ap.add_argument("--save-scores", action="store_true",
                    help="after each run, score the held-out pairs and --calibration-pairs training pairs and write "
                         "the per-pair rewards and lengths to <output-dir>/scores-<method>-seed<seed>.json")
    ap.add_argument("--calibration-pairs", type=int, default=256, help="training pairs scored by --save-scores")
    args = ap.parse_args()
    results = Path(args.results or Path(args.output_dir) / "results.jsonl")
    done = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.is_file() else []
    if args.table_only:
        print_table(done + calibrated_records(done))
        return

    import torch

    from rlhf.data import PreferencePair, read_hh_rlhf
    from rlhf.models import load_tokenizer
    from rlhf.reward import RewardRunConfig, fit_to_length, train_reward

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = read_hh_rlhf(shared_data_dir() / "hh_rlhf_test_splits" / "helpful-base.test.jsonl.gz")
    pairs = [PreferencePair(p.prompt[-1:], p.chosen, p.rejected, p.margin, p.meta) for p in pairs]  # last human turn
    test = pairs[2000:] if args.eval_pairs is None else pairs[2000:2000 + args.eval_pairs]
    train = fit_to_length(pairs[:args.train_pairs], load_tokenizer(args.model), args.max_length)
    layers = None if args.lora_layers == "all" else [int(x) for x in args.lora_layers.split(",")]
    settings = {"train_pairs": len(train), "test_pairs": len(test), "epochs": args.epochs, "max_steps": args.max_steps,
                "lr": args.lr, "batch_size": args.batch_size, "lora_layers": args.lora_layers}
    runs = [(seed, method) for seed in [int(s) for s in args.seeds.split(",")] for method in args.methods.split(",")]
    for seed, method in runs:  # seed by seed, so that a partial table is already paired
        extra = {"odin": {"odin_length_weight": args.odin_length_weight,
                          "odin_orthogonal_weight": args.odin_orthogonal_weight},
                 "balance": {"length_balance_bins": args.length_balance_bins}}.get(method, {})
        key = {"method": method, "seed": seed, **settings, **extra}
        if any(all(r.get(k) == v for k, v in key.items()) for r in done):
            print(f"skip {method} seed {seed}: already in {results}", flush=True)
            continue
        out = Path(args.output_dir) / f"{method}-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        config = RewardRunConfig(
            output_dir=str(out), model=args.model, num_train_epochs=args.epochs, max_steps=args.max_steps,
            per_device_batch_size=args.batch_size, learning_rate=args.lr, lora_layers=layers,
            max_length=args.max_length, save_steps=0, eval_fraction=0.0, warmup_ratio=0.05, seed=seed,
            eval_batch_size=8, length_control="none" if method == "plain" else method, **extra)
        t0 = time.time()

        def progress(step, total, metrics, t0=t0, method=method, seed=seed):
            if step % 25 == 0 or step == total:
                print(f"{method} seed {seed}: step {step}/{total} loss {metrics.get('loss/train', float('nan')):.4f} "
                      f"acc {metrics.get('accuracy', float('nan')):.3f} {(time.time() - t0) / 60:.1f} min", flush=True)

        art = train_reward(config, train, eval_pairs=test, progress=progress)
        minutes = round((time.time() - t0) / 60, 1)
        scores = save_scores(art.model_dir, train, test, seed, args.calibration_pairs,
                             Path(args.output_dir) / f"scores-{method}-seed{seed}.json") if args.save_scores else None
        record = {**key, "run_minutes": minutes, "threads": torch.get_num_threads(),
                  "metrics": {k: v for k, v in art.metrics.items() if k.startswith("eval/")},
                  **({"scores": str(scores)} if scores else {})}
        if not args.keep_models and art.model_dir:
            shutil.rmtree(art.model_dir, ignore_errors=True)
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done.append(record)
        print(json.dumps(record), flush=True)
    done = [r for r in done if all(r.get(k) == v for k, v in settings.items())]
    print_table(done + calibrated_records(done))


if __name__ == "__main__":
    main()
