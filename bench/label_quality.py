"""Label-quality benchmarks (issue 17): does reliability weighting, and does asking the comparisons the
reward model is least sure of, buy reward-model accuracy? CPU, the bundled SmolLM2-135M-Instruct as the
reward model's base, simulated annotators on the shared prompts.

Items: the round benchmark's 428 prompts with human-written reference answers (Dolly, Self-Instruct seed
and user-oriented tasks, no_robots; bench/round_cpu.py). Each ranking task shows K = 4 answers of graded
quality, all written by people: the reference, its first 40% (cut mid-answer), the reference of another
prompt of the same category, and the reference of a random other prompt, in a random order. The
noise-free oracle is the simulated annotators' embedding oracle (all-MiniLM-L6-v2 cosine similarity to
the reference, workers.simulate); careful annotators perturb its order as in every benchmark here
(InstructGPT's 72.6% agreement between two annotators). Held-out pairs: every pair of 100 held-out items,
ordered by the noise-free oracle.

    reliability  9 annotators — 6 careful, 2 random, 1 inverted — overlap 3 on 300 items (900 rankings).
                 Fit the reliability model (labelapp.analysis.reliability), report precision/recall of its flags for the
                 3 bad annotators, then train the reward model on the same pairs three ways: plain (every pair
                 the same), weight (label_weights "weight": pair weight max(0, 2q − 1) of its annotator) and soft
                 (label_weights "soft": the posterior that the pair's order is right as a soft label).
    active       one careful annotator per item, a budget of --budget rankings from a pool of 300 items; reward
                 model accuracy after 25/50/75/100% of the budget with items taken in random order vs by the
                 current reward model's uncertainty (--estimates: "entropy", the mean binary entropy of its
                 Bradley–Terry probabilities over the item's 6 pairs; "bald", the mutual information of 8
                 bootstrap heads on its features, rlhf.active; "probe", the same entropy under a linear head
                 fitted to convergence on every ranking so far on the base model's frozen features,
                 rlhf.active.probe_scores; the first quarter is the same random quarter for every order).
                 --also-at (default 0.7, the target's share): further points, each the prefix of an order inside
                 its quarter. --head-init probe: every reward model's score head starts from a linear probe fitted
                 on its training pairs' base-model features (LP-FT, rlhf.reward's head_init "probe"); those
                 results are kept apart as experiment "active-lpft" (--tag names another, e.g. a control).

Seed by seed, results appended to <output-dir>/results.jsonl (a rerun skips what is there), then the table:

    OMP_NUM_THREADS=2 flock /work/.heavy.lock nice .venv/bin/python bench/label_quality.py reliability --seeds 0,1,2
    OMP_NUM_THREADS=2 flock /work/.heavy.lock nice .venv/bin/python bench/label_quality.py active --seeds 0,1,2
    .venv/bin/python bench/label_quality.py reliability --flags-only --seeds 0,1,2,3,4   # the flags alone
    .venv/bin/python bench/label_quality.py linear --linear-seeds 20   # active learning, a linear head as learner
    OMP_NUM_THREADS=2 nice .venv/bin/python bench/label_quality.py active --seeds 0,1,2 --estimates entropy \
        --head-init probe --bf16 on --threads 2                          # LP-FT reward models, 2-5 min each
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
PROFILES = ["careful"] * 6 + ["random", "random", "inverted"]
BAD = {6, 7, 8}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


# ------------------------------------------------------------------------------------------------ data
def items(seed: int) -> tuple[list[dict], list[dict]]:
    """(300 pool items, 100 held-out items), each {prompt, texts[4], scores[4]} — split by `seed`."""
    all_items = _scored_items()
    order = list(range(len(all_items)))
    random.Random(seed).shuffle(order)
    return [all_items[i] for i in order[:300]], [all_items[i] for i in order[300:400]]


_CACHE: list[dict] | None = None


def _scored_items() -> list[dict]:
    global _CACHE
    if _CACHE is not None:
        return _CACHE
    from round_cpu import prompt_rows

    from workers.simulate import EmbeddingOracle

    rows = prompt_rows("all", 10_000)
    rng = random.Random(1234)
    by_category: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_category.setdefault(row["category"], []).append(i)
    oracle = EmbeddingOracle()
    out = []
    for i, row in enumerate(rows):
        reference = row["reference"]
        words = reference.split()
        cut = " ".join(words[:max(3, int(len(words) * 0.4))])
        same = [j for j in by_category[row["category"]] if j != i] or [j for j in range(len(rows)) if j != i]
        other = rng.choice(same)
        stranger = rng.choice([j for j in range(len(rows)) if j not in (i, other)])
        texts = [reference, cut, rows[other]["reference"], rows[stranger]["reference"]]
        if len(set(texts)) < 4:
            continue
        rng.shuffle(texts)
        out.append({"prompt": row["text"], "texts": texts, "scores": oracle(reference, texts)})
    _CACHE = out
    return out


def ranking(item: dict, profile: str, rng: random.Random) -> list[list[int]]:
    from workers.simulate import INSTRUCTGPT_AGREEMENT, profile_order, sigma_for

    return profile_order(profile, list(range(4)), item["scores"], sigma_for(INSTRUCTGPT_AGREEMENT, 4), rng)


def held_out_pairs(held: list[dict]):
    from rlhf.data import PreferencePair

    pairs = []
    for item in held:
        s = item["scores"]
        for a in range(4):
            for b in range(a + 1, 4):
                if abs(s[a] - s[b]) < 1e-6:
                    continue
                hi, lo = (a, b) if s[a] > s[b] else (b, a)
                pairs.append(PreferencePair(item["prompt"], item["texts"][hi], item["texts"][lo]))
    return pairs


def order_pairs(order: list[list[int]]) -> list[tuple[int, int]]:
    """(better, worse) answer indices of a ranking given as tie groups, best first (ties left out)."""
    return [(better, worse) for gi, group in enumerate(order) for better in group
            for lower in order[gi + 1:] for worse in lower]


def ranking_pairs(item: dict, order: list[list[int]], task: int, annotator: int, fit=None):
    """C(4,2) pairs of one ranking (ties left out), with the fit's weight and confidence when given."""
    from rlhf.data import PreferencePair

    pairs = []
    for better, worse in order_pairs(order):
        weight, confidence = 1.0, None
        if fit is not None:
            got = fit.annotators.get(annotator)
            weight = 1.0 if got is None else max(0.0, 2 * got.reliability - 1)
            confidence = fit.confidence((task, min(better, worse), max(better, worse)), 1 if better < worse else -1)
        pairs.append(PreferencePair(item["prompt"], item["texts"][better], item["texts"][worse],
                                    weight=weight, confidence=confidence))
    return pairs


