"""Hardware-independent counters of the decoder, today's loop vs the new one, in one process (CPU).

    flock /work/.heavy.lock nice env OMP_NUM_THREADS=2 timeout 600 .venv/bin/python bench/decode_counts.py

Part 1 - a random-weight Llama with SmolLM2-360M's 32 layers and head layout (15 query / 5 KV heads,
49,152-token tied vocabulary) but hidden size 60, so compute is negligible and time is host overhead;
batch 8, 32 new tokens, sampling at temperature 1. Paths: today's loop (``rlhf/sampling.py`` at commit
518151e, loaded from git), the new decoder's eager engine (shrinking loop, the CPU default; and masked
rows with the finished check every 16 steps, the non-static accelerator loop), its static-cache step
eager, and the static step compiled (``torch.compile(fullgraph=True)``, inductor's CPU backend; on CUDA
``mode="reduce-overhead"`` additionally captures the step in one CUDA graph).

Per decode step = (run with 32 new tokens - run with 1 new token) / 31, so the prefill is excluded.

* ``dispatch ops/step``: aten ops seen by a ``TorchDispatchMode`` (after decomposition, as in
  ENGINE_NOTES.md); eager paths only (a dispatch mode does not see inside compiled kernels).
* ``launched ops/step``: ``torch.profiler`` events that are an aten op or an inductor kernel and whose
  nearest enclosing op is not an aten op, i.e. the calls issued by Python or by the compiled wrapper
  (eager: ``aten::linear`` counts once; compiled: each generated C++ kernel (``cpp.enable_kernel_profile``)
  and each extern call such as ``aten::mm`` counts once). On CUDA with reduce-overhead the compiled
  step's launched ops are all inside one CUDA-graph replay: the host dispatches ``graph replays/step``.
* ``syncs/step``: device->host reads (``aten::_local_scalar_dense`` - ``.item()``, ``bool()``, ``int()`` -
  and ``aten::nonzero``, whose output size needs the host) per step, from the profiler.
* ``recompiles``: new dynamo graphs over 10 decodes after warm-up, prompt lengths 17..32 (one bucket).
* ``ms/step``: median of 3 wall times.

Part 2 - the bundled SmolLM2-135M, 4 prompts x K=4 samples x 32 new tokens: ``sample()`` at 518151e vs
now (the K samples now share one prefill), both fp32, and now with the model loaded as sampling runs load it
(dtype "auto": bf16 on a CPU with native bf16), best of 2 each, alternating.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

BASELINE = "518151e"
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def load_baseline_sampling():
    """``rlhf/sampling.py`` as it was at ``BASELINE`` (its relative imports resolve inside ``rlhf``)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE}:rlhf/sampling.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "sampling_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("rlhf._sampling_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def is_op(name: str) -> bool:
    return name.startswith("aten::") or "cpp_fused" in name or name.startswith("graph_")


