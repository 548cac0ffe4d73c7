"""One full round of the loop on CPU with the bundled SmolLM2-135M-Instruct and simulated annotators.

Prompts come from the Dolly subset in ../shared/data (instruction + context, with the human
response as the reference answer), or from Self-Instruct's seed tasks, or both (`--prompts-from`):
a training split for demonstrations, sampling and PPO, and
a held-out split for the blind evaluation. Each run executes in this process through the same
task function the Celery worker uses (`workers.tasks.run_execute`), so the numbers are the
work itself, without queue latency. Simulated annotators (embedding oracle: similarity to the
reference) write the demonstrations, rank the samples and judge the evaluation pairs.

Prints wall time per stage, the PPO generation share, the reward model's held-out length diagnostics,
and the new policy's win-rate over its SFT parent under the simulated annotators (target ≥ 60%) beside
the reward model's, each raw and length-controlled (labelapp.analysis.length_control), the mean answer lengths of
both models and the references, per prompt category, and the evaluation's over-optimisation warnings.
Length controls: `--reward-length-control odin` (reward model), `--ld-alpha` / `--sft-weight` (DPO), and
`--policy-set KEY=VALUE` for any other policy setting (e.g. a PPO length penalty).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench_round REDIS_URL=redis://127.0.0.1:6379/12 \\
        nice .venv/bin/python bench/round_cpu.py --train 24 --held-out 16
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
DATA = Path(os.environ.get("SHARED_DATA_DIR", ROOT.parent / "shared" / "data"))

from claim_load import recreate_database  # noqa: E402

CATEGORIES = {"open_qa": "open_qa", "general_qa": "open_qa", "closed_qa": "closed_qa", "classification": "classification",
              "brainstorming": "brainstorming", "information_extraction": "extract", "summarization": "summarization",
              "creative_writing": "generation"}

NO_ROBOTS_CATEGORIES = {"Open QA": "open_qa", "Closed QA": "closed_qa", "Summarize": "summarization", "Extract": "extract",
                        "Brainstorm": "brainstorming", "Generation": "generation", "Rewrite": "rewrite",
                        "Classify": "classification", "Chat": "chat"}


def dolly_rows(limit: int) -> list[dict]:
    rows = []
    with open(DATA / "dolly_no_robots_animal_topic_subsets" / "dolly15k_subset.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text = row["instruction"] + (f"\n\n{row['context']}" if row["context"].strip() else "")
            if len(text) < 1200 and 20 < len(row["response"]) < 600:
                rows.append({"text": text, "reference": row["response"], "category": CATEGORIES.get(row["category"], "other")})
            if len(rows) >= limit:
                break
    return rows


def self_instruct_rows(path: Path) -> list[dict]:
    """Self-Instruct JSONL (seed tasks, user-oriented instructions): instruction + input, the written output as reference."""
    from rlhf.data import read_self_instruct

    return [{"text": d.prompt[-1]["content"], "reference": d.response, "category": "other"}
            for d in read_self_instruct(path) if len(d.prompt[-1]["content"]) < 1200 and 20 < len(d.response) < 600]


def seed_task_rows() -> list[dict]:
    """Self-Instruct's 175 hand-written seed tasks."""
    return self_instruct_rows(DATA / "self_instruct_seed_tasks" / "seed_tasks.jsonl")


def user_oriented_rows() -> list[dict]:
    """Self-Instruct's 252 user-oriented instructions (expert-written outputs)."""
    return self_instruct_rows(DATA / "self_instruct_user_oriented" / "user_oriented_instructions.jsonl")