# ---------------------------------------------------------------------------------------- reward model
def train(pairs, held, args, seed: int, mode: str = "none", keep: Path | None = None) -> tuple[float, dict]:
    """Train a reward model on `pairs`; (held-out accuracy, facts). `keep`: leave the model there."""
    import shutil
    import tempfile

    from rlhf.contract import read_metadata
    from rlhf.reward import RewardRunConfig, train_reward

    out = keep or Path(tempfile.mkdtemp(prefix="lq-", dir=args.output_dir))
    config = RewardRunConfig(
        output_dir=str(out), model=args.model, learning_rate=args.lr, per_device_batch_size=args.batch_size,
        num_train_epochs=args.epochs, max_length=args.max_length, save_steps=0, eval_fraction=0.0, seed=seed,
        lora_layers=[int(x) for x in args.lora_layers.split(",")] if args.lora_layers != "all" else None,
        label_weights=mode, logging_steps=50, group_by_prompt=args.group_by_prompt,
        **({} if args.bf16 == "auto" else {"bf16": args.bf16 == "on"}),
    )
    started = time.time()

    def progress(step: int, total: int, metrics: dict) -> None:  # a line every 50 steps: hours-long runs say where they are
        if step % 50 == 0 or step == total:
            rate = metrics.get("perf/steps_per_s") or 0.0
            left = f", about {(total - step) / rate / 60:.0f} min left" if rate else ""
            print(f"  [{mode}] step {step}/{total}, {time.time() - started:.0f} s{left}", file=sys.stderr, flush=True)

    head = probe_initial_head(pairs, args) if args.head_init == "probe" else None
    artifacts = train_reward(config, pairs, eval_pairs=held, progress=progress, initial_head=head)
    bf16 = read_metadata(artifacts.output_dir)["throughput"]["bf16"]  # what the run trained with, as it recorded
    facts = {"seconds": round(time.time() - started, 1), "pairs": len(pairs), "steps": artifacts.global_step,
             "bf16_autocast": bool(bf16), **({"group_by_prompt": True} if args.group_by_prompt else {})}
    accuracy = float(artifacts.metrics["eval/pairwise_accuracy"])
    if keep is None:
        shutil.rmtree(out, ignore_errors=True)
    return accuracy, facts


