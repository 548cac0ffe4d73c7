"""SFT and reward runs' throughput settings (rlhf.runner.resolve_throughput): what a GPU run turns on, that
CPU runs and `throughput: off` keep TRL's defaults, that explicit settings win and bad ones are refused
before anything loads, and that padding-free SFT batches give the padded batches' loss (tiny model, CPU)."""

import pytest
import torch

from rlhf.contract import read_metadata
from rlhf.data import Demonstration, PreferencePair
from rlhf.runner import resolve_throughput
from rlhf.sft import SFTRunConfig

GPU = dict(device="cuda", bf16_ok=True, liger_ok=True)


def sft(**kw):
    return SFTRunConfig(output_dir="unused", **kw)


def reward(**kw):
    from rlhf.reward import RewardRunConfig

    return RewardRunConfig(output_dir="unused", **kw)


def test_cpu_runs_keep_trls_defaults():
    for config, kind in ((sft(), "sft"), (reward(), "reward")):
        t = resolve_throughput(config, kind, device="cpu", bf16_ok=False, liger_ok=True)
        assert (t.dtype, t.bf16, t.optim, t.padding_free, t.liger, t.active) == (
            "float32", False, "adamw_torch", False, False, ())


def test_a_native_bf16_cpu_gives_sft_and_dpo_with_an_adapter_bf16_weights():
    """On a CPU that computes bf16 natively, SFT and DPO with LoRA load bf16 weights without autocast, a LoRA reward
    run keeps fp32 weights under bf16 autocast; full fine-tuning, other adapters and `throughput: off` keep fp32
    without autocast; an explicit dtype or bf16 wins."""
    native = dict(device="cpu", bf16_ok=False, liger_ok=False, cpu_bf16_ok=True)
    for kind in ("sft", "dpo"):
        t = resolve_throughput(sft(), kind, **native)
        assert (t.dtype, t.bf16, t.optim, t.liger, t.active) == (
            "bfloat16", False, "adamw_torch", False, ("bf16_weights_no_autocast",))
    t = resolve_throughput(reward(), "reward", **native)
    assert (t.dtype, t.bf16, t.optim, t.active) == ("float32", True, "adamw_torch", ("cpu_bf16_autocast",))
    assert resolve_throughput(reward(bf16=False), "reward", **native).active == ()
    assert resolve_throughput(reward(), "reward", **dict(native, cpu_bf16_ok=False)).bf16 is False
    for config, kind in ((reward(use_lora=False), "reward"), (reward(throughput="off"), "reward"),
                         (sft(use_lora=False), "sft"), (sft(peft="ia3"), "dpo"), (sft(throughput="off"), "dpo")):
        t = resolve_throughput(config, kind, **native)
        assert (t.dtype, t.bf16, t.active) == ("float32", False, ()), (config, kind)
    assert resolve_throughput(sft(dtype="float32"), "dpo", **native).dtype == "float32"
    assert resolve_throughput(sft(), "dpo", **dict(native, cpu_bf16_ok=False)).dtype == "float32"


def test_a_dpo_run_on_a_native_bf16_cpu_trains_its_fp32_adapter_over_bf16_weights(tmp_path, tiny_dir, monkeypatch):
    """RLHF_CPU_BF16=1 (a native-bf16 CPU): the DPO run loads bf16 weights, peft keeps the LoRA adapter in fp32,
    the adapter moves, and the run's metadata records the setting."""
    from rlhf.dpo import DPORunConfig, build_dpo_trainer, train_dpo

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    pairs = [PreferencePair(f"Tell me about {t}.", f"A great answer about {t}.", f"A bad answer about {t}.")
             for t in ("cats", "dogs", "the sea", "plants")] * 2
    config = DPORunConfig(output_dir=str(tmp_path / "dpo"), model=tiny_dir, max_steps=3, per_device_batch_size=4,
                          max_length=256, save_steps=0, seed=0, learning_rate=1e-2)
    trainer = build_dpo_trainer(config, pairs)
    weights = {n: p.dtype for n, p in trainer.model.named_parameters()}
    assert {d for n, d in weights.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in weights.items() if "lora_" not in n} == {torch.bfloat16}
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)
    art = train_dpo(config, pairs)
    meta = read_metadata(art.output_dir)["throughput"]
    assert art.status == "succeeded" and meta["dtype"] == "bfloat16" and meta["active"] == ["bf16_weights_no_autocast"]