def no_robots_rows() -> list[dict]:
    """no_robots single-turn rows (the Surge AI annotator's answer as reference)."""
    import ast

    rows = []
    with open(DATA / "dolly_no_robots_animal_topic_subsets" / "no_robots_subset.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            turns = ast.literal_eval(row["messages"])  # a Python repr, not JSON (the data set's README)
            if [t["role"] for t in turns] != ["user", "assistant"]:
                continue
            text, reference = turns[0]["content"].strip(), turns[1]["content"].strip()
            if len(text) < 1200 and 20 < len(reference) < 600:
                rows.append({"text": text, "reference": reference,
                             "category": NO_ROBOTS_CATEGORIES.get(row["category"], "other")})
    return rows


def prompt_rows(source: str, limit: int) -> list[dict]:
    """Dolly rows, Self-Instruct seed tasks, both, or all (those two, Self-Instruct's user-oriented instructions and
    no_robots) mixed in a fixed random order (both splits see every source)."""
    import random

    if source == "dolly":
        return dolly_rows(limit)
    if source == "seed":
        return seed_task_rows()[:limit]
    mixed = dolly_rows(10_000) + seed_task_rows()
    if source == "all":
        seen = {row["text"] for row in mixed}
        for row in user_oriented_rows() + no_robots_rows():
            if row["text"] not in seen:  # a project holds each prompt once
                seen.add(row["text"])
                mixed.append(row)
    random.Random(0).shuffle(mixed)
    return mixed[:limit]


def settings_from(items: list[str]) -> dict:
    """KEY=VALUE strings as a dict (values parsed as JSON when possible)."""
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=24, help="training prompts")
    parser.add_argument("--held-out", type=int, default=16, help="held-out prompts for the evaluation")
    parser.add_argument("--sample-prompts", type=int, default=12)
    parser.add_argument("--k", type=int, default=4, help="completions per ranking task (the project's K; InstructGPT used 4-9)")
    parser.add_argument("--method", choices=["ppo", "dpo"], default="ppo", help="the round's policy step")
    parser.add_argument("--ppo-updates", type=int, default=8)
    parser.add_argument("--policy-lr", type=float, default=None,
                        help="policy learning rate (LoRA; default 1e-4 for PPO, 5e-5 for DPO)")
    parser.add_argument("--dpo-steps", type=int, default=40, help="DPO optimizer steps (batch 4 pairs)")
    parser.add_argument("--sft-weight", type=float, default=0.0,
                        help="DPO: weight of an NLL term on the chosen answers (RPO; 0 = plain DPO)")
    parser.add_argument("--ld-alpha", type=float, default=None,
                        help="DPO: LD-DPO's weight of the tokens by which the longer answer outruns the shorter")
    parser.add_argument("--reward-length-control", choices=["none", "odin"], default="none",
                        help="reward model: 'odin' trains ODIN's quality and length heads and keeps the quality head")
    parser.add_argument("--policy-set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other policy-run setting (value parsed as JSON when possible), e.g. a PPO length "
                             "penalty; repeatable")
    parser.add_argument("--reward-set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other reward-run setting, e.g. odin_length_weight=2; repeatable")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="PPO KL coefficient")
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--rm-steps", type=int, default=40)
    parser.add_argument("--overlap", type=int, default=1,
                        help="simulated annotators per ranking and per comparison (the project's overlap)")
    parser.add_argument("--min-rank-gap", type=int, default=1,
                        help="train the reward model (and DPO) only on completions this many ranks apart (1 = all pairs)")
    parser.add_argument("--seed", type=int, default=None,
                        help="another draw: seeds the simulated annotators, the training runs and the sampling "
                             "(which prompts, and the samples; default: annotators 0, training 42, evaluation 0, "
                             "sampling random)")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="answer length cap when sampling for ranking, from the new policy and in the evaluation")
    parser.add_argument("--oracle", choices=["rule", "embedding"], default="embedding")
    parser.add_argument("--results", type=Path, default=None,
                        help="append this round's settings, stage times and evaluation as one JSON line (a "
                             "comparison of rounds run in different sessions reads them back)")
    parser.add_argument("--table", type=Path, default=None, metavar="FILE",
                        help="print the rounds kept in FILE (--results lines) side by side and exit")
    parser.add_argument("--prompts-from", choices=["dolly", "seed", "both", "all"], default="dolly",
                        help="Dolly animal-topic rows (75 usable), Self-Instruct seed tasks (125), both, or all "
                             "(those, Self-Instruct user-oriented instructions and no_robots: about 430)")
    args = parser.parse_args()
    if args.table is not None:
        import json

        if not args.table.is_file():
            sys.exit(f"no results file {args.table}")
        print(side_by_side([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch PostgreSQL database (it is dropped and re-created)")
    recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from labelapp.models import Round, TrainingRun
    from labelapp.selectors.stats import evaluation_summary
    from labelapp.services.projects import membership_set, project_create, prompt_create
    from labelapp.services.rounds import round_advance, round_start
    from workers.simulate import approve_demonstrations, simulate
    from workers.tasks import run_execute

    call_command("migrate", verbosity=0)
    project = project_create(name="Round benchmark", k=args.k, overlap=args.overlap)
    admin = get_user_model().objects.create_user("bench-admin")
    membership_set(project=project, user=admin, role="admin")
    rows = prompt_rows(args.prompts_from, args.train + args.held_out)
    if len(rows) < args.train + args.held_out:
        sys.exit(f"only {len(rows)} prompts in --prompts-from {args.prompts_from}; lower --train/--held-out")
    for i, row in enumerate(rows):
        prompt_create(project=project, text=row["text"], category=row["category"], reference=row["reference"],
                      split="train" if i < args.train else "validation", source="imported")
    times: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        print(f"  {name:<24} {times[name]:7.1f} s", flush=True)
        return out

    seeded = {} if args.seed is None else {"seed": args.seed}  # simulate() and every run take a `seed`
    timed("simulated demonstrations", lambda: simulate(project=project, annotators=2, queues=["write"], oracle=args.oracle, **seeded))
    approve_demonstrations(project)  # a simulated reviewer: SFT trains on approved demonstrations
    # dtype "auto": bf16 weights for SFT/DPO with LoRA, sampling and PPO on a CPU with native bf16 (docs/RLHF.md,
    # "Models"), fp32 elsewhere; RLHF_CPU_BF16=0 in the environment gives the fp32 rounds of the earlier rows
    training = {"per_device_batch_size": 4, "save_steps": 0, "max_length": 768, **seeded}
    if args.method == "ppo":
        policy = {"max_steps": args.ppo_updates, "rollout_batch_size": 8, "mini_batch_size": 4, "per_device_batch_size": 8,
                  "max_new_tokens": 48, "ppo_epochs": 2, "save_steps": 0, "kl_coef": args.kl_coef,
                  "learning_rate": args.policy_lr or 1e-4, **seeded}
    else:
        policy = {**training, "max_steps": args.dpo_steps, "learning_rate": args.policy_lr or 5e-5, "beta": 0.1,
                  "min_rank_gap": args.min_rank_gap, "sft_weight": args.sft_weight, "ld_alpha": args.ld_alpha}
    policy.update(settings_from(args.policy_set))
    reward = {**training, "max_steps": args.rm_steps, "learning_rate": 1e-4, "per_device_batch_size": 8,
              "min_rank_gap": args.min_rank_gap, **({"length_control": args.reward_length_control}
                                                    if args.reward_length_control != "none" else {}),
              **settings_from(args.reward_set)}
    rnd = round_start(project=project, user=admin, method=args.method, params={
        "prompts": args.sample_prompts, "min_rankings": args.sample_prompts,
        "sft": {**training, "max_steps": args.sft_steps, "learning_rate": 2e-4},
        "reward": reward,
        "policy": policy,
        "sample": {"max_new_tokens": args.max_new_tokens, "temperature": 0.8, **seeded},
        "evaluation": {"prompts": args.held_out, "max_new_tokens": args.max_new_tokens, "temperature": 0.7, **seeded},
    })
    while True:
        rnd.refresh_from_db()
        if rnd.finished:
            break
        queued = list(TrainingRun.objects.filter(round=rnd, status="queued").order_by("id"))
        for run in queued:
            label = f"{rnd.get_stage_display().lower()}"
            timed(label, lambda run=run: run_execute(run.pk))
        rnd.refresh_from_db()
        if rnd.stage == Round.Stage.RANKING:
            timed("simulated rankings", lambda: simulate(project=project, annotators=max(2, args.overlap), queues=["rank"], oracle=args.oracle, **seeded))
            round_advance(round_id=rnd.pk)
        elif not queued:
            round_advance(round_id=rnd.pk)
    if rnd.stage not in (Round.Stage.DONE, Round.Stage.HELD):  # held: the promotion gate kept the parent current
        sys.exit(f"the round ended {rnd.stage}: {rnd.error}")
    if rnd.gate.get("text"):
        print(rnd.gate["text"])
    timed("simulated comparisons", lambda: simulate(project=project, annotators=max(3, args.overlap), queues=["compare"], oracle=args.oracle, **seeded))
    summary = evaluation_summary(project=project, round_id=rnd.pk)
    policy_run = TrainingRun.objects.get(round=rnd, kind=args.method)
    shares = [m["perf/generation_share"] for m in policy_run.metrics if "perf/generation_share" in m]
    rewards = [m["objective/reward"] for m in policy_run.metrics if "objective/reward" in m]
    kls = [m["objective/kl"] for m in policy_run.metrics if "objective/kl" in m]
    reward_run = TrainingRun.objects.get(round=rnd, kind="reward")
    print("\nwall time per stage (s):")
    for name, seconds in times.items():
        print(f"  {name:<24} {seconds:7.1f}")
    print(f"  {'total':<24} {sum(times.values()):7.1f}")
    result = reward_run.result
    print(f"reward model held-out accuracy: {result.get('eval/pairwise_accuracy')}"
          + (f" (length_control {args.reward_length_control})" if args.reward_length_control != "none" else ""))
    if result.get("eval/pairs"):
        def show(key):
            value = result.get(key)
            return "—" if value is None else f"{value:.3f}"

        print(f"  where the chosen answer is longer {show('eval/accuracy_chosen_longer')}, shorter "
              f"{show('eval/accuracy_chosen_shorter')}; prefers the longer answer {show('eval/prefers_longer')} "
              f"(longer wins {show('eval/longer_wins_baseline')}); corr(reward, characters) "
              f"{show('eval/reward_length_corr')}")
    if rewards:
        print(f"PPO reward first/last update: {rewards[0]:.3f} → {rewards[-1]:.3f}; KL last {kls[-1]:.3f}")
        lengths_per_step = [m.get("objective/response_length", m.get("policy/response_length")) for m in policy_run.metrics]
        lengths_per_step = [v for v in lengths_per_step if v is not None]
        if lengths_per_step:
            print(f"PPO mean response length first/last update: {lengths_per_step[0]:.1f} → {lengths_per_step[-1]:.1f} tokens")
    if shares:
        print(f"PPO generation share per update: {', '.join(f'{s:.2f}' for s in shares)} (mean {sum(shares) / len(shares):.2f})")
    from labelapp.models import EvaluationTask
    from workers.simulate import EmbeddingOracle, rule_scores

    oracle = EmbeddingOracle() if args.oracle == "embedding" else rule_scores
    prefer = []  # the oracle without noise: does it prefer the new policy's answer (A)?
    for task in EvaluationTask.objects.filter(round=rnd).select_related("prompt", "completion_a", "completion_b"):
        a, b = oracle(task.prompt.reference, [task.completion_a.text, task.completion_b.text])
        prefer.append(1.0 if a > b else 0.5 if a == b else 0.0)
    if args.method == "dpo":
        last = next((m for m in reversed(policy_run.metrics) if "rewards/accuracies" in m), {})
        print(f"DPO last logged: loss {last.get('loss/train', last.get('loss'))}, "
              f"implicit reward accuracy {last.get('rewards/accuracies')}, margin {last.get('rewards/margins')}"
              + (f", lengths chosen {last['lengths/chosen']:.0f} / rejected {last['lengths/rejected']:.0f} tokens"
                 if "lengths/chosen" in last else ""))

    print_evaluation(summary, args.method, prefer)
    if args.results is not None:
        append_result(args.results, args, times, result, summary, prefer)


def append_result(path: Path, args, times: dict, reward_result: dict, summary: dict, prefer: list[float]) -> dict:
    """One JSON line per finished round: the command's settings, the stage times, the reward model's held-out
    diagnostics and the evaluation (raw and length-controlled win-rates, the oracle's p, mean lengths)."""
    import json

    human, auto, controlled = summary["human"], summary["reward_model"], summary["length_controlled"]
    row = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "results"},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "stage_seconds": {k: round(v, 1) for k, v in times.items()},
        "reward_model": {k: v for k, v in reward_result.items() if k.startswith("eval/")},
        "tasks": summary["tasks"],
        "win_rate": {"human": human, "human_lc": controlled["human"], "reward_model": auto,
                     "reward_model_lc": controlled["reward_model"]},
        "oracle_p": sum(prefer) / len(prefer) if prefer else None,
        "lengths": summary["lengths"],
        "warnings": [w["text"] for w in summary["warnings"]],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    return row


def side_by_side(rows: list[dict]) -> str:
    """The finished rounds of a --results file as one Markdown table, a column per round: the settings that
    differ between them, the win-rates raw and length-controlled (human and reward model, with intervals), the
    oracle's p, the mean answer lengths, the reward model's held-out diagnostics and the stage times."""
    if not rows:
        return "no finished rounds"
    keys = sorted({k for r in rows for k in r["settings"]})
    differ = [k for k in keys if len({repr(r["settings"].get(k)) for r in rows}) > 1]

    def rate(block):
        if not block or block.get("win_rate") is None:
            return "—"
        return f"{block['win_rate']:.3f} [{block['low']:.3f}, {block['high']:.3f}] (n={block['n']})"

    def num(value, digits=3):
        return "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    lines = [("round", [r["settings"].get("method", "?").upper() + "".join(
        f", {k} {r['settings'].get(k)}" for k in differ) for r in rows])]
    lines += [("finished", [r["finished"] for r in rows]), ("held-out prompts", [num(r["tasks"]) for r in rows])]
    for key, label in (("human", "win-rate, simulated annotators"), ("human_lc", "  length-controlled"),
                       ("reward_model", "win-rate, reward model"), ("reward_model_lc", "  length-controlled")):
        lines.append((label, [rate(r["win_rate"].get(key)) for r in rows]))
    lines.append(("oracle without noise, p", [num(r["oracle_p"]) for r in rows]))
    for key, label in (("candidate", "mean answer, new policy (chars)"), ("baseline", "mean answer, SFT parent"),
                       ("reference", "mean answer, references")):
        lines.append((label, [num(r["lengths"].get(key), 0) for r in rows]))
    for key, label in (("eval/pairwise_accuracy", "reward model held-out accuracy"),
                       ("eval/accuracy_chosen_shorter", "  where the chosen answer is shorter"),
                       ("eval/prefers_longer", "  prefers the longer answer")):
        lines.append((label, [num(r["reward_model"].get(key)) for r in rows]))
    stages = list(dict.fromkeys(k for r in rows for k in r["stage_seconds"]))
    for stage in stages:
        lines.append((f"{stage} (s)", [num(r["stage_seconds"].get(stage), 0) for r in rows]))
    lines.append(("warnings", [str(len(r["warnings"])) for r in rows]))
    out = ["| | " + " | ".join(lines[0][1]) + " |", "|---|" + "---|" * len(rows)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in lines[1:]]
    return "\n".join(out)