VARIANTS = {"plain": "none", "weight": "weight", "soft": "soft"}  # reliability reward models -> label_weights
ESTIMATES = {"entropy": "uncertainty", "bald": "bald", "probe": "probe"}  # --estimates name -> the results' variant prefix
ESTIMATE_OF = {prefix: name for name, prefix in ESTIMATES.items()}


def uncertainty(model_dir: Path, pool: list[dict], estimate: str = "entropy",
                labelled: list[tuple[dict, list[list[int]]]] = (), seed: int = 0) -> list[float]:
    """Each pool item's score under the reward model in `model_dir`: "entropy", the mean binary entropy of
    σ(r_i − r_j) over its 6 pairs (the studio's estimate, rlhf.judge.pairwise_entropy); "bald", the mutual
    information of 8 bootstrap heads on the model's features, fitted on the `labelled` (item, ranking) pairs
    (rlhf.active)."""
    import torch

    from rlhf.active import ensemble_scores, head_weight
    from rlhf.judge import pairwise_entropy
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score

    model = load_reward_model(str(model_dir), device="cpu", dtype=torch.float32)
    tokenizer = load_tokenizer(str(model_dir))
    if estimate == "entropy":
        rewards = score(model, tokenizer, [conversation(it["prompt"], t) for it in pool for t in it["texts"]])
        return [pairwise_entropy(rewards[4 * n:4 * n + 4].tolist()) for n in range(len(pool))]
    items = list(pool) + [item for item, _ in labelled]
    _, features = score(model, tokenizer, [conversation(it["prompt"], t) for it in items for t in it["texts"]],
                        features=True)
    diffs, groups = [], []
    for n, (_, order) in enumerate(labelled):
        base = 4 * (len(pool) + n)
        pairs = order_pairs(order)
        diffs += [features[base + better] - features[base + worse] for better, worse in pairs]
        groups += [n] * len(pairs)  # a ranking's pairs are resampled together
    return ensemble_scores([features[4 * n:4 * n + 4] for n in range(len(pool))], torch.stack(diffs),
                           head_weight(model), seed=seed, groups=groups)


