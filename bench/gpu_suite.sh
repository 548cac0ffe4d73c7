#!/usr/bin/env bash
# The GPU suite for a lent device (no network there: random-weight models built from a config).
#
# Here, once (needs PyPI and the bundled model; writes .whl/ and .gpu/, both git-ignored via .git/info/exclude):
#   bash bench/gpu_suite.sh prepare
# There (carry .whl and .gpu):
#   bash bench/gpu_suite.sh ppo      # PPO update: TRL 1.12's PPOTrainer, ours LoRA with merged generation
#                                    # with and without compile_update; 360M Llama x 4 roles, batch 32,
#                                    # 128 tokens, 4 epochs, bf16
#   bash bench/gpu_suite.sh more     # TRL 1.12 with fp32 weights (its default dtype) under bf16 autocast,
#                                    # and our RLOO and GRPO (K=4) on the same engine, same settings as ppo
#   bash bench/gpu_suite.sh decode   # decoding 64x256 and 1x128: generate default, generate static + compile,
#                                    # rlhf decoder eager and static + compiled
#   bash bench/gpu_suite.sh train    # SFT (1.7B config, seq 2048: tokens/s and MFU) and reward training (360M,
#                                    # pairs/s) against SFTTrainer / RewardTrainer defaults (bench/rlhf_speed.py)
#   bash bench/gpu_suite.sh all      # ppo, more, decode, train in turn with their full settings (about 25
#                                    # minutes: run one part per call, each fits the 10-minute limit of a call)
#   bash bench/gpu_suite.sh quick    # the 8-minute plan, one call: every part once under one wall-clock
#                                    # budget (SUITE_BUDGET, default 450 s): 2 PPO updates a side (the second
#                                    # timed), the PPO core first (TRL bf16, ours eager, then compiled), then
#                                    # decode, then TRL fp32 / RLOO / GRPO, then SFT and reward training; each
#                                    # part gets at most what is left, a part with under 30 s left is skipped
#                                    # and says so. Nothing is measured twice: read its figures as one draw.
#
# Settings (environment): OURS (our PPO modes, default lora-merged-compiled,lora-merged; see
# bench/ppo_vs_trl112.py --help), MORE_OURS (the more part's, default rloo-merged,grpo-merged), TRL_WEIGHTS
# (the ppo part's TRL sides, default bf16; the more part runs fp32), TRAIN_TIMEOUT (s per training case, default
# 280), UPDATES (default 3: the first is warm-up and compile), SIDE_TIMEOUT
# (s per PPO side, default 300: a compiled side spends minutes compiling its first update on an H200),
# PPO_TIMEOUT (default 560), SHAPES (decode, default 64x256,1x128), DECODE_TIMEOUT (default 300), PY (python3).
# Each side prints as soon as it ends; a side that fails or runs over is reported and the next one runs.
# Timings are wall clock (the PPO sides: between progress callbacks, whose metrics are read on the host, so
# synchronised; decode: between torch.cuda.synchronize() calls); first updates / first calls (compile,
# CUDA-graph capture) are reported apart. Targets (issue 15): PPO >= 3x TRL 1.12's episodes/s at <= 0.5x peak
# memory; decoding >= 3x generate's static cache + compile at 64x256, >= 2x at 1x128; SFT >= 35% MFU; reward
# training >= 2x RewardTrainer's pairs/s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-python3}"
what="${1:-all}"

if [ "$what" = prepare ]; then
    VPY="${VPY:-.venv/bin/python}"
    dl() { "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"; }
    mkdir -p .whl/old .gpu/base
    # TRL 1.12 (the last release with PPOTrainer) and datasets; the device has the rest. datasets 5.x needs
    # pyarrow >= 24: .whl/old holds a 4.7 set for an older pyarrow there.
    dl -d .whl trl==1.12.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    dl -d .whl/old datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18
    # the train part: our trl (SFTTrainer / RewardTrainer as the studio runs them) and Liger kernels (optional extra)
    mkdir -p .whl/cur
    dl -d .whl/cur "trl==$("$VPY" -c 'import trl; print(trl.__version__)')" liger-kernel==0.8.5
    # the data the train part reads (no network there): the demonstrations and the HH pairs, as in ../shared/data
    data="${SHARED_DATA_DIR:-../shared/data}"
    mkdir -p .gpu/data/dolly_no_robots_animal_topic_subsets .gpu/data/hh_rlhf_test_splits
    cp "$data/dolly_no_robots_animal_topic_subsets/no_robots_subset.csv" .gpu/data/dolly_no_robots_animal_topic_subsets/
    cp "$data/hh_rlhf_test_splits/helpful-base.test.jsonl.gz" .gpu/data/hh_rlhf_test_splits/
    src=$("$VPY" -c "from rlhf.models import convert_bundled_model; print(convert_bundled_model())")
    find "$src" -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} .gpu/base/ \;
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    du -sh .whl .gpu
    exit 0
