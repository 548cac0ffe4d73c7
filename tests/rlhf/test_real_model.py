"""The real bundled SmolLM2-135M-Instruct: convert (cached under DATA_DIR), load, sample, 2 SFT steps."""

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real():
    from rlhf.models import convert_bundled_model, load_causal_lm, load_tokenizer

    path = convert_bundled_model()  # ~30 s the first time, then cached
    assert (path / "model.safetensors").is_file() and (path / "chat_template.jinja").is_file()
    return str(path), load_tokenizer(None), load_causal_lm(None, dtype="float32")


def test_real_model_loads_and_samples(real):
    from rlhf.sampling import sample

    path, tok, model = real
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert model.config.num_hidden_layers == 30 and model.dtype == torch.float32
    greedy = sample(model, tok, ["What is the capital of France?"], k=1, do_sample=False, max_new_tokens=24)
    assert "Paris" in greedy[0].completion and greedy[0].finish_reason == "eos"
    prompts = ["Name a fruit.", [{"role": "user", "content": "Say hello in French."}]]
    samples = sample(model, tok, prompts, k=4, max_new_tokens=32, temperature=0.8, seed=0, batch_size=8)
    assert len(samples) == 8 and [s.prompt_index for s in samples] == [0] * 4 + [1] * 4
    assert all(s.completion_tokens <= 32 and "<|im_end|>" not in s.completion for s in samples)
    assert all(s.completion.strip() for s in samples)
    assert len({s.completion for s in samples}) > 2  # sampled, not all identical


def test_real_model_two_sft_steps(real, tmp_path):
    from rlhf.data import Demonstration
    from rlhf.sft import SFTRunConfig, train_sft

    path, _, _ = real
    demos = [Demonstration("Name a fruit.", "Apple."), Demonstration("Name a colour.", "Blue."),
             Demonstration("Name an animal.", "Cat."), Demonstration("Name a planet.", "Mars.")]
    steps = []
    art = train_sft(SFTRunConfig(output_dir=str(tmp_path / "sft"), model=None, max_steps=2, per_device_batch_size=2,
                                 max_length=256, save_steps=0, merge=False),
                    demos, progress=lambda s, t, m: steps.append((s, t, m.get("loss/train"))))
    assert art.status == "succeeded" and [s for s, _, _ in steps] == [1, 2]
    assert all(loss is not None and 0 < loss < 20 for _, _, loss in steps)
    meta = json.loads(open(art.metadata_path).read())
    assert meta["base_model"]["path"] == path and "gguf" in meta["base_model"]["source"]
    assert (tmp_path / "sft" / "model" / "adapter_config.json").is_file()  # merge=False keeps the adapter