def base_features(args):
    """(4 × items, H): every item's answers' features under the base model the reward models start from (the
    final hidden state its fresh score head would read), in _scored_items order; computed once (about 10-20
    CPU minutes) and kept in <output-dir>/base_features.pt, keyed by the model and the items' texts."""
    import hashlib

    import torch

    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score

    all_items = _scored_items()
    key = hashlib.sha256(json.dumps([args.model or "bundled", [[it["prompt"], it["texts"]] for it in all_items]])
                         .encode()).hexdigest()
    path = Path(args.output_dir) / "base_features.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.get("key") == key:
            return cached["features"]
    print("  base-model features of every answer (once)", file=sys.stderr, flush=True)
    model = load_reward_model(args.model, device="cpu", dtype=torch.float32)
    _, features = score(model, load_tokenizer(args.model),
                        [conversation(it["prompt"], t) for it in all_items for t in it["texts"]],
                        features=True, calibrated=False)
    torch.save({"key": key, "features": features}, path)
    return features


def probe_initial_head(pairs, args):
    """--head-init probe: the score head the reward model starts from (LP-FT), fitted on the training pairs' base-model
    features as rlhf.reward.probe_head_for fits it (rlhf.active.standardised_probe), read from the cached features
    instead of a forward pass per run."""
    import torch

    from rlhf.active import standardised_probe

    features = base_features(args)
    row = {(it["prompt"], text): 4 * n + k for n, it in enumerate(_scored_items()) for k, text in enumerate(it["texts"])}
    kept = [p for p in pairs if p.weight > 0]
    prompt = [p.prompt[-1]["content"] for p in kept]
    diffs = torch.stack([features[row[(q, p.chosen)]] - features[row[(q, p.rejected)]] for q, p in zip(prompt, kept)])
    return standardised_probe(diffs)


def probe_order(pool: list[dict], chosen: list[int], labels: dict, quarter: int, args) -> list[int]:
    """The next quarter by rlhf.active.probe_scores: a Bradley–Terry head fitted on every ranking so far, on the
    base model's frozen features, asks the items whose order it is least sure of."""
    import torch

    from rlhf.active import probe_scores

    features = base_features(args)
    row = {id(it): n for n, it in enumerate(_scored_items())}
    def of(t):
        return features[4 * row[id(pool[t])]:4 * row[id(pool[t])] + 4]
    diffs = torch.stack([of(t)[better] - of(t)[worse] for t in chosen for better, worse in order_pairs(labels[t])])
    rest = [t for t in range(len(pool)) if t not in set(chosen)]
    scores = probe_scores([of(t) for t in rest], diffs)
    return chosen + [t for _, t in sorted(zip(scores, rest), reverse=True)[:quarter]]


# ------------------------------------------------------------------------------------------ experiments
def run_reliability(seed: int, args, done: set) -> list[dict]:
    from labelapp.analysis.reliability import fit as fit_model
    from labelapp.analysis.reliability import flags_for, judgments_from_rankings

    pool, held = items(seed)
    rng = random.Random(seed)
    rankings = {}  # task -> {annotator: order}
    for task, item in enumerate(pool):
        for annotator in rng.sample(range(len(PROFILES)), 3):
            rankings.setdefault(task, {})[annotator] = ranking(item, PROFILES[annotator], rng)
    fit = fit_model(judgments_from_rankings(rankings))
    flagged = {a for a, f in fit.annotators.items() if {"likely random", "likely inverted"} & set(
        flags_for(f, median_ms=None, project_median_ms=None))}
    rows = [{"experiment": "reliability", "seed": seed, "variant": "flags", "flagged": sorted(flagged),
             "precision": len(flagged & BAD) / len(flagged) if flagged else None, "recall": len(flagged & BAD) / 3,
             "reliability": {str(a): round(f.reliability, 3) for a, f in sorted(fit.annotators.items())}}]
    if args.flags_only:  # the reliability fit alone: minutes, not the hours of three reward models per seed
        if ("reliability", seed, "flags") not in done:
            _emit(rows[0], args)
        return rows
    held_pairs = held_out_pairs(held)
    pairs = [p for task, by in rankings.items() for a, order in by.items()
             for p in ranking_pairs(pool[task], order, task, a, fit)]
    for variant in args.variants.split(","):
        mode = VARIANTS[variant]
        if ("reliability", seed, variant) in done:
            continue
        accuracy, facts = train(pairs, held_pairs, args, seed, mode)
        rows.append({"experiment": "reliability", "seed": seed, "variant": variant, "accuracy": accuracy,
                     "held_out_pairs": len(held_pairs), **facts})
        _emit(rows[-1], args)
    if ("reliability", seed, "flags") not in done:
        _emit(rows[0], args)
    return rows