def test_a_reward_run_on_a_native_bf16_cpu_trains_in_fp32_under_bf16_autocast(tmp_path, tiny_dir, monkeypatch):
    """RLHF_CPU_BF16=1: a LoRA reward run keeps every weight fp32 (the score head included), its forward runs
    under CPU bf16 autocast, the adapter and the head move, and the metadata records the setting."""
    from rlhf.reward import RewardRunConfig, build_reward_trainer, train_reward

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    pairs = [PreferencePair(f"Tell me about {t}.", f"A great answer about {t}.", f"A bad answer about {t}.")
             for t in ("cats", "dogs", "the sea", "plants")] * 2
    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=3, per_device_batch_size=4,
                             max_length=256, save_steps=0, seed=0, learning_rate=1e-2, eval_fraction=0.0)
    trainer = build_reward_trainer(config, pairs)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert trainer.args.bf16 is True
    seen = []
    head = trainer.model.get_submodule("base_model.model.score.modules_to_save.default")
    head.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    moved = {n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert any("lora_B" in n for n in moved) and any("score" in n for n in moved)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    art = train_reward(config, pairs)
    meta = read_metadata(art.output_dir)["throughput"]
    assert art.status == "succeeded" and meta["dtype"] == "float32" and meta["bf16"] is True
    assert meta["active"] == ["cpu_bf16_autocast"]


def test_gpu_sft_with_an_adapter_turns_every_setting_on():
    t = resolve_throughput(sft(), "sft", **GPU)
    assert (t.dtype, t.bf16, t.optim, t.padding_free, t.liger) == ("bfloat16", False, "adamw_torch_fused", True, True)
    assert set(t.active) == {"padding_free", "fused_adamw", "liger", "bf16_weights_no_autocast"}
    assert not resolve_throughput(sft(), "sft", device="cuda", bf16_ok=True, liger_ok=False).liger  # not installed


def test_gpu_full_fine_tuning_keeps_fp32_master_weights_under_autocast():
    t = resolve_throughput(sft(use_lora=False), "sft", **GPU)
    assert (t.dtype, t.bf16) == ("float32", True) and "fp32_master_weights" in t.active


def test_gpu_reward_keeps_autocast_and_padded_batches():
    t = resolve_throughput(reward(), "reward", **GPU)
    assert (t.dtype, t.bf16, t.optim, t.padding_free, t.liger) == ("bfloat16", True, "adamw_torch_fused", False, True)


def test_throughput_off_and_dpo_keep_todays_gpu_settings():
    for config, kind in ((sft(throughput="off"), "sft"), (reward(throughput="off"), "reward"), (sft(), "dpo")):
        t = resolve_throughput(config, kind, **GPU)
        assert (t.dtype, t.bf16, t.optim, t.padding_free, t.liger, t.active) == (
            "bfloat16", True, "adamw_torch", False, False, ())


def test_explicit_settings_win():
    t = resolve_throughput(sft(optim="adamw_torch", padding_free=False, liger=False, bf16=True, dtype="float32"),
                           "sft", **GPU)
    assert (t.dtype, t.bf16, t.optim, t.padding_free, t.liger, t.active) == (
        "float32", True, "adamw_torch", False, False, ())
    assert resolve_throughput(sft(packing=True), "sft", device="cpu", bf16_ok=False, liger_ok=False).padding_free


def test_bad_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="throughput must be one of"):
        sft(throughput="fast")
    with pytest.raises(ValueError, match="liger needs a CUDA GPU"):
        resolve_throughput(sft(liger=True), "sft", device="cpu", bf16_ok=False, liger_ok=True)
    with pytest.raises(ValueError, match="without the package"):
        resolve_throughput(sft(liger=True), "sft", device="cuda", bf16_ok=True, liger_ok=False)
    with pytest.raises(ValueError, match="padding_free cannot be used with peft 'prompt_tuning'"):
        resolve_throughput(sft(peft="prompt_tuning", padding_free=True), "sft", **GPU)
    assert not resolve_throughput(sft(peft="prompt_tuning"), "sft", **GPU).padding_free  # auto leaves it off


