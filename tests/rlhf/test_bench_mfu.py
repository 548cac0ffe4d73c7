"""The GPU suite's MFU arithmetic (bench/rlhf_speed.py): FLOPs per training token of a Llama shape by hand, and
MFU from a throughput and a device peak."""
from __future__ import annotations

import pytest

from tests.conftest import load_bench_module


@pytest.fixture(scope="module")
def speed():
    return load_bench_module("rlhf_speed")


def test_flops_per_token_of_the_1_7b_shape_by_hand(speed):
    # SmolLM2-1.7B: hidden 2048, 24 layers, 32 heads and 32 KV heads, MLP 8192, vocabulary 49,152, tied head
    per_layer = 2048 * 2048 * 4 + 3 * 2048 * 8192  # q, k, v, o + gate, up, down
    params = 24 * per_layer + 2048 * 49152
    assert params == 1_711_276_032
    expected = 6 * params + 12 * 24 * 2048 * 2048  # + attention's QK^T and AV at sequence 2048
    assert speed.flops_per_token("1.7B", 2048) == expected
    # grouped-query attention (360M: 15 heads, 5 KV heads): k and v are a third of q's width
    per_layer = 960 * 960 * 2 + 960 * 320 * 2 + 3 * 960 * 2560
    assert speed.flops_per_token("360M", 512) == 6 * (32 * per_layer + 960 * 49152) + 12 * 32 * 960 * 512
    assert speed.flops_per_token(None, 2048) is None  # the bundled model: no MFU


def test_mfu_from_throughput_and_peak(speed):
    fpt = speed.flops_per_token("1.7B", 2048)
    tokens_per_s = 0.35 * 989e12 / fpt  # what 35% of an H100's dense bf16 peak would process
    assert speed.mfu(tokens_per_s, "1.7B", 2048, 989.0) == pytest.approx(0.35)
    assert speed.mfu(tokens_per_s, "1.7B", 2048, None) is None  # unknown peak: not guessed
    assert speed.device_peak_tflops({"peak_tflops": 500}) == 500.0