fi

"$PY" - <<'PYEOF'
import torch, transformers
print({"cuda": torch.cuda.is_available(), "torch": torch.__version__, "transformers": transformers.__version__})
assert torch.cuda.is_available(), "no CUDA device: use `python3 bench/gpu_decode.py --smoke` on a CPU"
PYEOF
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# install_to SITE WHEEL...: the wheels plus the datasets set that fits the device's pyarrow, into SITE only
install_to() {
    local site="$1" set=.whl
    shift
    "$PY" -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" 2>/dev/null || set=.whl/old
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$@" $set/datasets-*.whl $set/dill-*.whl $set/multiprocess-*.whl
}

ppo() {
    local trl=() site=/tmp/site-trl112
    if [ -d .whl ]; then  # the baseline's own packages, on its own path: ours never imports them
        install_to "$site" .whl/trl-*.whl
        mkdir -p /tmp/trl112
        printf '#!/bin/sh\nPYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$site" "$("$PY" -c "import sys; print(sys.executable)")" \
            > /tmp/trl112/python
        chmod +x /tmp/trl112/python
        trl=(--trl-python /tmp/trl112/python --trl-first)
    else
        trl=(--skip-trl)
    fi
    timeout "${PPO_TIMEOUT:-560}" "$PY" bench/ppo_vs_trl112.py --base "${BASE:-.gpu/base}" "${trl[@]}" \
        --ours "${OURS:-lora-merged-compiled,lora-merged}" --trl-weights "${TRL_WEIGHTS:-bf16}" \
        --updates "${UPDATES:-3}" --side-timeout "${SIDE_TIMEOUT:-300}"
}

train() {
    local site=/tmp/site-cur
    if [ -d .whl/cur ]; then  # our trl, datasets and Liger on a path of their own
        install_to "$site" .whl/cur/*.whl
    fi
    local case
    for case in sft reward; do
        PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" SHARED_DATA_DIR="${SHARED_DATA_DIR:-.gpu/data}" \
            timeout "${TRAIN_TIMEOUT:-280}" "$PY" bench/rlhf_speed.py "$case" --preset gpu --base "${BASE:-.gpu/base}" \
            || echo "train: $case ended with $?"
    done
}

more() {
    OURS="${MORE_OURS:-rloo-merged,grpo-merged}" TRL_WEIGHTS=fp32 ppo
}

decode() {
    timeout "${DECODE_TIMEOUT:-300}" "$PY" bench/gpu_decode.py --shapes "${SHAPES:-64x256,1x128}"
}

# quick: the 8-minute plan. left = seconds of SUITE_BUDGET still unspent; part NAME CAP FUNCTION runs FUNCTION
# with its timeout variables set to min(CAP, left), or skips it when under 30 s are left.
quick() {
    local budget="${SUITE_BUDGET:-450}" start=$SECONDS
    part() {
        local name="$1" cap="$2" left
        shift 2
        left=$(( budget - (SECONDS - start) ))
        [ "$left" -lt "$cap" ] && cap=$left
        if [ "$cap" -lt 30 ]; then
            echo "quick: $name skipped, $left s of the ${budget} s budget left"
            return 0
        fi
        echo "quick: $name, at most $cap s ($left s left)"
        "$@" "$cap" || echo "quick: $name ended with $?"
    }
    core() { UPDATES=2 OURS="${OURS:-lora-merged,lora-merged-compiled}" TRL_WEIGHTS=bf16 PPO_TIMEOUT="$1" \
             SIDE_TIMEOUT="${SIDE_TIMEOUT:-150}" ppo; }
    dec() { DECODE_TIMEOUT="$1" decode; }
    rest() { UPDATES=2 OURS="${MORE_OURS:-rloo-merged,grpo-merged}" TRL_WEIGHTS=fp32 PPO_TIMEOUT="$1" \
             SIDE_TIMEOUT="${SIDE_TIMEOUT:-60}" ppo; }
    trn() { TRAIN_TIMEOUT=$(( $1 / 2 )) train; }
    part "ppo core" 210 core
    part decode 90 dec
    part "more (trl fp32, rloo, grpo)" 100 rest
    part train 90 trn
    echo "quick: spent $(( SECONDS - start )) s of ${budget} s"
}

case "$what" in
    quick) quick ;;
    ppo) ppo ;;
    more) more ;;
    decode) decode ;;
    train) train ;;
    all) ppo || echo "ppo part ended with $?"
         more || echo "more part ended with $?"
         decode || echo "decode part ended with $?"; train ;;
    *) echo "usage: bash bench/gpu_suite.sh prepare|quick|ppo|more|decode|train|all" >&2; exit 2 ;;
esac