def test_round_settings_refuse_a_bad_throughput_with_its_path():
    from labelapp.round_settings import check_section

    errors = []
    check_section("sft", "ppo", {"throughput": "fast"}, errors)
    assert errors == ["sft: throughput must be one of ['auto', 'off'] (got 'fast')."]


DEMOS = [Demonstration(f"Tell me a fact about cats, number {i}." + " Please." * (i % 5),
                       "Cats sleep for most of the day" + " and purr" * (i % 7) + ".") for i in range(8)]


def test_padding_free_sft_batches_give_the_padded_loss_and_train(tmp_path, tiny_dir):
    from rlhf.sft import build_sft_trainer, train_sft

    base = dict(output_dir=str(tmp_path / "sft"), model=tiny_dir, max_steps=2, per_device_batch_size=4,
                learning_rate=3e-3, max_length=512, save_steps=0, seed=0)
    padded = build_sft_trainer(SFTRunConfig(**base, padding_free=False), DEMOS)
    free = build_sft_trainer(SFTRunConfig(**base, padding_free=True), DEMOS)
    rows = [padded.train_dataset[i] for i in range(len(DEMOS))]
    batch_padded, batch_free = padded.data_collator(rows), free.data_collator(rows)
    assert "attention_mask" in batch_padded and batch_free["input_ids"].shape[0] == 1  # one concatenated row
    assert batch_free["input_ids"].numel() < batch_padded["input_ids"].numel()  # no padding computed
    free.model.load_state_dict(padded.model.state_dict())
    with torch.no_grad():
        loss_padded = padded.model.eval()(**batch_padded).loss
        loss_free = free.model.eval()(**batch_free).loss
    assert abs(float(loss_padded) - float(loss_free)) < 1e-5
    art = train_sft(SFTRunConfig(**base, padding_free=True), DEMOS)
    meta = read_metadata(art.output_dir)
    assert art.status == "succeeded" and meta["throughput"]["padding_free"] is True
    assert meta["throughput"]["active"] == ["padding_free"] and meta["throughput"]["optim"] == "adamw_torch"


def test_reward_and_dpo_runs_record_their_throughput(tmp_path, tiny_dir):
    from rlhf.dpo import DPORunConfig, train_dpo
    from rlhf.reward import RewardRunConfig, train_reward

    pairs = [PreferencePair(f"Tell me about {t}.", f"A great answer about {t}.", f"A bad answer about {t}.")
             for t in ("cats", "dogs", "the sea", "plants")] * 2
    common = dict(model=tiny_dir, max_steps=1, per_device_batch_size=4, max_length=256, save_steps=0, seed=0)
    art = train_reward(RewardRunConfig(output_dir=str(tmp_path / "rm"), **common), pairs)
    assert read_metadata(art.output_dir)["throughput"]["dtype"] == "float32"
    art = train_dpo(DPORunConfig(output_dir=str(tmp_path / "dpo"), **common), pairs)
    meta = read_metadata(art.output_dir)["throughput"]
    assert (meta["dtype"], meta["optim"], meta["padding_free"], meta["active"]) == ("float32", "adamw_torch", False, [])
