"""8-bit dynamic quantization for sampling on the CPU (rlhf.models.quantize_int8, the `quantize`
option of sampling and evaluation): every linear layer becomes int8, outputs stay close to fp32,
sampling works and is reproducible, adapters are merged first, bad settings are refused before loading."""
from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from rlhf.config import SamplingConfig, check_quantize


def test_every_linear_layer_is_int8_and_logits_stay_close(tiny_dir, tiny_tokenizer):
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    from rlhf.models import load_causal_lm, quantize_int8

    fp32 = load_causal_lm(tiny_dir, device="cpu").eval()
    int8 = quantize_int8(load_causal_lm(tiny_dir, device="cpu"))
    assert not any(type(m) is torch.nn.Linear for m in int8.modules())
    assert sum(isinstance(m, Int8Linear) for m in int8.modules()) == sum(
        isinstance(m, torch.nn.Linear) for m in fp32.modules())
    ids = tiny_tokenizer(["Tell me a fact about cats and the sea."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = fp32(input_ids=ids).logits, int8(input_ids=ids).logits
    assert not torch.equal(a, b)  # it really is another computation
    error = (a - b).abs().max() / a.abs().max()
    assert error < 0.05, float(error)
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.999


def test_sampling_through_int8_is_reproducible_and_writes_its_setting(tmp_path, tiny_dir):
    from rlhf.sampling import run_sampling

    config = SamplingConfig(model=tiny_dir, output_dir=str(tmp_path / "s"), k=2, max_new_tokens=6, seed=3,
                            device="cpu", quantize="int8")
    first = run_sampling(config, prompts=["Hello there.", "Name a river."])
    again = run_sampling(config, prompts=["Hello there.", "Name a river."])
    assert len(first) == 4 and [s.completion for s in first] == [s.completion for s in again]
    meta = json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["config"]["quantize"] == "int8" and meta["metrics"]["completion_tokens"] > 0


def test_a_lora_adapter_is_merged_before_quantizing(tiny_dir):
    from peft import get_peft_model

    from rlhf.models import load_causal_lm, lora_config, quantize_int8

    model = get_peft_model(load_causal_lm(tiny_dir, device="cpu"), lora_config(r=4))
    quantized = quantize_int8(model)
    assert not hasattr(quantized, "peft_config")
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())


@pytest.mark.parametrize("quantize, device, cuda, message", [
    ("int4", "cpu", False, "quantize must be one of"),
    ("int8", "cuda", True, "for CPU inference"),
    ("int8", "auto", True, "for CPU inference"),
])
def test_bad_quantize_settings_are_refused_before_loading(tiny_dir, quantize, device, cuda, message):
    from rlhf import models

    with pytest.raises(ValueError, match=message):
        check_quantize(quantize, device, cuda_available=cuda)
    with mock.patch.object(models, "load_causal_lm", side_effect=AssertionError("loaded")), \
            mock.patch("torch.cuda.is_available", lambda: cuda), pytest.raises(ValueError, match=message):
        models.load_for_sampling(tiny_dir, quantize=quantize, device=device)
    check_quantize(None, "cuda", cuda_available=True)  # no quantization: anything goes