def run_active(seed: int, args, done: set) -> None:
    import shutil

    tag = args.tag if args.tag is not None else "" if args.head_init == "random" else "-lpft"
    experiment = f"active{tag}"
    pool, held = items(seed)
    held_pairs = held_out_pairs(held)
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    quarter = args.budget // 4
    labels: dict[int, list[list[int]]] = {}

    def pairs_of(tasks):
        """One careful annotator's ranking per item: the same label whichever strategy asks for it."""
        for t in tasks:
            labels.setdefault(t, ranking(pool[t], "careful", random.Random(f"{seed}:{t}")))
        return [p for t in tasks for p in ranking_pairs(pool[t], labels[t], t, 0)]

    def step(strategy: str, chosen: list[int], keep: Path | None = None) -> None:
        """Train on `chosen` and record the accuracy, unless recorded already; `keep`: the model is needed
        to choose the next quarter, so a recorded step whose model is gone is trained again (not recorded
        twice: a second row would count twice in the table's mean)."""
        variant = f"{strategy}@{len(chosen) / (4 * quarter)}"
        recorded = (experiment, seed, variant) in done
        if recorded and (keep is None or (keep / "model").is_dir()):
            return
        accuracy, facts = train(pairs_of(chosen), held_pairs, args, seed, keep=keep)
        if recorded:
            print(f"  {variant} retrained to choose the next quarter: accuracy {accuracy:.3f}", file=sys.stderr)
            return
        done.add((experiment, seed, variant))
        _emit({"experiment": experiment, "seed": seed, "variant": variant, "rankings": len(chosen),
               "accuracy": accuracy, **facts}, args)

    def between(strategy: str, chosen: list[int], before: int) -> None:
        """--also-at: the shares that fall inside the step just taken, each trained on that prefix of the order
        (within a step the items are in the order's own ranking: most uncertain first)."""
        for share in args.also_at:
            k = round(share * 4 * quarter)
            if before < k < len(chosen):
                step(strategy, chosen[:k])

    step1 = Path(args.output_dir) / f"active{tag}-{seed}-step1"  # the shared random quarter's model starts every order
    chains = [ESTIMATES[e] for e in args.estimates.split(",") if e
              if any((experiment, seed, f"{ESTIMATES[e]}@{f}") not in done for f in (0.5, 0.75, 1.0))]
    needs_step1 = any(name != "probe" for name in chains)
    for n in range(1, 5):
        step("random", order[:quarter * n], keep=step1 if n == 1 and needs_step1 else None)
        between("random", order[:quarter * n], quarter * (n - 1))
    # Each estimate: the first (random) quarter, then each next quarter the items the model trained on
    # everything so far scores highest; the model of each step is kept to choose the next. An order whose
    # points are all recorded is skipped (its models would only be retrained).
    for name in chains:
        chosen = order[:quarter]
        if name == "probe":  # no reward model needed to choose: only each step's accuracy is trained for
            for _ in range(1, 4):
                pairs_of(chosen)
                before, chosen = len(chosen), probe_order(pool, chosen, labels, quarter, args)
                step(name, chosen)
                between(name, chosen, before)
            continue
        for n in range(1, 4):  # step 1's model (the shared random quarter) is the same for every estimate
            model_dir = step1 if n == 1 else Path(args.output_dir) / f"active{tag}-{seed}-{name}-step{n}"
            if not (model_dir / "model").is_dir():
                train(pairs_of(chosen), held_pairs, args, seed, keep=model_dir)
            pairs_of(chosen)  # the labels of what is chosen so far (the same whichever order asked for them)
            rest = [t for t in range(len(pool)) if t not in set(chosen)]
            scores = uncertainty(model_dir / "model", [pool[t] for t in rest], ESTIMATE_OF[name],
                                 labelled=[(pool[t], labels[t]) for t in chosen], seed=seed)
            before, chosen = len(chosen), chosen + [t for _, t in sorted(zip(scores, rest), reverse=True)[:quarter]]
            step(name, chosen, keep=Path(args.output_dir) / f"active{tag}-{seed}-{name}-step{n + 1}" if n < 3 else None)
            between(name, chosen, before)
            if n > 1:
                shutil.rmtree(model_dir, ignore_errors=True)
    shutil.rmtree(step1, ignore_errors=True)


