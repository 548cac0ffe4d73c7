#!/usr/bin/env bash
# GPU decode suite for a lent device (no network needed: random-weight model from a config).
#
#   bash bench/gpu_suite.sh                # 64x256 and 1x128: generate default, generate static+compile,
#                                          # rlhf decoder eager and static+compiled (CUDA graphs)
#   PY=.venv/bin/python bash bench/gpu_suite.sh --shapes 64x256
#
# Prints one JSON line per case as soon as it ends (first-call/compile seconds apart, CUDA-synchronised
# best-of-2 wall, tokens/s, ms/step, peak GB), then ours_static / generate and ours_static / generate_static.
# Targets (issue 15): >= 3x generate's static cache + compile at 64x256, >= 2x at 1x128.
# Budget: about 4-6 minutes of device time (four compiles of a 32-layer step); the outer timeout keeps
# it inside 8 minutes.
#
# The PPO update, eager vs compile_update (CUDA graphs), beside TRL 1.12's PPOTrainer (a second run, about
# 6-8 minutes; carry a trl==1.12.0 interpreter or pass --skip-trl):
#   python3 bench/ppo_vs_trl112.py --ours lora,lora-compiled --updates 4 --base <config+tokenizer dir>
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
"$PY" - <<'PYEOF'
import torch, transformers
print({"cuda": torch.cuda.is_available(), "torch": torch.__version__, "transformers": transformers.__version__})
assert torch.cuda.is_available(), "no CUDA device: use `python3 bench/gpu_decode.py --smoke` on a CPU"
PYEOF
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout "${SUITE_TIMEOUT:-460}" "$PY" bench/gpu_decode.py "$@"
