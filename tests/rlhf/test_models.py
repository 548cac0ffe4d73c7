"""Model resolution, loading, LoRA merge."""

import pytest
import torch

from rlhf import models


def test_resolve_local_checkpoint_and_reject_empty_dir(tiny_dir, tmp_path):
    assert models.resolve_model(tiny_dir) == tiny_dir
    with pytest.raises(FileNotFoundError):
        models.resolve_model(str(tmp_path))


def test_auto_device_and_dtype():
    dev = models.pick_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bfloat16", "cpu") == torch.bfloat16


def test_bundled_model_path_and_data_dir(monkeypatch, tmp_path):
    assert models.bundled_gguf_path().name == models.GGUF_FILE
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert models.data_dir() == tmp_path
    with pytest.raises(ValueError):
        models.quantization_config(3)


def test_lora_merge_equals_adapter_outputs(tiny_dir, tiny_tokenizer, tmp_path):
    from peft import get_peft_model

    model = models.load_causal_lm(tiny_dir)
    peft_model = get_peft_model(model, models.lora_config(r=4)).eval()  # eval: no LoRA dropout
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    ids = tiny_tokenizer("Tell me about cats.", return_tensors="pt")["input_ids"].to(model.device)  # CUDA when present
    with torch.no_grad():
        adapted = peft_model(ids).logits
        with peft_model.disable_adapter():
            base = peft_model(ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)
    peft_model.save_pretrained(tmp_path / "adapter")  # adapter dirs load with their base applied
    reloaded = models.load_causal_lm(tmp_path / "adapter")
    merged = models.merge_lora(peft_model, tmp_path / "merged", tiny_tokenizer)
    atol = 1e-5 if model.dtype == torch.float32 else 2e-2  # CUDA loads bf16: merged weights round differently
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, adapted, atol=1e-5)
        assert torch.allclose(merged(ids).logits, adapted, atol=atol)
        assert torch.allclose(models.load_causal_lm(tmp_path / "merged")(ids).logits, adapted, atol=1e-5)
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert models.load_tokenizer(tmp_path / "adapter").pad_token == "<|endoftext|>"


def test_lora_on_selected_layers_only(tiny_dir):
    from peft import get_peft_model

    model = get_peft_model(models.load_causal_lm(tiny_dir), models.lora_config(r=4, layers=[1]))
    adapted = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters() if "lora_" in n}
    assert adapted == {"1"}


def test_cpu_bf16_native_needs_the_flags_and_a_measured_speedup(tmp_path, monkeypatch):
    """bf16 is the "auto" dtype on a CPU whose flags name bf16 instructions (AVX512-BF16 or AMX-BF16) and where
    a bf16 matmul measures >= 1.3x faster than fp32; RLHF_CPU_BF16=1/0 forces the answer; without
    /proc/cpuinfo the answer is no."""
    from rlhf.models import cpu_bf16_native, cpu_bf16_speedup, pick_dtype

    def never():
        raise AssertionError("no bf16 flag: nothing to measure")

    native, emulated = tmp_path / "native", tmp_path / "emulated"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\n")
    emulated.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw\n\n")
    monkeypatch.delenv("RLHF_CPU_BF16", raising=False)
    assert cpu_bf16_native(native, probe=lambda: 3.4) and not cpu_bf16_native(emulated, probe=never)
    assert not cpu_bf16_native(native, probe=lambda: 0.5)  # the flag, but bf16 measured slower (a Xeon VM here)
    assert not cpu_bf16_native(native, probe=lambda: 1.29) and cpu_bf16_native(native, probe=lambda: 1.3)
    assert not cpu_bf16_native(tmp_path / "missing", probe=never)
    (tmp_path / "amx").write_text("flags\t: sse amx_bf16 amx_tile\n")
    assert cpu_bf16_native(tmp_path / "amx", probe=lambda: 5.0)
    speedup = cpu_bf16_speedup()  # the real probe: a positive ratio, measured once per process
    assert speedup > 0 and cpu_bf16_speedup() == speedup
    monkeypatch.setenv("RLHF_CPU_BF16", "0")
    assert not cpu_bf16_native(native, probe=lambda: 9.0) and pick_dtype("auto", "cpu") == torch.float32
    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    assert cpu_bf16_native(emulated, probe=never) and pick_dtype("auto", "cpu") == torch.bfloat16
    assert pick_dtype("float32", "cpu") == torch.float32  # an explicit dtype always wins
