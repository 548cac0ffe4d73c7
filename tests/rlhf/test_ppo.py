"""rlhf.ppo on tiny random-weight models (CPU): the maths against hand computations, the LoRA reference,
a toy reward that must rise under a KL bound, the missing-EOS penalty, cancel, a SIGKILLed run that resumes,
the docs example config and the CLI entry."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf import Cancelled, load_config
from rlhf.contract import read_metadata
from rlhf.ppo import (
    KLController,
    PPOConfig,
    RunningMoments,
    adapter_disabled,
    build_models,
    collect_rollout,
    compute_gae,
    masked_whiten,
    per_token_rewards,
    policy_forward,
    ppo_losses,
    process_scores,
    train,
)

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Tell me a fact about cats.", "What is the capital of France?", "Explain how plants grow.",
           "Write a short poem about the sea and the sky."]
REQUIRED_METRICS = ["objective/reward", "objective/kl", "objective/entropy", "loss/policy", "loss/value",
                    "policy/clipfrac", "policy/approx_kl", "val/explained_variance", "perf/episodes_per_s",
                    "perf/generation_share"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on 2 shared cores: one intra-op thread is 3-4x faster than two that spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def share_reward(prompts, completions, ids, mask):
    """Toy reward: the share of response tokens whose id is in [3, 67) (64 ordinary tokens, no specials)."""
    hit = (ids >= 3) & (ids < 67) & mask
    return hit.float().sum(1) / mask.float().sum(1)


def small_config(tmp_path, tiny_dir, **kw) -> PPOConfig:
    base = dict(output_dir=str(tmp_path / "run"), model=tiny_dir, device="cpu", max_steps=4, rollout_batch_size=8,
                mini_batch_size=4, max_new_tokens=8, learning_rate=3e-3, save_steps=0, lora_r=8, seed=3)
    base.update(kw)
    return PPOConfig(**base)


# ------------------------------------------------------------------------------------------ the maths
def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 9.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 2: last position is padding (ignored)
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    # row 1: delta_2 = 3 - 0.3; delta_1 = 2 + .9*.3 - .2; delta_0 = 1 + .9*.2 - .1
    d2, d1, d0 = 2.7, 2.07, 1.08
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    # row 2: V after the last valid token is 0: delta_1 = -1 - .5; delta_0 = .5 + .9*.5 - .4
    b1 = -1.5
    b0 = 0.55 + gamma * lam * b1
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)


def test_whitening_matches_reference():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, -7.0])
    mean = valid.sum() / 6
    std = math.sqrt(((valid - mean) ** 2).sum() / 5)  # unbiased
    out = masked_whiten(x, mask)
    expected = torch.zeros_like(x)
    expected[:, :3] = (x[:, :3] - mean) / std
    assert torch.allclose(out, expected, atol=1e-4)
    assert abs(float(out[mask.bool()].mean())) < 1e-6 and out[:, 3].abs().max() == 0


def test_clipped_losses_match_reference_computation():
    torch.manual_seed(0)
    shape = (3, 5)
    old_lp = torch.randn(shape) - 2
    new_lp = old_lp + 0.4 * torch.randn(shape)
    adv, vpred, old_v, ret = torch.randn(shape), torch.randn(shape), torch.randn(shape), torch.randn(shape)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    eps, eps_v = 0.2, 0.3
    out = ppo_losses(new_lp, old_lp, adv, vpred, old_v, ret, mask.float(), eps, eps_v)
    pg, vf, clip, akl, n = 0.0, 0.0, 0.0, 0.0, 0
    for b in range(3):
        for t in range(5):
            if not mask[b, t]:
                continue
            r = math.exp(float(new_lp[b, t] - old_lp[b, t]))
            a = float(adv[b, t])
            pg += max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
            v, v0, g = float(vpred[b, t]), float(old_v[b, t]), float(ret[b, t])
            vc = v0 + min(max(v - v0, -eps_v), eps_v)
            vf += 0.5 * max((v - g) ** 2, (vc - g) ** 2)
            clip += abs(r - 1) > eps
            akl += (r - 1) - math.log(r)
            n += 1
    assert out["pg_loss"].item() == pytest.approx(pg / n, abs=1e-5)
    assert out["vf_loss"].item() == pytest.approx(vf / n, abs=1e-5)
    assert out["clipfrac"].item() == pytest.approx(clip / n, abs=1e-6)
    assert out["approx_kl"].item() == pytest.approx(akl / n, abs=1e-6)
    assert 0 < clip < n  # the fixture really exercises both branches


def test_per_token_rewards_put_score_on_last_token():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = per_token_rewards(torch.tensor([10.0, 20.0]), lp, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.1, 10.0], [-0.1, 20.0, 0.0]]))


def test_score_processing_and_kl_controller():
    cfg = PPOConfig(missing_eos_penalty=2.0, reward_clip=1.5)
    scores = process_scores(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([True, False, False]), cfg)
    assert scores.tolist() == [1.0, -1.0, 1.0]  # 1-2 = -1; 3-2 = 1
    cfg = PPOConfig(length_penalty=0.25, missing_eos_penalty=1.0)  # both penalties, before normalisation
    scores = process_scores(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([True, False, True]), cfg,
                            lengths=torch.tensor([0, 4, 10]))
    assert scores.tolist() == [1.0, -1.0, 0.5]  # 1 - 0; 1 - 1 - 1; 3 - 2.5
    with pytest.raises(ValueError, match="needs the answers' lengths"):
        process_scores(torch.tensor([1.0]), torch.tensor([True]), cfg)
    moments = RunningMoments()
    cfg = PPOConfig(normalize_reward=True)
    for batch in (torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])):
        process_scores(batch, torch.ones(len(batch), dtype=torch.bool), cfg, moments)
    allv = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0], dtype=torch.float64)
    assert moments.mean == pytest.approx(float(allv.mean()), rel=1e-3)
    assert moments.std == pytest.approx(float(allv.std(unbiased=False)), rel=1e-3)
    ctl = KLController(0.1, adaptive=True, target=6.0, horizon=100)
    ctl.update(12.0, 10)  # error clipped to +0.2 -> beta * (1 + 0.2 * 10 / 100)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    fixed = KLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


# --------------------------------------------------------------------------------- models and rollouts
@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_dir):
    """A tiny random reward model checkpoint (sequence classifier with one label)."""
    from rlhf.models import load_tokenizer
    from rlhf.testing import build_tiny_llama

    path = tmp_path_factory.mktemp("rm") / "model"
    tok = load_tokenizer(tiny_dir)
    build_tiny_llama(tok, seed=7, for_reward=True).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return str(path)


def _perturb_lora(model, scale=0.5):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(scale * torch.randn_like(p))


def test_lora_reference_is_the_base_model_with_the_adapter_off(tmp_path, tiny_dir, tiny_rm_dir):
    from rlhf.models import load_causal_lm, load_reward_model
    from rlhf.reward import conversation, score

    cfg = small_config(tmp_path, tiny_dir, reward_model=tiny_rm_dir)
    models = build_models(cfg)
    assert models.ref is None and models.reward is None and models.reward_shares_value  # no second copies
    _perturb_lora(models.policy)
    _perturb_lora(models.value)
    base = load_causal_lm(tiny_dir, device="cpu").eval()
    enc = models.tokenizer(["<|im_start|>user\nTell me a fact about cats.<|im_end|>\n"], return_tensors="pt")
    ids = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        expected = base(**ids).logits
        with_adapter = models.policy(**ids).logits
        with adapter_disabled(models.policy):
            without = models.policy(**ids).logits
    assert not torch.allclose(with_adapter, expected, atol=1e-3)  # the adapter does change the policy
    assert torch.allclose(without, expected, atol=1e-6)
    # the reward model is the value model's weights with its adapter off
    items = [conversation(PROMPTS[0], "Cats sleep a lot."), conversation(PROMPTS[1], "Paris.")]
    rm = load_reward_model(tiny_rm_dir, device="cpu")
    with adapter_disabled(models.value) as shared:
        assert torch.allclose(score(shared, models.reward_tokenizer, items), score(rm, models.tokenizer, items))
    assert not torch.allclose(score(models.value, models.tokenizer, items), score(rm, models.tokenizer, items))
    # the rollout's reference log-probs are the base model's
    ro = collect_rollout(models, PROMPTS, cfg, None, share_reward)
    with torch.no_grad():
        base_lp = policy_forward(base, ro.query_ids, ro.query_mask, ro.response_ids, ro.response_mask)
    assert torch.allclose(ro.ref_logprobs, base_lp, atol=1e-5)
    assert not torch.allclose(ro.logprobs, base_lp, atol=1e-3)


def test_merged_generation_samples_what_the_adapter_policy_samples(tmp_path, tiny_dir):
    """merged_generation: a plain copy with W + scale * B @ A, refreshed before each rollout, gives the policy's
    logits and (same seed) the same rollout as sampling through the adapter layers; training still moves the
    adapter, and the next rollout sees the new weights."""
    from rlhf.ppo import sync_generator

    cfg = small_config(tmp_path, tiny_dir, merged_generation=True)
    models = build_models(cfg, use_reward_model=False)
    assert models.generator is not None and not any(p.requires_grad for p in models.generator.parameters())
    _perturb_lora(models.policy)
    sync_generator(models)
    enc = models.tokenizer(["<|im_start|>user\nTell me a fact about cats.<|im_end|>\n"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(models.generator(**enc).logits, models.policy(**enc).logits, atol=1e-5)
    torch.manual_seed(0)
    merged = collect_rollout(models, PROMPTS * 2, cfg, None, share_reward)
    plain = build_models(small_config(tmp_path, tiny_dir), use_reward_model=False)
    plain.policy.load_state_dict(models.policy.state_dict())
    torch.manual_seed(0)
    adapter = collect_rollout(plain, PROMPTS * 2, cfg, None, share_reward)
    assert torch.equal(merged.response_ids, adapter.response_ids)
    assert torch.allclose(merged.logprobs, adapter.logprobs, atol=1e-5)  # log-probs come from the policy itself
    _perturb_lora(models.policy)  # as an optimizer step would
    collect_rollout(models, PROMPTS[:1], cfg, None, share_reward)  # re-syncs before sampling
    with torch.no_grad():
        assert torch.allclose(models.generator(**enc).logits, models.policy(**enc).logits, atol=1e-5)
    art = train(small_config(tmp_path, tiny_dir, merged_generation=True, max_steps=2), PROMPTS * 2,
                reward_fn=share_reward)
    assert art.status == "succeeded" and art.metrics["global_step"] == 2


def test_merged_generation_refuses_a_quantized_base(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="merged_generation needs full-precision"):
        build_models(small_config(tmp_path, tiny_dir, merged_generation=True, load_in_bits=4), use_reward_model=False)


def test_merged_generation_refuses_full_fine_tuning(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match="merged_generation folds LoRA adapters.*turn merged_generation off"):
        build_models(small_config(tmp_path, tiny_dir, merged_generation=True, use_lora=False), use_reward_model=False)


def test_missing_eos_penalty_is_applied_to_rollouts(tmp_path, tiny_dir):
    cfg = small_config(tmp_path, tiny_dir, missing_eos_penalty=1.0, max_new_tokens=4)
    models = build_models(cfg, use_reward_model=False)
    eos = models.tokenizer.eos_token_id
    bias = torch.zeros(len(models.tokenizer))
    bias[eos] = 5.0  # EOS likely (p ~ 0.28 per token): the batch mixes finished and unfinished responses
    models.policy.get_base_model().lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    ro = collect_rollout(models, PROMPTS * 4, cfg, None, lambda p, c, ids, m: torch.full((len(p),), 0.25))
    assert (~ro.has_eos).any()
    assert torch.allclose(ro.scores, 0.25 - 1.0 * (~ro.has_eos).float())
    assert torch.equal(ro.raw_scores, torch.full((16,), 0.25))
    lengths = ro.response_mask.sum(1)
    assert (lengths[~ro.has_eos] == 4).all()  # unfinished responses ran to max_new_tokens
    finished = ro.has_eos.nonzero().flatten().tolist()
    for row in finished:  # finished responses end at their first EOS, padding after
        n = int(lengths[row])
        assert ro.response_ids[row, n - 1] == eos and (ro.response_ids[row, :n - 1] != eos).all()


# --------------------------------------------------------------------------------------- learning
def test_toy_reward_rises_while_kl_stays_bounded(tmp_path, tiny_dir):
    """Reward = share of 64 chosen tokens (1/6 of the vocabulary, ~0.17 at the start).

    Full fine-tuning: a LoRA adapter on a 2-layer random model (hidden 64, tied embeddings) cannot move
    the output distribution far enough for this toy (measured: flat). Stated bounds: the mean reward of
    the last 5 of 20 updates exceeds the first 5 by >= 0.15 (measured ~0.3), and the KL to the reference
    stays < 8 nats per 8-token response (measured plateau ~4.3 with kl_coef 0.05; ~12 with kl_coef 0.02).
    """
    cfg = small_config(tmp_path, tiny_dir, use_lora=False, max_steps=20, rollout_batch_size=32, mini_batch_size=8,
                       kl_coef=0.05)
    history = []
    art = train(cfg, PROMPTS * 4, lambda s, t, m: history.append(m), reward_fn=share_reward)
    assert art.status == "succeeded" and len(history) == 20
    rewards = [m["objective/reward"] for m in history]
    kls = [m["objective/kl"] for m in history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last >= first + 0.15, rewards
    assert max(kls) < 8.0, kls
    assert kls[-1] > 0.1  # the policy did move away from the reference


def test_toy_reward_rises_on_bf16_weights_on_a_cpu_with_native_bf16(tmp_path, tiny_dir, monkeypatch):
    """dtype "auto" on a CPU that computes bf16 natively (forced here with RLHF_CPU_BF16=1): the policy, the
    reference and the value model load in bf16, full fine-tuning keeps fp32 master weights (MasterAdamW), no
    autocast, and the toy reward still rises by the bound of the fp32 test under the same KL bound."""
    from rlhf.contract import read_metadata

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    cfg = small_config(tmp_path, tiny_dir, use_lora=False, max_steps=20, rollout_batch_size=32, mini_batch_size=8,
                       kl_coef=0.05)
    models = build_models(cfg, use_reward_model=False)
    assert {p.dtype for p in models.policy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in models.ref.parameters()} == {torch.bfloat16}
    history = []
    art = train(cfg, PROMPTS * 4, lambda s, t, m: history.append(m), reward_fn=share_reward)
    assert art.status == "succeeded" and len(history) == 20
    meta = read_metadata(cfg.output_dir)
    assert meta["weights_dtype"] == "bfloat16" and meta["autocast"] is False
    rewards = [m["objective/reward"] for m in history]
    kls = [m["objective/kl"] for m in history]
    assert sum(rewards[-5:]) / 5 >= sum(rewards[:5]) / 5 + 0.15, rewards
    assert max(kls) < 8.0, kls


def test_lora_policy_on_bf16_weights_keeps_fp32_adapters(tmp_path, tiny_dir, monkeypatch):
    """LoRA over bf16 weights (native-bf16 CPU): the adapters stay fp32 (peft), so MasterAdamW needs no masters
    for them; the value model's trained score head is bf16 and gets one; an update changes the adapters."""
    from rlhf.contract import read_metadata
    from rlhf.ppo import MasterAdamW, trainable_parameters

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    cfg = small_config(tmp_path, tiny_dir, max_steps=2)
    models = build_models(cfg, use_reward_model=False)
    params = trainable_parameters(models)
    lora = {n: p for n, p in params.items() if "lora_" in n}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    assert next(models.policy.parameters()).dtype == torch.bfloat16
    heads = {n: p for n, p in params.items() if "lora_" not in n}  # the value model's trained score head
    assert heads and {p.dtype for p in heads.values()} == {torch.bfloat16}
    opt = MasterAdamW(list(params.values()), lr=1e-3)
    assert opt.has_masters and sum(m is not p for m, p in zip(opt.masters, opt.params)) == len(heads)
    assert all(not p.abs().sum() for n, p in lora.items() if "lora_B" in n)  # LoRA's B starts at zero
    import rlhf.ppo

    built = []
    monkeypatch.setattr(rlhf.ppo, "build_models", lambda *a, **k: built.append(build_models(*a, **k)) or built[-1])
    art = train(cfg, PROMPTS, reward_fn=share_reward)
    assert art.status == "succeeded" and read_metadata(cfg.output_dir)["weights_dtype"] == "bfloat16"
    trained = trainable_parameters(built[0])
    assert any(p.abs().sum() > 0 for n, p in trained.items() if "lora_B" in n)  # the updates moved the adapters
    assert {p.dtype for n, p in trained.items() if "lora_" in n} == {torch.float32}


