"""PEFT methods beyond LoRA (rlhf.config.PEFT_METHODS) on a tiny random-weight Llama, CPU: each
method trains a few SFT steps, checkpoints, resumes and is loaded for sampling; the reward model and
DPO take the methods peft and TRL support for them; unsupported combinations (and QLoRA on a CPU)
are refused, with the reason, before any model loads."""
from __future__ import annotations

from unittest import mock

import pytest
import torch

from rlhf.config import (
    PEFT_SUPPORT,
    DPORunConfig,
    PPOConfig,
    RewardRunConfig,
    SFTRunConfig,
    check_peft,
    peft_method,
)
from rlhf.contract import last_checkpoint, read_metadata
from rlhf.data import Demonstration, PreferencePair

DEMOS = [Demonstration(f"Tell me a fact about cats, number {i}.", "Cats sleep for most of the day.") for i in range(8)]
PAIRS = [PreferencePair(f"Tell me about {t}.", f"A helpful answer about {t}.", f"No. Wrong about {t}.")
         for t in ("cats", "dogs", "the sea", "plants")] * 2
METHODS = ["lora", "ia3", "prefix_tuning", "p_tuning", "prompt_tuning"]
SMALL = dict(num_virtual_tokens=4, prompt_encoder_hidden_size=16, lora_r=4, per_device_batch_size=4, max_length=512,
             learning_rate=1e-2, seed=0)


def no_model_loads(*args, **kwargs):
    raise AssertionError("a model was loaded before the configuration was refused")


def trainable(model) -> tuple[int, int]:
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))


@pytest.mark.parametrize("method", METHODS)
def test_sft_trains_checkpoints_resumes_and_samples_with_each_method(tmp_path, tiny_dir, tiny_tokenizer, method):
    from rlhf.models import is_prompt_learning, load_causal_lm
    from rlhf.sampling import sample
    from rlhf.sft import build_sft_trainer, train_sft

    config = SFTRunConfig(output_dir=str(tmp_path / "sft"), model=tiny_dir, peft=method, max_steps=2, save_steps=2,
                          merge=False, **SMALL)
    trainer = build_sft_trainer(config, DEMOS)
    few, total = trainable(trainer.model)
    assert 0 < few < total / 2, (method, few, total)  # an adapter, not the whole model
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    del trainer
    art = train_sft(config, DEMOS)
    assert art.status == "succeeded" and art.metrics["global_step"] == 2
    assert last_checkpoint(art.output_dir) is not None  # checkpoint-2
    # resume: two more steps continue from the checkpoint
    resumed = train_sft(SFTRunConfig(**{**config.__dict__, "max_steps": 4, "resume": True}), DEMOS)
    assert resumed.metrics["resumed_from"].endswith("checkpoint-2") and resumed.metrics["global_step"] == 4
    assert read_metadata(resumed.output_dir)["config"]["peft"] == method
    # the saved adapter loads for sampling, with weights that moved in training
    model = load_causal_lm(resumed.model_dir, device="cpu")
    if method in ("lora", "ia3"):  # folded into the weights at load (no adapter ops when sampling)
        assert not hasattr(model, "peft_config")
        base = load_causal_lm(tiny_dir, device="cpu").state_dict()
        moved = [n for n, p in model.state_dict().items() if not torch.equal(p, base[n])]
    else:
        assert hasattr(model, "peft_config") and is_prompt_learning(model)
        after = dict(model.named_parameters())
        moved = [n for n, p in before.items()
                 if (m := next((k for k in after if k.replace(".default", "") == n.replace(".default", "")), None))
                 and not torch.equal(p, after[m].detach())]
    assert moved, f"{method}: no trained parameter changed"
    samples = sample(model, tiny_tokenizer, ["Tell me a fact about cats."], k=2, max_new_tokens=5, seed=1)
    assert len(samples) == 2 and all(s.completion_tokens >= 1 for s in samples)
    again = sample(model, tiny_tokenizer, ["Tell me a fact about cats."], k=2, max_new_tokens=5, seed=1)
    assert [s.completion for s in again] == [s.completion for s in samples]  # the same seed, the same answers


