"""The restructured PPO update (issue 15, item 2) against the computations it replaced, on tiny CPU models:
chunked log-probs/entropy vs full-vocabulary logits (values and gradients), the token-id reward vs the text
path, the closed-form GAE vs the loop, fp32 master weights for bf16 full fine-tuning vs fp32 AdamW, the
device-side statistics, and a whole run of the new update vs the old one kept in rlhf/ppo_legacy.py."""

import dataclasses
from pathlib import Path

import pytest
import torch

from rlhf.ppo import (
    MasterAdamW,
    build_models,
    compute_gae,
    compute_gae_loop,
    masked_var,
    policy_forward,
    policy_forward_full,
    reward_from_token_ids,
    reward_token_suffix,
    score_rollout,
    token_logprobs_from_hidden,
    train,
    training_settings,
)
from tests.rlhf.test_ppo import PROMPTS, share_reward, small_config, tiny_rm_dir  # noqa: F401 (fixture)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_batch(vocab: int, B: int = 3, Q: int = 5, R: int = 7, seed: int = 0):
    """Left-padded queries, right-padded responses of different lengths (one full, one empty of padding)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(3, vocab, (B, Q), generator=g)
    qm = torch.ones(B, Q, dtype=torch.bool)
    qm[1, :2] = False
    r = torch.randint(3, vocab, (B, R), generator=g)
    lengths = torch.tensor([R, 3, 5])[:B]
    rm = torch.arange(R)[None] < lengths[:, None]
    return q.masked_fill(~qm, 0), qm, r.masked_fill(~rm, 0), rm


# ------------------------------------------------------------------------------ chunked log-probs, entropy
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_logprobs_and_entropy_equal_the_full_computation(tmp_path, tiny_dir, lora):
    cfg = small_config(tmp_path, tiny_dir, use_lora=lora)
    models = build_models(cfg, use_reward_model=False)
    policy = models.policy
    if lora:  # move the adapter away from zero so that it matters
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.add_(0.3 * torch.randn_like(p))
    q, qm, r, rm = random_batch(len(models.tokenizer))
    with torch.no_grad():
        full_lp, full_h = policy_forward_full(policy, q, qm, r, rm, 0.7, with_entropy=True)
        # chunk_elements below the vocabulary size: one position per chunk (21 chunks)
        lp, h = policy_forward(policy, q, qm, r, rm, 0.7, with_entropy=True, chunk_elements=100)
    assert torch.allclose(lp, full_lp, atol=1e-5) and torch.allclose(h, full_h, atol=1e-5)
    assert lp[rm].abs().min() > 0 and (lp[~rm] == 0).all() and (h[~rm] == 0).all()

    # gradients through the chunked autograd function equal autograd through the full logits
    weights = torch.randn(r.shape)
    grads = []
    for fn, kw in ((policy_forward_full, {}), (policy_forward, {"chunk_elements": 1000}), (policy_forward, {})):
        policy.zero_grad(set_to_none=True)
        (fn(policy, q, qm, r, rm, 0.7, **kw) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() == grads[2].keys() and grads[0]
    for name in grads[0]:  # several chunks (logits recomputed in backward) and one chunk (softmax kept)
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name
        assert torch.allclose(grads[0][name], grads[2][name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("chunk_elements", [120, None])  # 2 rows per chunk (recomputed in backward); one chunk
def test_chunked_head_with_a_bias_matches_log_softmax(chunk_elements):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=True)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    targets = torch.randint(0, 50, (2, 6))
    lp, ent = token_logprobs_from_hidden(hidden, head, targets, 1.3, with_entropy=True,
                                         chunk_elements=chunk_elements)
    ref = torch.log_softmax(head(hidden) / 1.3, -1)
    assert torch.allclose(lp, ref.gather(-1, targets[..., None]).squeeze(-1), atol=1e-6)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-5)
    g = torch.autograd.grad(lp.sum(), [hidden, head.weight, head.bias])
    g_ref = torch.autograd.grad(ref.gather(-1, targets[..., None]).sum(), [hidden, head.weight, head.bias])
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------- token-id reward
def test_token_id_reward_equals_the_text_path(tmp_path, tiny_dir, tiny_rm_dir):
    from rlhf.sampling import truncate_after_eos

    cfg = small_config(tmp_path, tiny_dir, reward_model=tiny_rm_dir)
    models = build_models(cfg)
    tok = models.tokenizer
    assert models.reward_suffix == [tok.eos_token_id] + tok("\n", add_special_tokens=False)["input_ids"]
    answers = ["Cats sleep a lot.", "The capital of France is Paris.", "The sea is wide, the sky is blue",
               "no"]
    tok.padding_side = "left"
    from rlhf.sampling import render_prompts

    enc = tok(render_prompts(tok, PROMPTS), add_special_tokens=False, padding=True, return_tensors="pt")
    tok.padding_side = "right"
    bodies = [tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    R = max(map(len, bodies)) + 2
    rows = []
    for i, b in enumerate(bodies):  # rows 0 and 2 end with EOS; rows 1 and 3 ran out of tokens
        row = b + ([tok.eos_token_id] if i % 2 == 0 else [])
        rows.append(row + [tok.pad_token_id] * (R - len(row)))
    r = torch.tensor(rows)
    r, rm, has_eos = truncate_after_eos(r, [tok.eos_token_id], tok.pad_token_id)
    # rows 1, 3 have no EOS but are padded: their mask must stop at the answer
    rm = rm & (torch.arange(R)[None] < torch.tensor([len(b) + (i % 2 == 0) for i, b in enumerate(bodies)])[:, None])
    assert has_eos.tolist() == [True, False, True, False]
    by_ids = score_rollout(models, PROMPTS, answers, r, rm, 2, None, enc["input_ids"], enc["attention_mask"].bool(),
                           has_eos)
    text_models = dataclasses.replace(models, reward_suffix=None)
    by_text = score_rollout(text_models, PROMPTS, answers, r, rm, 2, None, enc["input_ids"],
                            enc["attention_mask"].bool(), has_eos)
    assert torch.allclose(by_ids, by_text, atol=1e-5), (by_ids, by_text)
    assert by_ids.unique().numel() == 4  # four different scores: the test can tell rows apart
    torch._dynamo.reset()
    compiled = score_rollout(models, PROMPTS, answers, r, rm, 2, None, enc["input_ids"],
                             enc["attention_mask"].bool(), has_eos, compiled=True)  # compile_update's reward pass
    assert torch.allclose(compiled, by_ids, atol=1e-5), (compiled, by_ids)
    # a reward model with a length calibration (rlhf.length): both paths subtract beta x the answer's characters
    from rlhf.length import CONFIG_KEY

    rm_model = models.reward if models.reward is not None else models.value
    setattr(rm_model.config, CONFIG_KEY, {"beta": 0.05, "scale": "chars"})
    try:
        expected = by_ids - 0.05 * torch.tensor([float(len(a)) for a in answers])
        cal_ids = score_rollout(models, PROMPTS, answers, r, rm, 2, None, enc["input_ids"], enc["attention_mask"].bool(),
                                has_eos)
        cal_text = score_rollout(text_models, PROMPTS, answers, r, rm, 2, None, enc["input_ids"],
                                 enc["attention_mask"].bool(), has_eos)
        assert torch.allclose(cal_ids, expected, atol=1e-5) and torch.allclose(cal_text, expected, atol=1e-5)
    finally:
        delattr(rm_model.config, CONFIG_KEY)


def test_token_id_reward_falls_back_to_text_when_tokenizers_differ(tiny_tokenizer):
    from rlhf.testing import build_tiny_tokenizer

    other = build_tiny_tokenizer(extra_text=["zebra quokka axolotl"] * 50, vocab_size=400)
    assert reward_token_suffix(tiny_tokenizer, tiny_tokenizer) is not None
    assert reward_token_suffix(tiny_tokenizer, other) is None
    assert reward_token_suffix(tiny_tokenizer, None) is None
    templated = build_tiny_tokenizer()
    templated.chat_template = templated.chat_template.replace("<|im_end|>", "<|endoftext|>")
    assert reward_token_suffix(tiny_tokenizer, templated) is None


# ----------------------------------------------------------------------------------------------- GAE
def test_vectorized_gae_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    B, R = 6, 40
    rewards, values = torch.randn(B, R, generator=g), torch.randn(B, R, generator=g)
    lengths = torch.tensor([40, 1, 17, 0, 39, 25])
    mask = torch.arange(R)[None] < lengths[:, None]
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)):
        a, ret = compute_gae(rewards, values, mask, gamma, lam)
        a0, ret0 = compute_gae_loop(rewards, values, mask, gamma, lam)
        assert torch.allclose(a, a0, atol=1e-5) and torch.allclose(ret, ret0, atol=1e-5), (gamma, lam)


def test_masked_var_needs_no_host_sync_and_keeps_its_values():
    x = torch.tensor([[1.0, 2.0, 4.0], [3.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert masked_var(x, m).item() == pytest.approx(torch.tensor([1.0, 2.0, 4.0, 3.0]).var().item())
    one = torch.tensor([[5.0, 0.0]]), torch.tensor([[1, 0]])
    assert masked_var(*one).item() == 0.0  # a single value: biased (0), not a division by zero


# ------------------------------------------------------------------------- bf16 master weights, settings
def test_bf16_full_fine_tuning_step_with_fp32_masters_matches_fp32_adamw(tiny_dir):
    from rlhf.models import load_causal_lm

    fp32 = load_causal_lm(tiny_dir, device="cpu", dtype="float32")
    bf16 = load_causal_lm(tiny_dir, device="cpu", dtype="bfloat16")
    with torch.no_grad():  # identical starting points: the bf16-representable weights
        for p32, p16 in zip(fp32.parameters(), bf16.parameters()):
            p32.copy_(p16.float())
    p32s, p16s = list(fp32.parameters()), list(bf16.parameters())
    ref = torch.optim.AdamW(p32s, lr=1e-5, eps=1e-5)
    ours = MasterAdamW(p16s, lr=1e-5, eps=1e-5)
    plain = load_causal_lm(tiny_dir, device="cpu", dtype="bfloat16")  # pure bf16 AdamW, for contrast
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-5, eps=1e-5)
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    start = [p.detach().float().clone() for p in p16s]
    for _step in range(3):
        ref.zero_grad(), ours.zero_grad(), plain_opt.zero_grad()
        fp32(input_ids=ids, labels=ids).loss.backward()
        for p32, p16, pp in zip(p32s, p16s, plain.parameters()):  # the same (bf16-rounded) gradient for all
            p16.grad = p32.grad.to(torch.bfloat16)
            pp.grad = p16.grad.clone()
            p32.grad = p16.grad.float()
        torch.nn.utils.clip_grad_norm_(p32s, 1.0)
        ref.step()
        ours.step(1.0)
        plain_opt.step()
    moved, stuck = 0, 0
    for p32, master, p16, pp, s in zip(p32s, ours.masters, p16s, plain.parameters(), start):
        assert master.dtype == torch.float32
        assert torch.allclose(master, p32, atol=1e-7, rtol=1e-6)  # the masters follow fp32 AdamW
        assert torch.equal(p16, master.to(torch.bfloat16))  # the bf16 weights are the masters rounded
        moved += int((master != s).sum())
        stuck += int((pp.float() == s).sum())
    # pure bf16 AdamW: at lr 1e-5 the update rounds away for most weights (what the masters fix)
    total = sum(p.numel() for p in p16s)
    assert moved > 0.9 * total and stuck > 0.5 * total, (moved, stuck, total)


def test_training_settings_fused_on_cuda_and_cpu_and_no_autocast_over_bf16_weights():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert training_settings(cuda, torch.bfloat16, True) == {"fused": True, "autocast": False}
    assert training_settings(cuda, torch.float32, True) == {"fused": True, "autocast": True}
    assert training_settings(cpu, torch.float32, None) == {"fused": True, "autocast": False}
    assert training_settings(cpu, torch.float32, True)["autocast"] is True
    assert training_settings(torch.device("meta"), torch.float32, False)["fused"] is False  # foreach elsewhere


def test_fused_adamw_steps_like_foreach_adamw():
    """The CPU's fused AdamW (training_settings) against foreach AdamW, through MasterAdamW with clipping:
    fp32 LoRA-like tensors and a bf16 one with its fp32 master, 5 steps."""
    def params():
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(16, 8, generator=g)), torch.nn.Parameter(torch.randn(8, 16, generator=g)),
                torch.nn.Parameter(torch.randn(4, 4, generator=g).to(torch.bfloat16))]

    runs = []
    for fused in (False, True):
        ps = params()
        opt = MasterAdamW(ps, lr=1e-2, fused=fused)
        assert bool(opt.inner.defaults["fused"]) is fused and bool(opt.inner.defaults["foreach"]) is not fused
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step(max_grad_norm=1.0)
        runs.append([m.detach().clone() for m in opt.masters])
    for a, b, start in zip(*runs, params()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
        assert not torch.allclose(a, start.float(), atol=1e-3)  # it moved


def test_bf16_full_fine_tuning_run_keeps_fp32_masters_in_its_checkpoint(tmp_path, tiny_dir):
    from safetensors.torch import load_file

    cfg = small_config(tmp_path, tiny_dir, use_lora=False, dtype="bfloat16", max_steps=2, save_steps=1,
                       learning_rate=1e-5, rollout_batch_size=4, mini_batch_size=4)
    art = train(cfg, PROMPTS, reward_fn=share_reward)
    assert art.status == "succeeded"
    saved = load_file(str(tmp_path / "run" / "checkpoint-1" / "trainable.safetensors"))
    assert all(t.dtype == torch.float32 for t in saved.values())
    final = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert next(iter(final.values())).dtype == torch.bfloat16


# -------------------------------------------------------------------------- the whole update, old vs new
def test_new_update_trains_like_the_old_one(tmp_path, tiny_dir):
    """Same seed, same reward_fn: the old path (rlhf/ppo_legacy.py) and the new one give the same metrics and
    weights after 2 updates (fp32, full fine-tuning: every part of the update is exercised)."""
    from safetensors.torch import load_file

    from rlhf import ppo_legacy

    cfg = small_config(tmp_path, tiny_dir, use_lora=False, max_steps=2, rollout_batch_size=8, mini_batch_size=4,
                       ppo_epochs=2)
    seen_new, seen_old = [], []
    new = train(dataclasses.replace(cfg, output_dir=str(tmp_path / "new")), PROMPTS * 2,
                lambda s, t, m: seen_new.append(m), reward_fn=share_reward)
    old = ppo_legacy.train(ppo_legacy.PPOConfig(**dataclasses.asdict(dataclasses.replace(
        cfg, output_dir=str(tmp_path / "old")))), PROMPTS * 2, lambda s, t, m: seen_old.append(m),
        reward_fn=share_reward)
    for a, b in zip(seen_new, seen_old):
        for key in ("objective/reward", "objective/kl", "objective/entropy", "loss/policy", "loss/value",
                    "policy/approx_kl", "val/explained_variance", "val/mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key
    wa = load_file(str(tmp_path / "new" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "old" / "model" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert new.status == old.status == "succeeded"


def test_reward_from_token_ids_reads_the_score_at_the_suffix(tiny_rm_dir, tiny_tokenizer):
    """Left-padded queries and right padding after the suffix do not move the score."""
    from rlhf.models import load_reward_model

    model = load_reward_model(tiny_rm_dir, device="cpu").eval()
    suffix = reward_token_suffix(tiny_tokenizer, tiny_tokenizer)
    q = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10]])
    qm = q != 0
    qm[1] = True
    r = torch.tensor([[11, 12, 2, 0], [13, 14, 15, 16]])
    rm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    has_eos = torch.tensor([True, False])
    with torch.no_grad():
        got = reward_from_token_ids(model, q, qm, r, rm, has_eos, suffix, 0, 1)
        alone = model(input_ids=torch.tensor([[5, 6, 11, 12, *suffix]])).logits[0, 0]
    assert got[0].item() == pytest.approx(alone.item(), abs=1e-5)


# ------------------------------------------------------------------------------ compiled micro-step
@pytest.mark.parametrize("value_head", ["separate", "shared"])
def test_compiled_update_trains_like_the_eager_one_and_does_not_recompile(tmp_path, tiny_dir, tiny_rm_dir,
                                                                          value_head):
    """`compile_update` (the rollout's scoring passes — policy, reference, value and the reward model from
    token ids — and the micro-steps compiled): the same seed gives the same metrics and (merged) weights as
    the eager update over 3 updates (LoRA policy and value, the studio's default; and the value head on the
    policy's trunk), with the rollouts' widths padded to fixed shapes; the prompts' lengths change between
    updates inside one bucket, and nothing recompiles after the first."""
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    prompts = PROMPTS * 3  # 12 prompts, 4 per update: each update's query width differs
    cfg = small_config(tmp_path, tiny_dir, max_steps=3, rollout_batch_size=4, mini_batch_size=2, ppo_epochs=2,
                       reward_model=tiny_rm_dir, value_head=value_head)
    seen_eager, seen_compiled, graphs = [], [], []

    def on_compiled(step, total, metrics):
        seen_compiled.append(metrics)
        graphs.append(counters["stats"]["unique_graphs"])

    torch._dynamo.reset()
    eager = train(dataclasses.replace(cfg, output_dir=str(tmp_path / "eager")), prompts,
                  lambda s, t, m: seen_eager.append(m))
    compiled = train(dataclasses.replace(cfg, output_dir=str(tmp_path / "compiled"), compile_update=True), prompts,
                     on_compiled)
    assert eager.status == compiled.status == "succeeded" and len(seen_compiled) == 3
    for a, b in zip(seen_eager, seen_compiled):
        for key in ("objective/reward", "objective/kl", "loss/policy", "loss/value", "policy/approx_kl",
                    "policy/clipfrac", "val/mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-5), key
    assert graphs[0] > 0 and graphs[-1] == graphs[0], f"recompiled after the first update: {graphs}"
    wa = load_file(str(tmp_path / "eager" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "compiled" / "model" / "model.safetensors"))
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


# ------------------------------------------------------------------------------ shared value head
def _record_widths(module) -> list[int]:
    """The input width of every forward of ``module`` (a trunk, called with input_ids=...)."""
    widths = []
    module.register_forward_hook(lambda mod, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]),
                                 with_kwargs=True)
    return widths


@pytest.mark.parametrize("lora", [True, False])
def test_shared_value_head_reads_the_policys_trunk_in_the_same_pass(tmp_path, tiny_dir, tiny_rm_dir, lora):
    """value_head 'shared': no value model; the reward model is a frozen model of its own; the rollout's values
    are the head applied to the policy's final hidden states of the pass that gave the log-probs (one trunk pass
    fewer: policy + reference, not policy + reference + value); a micro-step runs the trunk once and its value
    loss reaches both the head and the policy's trainable weights."""
    from rlhf.ppo import ValueHead, causal_lm_parts, collect_rollout, micro_step_loss, trainable_parameters

    cfg = small_config(tmp_path, tiny_dir, reward_model=tiny_rm_dir, value_head="shared", use_lora=lora)
    models = build_models(cfg)
    assert models.value is None and isinstance(models.value_head, ValueHead)
    assert models.reward is not None and not models.reward_shares_value
    assert not any(p.requires_grad for p in models.reward.parameters())
    assert {n for n in trainable_parameters(models) if n.startswith("value_head.")} == {"value_head.weight",
                                                                                      "value_head.bias"}
    assert torch.count_nonzero(models.value_head.weight) == 0  # zero-initialised: V = 0 before training
    with torch.no_grad():
        models.value_head.weight.normal_()
        models.value_head.bias.fill_(0.25)
    backbone, _ = causal_lm_parts(models.policy)
    trunk = _record_widths(backbone)
    ref = _record_widths(causal_lm_parts(models.ref)[0]) if models.ref is not None else []
    ro = collect_rollout(models, PROMPTS, cfg, None)
    scoring = ro.query_ids.shape[1] + ro.response_ids.shape[1] - 1  # the scoring passes' width (not decoding's)
    # policy and reference (adapter off / the frozen copy), one batch each: no value pass
    assert (trunk + ref).count(scoring) == 2
    ids = torch.cat([ro.query_ids, ro.response_ids], 1)[:, :-1]
    mask = torch.cat([ro.query_mask, ro.response_mask], 1)[:, :-1].long()
    from rlhf.ppo import position_ids_from

    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask)).last_hidden_state
        expected = models.value_head(hidden[:, ro.query_ids.shape[1] - 1:]).squeeze(-1) * ro.response_mask
    assert ro.values.abs().sum() > 0 and torch.allclose(ro.values, expected, atol=1e-5)
    # one micro-step: one trunk forward; the value loss's gradient reaches the head and the policy
    trunk.clear()
    R = ro.response_ids.shape[1]
    returns = ro.values + torch.linspace(-1, 1, R) * ro.response_mask
    loss, stats = micro_step_loss(models.policy, models.value_head, ro.query_ids, ro.query_mask, ro.response_ids,
                                  ro.response_mask, ro.logprobs, torch.zeros_like(ro.values), ro.values, returns,
                                  ro.ref_logprobs, torch.tensor(0.0), cfg.temperature, cfg.cliprange,
                                  cfg.cliprange_value, vf_coef=1.0, aggregation="token", kl_term=False)
    assert trunk == [scoring]
    loss.backward()  # advantages are 0: every gradient below comes from the value loss
    assert models.value_head.weight.grad.abs().sum() > 0
    policy_grads = [p.grad for n, p in trainable_parameters(models).items() if n.startswith("policy.")]
    assert any(g is not None and g.abs().sum() > 0 for g in policy_grads)


