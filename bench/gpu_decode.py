"""Decoding throughput on a GPU: rlhf's decoder vs HF ``generate`` (default, and static cache + compile).

    python3 bench/gpu_decode.py                 # GPU: 360M-shaped random Llama, bf16, 64 x 256 and 1 x 128
    python3 bench/gpu_decode.py --smoke         # CPU: tiny shapes, proves the script runs (no timings worth reading)

No network: the model is built from a config with random weights (SmolLM2-360M's shape: hidden 960,
intermediate 2560, 32 layers, 15/5 heads, vocabulary 49,152, tied embeddings). Every response is forced
to its full length (no EOS: ``min_new_tokens`` for ``generate``, no EOS id for ours), greedy, prompts of
64 random tokens. Times are wall clock between ``torch.cuda.synchronize()`` calls; each case's first
call (compile, CUDA-graph capture) is reported apart as ``first_s``; ``tokens_per_s`` is the best of
``--repeats`` timed calls after it. One JSON line per case, printed as soon as the case ends, then the
ratios (ours / generate default, ours / generate static).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def build_model(smoke: bool, device, dtype):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if smoke:
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    else:
        cfg = LlamaConfig(vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                          num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192,
                          rope_theta=100000.0, tie_word_embeddings=True)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(name, fn, batch, new_tokens, device, repeats):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    first = time.perf_counter() - t
    assert out.shape[1] == new_tokens, (name, out.shape)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    row = {"case": name, "batch": batch, "new_tokens": new_tokens, "first_s": round(first, 2),
           "best_s": round(best, 4), "tokens_per_s": round(batch * new_tokens / best, 1),
           "ms_per_step": round(1000 * best / new_tokens, 3)}
    if device.type == "cuda":
        row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(json.dumps(row), flush=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model and shapes")
    ap.add_argument("--shapes", default=None, help="comma list of BATCHxTOKENS (default 64x256,1x128)")
    ap.add_argument("--cases", default="generate,generate_static,ours_eager,ours_static",
                    help="comma list of cases")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from rlhf import decoder

    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    shapes = args.shapes or ("4x8,1x8" if args.smoke else "64x256,1x128")
    cases = args.cases.split(",")
    model = build_model(args.smoke, device, dtype)
    print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                      "dtype": str(dtype), "layers": model.config.num_hidden_layers}), flush=True)
    results = {}
    for shape in shapes.split(","):
        batch, new_tokens = (int(x) for x in shape.split("x"))
        torch.manual_seed(0)
        ids = torch.randint(3, model.config.vocab_size, (batch, 64), device=device)
        mask = torch.ones_like(ids)
        runs = {
            "generate": lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                               min_new_tokens=new_tokens, do_sample=False)[:, ids.shape[1]:],
            "generate_static": lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                                      min_new_tokens=new_tokens, do_sample=False,
                                                      cache_implementation="static")[:, ids.shape[1]:],
            "ours_eager": lambda: decoder.decode(model, ids, mask, new_tokens, [], 0, do_sample=False,
                                                 engine="eager"),
            "ours_static": lambda: decoder.decode(model, ids, mask, new_tokens, [], 0, do_sample=False,
                                                  engine="static", compile=device.type == "cuda"),
        }
        for case in cases:
            try:
                results[(shape, case)] = run_case(case, runs[case], batch, new_tokens, device, args.repeats)
            except Exception as exc:  # keep the other cases' figures
                print(json.dumps({"case": case, "shape": shape, "error": f"{type(exc).__name__}: {exc}"[:500]}),
                      flush=True)
        ours = results.get((shape, "ours_static"))
        for base in ("generate", "generate_static"):
            if ours and (shape, base) in results:
                ratio = ours["tokens_per_s"] / results[(shape, base)]["tokens_per_s"]
                print(json.dumps({"shape": shape, "ratio": f"ours_static / {base}", "value": round(ratio, 2)}),
                      flush=True)


if __name__ == "__main__":
    main()
