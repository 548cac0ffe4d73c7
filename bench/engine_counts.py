"""Hardware-independent counters of one PPO update, old path (rlhf/ppo_legacy.py) vs new (rlhf/ppo.py).

    flock /work/.heavy.lock nice env OMP_NUM_THREADS=2 timeout 600 .venv/bin/python bench/engine_counts.py

Part 1 (counts): a Llama with SmolLM2-360M's 32 layers and head layout (15 query / 5 KV heads) but hidden
size 60, its 49,152-token vocabulary (the bundled SmolLM2 tokenizer), a reward model of the same shape (so
the new path scores from token ids), LoRA r16 on all linear layers, batch 8, 32 new tokens, 2 PPO epochs,
minibatch 4 (4 micro-steps per update). The 32 layers' compute is negligible; the 49,152-wide output head
is not (vocabulary-sized matmuls and softmaxes dominate the wall time on a 2-core CPU). Decoding is
not part of this half (rlhf/sampling.py and its decoder are measured apart): both paths get the same
pre-drawn responses (random ids, no EOS) in place of sampling, so everything else in an update runs as in
training: scoring forwards, reward, GAE, epochs of micro-steps, optimizer, metrics.
For each path, in one process: update 1 is a warm-up; update 2 runs under a TorchDispatchMode that counts
every aten op dispatched (forward, backward, optimizer; eager CPU, nothing compiled) and every read of a
tensor value by the host: ``aten::_local_scalar_dense`` (``.item()``, ``float()``, ``int()``, ``bool()``),
``aten::nonzero`` (boolean indexing), and ``.tolist()`` / ``.cpu()`` / ``.numpy()`` calls (wrapped, since
on CPU they dispatch nothing), each with its call site; updates 3-4 are timed without the counter.
Host reads of tensors that live on the host on a GPU too (the prompt order's permutation, non-fused AdamW's
per-parameter step counters) are listed but not counted as device syncs.

Part 2 (135M): one PPO update on the bundled SmolLM2-135M-Instruct (policy with LoRA r16, the same
checkpoint as reward model with a fresh head, value model = reward model + a second adapter), batch 8,
32 pre-drawn response tokens, 2 epochs, minibatch 4; the old path in fp32 (as it ran on a CPU), the new one
with dtype "auto" (bf16 weights on a CPU with native bf16, rlhf.models.cpu_bf16_native; fp32 elsewhere or with
RLHF_CPU_BF16=0), ``--updates`` updates (default 1): wall
time and peak RSS of each update (VmHWM reset through /proc/self/clear_refs once the models are loaded and
after each update) and the peak RSS while loading the models, each path in its own process; and the new path in
fp32 with ``value_head: "shared"`` (the value head on the policy's trunk: one trunk fewer to run).

Part 3 (compiled): part 1's model and settings, the new update eager vs with ``compile_update`` (each
micro-step compiled at fixed shapes), update 2 of 4 counted by ops launched (profiler events, as in
bench/decode_counts.py: a dispatch mode cannot see inside compiled kernels), compiled-graph calls, syncs,
wall of updates 3-4 and of update 1 (which pays the compile).

Part 4 (components, seconds): the reward model's token-id pass eager vs compiled and one AdamW step foreach
vs fused, counted alone on part 1's models (the pieces added to the compiled update after part 3 was run).

Part 5 (profile, a minute): where the wall of the new eager update goes on this CPU, part 1's model and
settings, update 3 of 3 under torch.profiler: self CPU time of the heaviest aten ops, the ops launched, and an
estimate of the host's dispatch cost, launched ops x the cost per op of a tiny eager forward + backward
measured in the same process (tensors of 4 x 8: compute ~0). That estimate bounds what compiling can save
on a CPU, where a compiled graph still runs its kernels one by one; on a GPU it is what CUDA graphs remove.

Part 6 (overhead): the overhead-only update (``part_overhead``): part 1's layers and head layout with a 384-token
vocabulary and eager attention, so that compute is next to nothing on a CPU too; old, new eager and new compiled,
launched ops and wall per update.

Run the parts separately to stay under a 10-minute timeout: ``--part counts``, ``--part smollm``,
``--part compiled``, ``--part components``, ``--part profile``, ``--part overhead``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

PROMPTS = ["Tell me a fact about cats.", "What is the capital of France?", "Explain how plants grow, briefly.",
           "Write a short poem about the sea and the sky.", "Why is the sky blue?",
           "Give me three tips for sleeping better at night.", "What does a reward model do in RLHF?",
           "Summarise the plot of a heist film in two sentences."]
# Reads of tensors that are on the host on a GPU too: a CPU generator's permutation (prompt order) and the
# optimizer's per-parameter step counters (non-fused AdamW keeps them on the CPU; fused AdamW reads none).
HOST_ONLY_SITES = ("prompt_order", "torch-optim:")


# ------------------------------------------------------------------------------------------ counters
class Counter:
    """Aten ops dispatched and host reads of tensor values, with their call sites, while active."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        self.ops = 0
        self.reads: collections.Counter = collections.Counter()
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.ops += 1
                name = func.overloadpacket.__name__
                if name in ("_local_scalar_dense", "nonzero"):
                    counter.read(name)
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.torch = torch
        self.saved = {}

    def read(self, what: str) -> None:
        site, fallback = None, "?"
        for frame in reversed(traceback.extract_stack()[:-2]):  # innermost first
            path = frame.filename
            if "_python_dispatch" in path or "engine_counts" in path:
                continue
            if "/torch/optim/" in path:  # AdamW's per-parameter step counters: host tensors (none when fused)
                site = f"torch-optim:{Path(path).name}:{frame.name}"
                break
            for pkg in ("rlhf", "transformers", "peft"):
                if f"/{pkg}/" in path:
                    site = f"{pkg}:{Path(path).name}:{frame.name}"
                    break
            if site:
                break
            if fallback == "?" and "/torch/" in path:
                fallback = f"torch:{Path(path).name}:{frame.name}"
        self.reads[f"{what} @ {site or fallback}"] += 1

    def __enter__(self):
        T = self.torch.Tensor
        for name in ("tolist", "cpu", "numpy"):
            original = getattr(T, name)
            self.saved[name] = original

            def wrapped(tensor, *a, _original=original, _name=name, **kw):
                self.read(_name)
                return _original(tensor, *a, **kw)

            setattr(T, name, wrapped)
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for name, original in self.saved.items():
            setattr(self.torch.Tensor, name, original)

    def syncs(self) -> int:
        return sum(n for k, n in self.reads.items() if not any(s in k.split("@")[1] for s in HOST_ONLY_SITES))


