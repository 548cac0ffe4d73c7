"""Command line: ``python -m rlhf <sample|sft|reward|dpo|ppo|rloo|grpo> --config FILE.json|yaml [--set key=value ...]``.

Prints one JSON line per progress report and a final JSON summary; exit status 0 on success,
3 when cancelled (Ctrl-C, or ``--stop-file`` appearing, is turned into a clean cancel after the
current step).

Under ``accelerate launch`` (several processes) only rank 0 prints, and the stop decision is rank 0's,
broadcast to every rank after each step so that all of them stop at the same step. With
``--die-with-parent`` (set by the studio's worker) a process is killed when its parent dies, so a
killed worker leaves no training behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import asdict

from .contract import Cancelled, config_help, load_config

COMMANDS = {
    "sample": ("rlhf.sampling", "SamplingConfig", "run_sampling"),
    "sft": ("rlhf.sft", "SFTRunConfig", "train_sft"),
    "reward": ("rlhf.reward", "RewardRunConfig", "train_reward"),
    "dpo": ("rlhf.dpo", "DPORunConfig", "train_dpo"),
    "ppo": ("rlhf.ppo", "PPOConfig", "train"),  # its fields and example: docs/PPO.md
    "rloo": ("rlhf.ppo", "RLOOConfig", "train"),  # RLOO and GRPO: docs/RLHF.md (Policy methods)
    "grpo": ("rlhf.ppo", "GRPOConfig", "train"),
}


def command_config_class(command: str):
    import importlib

    module, cls, _ = COMMANDS[command]
    return getattr(importlib.import_module(module), cls)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: ask the kernel to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the call
        os.kill(os.getpid(), sig)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def agreed(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a collective call when torch.distributed runs several processes)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return flag
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--config", help="JSON or YAML config file (see docs/RLHF.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (value parsed as JSON when possible)")
    parser.add_argument("--help-config", action="store_true", help="list the config fields and exit")
    parser.add_argument("--stop-file", help="cancel cleanly after the step at which this file exists")
    parser.add_argument("--die-with-parent", action="store_true", help="exit when the parent process dies (Linux)")
    args = parser.parse_args(argv)
    if args.die_with_parent:
        die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import importlib

    module_name, cls_name, fn_name = COMMANDS[args.command]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    if args.help_config:
        for name, text in config_help(cls).items():
            print(f"{name:28s} {text}")
        return 0
    raw = {}
    if args.config:
        raw = asdict(load_config(cls, args.config))
    for item in args.set:
        key, _, value = item.partition("=")
        raw[key] = _parse_value(value)
    config = load_config(cls, raw)

    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    main_process = rank() == 0

    def progress(step: int, total: int, metrics: dict) -> None:
        if main_process:
            print(json.dumps({"step": step, "total": total, **metrics}, default=str), flush=True)
        stop = interrupted["flag"] or bool(args.stop_file and os.path.exists(args.stop_file))
        if agreed(stop):
            raise Cancelled("interrupted" if interrupted["flag"] else "stop file")

    signal.signal(signal.SIGINT, on_sigint)
    result = getattr(module, fn_name)(config, progress=progress)
    if args.command == "sample":
        if main_process:
            print(json.dumps({"status": "succeeded", "samples": len(result), "output_dir": config.output_dir}))
        return 0
    if main_process:
        held_out = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}  # e.g. the reward model's
        print(json.dumps({"status": result.status, "output_dir": result.output_dir, "model_dir": result.model_dir,
                          "global_step": result.global_step, **held_out}, default=str))
    return 0 if result.status == "succeeded" else 3


if __name__ == "__main__":
    sys.exit(main())