def profile_counts(fn):
    """(launched ops, of which outside compiled code, syncs, compiled-graph calls) of one call of ``fn``."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return count_events(prof.events())


def count_events(events):
    """(launched ops, of which outside compiled code, syncs, compiled-graph calls) among profiler events."""
    launched = outside = syncs = graphs = 0
    for e in events:
        if e.name in SYNC_OPS:
            syncs += 1
        if "Call CompiledFxGraph" in e.name:
            graphs += 1
        if not is_op(e.name):
            continue
        parent, in_graph = e.cpu_parent, False
        while parent is not None and not is_op(parent.name):
            if "Call CompiledFxGraph" in parent.name:
                in_graph = True
                break
            parent = parent.cpu_parent
        if parent is None or not is_op(parent.name):
            launched += 1
            outside += not in_graph
    return launched, outside, syncs, graphs


def narrow_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=60, intermediate_size=160, num_hidden_layers=32,
                      num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def prompts(batch: int, length: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 49152, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):  # left padding of 0..batch-1 tokens
        mask[row, :row] = 0
        ids[row, :row] = 0
    return ids, mask


def part1(batch=8, new_tokens=32, prompt_len=24):
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters

    from rlhf import decoder

    inductor_config.cpp.enable_kernel_profile = True
    old = load_baseline_sampling()
    model = narrow_model()
    ids, mask = prompts(batch, prompt_len)
    eos, pad = [2], 0
    # (run, count dispatch ops, timed repeats): the loaded 2-core host makes every eager decode of 32
    # tokens cost tens of seconds, so the loops already shown equal elsewhere are counted, not timed
    paths = {
        f"today ({BASELINE})": (lambda n: old.decode(model, ids, mask, n, eos, pad, do_sample=True), True, 1),
        "new eager, shrinking (CPU default)": (
            lambda n: decoder.decode(model, ids, mask, n, eos, pad, engine="eager"), False, 1),
        "new eager, masked, sync/16": (
            lambda n: decoder.decode(model, ids, mask, n, eos, pad, engine="eager", shrink=False), False, 0),
        "new static step, eager": (
            lambda n: decoder.decode(model, ids, mask, n, eos, pad, engine="static", compile=False), True, 0),
        "new static step, compiled": (
            lambda n: decoder.decode(model, ids, mask, n, eos, pad, engine="static", compile=True), False, 3),
    }
    rows = []
    steps = new_tokens - 1
    for name, (run, count, repeats) in paths.items():
        compiled = "compiled" in name
        warm_s = None
        if compiled or repeats:
            t0 = time.time()
            torch.manual_seed(0)
            out_full = run(new_tokens)  # warm-up (compiles the step for the compiled path)
            run(1)
            warm_s = time.time() - t0
            assert out_full.shape == (batch, new_tokens), out_full.shape
        dispatch = None
        if count:
            with Count() as c_full:
                run(new_tokens)
            with Count() as c_one:
                run(1)
            dispatch = (c_full.n - c_one.n) / steps
        l_full, o_full, s_full, g_full = profile_counts(lambda: run(new_tokens))
        l_one, o_one, s_one, g_one = profile_counts(lambda: run(1))
        walls = []
        for _ in range(repeats):
            t = time.perf_counter()
            run(new_tokens)
            full = time.perf_counter() - t
            t = time.perf_counter()
            run(1)
            walls.append((full - (time.perf_counter() - t)) / steps)
        recompiles = None
        if compiled:
            before = counters["stats"]["unique_graphs"]
            for i in range(10):
                length = 17 + (i * 7) % 16  # 17..32: the 32-token prompt bucket
                p_ids, p_mask = prompts(batch, length, seed=i)
                decoder.decode(model, p_ids, p_mask, new_tokens, eos, pad, engine="static", compile=True)
            recompiles = counters["stats"]["unique_graphs"] - before
        rows.append(dict(path=name, dispatch=dispatch, launched=(l_full - l_one) / steps,
                         host=(o_full - o_one) / steps + (g_full - g_one) / steps,
                         syncs=(s_full - s_one) / steps, graphs=(g_full - g_one) / steps,
                         ms=1000 * statistics.median(walls) if walls else None, warm_s=warm_s,
                         recompiles=recompiles))
        print(f"  measured {name}: {rows[-1]}", flush=True)
    return rows


def _fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def print_part1(rows):
    base = rows[0]
    print("\nPart 1: 32-layer Llama, 15/5 heads, hidden 60, vocab 49,152; batch 8, 32 new tokens, sampling (CPU)")
    print("| path | dispatch ops/step | launched ops/step | vs today | graph calls/step | host launches/step "
          "with CUDA graphs | vs today | syncs/step | ms/step | recompiles after warm-up | first call s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {_fmt(r['dispatch'], '.0f')} | {r['launched']:.0f} | "
              f"{base['launched'] / max(r['launched'], 1e-9):.1f}x | {r['graphs']:.0f} | {r['host']:.0f} | "
              f"{base['launched'] / max(r['host'], 1e-9):.1f}x | {r['syncs']:.3f} | "
              f"{_fmt(r['ms'])} | {_fmt(r['recompiles'], 'd')} | {_fmt(r['warm_s'])} |")


def part2(k=4, new_tokens=32, repeats=2):
    from rlhf import sampling
    from rlhf.models import load_causal_lm, load_tokenizer

    old = load_baseline_sampling()
    tok = load_tokenizer("bundled")
    model = load_causal_lm("bundled", device="cpu", dtype="float32")
    ps = ["Write a long story about a dragon who learns to cook.", "Explain in detail how a steam engine works.",
          "List twenty fruits and describe each one.", "Describe the history of Rome at length."]
    auto = load_causal_lm("bundled", device="cpu")  # dtype "auto", as sampling runs load it: bf16 on a native-bf16 CPU
    auto_name = f"new, {str(next(auto.parameters()).dtype).removeprefix('torch.')} (dtype auto)"
    kw = dict(k=k, max_new_tokens=new_tokens, temperature=1.0, seed=0, batch_size=16)
    results = {"today": [], "new": [], auto_name: []}
    for _ in range(repeats):
        for name, fn, m in (("today", old.sample, model), ("new", sampling.sample, model),
                            (auto_name, sampling.sample, auto)):
            t = time.perf_counter()
            out = fn(m, tok, ps, **kw)
            results[name].append((time.perf_counter() - t, sum(s.completion_tokens for s in out)))
    print(f"\nPart 2: bundled SmolLM2-135M (fp32 unless named), {len(ps)} prompts x K={k} x {new_tokens} new tokens, "
          "batch 16 (CPU)")
    print("| path | best wall s | completion tokens | tokens/s |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        wall, tokens = min(runs)
        print(f"| sample() {name} | {wall:.2f} | {tokens} | {tokens / wall:.1f} |")
    (tw, tt), (nw, nt), (aw, at) = min(results["today"]), min(results["new"]), min(results[auto_name])
    print(f"new / today tokens/s: {(nt / nw) / (tt / tw):.2f}x; {auto_name} / today: {(at / aw) / (tt / tw):.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["1", "2", "all"], default="all")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if args.part in ("1", "all"):
        print_part1(part1())
    if args.part in ("2", "all"):
        part2()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