LOADING_PEAK_MB: list[float] = []


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM) in MB, since start or since the last ``reset_peak_rss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- fixtures
def narrow_360m(tokenizer, for_reward: bool = False):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=60, intermediate_size=160, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, num_labels=1)
    torch.manual_seed(1 if for_reward else 0)
    model = (LlamaForSequenceClassification if for_reward else LlamaForCausalLM)(config)
    if not for_reward:
        model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                                   pad_token_id=tokenizer.pad_token_id)
    return model


def fake_generate_ids(new_tokens: int):
    """Stands in for sampling: the prompts tokenized as generate_ids does, responses drawn once per call
    index from a fixed seed (ids of ordinary tokens, no EOS), identical for both paths."""
    import torch

    from rlhf.sampling import render_prompts

    calls = {"n": 0}

    def generate_ids(model, tokenizer, prompts, max_new_tokens=128, cache_implementation=None, **decoding):
        device = next(model.parameters()).device
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            enc = tokenizer(render_prompts(tokenizer, prompts), add_special_tokens=False, padding=True,
                            return_tensors="pt").to(device)
        finally:
            tokenizer.padding_side = side
        if calls["n"] == 0:
            LOADING_PEAK_MB.append(vm_hwm_mb())  # models loaded: the peak so far is the loading's
            reset_peak_rss()  # from here the peak RSS is the update's
        g = torch.Generator().manual_seed(1000 + calls["n"])
        calls["n"] += 1
        response = torch.randint(200, len(tokenizer) - 1, (len(prompts), new_tokens), generator=g).to(device)
        return {"query_ids": enc["input_ids"], "query_mask": enc["attention_mask"].bool(),
                "response_ids": response, "response_mask": torch.ones_like(response, dtype=torch.bool),
                "has_eos": torch.zeros(len(prompts), dtype=torch.bool, device=device)}

    return generate_ids