def test_shared_value_head_learns_the_toy_reward_and_resumes_exactly(tmp_path, tiny_dir):
    """The toy reward rises with the shared head as with a value model (the fp32 test's bound), the value
    metrics are reported, and a run cancelled after update 2 resumes from its checkpoint (the head's weights
    and optimizer state included) to the same weights as an uninterrupted run."""
    import math

    from safetensors.torch import load_file

    from rlhf import Cancelled

    cfg = small_config(tmp_path, tiny_dir, use_lora=False, max_steps=20, rollout_batch_size=32, mini_batch_size=8,
                       kl_coef=0.05, value_head="shared")
    history = []
    art = train(cfg, PROMPTS * 4, lambda s, t, m: history.append(m), reward_fn=share_reward)
    assert art.status == "succeeded" and len(history) == 20
    rewards = [m["objective/reward"] for m in history]
    assert sum(rewards[-5:]) / 5 >= sum(rewards[:5]) / 5 + 0.15, rewards
    assert max(m["objective/kl"] for m in history) < 8.0
    assert all(math.isfinite(history[-1][k]) for k in ("loss/value", "val/explained_variance", "val/mean"))
    assert history[-1]["val/mean"] != 0.0  # the head learnt from its zero start

    short = dataclasses.replace(cfg, max_steps=4, save_steps=0, rollout_batch_size=8, mini_batch_size=4)

    def stop_at_2(step, total, metrics):
        if step == 2:
            raise Cancelled()

    assert train(dataclasses.replace(short, output_dir=str(tmp_path / "cut")), PROMPTS, stop_at_2,
                 reward_fn=share_reward).status == "cancelled"
    ckpt = load_file(str(tmp_path / "cut" / "checkpoint-2" / "trainable.safetensors"))
    assert {"value_head.weight", "value_head.bias"} <= set(ckpt)
    resumed = train(dataclasses.replace(short, output_dir=str(tmp_path / "cut"), resume=True), PROMPTS, None,
                    reward_fn=share_reward)
    straight = train(dataclasses.replace(short, output_dir=str(tmp_path / "straight")), PROMPTS, None,
                     reward_fn=share_reward)
    a = load_file(str(Path(resumed.model_dir) / "model.safetensors"))
    b = load_file(str(Path(straight.model_dir) / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_value_head_setting_is_checked_before_any_model_loads(tmp_path, tiny_dir):
    from rlhf.config import RLOOConfig, check_policy_config

    with pytest.raises(ValueError, match=r"value_head must be one of \['separate', 'shared'\] \(got 'both'\)"):
        train(small_config(tmp_path, tiny_dir, value_head="both"), PROMPTS, reward_fn=share_reward)
    with pytest.raises(ValueError, match="value_model initialises a separate value model"):
        train(small_config(tmp_path, tiny_dir, value_head="shared", value_model=tiny_dir), PROMPTS,
              reward_fn=share_reward)
    assert not (tmp_path / "run").exists()  # nothing written
    check_policy_config(RLOOConfig(output_dir=str(tmp_path / "r"), model=tiny_dir, value_head="shared",
                                   value_model=tiny_dir))  # RLOO has no value model: both ignored