def run_linear(args) -> None:
    """The active-learning experiment with a linear Bradley–Terry head on the base model's frozen features as the
    learner (rlhf.active.probe_head, fitted to convergence): seconds a seed instead of an hour, so --linear-seeds
    seeds and finer steps. Not the reward model the acceptance names: where an order cannot beat random with this
    learner, which it also chooses for, it is unlikely to with a one-epoch LoRA reward model."""
    import torch

    from rlhf.active import ensemble_scores, probe_head, probe_scores

    features = base_features(args).double()
    features = ((features - features.mean(0)) / features.std(0).clamp(min=1e-6)).float()
    row = {id(it): n for n, it in enumerate(_scored_items())}
    steps, strategies = args.linear_steps, ["random", "probe", "bald"]
    curves: dict[str, list[list[float]]] = {name: [] for name in strategies}
    for seed in range(args.linear_seeds):
        pool, held = items(seed)

        def of(item):
            return features[4 * row[id(item)]:4 * row[id(item)] + 4]

        held_rows = [(of(it), it["scores"]) for it in held]
        labels = {t: ranking(pool[t], "careful", random.Random(f"{seed}:{t}")) for t in range(len(pool))}
        order = list(range(len(pool)))
        random.Random(seed).shuffle(order)
        size = args.budget // steps

        def diffs_of(chosen):
            pairs = [(t, better, worse) for t in chosen for better, worse in order_pairs(labels[t])]
            return torch.stack([of(pool[t])[b] - of(pool[t])[w] for t, b, w in pairs]), [t for t, _, _ in pairs]

        def accuracy(head):
            right = total = 0
            for f, scores in held_rows:
                rewards = (f @ head).tolist()
                for a in range(4):
                    for b in range(a + 1, 4):
                        if abs(scores[a] - scores[b]) >= 1e-6:
                            total += 1
                            right += (rewards[a] > rewards[b]) == (scores[a] > scores[b])
            return right / total

        for name in strategies:
            chosen, curve = order[:size], []
            for n in range(1, steps + 1):
                diffs, groups = diffs_of(chosen)
                head = probe_head(diffs, l2=args.linear_l2)
                curve.append(accuracy(head))
                if n == steps:
                    break
                rest = [t for t in range(len(pool)) if t not in set(chosen)]
                if name == "random":
                    chosen = chosen + [t for t in order if t not in set(chosen)][:size]
                    continue
                task_features = [of(pool[t]) for t in rest]
                scores = (probe_scores(task_features, diffs, l2=args.linear_l2) if name == "probe" else
                          ensemble_scores(task_features, diffs, head, seed=seed, groups=groups))
                chosen = chosen + [t for _, t in sorted(zip(scores, rest), reverse=True)[:size]]
            curves[name].append(curve)
    print(f"\nActive learning with a linear head on frozen base features (l2 {args.linear_l2}, "
          f"{args.linear_seeds} seeds, {steps} steps of {args.budget // steps} rankings)")
    for n in range(steps):
        print(f"  {(n + 1) / steps:4.0%}" + "".join(
            f"  {name} {_mean_ci([c[n] for c in curves[name]]):24s}" for name in strategies))
    full = sum(c[-1] for c in curves["random"]) / len(curves["random"])
    for name in strategies[1:]:
        means = [sum(c[n] for c in curves[name]) / len(curves[name]) for n in range(steps)]
        reached = next(((n + 1) / steps for n, m in enumerate(means) if m >= full), None)
        print(f"  random's full-budget mean {full:.3f}: the {name} order reaches it at "
              f"{f'{reached:.0%}' if reached else 'no share'} of the budget")