class LaunchCounter:
    """Ops launched while active, counted from torch.profiler events as bench/decode_counts.py does: an aten
    op or an inductor kernel (``cpp.enable_kernel_profile``) with no aten op above it, i.e. what Python or a
    compiled wrapper calls (eager ``aten::linear`` once; compiled: each generated kernel and each extern
    call such as ``aten::mm``); with the calls of compiled graphs and the syncs among them."""

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        from decode_counts import count_events

        self.prof.__exit__(None, None, None)
        self.launched, self.outside, self.syncs, self.graphs = count_events(self.prof.events())


def bench_config(module, out_dir: str, model: str, reward: str, updates: int, new_tokens: int, batch: int,
                 dtype: str, **extra):
    """The benchmark's PPO settings (LoRA r16, minibatch 4, 2 epochs, no checkpoints) for ``module``'s PPOConfig."""
    return module.PPOConfig(output_dir=out_dir, model=model, reward_model=reward, device="cpu", max_steps=updates,
                            rollout_batch_size=batch, mini_batch_size=4, ppo_epochs=2, max_new_tokens=new_tokens,
                            per_device_batch_size=batch, save_steps=0, seed=0, lora_r=16, learning_rate=1e-5,
                            dtype=dtype, **extra)


def run_path(path: str, model: str, reward: str, out_dir: str, updates: int, count_update: int | None,
             new_tokens: int = 32, batch: int = 8, launches: bool = False, dtype: str = "float32") -> dict:
    """``updates`` PPO updates of one path ('old', 'new', 'compiled': new with ``compile_update``, 'shared': new
    with ``value_head: "shared"``); per-update
    wall times (from the progress callbacks), and the counters of update ``count_update`` (1-based; None: no
    counting): the dispatch counter, or with ``launches`` the profiler's launched ops."""
    import torch

    module = __import__(f"rlhf.{'ppo_legacy' if path == 'old' else 'ppo'}", fromlist=["train"])
    module.generate_ids = fake_generate_ids(new_tokens)
    cfg = bench_config(module, out_dir, model, reward, updates, new_tokens, batch, dtype,
                       **({"compile_update": True} if path == "compiled" else {}),
                       **({"value_head": "shared"} if path == "shared" else {}))
    marks, starts, counts = [], [], {}
    counter = (LaunchCounter() if launches else Counter()) if count_update else None

    def progress(step, total, metrics):
        marks.append(time.perf_counter())
        try:
            on_update(step)
        finally:
            starts.append(time.perf_counter())  # the counter's own work (the profiler's events) is no update's wall

    def on_update(step):
        counts[f"hwm_after_update_{step}_mb"] = vm_hwm_mb()
        reset_peak_rss()  # the next update's peak RSS starts from the current RSS
        if counter is not None and step == count_update:
            counter.__exit__(None, None, None)
            if launches:
                counts.update(launched=counter.launched, outside=counter.outside, syncs=counter.syncs,
                              graphs=counter.graphs)
            else:
                counts.update(ops=counter.ops, syncs=counter.syncs(), reads=dict(counter.reads))
        if counter is not None and step == count_update - 1:
            counter.__enter__()

    start = time.perf_counter()
    torch.manual_seed(0)
    art = module.train(cfg, PROMPTS[:batch] if batch <= len(PROMPTS) else (PROMPTS * batch)[:batch], progress)
    assert art.status == "succeeded", art.status
    walls = [b - a for a, b in zip([start] + starts[:-1], marks)]
    from rlhf.contract import read_metadata

    return {"path": path, "walls": walls, "metrics": {k: art.metrics.get(k) for k in ("objective/kl", "loss/policy")},
            "weights_dtype": read_metadata(out_dir).get("weights_dtype", str(cfg.dtype)), **counts}


