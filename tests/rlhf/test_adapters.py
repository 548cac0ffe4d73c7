"""LoRA runs saved as adapters only (merge=False, the studio's default): a run's output holds the
adapter, not a full copy; an adapter trained on an adapter (SFT → reward model, SFT → PPO / DPO)
loads through its chain and gives exactly what the same run saved merged gives."""

import json
from pathlib import Path

import pytest
import torch

from rlhf.data import Demonstration, PreferencePair

DEMOS = [Demonstration(f"Tell me a fact about cats, number {i}.", "Cats sleep for most of the day and purr.")
         for i in range(8)]
TOPICS = ["cats", "dogs", "the sea", "plants"]
PAIRS = [PreferencePair(f"Tell me about {t}.", f"Yes, a great and helpful answer about {t}.",
                        f"No. A bad, awful and wrong answer about {t}.") for t in TOPICS for _ in range(2)]
PROMPTS = ["Tell me a fact about cats.", "What is the capital of France?"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _files(path) -> set[str]:
    return {p.name for p in Path(path).iterdir()}


def _logits(model, tokenizer, text="Tell me about cats."):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def _sft(tmp_path, tiny_dir, name, merge):
    from rlhf.sft import SFTRunConfig, train_sft

    config = SFTRunConfig(output_dir=str(tmp_path / name), model=tiny_dir, max_steps=3, per_device_batch_size=4,
                          learning_rate=3e-3, max_length=256, save_steps=0, seed=0, merge=merge, device="cpu")
    return train_sft(config, DEMOS)


@pytest.fixture(scope="module")
def sft_pair(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("sft")
    return _sft(root, tiny_dir, "adapter", merge=False), _sft(root, tiny_dir, "merged", merge=True)


def test_lora_sft_saves_the_adapter_only_and_loads_as_the_merged_run(sft_pair, tiny_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm, load_tokenizer

    adapter, merged = sft_pair
    files = _files(adapter.model_dir)
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    assert json.loads((Path(adapter.model_dir) / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_dir
    size = sum(p.stat().st_size for p in Path(adapter.model_dir).iterdir())
    assert size < (Path(merged.model_dir) / "model.safetensors").stat().st_size
    a, m = load_causal_lm(adapter.model_dir, device="cpu"), load_causal_lm(merged.model_dir, device="cpu")
    assert not hasattr(a, "peft_config")  # folded in: samples at the speed of plain weights
    assert torch.allclose(_logits(a, tiny_tokenizer), _logits(m, tiny_tokenizer), atol=1e-5)
    base = load_causal_lm(tiny_dir, device="cpu")
    assert not torch.allclose(_logits(a, tiny_tokenizer), _logits(base, tiny_tokenizer), atol=1e-4)
    assert load_tokenizer(adapter.model_dir).pad_token == tiny_tokenizer.pad_token


def test_reward_model_on_an_sft_adapter_loads_through_the_chain(sft_pair, tmp_path, tiny_tokenizer):
    from rlhf.config import RewardRunConfig
    from rlhf.models import load_reward_model
    from rlhf.reward import conversation, score, train_reward

    adapter, merged = sft_pair
    runs = {}
    for merge, start in ((False, adapter.model_dir), (True, merged.model_dir)):
        config = RewardRunConfig(output_dir=str(tmp_path / f"rm-{merge}"), model=start, max_steps=3,
                                 per_device_batch_size=4, learning_rate=3e-3, max_length=256, save_steps=0, seed=0,
                                 merge=merge, device="cpu", eval_fraction=0.0)
        runs[merge] = train_reward(config, PAIRS)
    assert "model.safetensors" not in _files(runs[False].model_dir)
    items = [conversation(p.prompt, p.chosen) for p in PAIRS[:4]]
    chained = score(load_reward_model(runs[False].model_dir, device="cpu"), tiny_tokenizer, items)
    full = score(load_reward_model(runs[True].model_dir, device="cpu"), tiny_tokenizer, items)
    assert torch.allclose(chained, full, atol=1e-4)


def test_ppo_adapter_on_an_sft_adapter_equals_the_merged_run(sft_pair, tmp_path, tiny_tokenizer):
    from rlhf.models import load_causal_lm
    from rlhf.ppo import PPOConfig, train

    def share_reward(prompts, completions, ids, mask):
        hit = (ids >= 3) & (ids < 67) & mask
        return hit.float().sum(1) / mask.float().sum(1)

    adapter, merged = sft_pair
    base = dict(device="cpu", max_steps=2, rollout_batch_size=2, mini_batch_size=2, max_new_tokens=6,
                learning_rate=3e-3, save_steps=1, lora_r=8, seed=3)
    chained = train(PPOConfig(output_dir=str(tmp_path / "ppo-a"), model=adapter.model_dir, merge=False, **base),
                    PROMPTS, reward_fn=share_reward)
    full = train(PPOConfig(output_dir=str(tmp_path / "ppo-m"), model=merged.model_dir, merge=True, **base),
                 PROMPTS, reward_fn=share_reward)
    assert "model.safetensors" not in _files(chained.model_dir)
    cfg = json.loads((Path(chained.model_dir) / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == adapter.model_dir  # on the SFT adapter, not the bare base
    a, m = load_causal_lm(chained.model_dir, device="cpu"), load_causal_lm(full.model_dir, device="cpu")
    assert torch.allclose(_logits(a, tiny_tokenizer), _logits(m, tiny_tokenizer), atol=1e-4)
    sft = load_causal_lm(adapter.model_dir, device="cpu")
    assert not torch.allclose(_logits(a, tiny_tokenizer), _logits(sft, tiny_tokenizer), atol=1e-5)


def test_a_broken_chain_names_the_missing_base(sft_pair, tmp_path):
    import shutil

    from rlhf.models import load_causal_lm

    adapter, _ = sft_pair
    copy = tmp_path / "orphan"
    shutil.copytree(adapter.model_dir, copy)
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="gone"):
        load_causal_lm(copy, device="cpu")