# ---------------------------------------------------------------------------------------------- output
def _emit(row: dict, args) -> None:
    with open(Path(args.output_dir) / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def _mean_ci(values: list[float]) -> str:
    n = len(values)
    if not n:
        return "—"
    mean = sum(values) / n
    if n == 1:
        return f"{mean:.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    return f"{mean:.3f} [{mean - half:.3f}, {mean + half:.3f}]"


def table(args) -> None:
    path = Path(args.output_dir) / "results.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    rel = [r for r in rows if r["experiment"] == "reliability"]
    if rel:
        print("\nReliability (reward-model accuracy on held-out oracle pairs, mean [95% t-interval over seeds])")
        flags = [r for r in rel if r["variant"] == "flags"]
        print(f"  flags: precision {_mean_ci([r['precision'] or 0 for r in flags])}, "
              f"recall {_mean_ci([r['recall'] for r in flags])} over {len(flags)} seeds")
        by = {v: {r["seed"]: r["accuracy"] for r in rel if r["variant"] == v} for v in ("plain", "weight", "soft")}
        for variant, accs in by.items():
            print(f"  {variant:7s} {_mean_ci(list(accs.values()))}  seeds {sorted(accs)}")
        for variant in ("weight", "soft"):
            diffs = [by[variant][s] - by["plain"][s] for s in by[variant] if s in by["plain"]]
            print(f"  {variant} − plain: {_mean_ci(diffs)} (target ≥ +0.030)")
    titles = {"active": "", "active-lpft": ", score head started from a linear probe (LP-FT)"}
    for experiment in sorted({r["experiment"] for r in rows if r["experiment"].startswith("active")}):
        _active_table([r for r in rows if r["experiment"] == experiment],
                      titles.get(experiment, f", results tagged {experiment!r}"))


def _active_table(act: list[dict], title: str) -> None:
    if act:
        print(f"\nActive learning (reward-model accuracy after a share of the ranking budget{title})")
        names = [n for n in ESTIMATES.values() if any(r["variant"].startswith(f"{n}@") for r in act)]

        def accuracies(name: str, fraction: float) -> list[float]:
            got = [r["accuracy"] for r in act if r["variant"] == f"{name}@{fraction}"]
            if not got and fraction == 0.25 and name != "random":  # the shared random first quarter
                got = [r["accuracy"] for r in act if r["variant"] == "random@0.25"]
            return got

        shares = sorted({0.25, 0.5, 0.75, 1.0} | {float(r["variant"].split("@")[1]) for r in act})
        for fraction in shares:
            print(f"  {fraction:4.0%}  random {_mean_ci(accuracies('random', fraction)):28s}"
                  + "".join(f" {name} {_mean_ci(accuracies(name, fraction)):28s}" for name in names))
        full = accuracies("random", 1.0)
        if full:
            target = sum(full) / len(full)
            full_of = {r["seed"]: r["accuracy"] for r in act if r["variant"] == "random@1.0"}
            for name in names:
                reached = [f for f in shares
                           if (vals := accuracies(name, f)) and sum(vals) / len(vals) >= target]
                print(f"  random's full-budget mean {target:.3f}: the {name} order reaches it at "
                      f"{f'{min(reached):.0%}' if reached else 'no share'} of the budget (target ≤ 70%)")
                for f in [f for f in shares if 0.5 <= f < 1.0]:  # paired by seed: the order at f − random at 100%
                    diffs = [r["accuracy"] - full_of[r["seed"]] for r in act
                             if r["variant"] == f"{name}@{f}" and r["seed"] in full_of]
                    if diffs:
                        print(f"    {name}@{f:.0%} − random@100%, paired by seed: {_mean_ci(diffs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=["reliability", "active", "linear", "table"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=int, default=160, help="active: rankings in the full budget")
    ap.add_argument("--estimates", default="entropy,bald",
                    help="active: comma list of entropy (rlhf.judge.pairwise_entropy: results 'uncertainty@…'), "
                         "bald (rlhf.active's bootstrap-head ensemble: 'bald@…') and probe (rlhf.active.probe_scores "
                         "on the base model's features: 'probe@…')")
    ap.add_argument("--linear-seeds", type=int, default=20, help="linear: seeds 0..N-1")
    ap.add_argument("--linear-steps", type=int, default=4, help="linear: steps the budget is taken in")
    ap.add_argument("--linear-l2", type=float, default=10.0, help="linear: the head's L2 penalty (rlhf.active.probe_head)")
    ap.add_argument("--variants", default="plain,weight,soft",
                    help="reliability: comma list of reward models to train per seed, in this order "
                         "(plain, weight, soft); finished ones are skipped")
    ap.add_argument("--flags-only", action="store_true",
                    help="reliability: fit the reliability model and report its flags, train no reward model")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-layers", default="26,27,28,29", help="comma list of layer indices, or 'all'")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="bf16 autocast of reward training: 'auto' = the studio's default for this host (on for a "
                         "LoRA reward run on a CPU with native bf16, about 2x faster there); the active-learning runs "
                         "in bench/results were trained in fp32 before that default: continue them with 'off'")
    ap.add_argument("--group-by-prompt", action="store_true",
                    help="train with group_by_prompt: a prompt's pairs batched together, each distinct answer scored "
                         "once a batch (fewer forward passes; a different pair order)")
    ap.add_argument("--also-at", default="0.7", type=lambda v: [float(x) for x in v.split(",") if x.strip()],
                    help="active: comma list of further shares of the budget to measure, each a prefix of the order "
                         "inside its step (default 0.7, the target's share; '' for none)")
    ap.add_argument("--head-init", choices=["random", "probe"], default="random",
                    help="active: how each reward model's score head starts ('probe': LP-FT, rlhf.reward's head_init "
                         "'probe' on the cached base features; results under experiment 'active-lpft')")
    ap.add_argument("--tag", default=None,
                    help="active: results under experiment 'active<tag>' (default: '' with --head-init random, '-lpft' "
                         "with probe), e.g. '-bf16' to keep a bf16 control apart from the fp32 rows")
    ap.add_argument("--model", default=None, help="reward model base (default: the bundled SmolLM2-135M-Instruct)")
    ap.add_argument("--output-dir", default=str(ROOT / "bench" / "out" / "label_quality"))
    args = ap.parse_args()
    unknown = {e for e in args.estimates.split(",") if e} - set(ESTIMATES)
    if unknown:
        ap.error(f"--estimates: unknown {', '.join(sorted(unknown))} (known: {', '.join(ESTIMATES)})")
    if args.head_init != "random" and args.experiment != "active":  # its rows would mix with the random-head ones
        ap.error("--head-init probe is for the active experiment (its results are kept apart there)")
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.experiment == "table":
        table(args)
        return
    import django

    django.setup()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.experiment == "linear":
        run_linear(args)
        return
    path = Path(args.output_dir) / "results.jsonl"
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["experiment"], r["seed"], r["variant"]))
    for seed in [int(s) for s in args.seeds.split(",")]:
        if args.experiment == "reliability":
            run_reliability(seed, args, done)
        else:
            run_active(seed, args, done)
    table(args)


if __name__ == "__main__":
    main()