# ---------------------------------------------------------------------------------------------- parts
def narrow_checkpoints(tmp: Path, tok=None, name: str = "narrow") -> tuple[Path, Path]:
    """The narrow 32-layer policy and reward model saved under ``tmp`` with ``tok`` (default: the bundled
    tokenizer, whose 49,152 tokens size the models' vocabulary)."""
    from rlhf.models import convert_bundled_model, load_tokenizer

    tok = tok or load_tokenizer(str(convert_bundled_model()))
    policy_dir, rm_dir = tmp / name, tmp / f"{name}_rm"
    narrow_360m(tok).save_pretrained(policy_dir, safe_serialization=True)
    narrow_360m(tok, for_reward=True).save_pretrained(rm_dir, safe_serialization=True)
    for d in (policy_dir, rm_dir):
        tok.save_pretrained(d)
    return policy_dir, rm_dir


def part_counts(tmp: Path) -> list[dict]:
    policy_dir, rm_dir = narrow_checkpoints(tmp)
    rows = []
    for path in ("old", "new"):
        row = run_path(path, str(policy_dir), str(rm_dir), str(tmp / f"counts_{path}"), updates=4, count_update=2)
        rows.append(row)
        timed = row["walls"][2:]
        print(f"[counts] {path}: ops/update {row['ops']:,}  syncs/update {row['syncs']}  "
              f"wall/update {1000 * sum(timed) / len(timed):.0f} ms (updates 3-4: "
              f"{', '.join(f'{1000 * w:.0f}' for w in timed)} ms)", flush=True)
        for site, n in sorted(row["reads"].items(), key=lambda kv: -kv[1]):
            print(f"           {n:5d}  {site}", flush=True)
    return rows