def test_ia3_merges_into_plain_weights(tmp_path, tiny_dir):
    from rlhf.models import load_causal_lm
    from rlhf.sft import train_sft

    art = train_sft(SFTRunConfig(output_dir=str(tmp_path / "ia3"), model=tiny_dir, peft="ia3", max_steps=2,
                                 save_steps=0, merge=True, **SMALL), DEMOS)
    merged = load_causal_lm(art.model_dir, device="cpu")
    assert not hasattr(merged, "peft_config")
    base = load_causal_lm(tiny_dir, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))


@pytest.mark.parametrize("method", ["ia3", "prefix_tuning", "p_tuning", "prompt_tuning"])
def test_dpo_trains_with_the_adapter_off_as_reference(tmp_path, tiny_dir, method):
    from rlhf.dpo import build_dpo_trainer

    config = DPORunConfig(output_dir=str(tmp_path / "dpo"), model=tiny_dir, peft=method, max_steps=2, save_steps=0,
                          **SMALL)
    trainer = build_dpo_trainer(config, PAIRS)
    assert trainer.ref_model is None  # the reference is the same model with its adapter switched off
    result = trainer.train()
    assert trainer.state.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))


def test_reward_model_with_ia3(tmp_path, tiny_dir):
    from rlhf.reward import train_reward

    art = train_reward(RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, peft="ia3", max_steps=2,
                                       save_steps=0, eval_fraction=0.0, **SMALL), PAIRS, eval_pairs=PAIRS[:2])
    assert art.status == "succeeded" and art.metrics["global_step"] == 2


@pytest.mark.parametrize("method, reason", [
    ("prefix_tuning", "needs a model that takes past key values"),
    ("p_tuning", "reads the score at the last position, which is padding"),
    ("prompt_tuning", "reads the score at the last position, which is padding"),
])
def test_reward_model_refuses_prompt_learning_before_loading(tmp_path, tiny_dir, method, reason):
    from rlhf import reward

    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, peft=method, max_steps=1, **SMALL)
    with mock.patch.object(reward, "load_reward_model", no_model_loads), \
            pytest.raises(ValueError, match=f"peft '{method}' is not supported for the reward trainer: .*{reason}"):
        reward.build_reward_trainer(config, PAIRS)
    assert set(PEFT_SUPPORT["reward"]) == {"none", "lora", "qlora", "ia3"}


def test_qlora_is_refused_on_the_cpu_before_loading(tmp_path, tiny_dir):
    from rlhf import dpo, sft

    config = SFTRunConfig(output_dir=str(tmp_path / "q"), model=tiny_dir, peft="qlora", device="cpu", **SMALL)
    assert config.load_in_bits == 4 and config.use_lora and peft_method(config) == "qlora"
    with mock.patch.object(sft, "load_causal_lm", no_model_loads), \
            pytest.raises(ValueError, match=r"QLoRA \(peft 'qlora'\) needs a CUDA GPU .* Use peft 'lora'"):
        sft.train_sft(config, DEMOS)
    dpo_config = DPORunConfig(output_dir=str(tmp_path / "d"), model=tiny_dir, peft="qlora", **SMALL)
    with mock.patch.object(dpo, "load_causal_lm", no_model_loads), mock.patch("torch.cuda.is_available", lambda: False), \
            pytest.raises(ValueError, match="needs a CUDA GPU"):
        dpo.build_dpo_trainer(dpo_config, PAIRS)


