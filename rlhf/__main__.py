"""Command line: ``python -m rlhf <sample|sft|reward|dpo> --config FILE.json|yaml [--set key=value ...]``.

Prints one JSON line per progress report and a final JSON summary; exit status 0 on success,
3 when cancelled (Ctrl-C is turned into a clean cancel after the current step).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict

from .contract import Cancelled, config_help, load_config

COMMANDS = {
    "sample": ("rlhf.sampling", "SamplingConfig", "run_sampling"),
    "sft": ("rlhf.sft", "SFTRunConfig", "train_sft"),
    "reward": ("rlhf.reward", "RewardRunConfig", "train_reward"),
    "dpo": ("rlhf.dpo", "DPORunConfig", "train_dpo"),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--config", help="JSON or YAML config file (see docs/RLHF.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field (value parsed as JSON when possible)")
    parser.add_argument("--help-config", action="store_true", help="list the config fields and exit")
    args = parser.parse_args(argv)
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

    def progress(step: int, total: int, metrics: dict) -> None:
        print(json.dumps({"step": step, "total": total, **metrics}), flush=True)
        if interrupted["flag"]:
            raise Cancelled("interrupted")

    signal.signal(signal.SIGINT, on_sigint)
    result = getattr(module, fn_name)(config, progress=progress)
    if args.command == "sample":
        print(json.dumps({"status": "succeeded", "samples": len(result), "output_dir": config.output_dir}))
        return 0
    print(json.dumps({"status": result.status, "output_dir": result.output_dir, "model_dir": result.model_dir,
                      "global_step": result.global_step}, default=str))
    return 0 if result.status == "succeeded" else 3


if __name__ == "__main__":
    sys.exit(main())
