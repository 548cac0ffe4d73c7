"""Per-stage wall of one PPO update on bench/engine_counts.py's narrow 32-layer model, old path vs new,
alternating old/new twice in one process (the first pass of each is a warm-up; the second is printed):

    flock /work/.heavy.lock nice env OMP_NUM_THREADS=2 timeout 300 .venv/bin/python bench/engine_stages.py
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import engine_counts as ec  # noqa: E402

from rlhf.models import convert_bundled_model, load_tokenizer  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    tok = load_tokenizer(str(convert_bundled_model()))
    t = tempfile.mkdtemp()
    ec.narrow_360m(tok).save_pretrained(t + "/p")
    tok.save_pretrained(t + "/p")
    ec.narrow_360m(tok, True).save_pretrained(t + "/r")
    tok.save_pretrained(t + "/r")
    prompts = [[{"role": "user", "content": p}] for p in ec.PROMPTS]
    for path in ("old", "new", "old", "new"):
        m = __import__(f"rlhf.{'ppo' if path == 'new' else 'ppo_legacy'}", fromlist=["train"])
        m.generate_ids = ec.fake_generate_ids(32)
        cfg = m.PPOConfig(output_dir=t + "/o", model=t + "/p", reward_model=t + "/r", device="cpu", max_steps=3,
                          dtype="float32",
                          rollout_batch_size=8, mini_batch_size=4, ppo_epochs=2, max_new_tokens=32,
                          per_device_batch_size=8, save_steps=0, seed=0, lora_r=16, learning_rate=1e-5)
        models = m.build_models(cfg)
        params = list(m.trainable_parameters(models).values())
        opt = m.MasterAdamW(params, lr=1e-5) if path == "new" else torch.optim.AdamW(params, lr=1e-5, eps=1e-5)
        for _ in range(2):
            a = time.perf_counter()
            ro = m.collect_rollout(models, prompts, cfg, None)
            b = time.perf_counter()
            ro = m.compute_advantages(ro, 0.05, cfg)
            c = time.perf_counter()
            m.ppo_update(models, ro, opt, cfg, params, torch.Generator().manual_seed(0))
            d = time.perf_counter()
        print(f"{path}: rollout scoring {1000 * (b - a):.0f} ms, advantages {1000 * (c - b):.0f} ms, "
              f"epochs {1000 * (d - c):.0f} ms", flush=True)


if __name__ == "__main__":
    main()