@pytest.mark.parametrize("changes, message", [
    ({"peft": "adapters"}, "peft must be one of"),
    ({"peft": "qlora", "load_in_bits": 8}, "loads the base model in 4 bits"),
    ({"peft": "none", "load_in_bits": 4}, "cannot be fully fine-tuned"),
    ({"peft": "prompt_tuning", "num_virtual_tokens": 0}, "num_virtual_tokens must be at least 1"),
])
def test_bad_peft_settings_are_refused_with_the_reason(changes, message):
    with pytest.raises(ValueError, match=message):
        check_peft(SFTRunConfig(device="cuda", **changes), "sft", cuda_available=True)


def test_ppo_takes_lora_or_full_fine_tuning_only():
    with pytest.raises(ValueError, match="peft 'prompt_tuning' is not supported for the ppo trainer"):
        PPOConfig(peft="prompt_tuning")
    assert PPOConfig(peft="none").use_lora is False and PPOConfig(peft="lora").use_lora is True
    assert peft_method(SFTRunConfig(use_lora=False)) == "none" and peft_method(SFTRunConfig()) == "lora"


@pytest.mark.parametrize("method", ["prefix_tuning", "p_tuning", "prompt_tuning"])
def test_decoding_through_virtual_tokens_matches_the_training_forward(tiny_dir, tiny_tokenizer, method):
    """Greedy decoding of a left-padded batch through rlhf.virtual_tokens gives, for every row, the
    tokens that peft's own (training) forward picks over the whole growing sequence of that row alone."""
    from peft import get_peft_model

    from rlhf.models import load_causal_lm, peft_config
    from rlhf.sampling import generate_ids, render_prompts

    torch.manual_seed(0)
    config = peft_config(method, num_virtual_tokens=4, encoder_hidden_size=16)
    model = get_peft_model(load_causal_lm(tiny_dir, device="cpu"), config).eval()
    with torch.no_grad():  # make the virtual tokens matter (their initialisation is small)
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(30.0)
    prompts = ["Hi.", "Tell me a long fact about cats and dogs, please."]
    eos = [-1]  # no early stop: compare all steps
    out = generate_ids(model, tiny_tokenizer, prompts, max_new_tokens=4, do_sample=False)
    assert out["query_mask"][0].sum() < out["query_mask"][1].sum()  # the first row is left-padded
    for row, text in enumerate(render_prompts(tiny_tokenizer, prompts)):
        ids = tiny_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        expected = []
        with torch.no_grad():
            for _ in range(4):
                token = model(input_ids=ids).logits[0, -1].argmax()
                expected.append(int(token))
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
            with model.disable_adapter():
                plain = model.get_base_model()(input_ids=ids[:, :-4]).logits[0, -1]
        n = int(out["response_mask"][row].sum())
        assert out["response_ids"][row, :n].tolist() == expected[:n], (method, row)
        assert n == 4 or expected[n - 1] in (tiny_tokenizer.eos_token_id, *eos)
    assert not torch.allclose(plain, model(input_ids=ids[:, :-4]).logits[0, -1])  # the adapter changes the output


def test_reward_lora_layers_the_model_lacks_are_refused_with_nothing_written(tmp_path, tiny_dir):
    from rlhf.reward import train_reward

    out = tmp_path / "rm"
    config = RewardRunConfig(output_dir=str(out), model=tiny_dir, lora_layers=[1, 26, 27], max_steps=1,
                             save_steps=0, eval_fraction=0.0, **SMALL)
    with pytest.raises(ValueError, match=r"lora_layers: \[26, 27\] are not decoder layers of .*which has 2 "
                                         r"\(indices 0-1\); use null for all of them"):
        train_reward(config, PAIRS, eval_pairs=PAIRS[:2])
    assert not out.exists() or not any(out.iterdir())
    art = train_reward(RewardRunConfig(output_dir=str(tmp_path / "ok"), model=tiny_dir, lora_layers=[1], max_steps=1,
                                       save_steps=0, eval_fraction=0.0, **SMALL), PAIRS, eval_pairs=PAIRS[:2])
    assert art.status == "succeeded"