def print_evaluation(summary: dict, method: str, prefer: list[float]) -> None:
    """The evaluation's win-rates (raw and length-controlled), the noise-free oracle's p, mean answer lengths,
    warnings and the per-category table (summary: labelapp.selectors.stats.evaluation_summary)."""
    human, auto = summary["human"], summary["reward_model"]
    controlled = summary["length_controlled"]

    def rate(r):
        if r["win_rate"] is None:
            return "—"
        return f"{r['win_rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]" + (" (separated)" if r.get("separated") else "")

    print(f"win-rate of the {method.upper()} policy over its SFT parent on {summary['tasks']} held-out prompts:")
    print(f"  simulated annotators: {rate(human)} (n={human['n']}), target ≥ 0.60")
    print(f"    length-controlled:  {rate(controlled['human'])}")
    if prefer:
        # Two annotators agree 72.6% of the time when each keeps the oracle's order of a 2-way comparison
        # with q, whatever the oracle's margin: q² + (1 − q)² = 0.726, so q = (1 + √(2·0.726 − 1)) / 2 ≈ 0.836.
        from workers.simulate import INSTRUCTGPT_AGREEMENT

        q = (1 + (2 * INSTRUCTGPT_AGREEMENT - 1) ** 0.5) / 2
        p = sum(prefer) / len(prefer)
        print(f"  oracle without noise: {p:.3f} (n={len(prefer)}); annotators who keep the oracle's order with "
              f"q = {q:.3f} give {1 - q + (2 * q - 1) * p:.3f} in expectation "
              f"(0.60 needs p ≥ {(0.6 - (1 - q)) / (2 * q - 1):.3f})")
    lengths = summary["lengths"]
    if lengths["candidate"] is not None:
        reference = f"{lengths['reference']:.0f}" if lengths["reference"] is not None else "—"
        print(f"  mean answer length (characters): new policy {lengths['candidate']:.0f}, SFT parent "
              f"{lengths['baseline']:.0f}, references {reference}")
    if auto["win_rate"] is not None:
        print(f"  reward model:         {rate(auto)} (n={auto['n']})")
        print(f"    length-controlled:  {rate(controlled['reward_model'])}")
    for warning in summary["warnings"]:
        print(f"  WARNING: {warning['text']}")
    if summary["categories"]:
        print("  per prompt category (tasks: annotators raw / length-controlled; reward model raw / length-controlled; "
              "mean length new / parent):")
        for category, block in summary["categories"].items():
            lc = block["length_controlled"]
            print(f"    {category:<15} {block['tasks']:>3}: {rate(block['human'])} / {rate(lc['human'])}; "
                  f"{rate(block['reward_model'])} / {rate(lc['reward_model'])}; "
                  f"{block['lengths']['candidate']:.0f} / {block['lengths']['baseline']:.0f}")


if __name__ == "__main__":
    main()
