"""SFT, reward-model and DPO runs on several GPUs: the worker starts them with `accelerate launch`.

By default (``RUN_PROCESSES=1``) a run trains inside the worker's process. With ``RUN_PROCESSES=N``
(``N`` > 1, normally the GPUs of the host) or ``RUN_LAUNCH=accelerate`` the worker instead:

1. writes the run's training records (``rlhf`` JSONL) and its config under ``<output_dir>/launch/``;
2. starts accelerate's launcher through ``GUARD``, in its own process group:
   ``accelerate launch --multi_gpu --num_processes N [RUN_LAUNCH_ARGS] -m rlhf <kind> --config …
   --stop-file … --die-with-parent`` (``--cpu`` instead of ``--multi_gpu`` for one process without CUDA);
3. forwards rank 0's JSON progress lines to the run's progress callback (heartbeat, step, metrics);
   when that callback raises ``Cancelled`` it creates the stop file, which every rank honours at the
   same step (rank 0 decides and broadcasts), so the run checkpoints and exits with status 3;
4. reads ``metadata.json`` back into ``rlhf.contract.Artifacts``; no metadata, or a non-zero exit
   without a "cancelled" one, is an error carrying the last lines of the launched output.

If the worker dies, the kernel kills the launcher (parent-death signal, asked for by ``GUARD``), and
each rank dies with the launcher (``--die-with-parent``): no orphan keeps a GPU busy while the
reconciler resumes the run.
PPO, sampling and evaluation always run in-process (one GPU).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

from django.conf import settings

log = logging.getLogger(__name__)

LAUNCHABLE = {
    "sft": ("rlhf.sft", "train_sft"),
    "reward": ("rlhf.reward", "train_reward"),
    "dpo": ("rlhf.dpo", "train_dpo"),
    # rlhf's own PPO loop (also RLOO and GRPO, by the config's class) is one process: always in the worker's
    "ppo": ("rlhf.ppo", "train"),
}
IN_PROCESS_ONLY = frozenset({"ppo"})
TAIL_LINES = 40


class LaunchFailed(RuntimeError):
    """The launched training exited with an error; the message ends with its last output lines."""


def processes() -> int:
    """Processes a launched run uses, 0 when runs train in the worker's process."""
    mode = settings.RUN_LAUNCH
    if mode == "inprocess" or (mode == "auto" and settings.RUN_PROCESSES <= 1):
        return 0
    return settings.RUN_PROCESSES


def train(kind: str, config, records: Sequence, progress: Callable[[int, int, dict], None]):
    """Train ``kind`` on ``records`` (Demonstrations, PreferencePairs, or prompts for PPO/RLOO/GRPO) in-process
    or launched. The policy-gradient loop has no multi-process mode, so it always runs in the worker's process
    (one GPU), whatever RUN_PROCESSES says."""
    import importlib

    module, function = LAUNCHABLE[kind]
    n = processes()
    if n and kind in IN_PROCESS_ONLY:
        log.info("%s runs in the worker's process (RUN_PROCESSES=%s applies to SFT, reward and DPO runs)", kind, n)
        n = 0
    if n == 0:
        return getattr(importlib.import_module(module), function)(config, list(records), progress=progress)
    return launched(kind, config, records, progress, n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(kind: str, config_path: Path, stop_file: Path, n: int) -> list[str]:
    import torch

    if torch.cuda.is_available():
        placement = ["--multi_gpu"] if n > 1 else []
    elif n > 1:
        raise LaunchFailed(f"RUN_PROCESSES={n} needs GPUs and this host has none; use 1 on CPU hosts.")
    else:
        placement = ["--cpu"]
    return [
        sys.executable, "-c", GUARD.format(module="accelerate.commands.launch"), *placement, "--num_processes", str(n),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), *shlex.split(settings.RUN_LAUNCH_ARGS),
        "-m", "rlhf", kind, "--config", str(config_path), "--stop-file", str(stop_file), "--die-with-parent",
    ]


# The launcher asks for the parent-death signal itself, first thing, then runs accelerate's launcher as
# `python -m` would (no preexec_fn: forking with a callback is unsafe while the heartbeat thread runs).
GUARD = ("import runpy, sys; from rlhf.__main__ import die_with_parent; die_with_parent(); "
         "sys.argv = ['{module}', *sys.argv[1:]]; runpy.run_module('{module}', run_name='__main__', alter_sys=True)")


def launched(kind: str, config, records: Sequence, progress: Callable[[int, int, dict], None], n: int):
    from rlhf import Cancelled
    from rlhf.contract import METADATA_FILE, Artifacts, read_metadata
    from rlhf.data import save_jsonl

    out = Path(config.output_dir)
    launch_dir = out / "launch"
    launch_dir.mkdir(parents=True, exist_ok=True)
    data_path, config_path, stop_file = launch_dir / "data.jsonl", launch_dir / "config.json", launch_dir / "stop"
    save_jsonl(records, data_path)
    stop_file.unlink(missing_ok=True)
    metadata = out / METADATA_FILE
    metadata.unlink(missing_ok=True)  # only this launch's metadata counts
    launched_config = dataclasses.replace(config, data=str(data_path), data_format="jsonl")
    config_path.write_text(json.dumps(dataclasses.asdict(launched_config), indent=2, default=str))
    command = launch_command(kind, config_path, stop_file, n)
    log.info("launching %s run: %s", kind, shlex.join(command))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        for line in proc.stdout:
            record = _json_line(line)
            if record is None or "step" not in record:
                tail.append(line.rstrip())
                continue
            step, total = int(record.pop("step")), int(record.pop("total"))
            try:
                progress(step, total, record)
            except Cancelled:
                stop_file.touch()  # every rank stops after the same step and checkpoints
        code = proc.wait()
    except BaseException:  # the worker is going down (or the run was lost): take the ranks with it
        _kill_group(proc)
        raise
    # A cancelled rank exits with 3, which accelerate's launcher reports as its own failure (1): the
    # metadata this launch wrote (the old file was removed above) says what happened.
    meta = read_metadata(out) if metadata.is_file() else {}
    if not meta or (code != 0 and meta["status"] != "cancelled"):
        lines = "\n".join(tail)
        raise LaunchFailed(f"accelerate launch of the {kind} run exited with status {code}; its last lines:\n{lines}")
    return Artifacts(str(out), meta.get("model_dir"), str(metadata), meta["status"],
                     meta.get("metrics", {}), int(meta.get("metrics", {}).get("global_step") or 0))


def _json_line(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
