"""Does rlhf.ppo learn? One short PPO run from the bundled SFT model against a reward model, on CPU.

    .venv/bin/python bench/rlhf_reward_quality.py --epochs 2   # the reward model (about 25 min)
    .venv/bin/python bench/ppo_learns.py                 # 60 updates: about 25 min on 2 quiet CPU cores
    .venv/bin/python bench/ppo_learns.py --updates 30 --lr 1e-4   # gentler: KL ~1 nat, RM prefers PPO ~59%

1. Reward model: by default the one ``bench/rlhf_reward_quality.py`` saved (``--reward-model``; trained on
   the first 2,000 pairs of HH-RLHF helpful-base, ``../shared/data/hh_rlhf_test_splits``). Without it, one
   is trained here (``rlhf.reward.train_reward``, LoRA) on the first ``--rm-pairs`` single-turn pairs and
   cached in ``bench/out/ppo_learns/reward``.
2. PPO: ``rlhf.ppo.train`` from the bundled model (the SFT policy) on single-turn prompts from the first
   2,000 pairs of that file.
3. Evaluation on held-out prompts (pairs 2,000 and later, which neither the reward model nor PPO saw): one
   sampled answer per prompt from the SFT model and from the PPO policy (same seed and decoding); the reward
   model scores both. Prints the mean reward before/after, the KL of the PPO policy to the SFT model on its
   own answers (summed over tokens, nats), and the share of prompts where the reward model prefers the PPO
   answer (ties count one half; target >= 60%).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "bench" / "out" / "ppo_learns"
HH = REPO / ".." / "shared" / "data" / "hh_rlhf_test_splits" / "helpful-base.test.jsonl.gz"
QUALITY_RM = REPO / "bench" / "out" / "rlhf_reward_quality" / "model"
RM_TRAIN_PAIRS = 2000  # pairs [0, 2000) may train the reward model and PPO; [2000, end) are held out


def single_turn_pairs(pairs, max_chars: int):
    return [p for p in pairs if len(p.prompt) == 1 and len(p.prompt[0]["content"]) <= max_chars
            and max(len(p.chosen), len(p.rejected)) <= 2 * max_chars]


def unique_prompts(pairs):
    seen, prompts = set(), []
    for p in pairs:
        if p.prompt[0]["content"] not in seen:
            seen.add(p.prompt[0]["content"])
            prompts.append(p.prompt)
    return prompts


def train_reward_model(pairs, args) -> str:
    from rlhf.reward import RewardRunConfig, train_reward

    out = OUT / "reward"
    if (out / "model" / "config.json").is_file():
        print(f"reward model: cached {out / 'model'}", flush=True)
        return str(out / "model")
    t0 = time.time()
    cfg = RewardRunConfig(output_dir=str(out), model=None, max_steps=args.rm_steps, per_device_batch_size=args.rm_batch,
                          learning_rate=2e-4, max_length=384, eval_fraction=0.1, save_steps=0, bf16=args.bf16,
                          seed=0)
    art = train_reward(cfg, pairs, progress=lambda s, t, m: print(f"  rm step {s}/{t} loss {m.get('loss/train')}",
                                                                  flush=True) if s % 4 == 0 else None)
    print(f"reward model: {art.model_dir}, held-out pairwise accuracy "
          f"{art.metrics.get('eval/pairwise_accuracy'):.3f} on {art.metrics.get('eval/pairs')} pairs, "
          f"{time.time() - t0:.0f} s", flush=True)
    return art.model_dir


def answers(model, tok, prompts, args):
    from rlhf.sampling import sample

    return [s.completion for s in sample(model, tok, prompts, k=1, max_new_tokens=args.max_new_tokens,
                                         temperature=args.eval_temperature, seed=123, batch_size=16)]


def evaluate(policy_dir: str, rm_dir: str, prompts, args) -> dict:
    import torch

    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhf.ppo import policy_forward
    from rlhf.reward import conversation, score
    from rlhf.sampling import generate_ids

    tok = load_tokenizer(None)
    sft = load_causal_lm(None, device="cpu", dtype="float32").eval()
    ppo = load_causal_lm(policy_dir, device="cpu", dtype="float32").eval()
    rm = load_reward_model(rm_dir, device="cpu", dtype="float32").eval()
    rm = rm.merge_and_unload() if hasattr(rm, "merge_and_unload") else rm
    rm_tok = load_tokenizer(rm_dir)
    a_sft, a_ppo = answers(sft, tok, prompts, args), answers(ppo, tok, prompts, args)
    r_sft = score(rm, rm_tok, [conversation(p, a) for p, a in zip(prompts, a_sft)])
    r_ppo = score(rm, rm_tok, [conversation(p, a) for p, a in zip(prompts, a_ppo)])
    wins = float(((r_ppo > r_sft).float() + 0.5 * (r_ppo == r_sft).float()).mean())
    kls = []  # KL(ppo || sft) estimated on the PPO policy's own samples (k1, summed over tokens)
    torch.manual_seed(7)
    with torch.no_grad():
        for start in range(0, len(prompts), 16):
            g = generate_ids(ppo, tok, prompts[start:start + 16], max_new_tokens=args.max_new_tokens, do_sample=True,
                             temperature=1.0)
            a = (g["query_ids"], g["query_mask"], g["response_ids"], g["response_mask"])
            kls += (policy_forward(ppo, *a) - policy_forward(sft, *a)).sum(1).tolist()
    return {"reward_sft": float(r_sft.mean()), "reward_ppo": float(r_ppo.mean()), "win_rate_ppo_vs_sft": wins,
            "kl_ppo_sft_nats": sum(kls) / len(kls), "n_prompts": len(prompts),
            "examples": [{"prompt": p[0]["content"], "sft": s, "ppo": q, "r_sft": float(x), "r_ppo": float(y)}
                         for p, s, q, x, y in list(zip(prompts, a_sft, a_ppo, r_sft, r_ppo))[:3]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reward-model", default=None,
                    help=f"reward model directory (default: {QUALITY_RM.relative_to(REPO)} when it exists, "
                         "else one is trained here)")
    ap.add_argument("--rm-pairs", type=int, default=600)
    ap.add_argument("--rm-steps", type=int, default=60)
    ap.add_argument("--rm-batch", type=int, default=8)
    ap.add_argument("--max-chars", type=int, default=400, help="longest prompt (characters) kept; answers 2x")
    ap.add_argument("--updates", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--eval-prompts", type=int, default=91, help="held-out prompts (91 qualify)")
    ap.add_argument("--eval-temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--kl-coef", type=float, default=0.05)
    ap.add_argument("--ppo-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (several times slower on CPUs without bf16 units)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from rlhf.ppo import PPOConfig, train

    OUT.mkdir(parents=True, exist_ok=True)
    from rlhf.data import read_hh_rlhf

    everything = read_hh_rlhf(HH)
    train_zone = single_turn_pairs(everything[:RM_TRAIN_PAIRS], args.max_chars)
    eval_prompts = unique_prompts(single_turn_pairs(everything[RM_TRAIN_PAIRS:], args.max_chars))[:args.eval_prompts]
    rm_pairs = train_zone[:args.rm_pairs]
    ppo_prompts = unique_prompts(train_zone)[:args.updates * args.batch]
    rm_dir = args.reward_model or (str(QUALITY_RM) if (QUALITY_RM / "config.json").is_file() else None)
    rm_said = rm_dir or f"trained here on {len(rm_pairs)} pairs"
    print(f"{len(train_zone)} single-turn training-zone pairs; {len(ppo_prompts)} PPO prompts, "
          f"{len(eval_prompts)} held-out prompts; reward model {rm_said}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rm_dir = rm_dir or train_reward_model(rm_pairs, args)

    # fp32 weights, as in the documented runs (dtype "auto" would load bf16 on a native-bf16 CPU)
    cfg = PPOConfig(output_dir=str(OUT / "ppo"), model=None, reward_model=rm_dir, device="cpu", bf16=args.bf16,
                    dtype="float32",
                    max_steps=args.updates, rollout_batch_size=args.batch, mini_batch_size=args.batch // 2,
                    per_device_batch_size=args.batch, ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens,
                    learning_rate=args.lr, kl_coef=args.kl_coef, missing_eos_penalty=1.0, normalize_reward=True,
                    reward_clip=5.0, max_length=256, save_steps=10, seed=0, resume=False)
    t0 = time.time()

    def progress(step, total, m):
        print(f"  ppo {step}/{total} reward {m['objective/reward']:+.3f} kl {m['objective/kl']:.2f} "
              f"entropy {m['objective/entropy']:.1f} clipfrac {m['policy/clipfrac']:.3f} "
              f"ev {m['val/explained_variance']:+.2f} len {m['policy/response_length']:.0f} "
              f"{m['perf/episodes_per_s']:.2f} ep/s gen {m['perf/generation_share']:.0%}", flush=True)

    art = train(cfg, ppo_prompts, progress)
    history = [json.loads(x) for x in (OUT / "ppo" / "metrics.jsonl").read_text().splitlines()]
    k = max(1, min(5, len(history) // 3))
    first = sum(h["objective/reward"] for h in history[:k]) / k
    last = sum(h["objective/reward"] for h in history[-k:]) / k
    print(f"PPO: {art.global_step} updates in {time.time() - t0:.0f} s; training reward first {k} "
          f"{first:+.3f} -> last {k} {last:+.3f}; KL last {history[-1]['objective/kl']:.2f}", flush=True)
    result = evaluate(art.model_dir, rm_dir, eval_prompts, args)
    result.update(train_reward_first=first, train_reward_last=last, updates=art.global_step)
    (OUT / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))
    print(f"held-out: reward SFT {result['reward_sft']:+.3f} -> PPO {result['reward_ppo']:+.3f}; KL(PPO||SFT) "
          f"{result['kl_ppo_sft_nats']:.2f} nats/answer; RM prefers PPO on {result['win_rate_ppo_vs_sft']:.0%} "
          f"of {result['n_prompts']} prompts (target >= 60%)")


if __name__ == "__main__":
    main()