# ------------------------------------------------------------------------------ contract: cancel, resume
def test_cancel_saves_a_checkpoint_and_reports_cancelled(tmp_path, tiny_dir):
    """Full fine-tuning (tied embeddings, a frozen reference copy) with PPO-ptx: cancel, then resume."""
    cfg = small_config(tmp_path, tiny_dir, max_steps=4, ptx_coef=0.5, use_lora=False)
    from rlhf.data import Demonstration

    demos = [Demonstration(p, "A clear, kind and short answer.") for p in PROMPTS]
    seen = []

    def progress(step, total, metrics):
        seen.append((step, total, metrics))
        if step == 2:
            raise Cancelled()

    art = train(cfg, PROMPTS, progress, reward_fn=share_reward, demonstrations=demos)
    assert art.status == "cancelled" and art.model_dir is None and art.global_step == 2
    assert [s for s, _, _ in seen] == [1, 2] and seen[0][1] == 4
    assert set(REQUIRED_METRICS) <= set(seen[-1][2]) and math.isfinite(seen[-1][2]["loss/ptx"])
    assert (Path(cfg.output_dir) / "checkpoint-2" / "trainer_state.json").is_file()
    meta = read_metadata(cfg.output_dir)
    assert meta["status"] == "cancelled" and meta["kind"] == "ppo"

    import dataclasses

    seen.clear()
    art = train(dataclasses.replace(cfg, resume=True), PROMPTS, progress, reward_fn=share_reward,
                demonstrations=demos)
    assert art.status == "succeeded" and [s for s, _, _ in seen] == [3, 4]
    assert read_metadata(cfg.output_dir)["status"] == "succeeded"
    assert (Path(art.model_dir) / "model.safetensors").is_file()


KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {repo!r})
from rlhf.ppo import PPOConfig, train
from tests.rlhf.test_ppo import share_reward, PROMPTS
cfg = PPOConfig(**{cfg!r})
def progress(step, total, metrics):
    print("step", step, flush=True)
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, PROMPTS, progress, reward_fn=share_reward)
"""


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_dir):
    import dataclasses

    from safetensors.torch import load_file

    cfg = small_config(tmp_path, tiny_dir, max_steps=4, save_steps=2, output_dir=str(tmp_path / "killed"))
    script = KILL_SCRIPT.format(repo=str(REPO), cfg=dataclasses.asdict(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL
    assert "step 3" in proc.stdout
    out = Path(cfg.output_dir)
    assert (out / "checkpoint-2").is_dir() and not (out / "model").exists()

    resumed = train(dataclasses.replace(cfg, resume=True), PROMPTS, None, reward_fn=share_reward)
    assert resumed.status == "succeeded" and resumed.global_step == 4
    assert resumed.metrics["resumed_from"].endswith("checkpoint-2")
    meta = read_metadata(cfg.output_dir)
    assert meta["status"] == "succeeded" and set(REQUIRED_METRICS) <= set(meta["metrics"])

    straight = train(dataclasses.replace(cfg, output_dir=str(tmp_path / "straight")), PROMPTS, None,
                     reward_fn=share_reward)
    a = load_file(str(Path(resumed.model_dir) / "model.safetensors"))
    b = load_file(str(Path(straight.model_dir) / "model.safetensors"))
    assert a.keys() == b.keys()
    base = load_file(str(Path(tiny_dir) / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in base)  # training changed the merged weights
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4]  # the killed run's step 3 was replaced


# ------------------------------------------------------------------------------------ docs and CLI
def test_docs_example_config_parses():
    text = (REPO / "docs" / "PPO.md").read_text()
    blocks = re.findall(r"<!-- example-config: ppo -->\s*```json\n(.*?)```", text, re.S)
    assert blocks, "docs/PPO.md has no example config"
    for block in blocks:
        cfg = load_config(PPOConfig, json.loads(block))
        assert isinstance(cfg, PPOConfig)
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", text, re.M))
    import dataclasses

    assert {f.name for f in dataclasses.fields(PPOConfig)} <= documented


def test_cli_lists_the_config(capsys):
    from rlhf.__main__ import main as rlhf_main
    from rlhf.ppo import main

    for run in (lambda: main(["--help-config"]), lambda: rlhf_main(["ppo", "--help-config"])):
        assert run() == 0
        out = capsys.readouterr().out
        assert "kl_coef" in out and "missing_eos_penalty" in out