def part_compiled(tmp: Path) -> list[dict]:
    """The new update eager vs with ``compile_update``, counted by ops launched (profiler), update 2 of 4."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True
    return launch_rows("compiled", ("new", "compiled"), *narrow_checkpoints(tmp), tmp, updates=4)


def launch_rows(tag: str, paths, policy_dir: Path, rm_dir: Path, tmp: Path, updates: int) -> list[dict]:
    """``run_path`` for each of ``paths``, launched ops counted on update 2 (profiler), the wall of updates 3-."""
    rows = []
    for path in paths:
        row = run_path(path, str(policy_dir), str(rm_dir), str(tmp / f"{tag}_{path}"), updates=updates,
                       count_update=2, launches=True)
        rows.append(row)
        timed = row["walls"][2:]
        print(f"[{tag}] {path}: launched ops/update {row['launched']:,} (outside compiled code "
              f"{row['outside']:,}), compiled-graph calls {row['graphs']}, syncs {row['syncs']}, wall/update "
              f"{1000 * sum(timed) / len(timed):.0f} ms (updates 3-{updates}: "
              f"{', '.join(f'{1000 * w:.0f}' for w in timed)} ms; update 1, with any compile, "
              f"{row['walls'][0]:.1f} s)", flush=True)
    return rows


def part_components(tmp: Path) -> dict:
    """The two pieces added to the compiled update after part 3 ran, counted alone on part 1's models (seconds,
    not the minutes of part 3): the reward model's token-id pass (``reward_forward``, batch 8 x 70 tokens)
    eager vs compiled (its graph's launched ops on the CPU, one call = one replay under CUDA graphs), and one
    optimizer step over the policy's and the value model's trainable tensors (LoRA r16 on all linear layers)
    with foreach vs fused AdamW (``training_settings``: fused on CUDA and, since, on CPU)."""
    from contextlib import nullcontext

    import torch
    import torch._inductor.config as inductor_config

    from rlhf.ppo import (
        MasterAdamW,
        PPOConfig,
        adapter_disabled,
        build_models,
        compiled_forward,
        reward_forward,
        trainable_parameters,
    )

    inductor_config.cpp.enable_kernel_profile = True
    policy_dir, rm_dir = narrow_checkpoints(tmp)
    cfg = PPOConfig(output_dir=str(tmp / "components"), model=str(policy_dir), reward_model=str(rm_dir), device="cpu",
                    dtype="float32",
                    lora_r=16, seed=0)
    models = build_models(cfg)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(200, 40_000, (8, 70), generator=g)
    mask, last = torch.ones_like(ids), torch.full((8,), 69)
    row = {}
    # the reward model as score_rollout reads it: the value model with its adapter off when they share a trunk
    with (adapter_disabled(models.value) if models.reward_shares_value else nullcontext(models.reward)) as rm, \
            torch.no_grad():
        for name, fn in (("eager", reward_forward), ("compiled", compiled_forward(ids.device, "reward"))):
            t0 = time.perf_counter()
            first = fn(rm, ids, mask, last)
            row[f"reward_{name}_first_s"] = time.perf_counter() - t0
            fn(rm, ids, mask, last)
            with LaunchCounter() as c:
                again = fn(rm, ids, mask, last)
            assert torch.allclose(first, again)
            row[f"reward_{name}"] = {"launched": c.launched, "outside": c.outside, "graphs": c.graphs,
                                     "syncs": c.syncs}
    params = list(trainable_parameters(models).values())
    for fused in (False, True):
        opt = MasterAdamW(params, lr=1e-5, fused=fused)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) * 1e-3
        opt.step(max_grad_norm=1.0)  # warm-up: the optimizer state exists from here
        with LaunchCounter() as c:
            opt.step(max_grad_norm=1.0)
        t0 = time.perf_counter()
        for _ in range(5):
            opt.step(max_grad_norm=1.0)
        row[f"adamw_{'fused' if fused else 'foreach'}"] = {
            "launched": c.launched, "syncs": c.syncs, "ms": 1000 * (time.perf_counter() - t0) / 5}
    row["tensors"] = len(params)
    re, rc = row["reward_eager"], row["reward_compiled"]
    fe, fu = row["adamw_foreach"], row["adamw_fused"]
    print(f"[components] reward pass (8 x 70 tokens): eager {re['launched']:,} launched ops, {re['syncs']} syncs; "
          f"compiled {rc['launched']:,} launched ({rc['outside']} outside compiled code, {rc['graphs']} graph call); "
          f"first call {row['reward_eager_first_s']:.1f} s eager, {row['reward_compiled_first_s']:.1f} s compiled",
          flush=True)
    print(f"[components] AdamW + clip over {row['tensors']} tensors: foreach {fe['launched']:,} launched ops "
          f"({fe['syncs']:,} host reads), {fe['ms']:.1f} ms; fused {fu['launched']:,} launched ops "
          f"({fu['syncs']:,} host reads), {fu['ms']:.1f} ms", flush=True)
    return row


def dispatch_us_per_op() -> float:
    """Host cost of one launched op here: a tiny eager MLP forward + backward + SGD step (4 x 8 tensors, so
    compute is ~0) timed, divided by its launched ops (profiler, as LaunchCounter counts them)."""
    import torch

    layers = [torch.nn.Linear(8, 8) for _ in range(4)]
    x = torch.randn(4, 8)

    def step():
        h = x
        for layer in layers:
            h = torch.nn.functional.silu(layer(h))
        h.pow(2).mean().backward()
        with torch.no_grad():
            for layer in layers:
                for q in layer.parameters():
                    q.sub_(1e-3 * q.grad)
                    q.grad = None

    for _ in range(50):
        step()
    with LaunchCounter() as c:
        step()
    t0 = time.perf_counter()
    for _ in range(2000):
        step()
    return (time.perf_counter() - t0) / 2000 / c.launched * 1e6


def part_profile(tmp: Path) -> dict:
    """Part 5: the new eager update's self CPU time per aten op, its launched ops, and the dispatch estimate."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    policy_dir, rm_dir = narrow_checkpoints(tmp)
    module = __import__("rlhf.ppo", fromlist=["train"])
    module.generate_ids = fake_generate_ids(32)
    cfg = bench_config(module, str(tmp / "profile"), str(policy_dir), str(rm_dir), 3, 32, 8, "float32")
    marks, state = [], {}

    def progress(step, total, metrics):
        marks.append(time.perf_counter())
        if step == 2:
            state["prof"] = profile(activities=[ProfilerActivity.CPU])
            state["prof"].__enter__()
        elif step == 3:
            state["prof"].__exit__(None, None, None)

    torch.manual_seed(0)
    module.train(cfg, PROMPTS, progress)
    from decode_counts import count_events

    prof = state["prof"]
    launched, _, _, _ = count_events(prof.events())
    averages = [a for a in prof.key_averages() if a.key.startswith("aten::")]
    self_ms = {a.key: a.self_cpu_time_total / 1000 for a in averages}
    calls = {a.key: a.count for a in averages}
    total_ms = sum(self_ms.values())
    per_op = dispatch_us_per_op()
    row = {"wall_ms": 1000 * (marks[2] - marks[1]), "aten_self_ms": total_ms, "launched": launched,
           "dispatch_us_per_op": per_op, "dispatch_ms": launched * per_op / 1000,
           "top": sorted(((k, v, calls[k]) for k, v in self_ms.items()), key=lambda kv: -kv[1])[:8]}
    print(f"[profile] new eager update (update 3, under the profiler): wall {row['wall_ms']:.0f} ms, aten self time "
          f"{total_ms:.0f} ms, outside aten ops (Python, the profiler's own cost) {row['wall_ms'] - total_ms:.0f} ms; "
          f"{launched:,} ops launched", flush=True)
    for name, ms, n in row["top"]:
        print(f"[profile]   {ms:7.0f} ms  {100 * ms / total_ms:4.1f}%  {n:6d} calls  {name}", flush=True)
    host = row["dispatch_ms"] + row["wall_ms"] - total_ms
    row["host_ms"] = host
    print(f"[profile] dispatch: {per_op:.1f} us per launched op here (tiny eager MLP step) x {launched:,} ops = "
          f"{row['dispatch_ms']:.0f} ms; with the time outside aten ops, host overhead is at most {host:.0f} ms "
          f"({100 * host / row['wall_ms']:.0f}% of the wall), so removing all of it would make this update at most "
          f"{row['wall_ms'] / (row['wall_ms'] - host):.2f}x faster on this CPU; the rest is kernels", flush=True)
    return row


def part_overhead(tmp: Path, updates: int = 6) -> list[dict]:
    """Part 6: the overhead-only update. Part 1's 32-layer narrow model is not overhead-only on a CPU (part 5:
    the 49,152-wide head and the CPU flash-attention kernel at head size 4 are most of its wall), so here the
    same layers and head layout (hidden 60, 15 query / 5 KV heads of size 4) get rlhf.testing's 384-token
    tokenizer and eager attention (matmul + softmax at these sizes costs next to nothing): the wall is host
    overhead. Old path, new path eager and new path with ``compile_update``, each ``updates`` updates in this
    process; launched ops counted on update 2 (profiler), the wall averaged over updates 3 to the last."""
    import torch._inductor.config as inductor_config

    import rlhf.models
    from rlhf.testing import build_tiny_tokenizer

    inductor_config.cpp.enable_kernel_profile = True
    policy_dir, rm_dir = narrow_checkpoints(tmp, build_tiny_tokenizer(), "overhead")
    rlhf.models._SAFE["attn_implementation"] = "eager"  # every model this process loads (bench only)
    try:
        return launch_rows("overhead", ("old", "new", "compiled"), policy_dir, rm_dir, tmp, updates)
    finally:
        rlhf.models._SAFE.pop("attn_implementation", None)


def child(path: str, out: str, updates: int, dtype: str) -> None:
    """One path on SmolLM2-135M in this process: ``updates`` updates, then the peak RSS."""
    from rlhf.models import convert_bundled_model

    ckpt = str(convert_bundled_model())
    with tempfile.TemporaryDirectory() as tmp:
        row = run_path(path, ckpt, ckpt, tmp, updates=updates, count_update=None, dtype=dtype)
    row["peak_rss_mb"] = LOADING_PEAK_MB[0]  # ru_maxrss would be reset by clear_refs too
    Path(out).write_text(json.dumps(row))


def part_smollm(tmp: Path, updates: int) -> list[dict]:
    """Part 2: the old path as it ran on a CPU (fp32), the new path in fp32 (what the engine alone changes), the
    new path with dtype "auto" (bf16 weights on a CPU with native bf16) and the new path in fp32 with the value
    head on the policy's trunk (``value_head: "shared"``), each in its own process."""
    rows = []
    for path, dtype in (("old", "float32"), ("new", "float32"), ("new", "auto"), ("shared", "float32")):
        out = tmp / f"smollm_{path}_{dtype}.json"
        subprocess.run([sys.executable, __file__, "--child", path, "--dtype", dtype, "--out", str(out),
                        "--updates", str(updates)], check=True, cwd=REPO)
        row = json.loads(out.read_text())
        rows.append(row)
        print(f"[135M]   {path} ({row['weights_dtype']} weights): " + ", ".join(f"update {i + 1} {w:.1f} s (peak RSS during it "
                                               f"{row[f'hwm_after_update_{i + 1}_mb']:.0f} MB)"
                                               for i, w in enumerate(row["walls"]))
              + f"; peak RSS while loading the models {row['peak_rss_mb']:.0f} MB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["counts", "smollm", "compiled", "components", "profile", "overhead", "all"],
                        default="all")
    parser.add_argument("--child", choices=["old", "new", "shared"])
    parser.add_argument("--dtype", default="auto", help="the child's weights dtype (part 2)")
    parser.add_argument("--out")
    parser.add_argument("--updates", type=int, default=1, help="SmolLM2-135M updates per path (part 2)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if args.child:
        child(args.child, args.out, args.updates, args.dtype)
        return
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.part in ("components", "all"):
            part_components(tmp)
        if args.part in ("profile", "all"):
            part_profile(tmp)
        compiled = part_compiled(tmp) if args.part in ("compiled", "all") else None
        overhead = part_overhead(tmp) if args.part in ("overhead", "all") else None
        counts = part_counts(tmp) if args.part in ("counts", "all") else None
        smollm = part_smollm(tmp, args.updates) if args.part in ("smollm", "all") else None
    print("\n| measure | old | new | old / new |\n|---|---|---|---|")
    if counts:
        old, new = counts
        wo, wn = (sum(r["walls"][2:]) / len(r["walls"][2:]) for r in counts)
        print(f"| narrow 32-layer: aten ops per update | {old['ops']:,} | {new['ops']:,} | {old['ops'] / new['ops']:.2f}x |")
        print(f"| narrow 32-layer: device->host syncs per update | {old['syncs']} | {new['syncs']} | "
              f"{old['syncs'] / max(new['syncs'], 1):.1f}x |")
        print(f"| narrow 32-layer: wall per update (ms, mean of updates 3-4) | {1000 * wo:.0f} | {1000 * wn:.0f} | {wo / wn:.2f}x |")
    if compiled:
        eager, comp = compiled
        we, wc = (sum(r["walls"][2:]) / len(r["walls"][2:]) for r in compiled)
        print(f"| narrow 32-layer: launched ops per update, new eager vs compile_update | {eager['launched']:,} | "
              f"{comp['launched']:,} | {eager['launched'] / comp['launched']:.2f}x |")
        print(f"| narrow 32-layer: of which outside compiled code | {eager['outside']:,} | {comp['outside']:,} | "
              f"{eager['outside'] / max(comp['outside'], 1):.2f}x |")
        print(f"| narrow 32-layer: wall per update, new eager vs compile_update (ms) | {1000 * we:.0f} | "
              f"{1000 * wc:.0f} | {we / wc:.2f}x |")
    if overhead:
        old, eager, comp = overhead
        wo, we, wc = (sum(r["walls"][2:]) / len(r["walls"][2:]) for r in overhead)
        print(f"| overhead-only 32-layer (384 tokens, eager attention): launched ops per update, old vs new compiled | "
              f"{old['launched']:,} | {comp['launched']:,} (outside compiled code {comp['outside']:,}) | "
              f"{old['launched'] / comp['launched']:.2f}x |")
        print(f"| overhead-only: wall per update, old vs new eager (ms) | {1000 * wo:.0f} | {1000 * we:.0f} | {wo / we:.2f}x |")
        print(f"| overhead-only: wall per update, old vs new compiled (ms) | {1000 * wo:.0f} | {1000 * wc:.0f} | "
              f"{wo / wc:.2f}x |")
        print(f"| overhead-only: wall per update, new eager vs new compiled (ms) | {1000 * we:.0f} | {1000 * wc:.0f} | "
              f"{we / wc:.2f}x |")
    if smollm:
        old, new32, new, shared = smollm  # old fp32; new fp32; new with dtype "auto" (the table's "new"); shared fp32
        for i in range(len(old["walls"])):
            print(f"| SmolLM2-135M: update {i + 1} wall (s) | {old['walls'][i]:.1f} | {new['walls'][i]:.1f} | "
                  f"{old['walls'][i] / new['walls'][i]:.2f}x |")
            print(f"| SmolLM2-135M: update {i + 1} wall, new path in fp32 (s) | {old['walls'][i]:.1f} | "
                  f"{new32['walls'][i]:.1f} | {old['walls'][i] / new32['walls'][i]:.2f}x |")
            print(f"| SmolLM2-135M: update {i + 1} wall, new path in fp32, value_head shared (s) | "
                  f"{old['walls'][i]:.1f} | {shared['walls'][i]:.1f} | {old['walls'][i] / shared['walls'][i]:.2f}x |")
            o, n = old[f"hwm_after_update_{i + 1}_mb"], new[f"hwm_after_update_{i + 1}_mb"]
            print(f"| SmolLM2-135M: peak RSS during update {i + 1} (MB) | {o:.0f} | {n:.0f} | new = {n / o:.2f}x old |")
            n = shared[f"hwm_after_update_{i + 1}_mb"]
            print(f"| SmolLM2-135M: peak RSS during update {i + 1}, fp32, value_head shared (MB) | {o:.0f} | {n:.0f} | "
                  f"new = {n / o:.2f}x old |")
        print(f"| SmolLM2-135M: weights | {old['weights_dtype']} | {new['weights_dtype']} | |")
        print(f"| SmolLM2-135M: peak RSS while loading the models (MB) | {old['peak_rss_mb']:.0f} | {new['peak_rss_mb']:.0f} | "
              f"new = {new['peak_rss_mb'] / old['peak_rss_mb']:.2f}x old |")

if __name__ == "__main__":
    main()
