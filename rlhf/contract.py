"""The trainer contract shared by SFT, the reward model, DPO (and PPO later).

* A config dataclass (``TrainerConfig`` and subclasses, all in the torch-free ``rlhf.config``), every
  field with a help string, loaded from JSON or YAML with ``load_config(cls, path_or_dict)``; unknown
  keys are an error.
* A progress callback ``progress(step: int, total: int, metrics: dict) -> None``. It is called after
  every optimizer step (``metrics`` holds the latest logged values, namespaced like ``loss/train``).
  To cancel, the callback **raises** ``rlhf.Cancelled``: the trainer saves a checkpoint, stops
  cleanly, writes the artifacts with ``status: "cancelled"`` and returns (it does not re-raise).
* Checkpoints every ``save_steps`` optimizer steps in ``output_dir/checkpoint-<step>/`` (weights,
  optimizer, scheduler, RNG state); ``resume=True`` continues from the last one.
* Artifacts: ``output_dir/model/`` (merged safetensors checkpoint, or a LoRA adapter when
  ``merge=False``) and ``output_dir/metadata.json`` (base model, data hash, config, metrics, status).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

# The configs live in rlhf.config; these names stay importable from here.
from .config import TrainerConfig, _help, config_help, config_to_dict, load_config  # noqa: F401

METADATA_FILE = "metadata.json"
MODEL_SUBDIR = "model"


class Cancelled(Exception):
    """Raise from a progress callback to stop a run cleanly (checkpoint saved, status ``cancelled``)."""


class ProgressCallback(Protocol):
    def __call__(self, step: int, total: int, metrics: dict[str, float]) -> None: ...


@dataclass
class Artifacts:
    """What a run leaves behind."""

    output_dir: str
    model_dir: str | None
    metadata_path: str
    status: str  # "succeeded" | "cancelled"
    metrics: dict[str, Any]
    global_step: int


# --------------------------------------------------------------------------------------------- data + files
def data_hash(records: Iterable[Any]) -> str:
    """sha256 over the canonical JSON of the records (dataclasses, dicts or a ``datasets.Dataset``)."""
    h = hashlib.sha256()
    for rec in records:
        if dataclasses.is_dataclass(rec):
            # Fields added later with `metadata={"hash_if_set": True}` count only when not at their default,
            # so records that do not use them hash as they always did.
            optional = {f.name: f.default for f in dataclasses.fields(rec) if f.metadata.get("hash_if_set")}
            rec = {k: v for k, v in dataclasses.asdict(rec).items() if k not in optional or v != optional[k]}
        h.update(json.dumps(rec, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The ``checkpoint-<step>`` dir with the highest step that holds a complete trainer state, or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = []
    for p in root.glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        if suffix.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(suffix), p))
    return str(max(found)[1]) if found else None


def write_metadata(output_dir: str | os.PathLike, *, kind: str, base_model: Any, data_hash: str, config: Any,
                   metrics: dict[str, Any], status: str, extra: dict[str, Any] | None = None) -> str:
    """Write ``metadata.json`` atomically and return its path."""
    import torch
    import transformers

    meta = {
        "kind": kind,
        "status": status,
        "base_model": base_model,
        "data_hash": data_hash,
        "config": config_to_dict(config) if dataclasses.is_dataclass(config) else config,
        "metrics": metrics,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, **_optional_versions()},
        **(extra or {}),
    }
    path = Path(output_dir) / METADATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, path)
    return str(path)


def read_metadata(output_dir: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(output_dir) / METADATA_FILE).read_text())


def _optional_versions() -> dict[str, str]:
    out = {}
    for name in ("trl", "peft", "accelerate", "datasets"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


# --------------------------------------------------------------------------------------- progress callback
def rename_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """Namespace HF/TRL log keys: ``loss`` -> ``loss/train``, ``eval_loss`` -> ``loss/eval``, others kept."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)):
            continue
        if key == "loss":
            key = "loss/train"
        elif key.startswith("eval_"):
            key = f"eval/{key[5:]}"
        elif key == "learning_rate":
            key = "train/learning_rate"
        out[key] = float(value)
    return out


def make_hf_callback(progress: Callable[[int, int, dict], None] | None):
    """A ``transformers.TrainerCallback`` that forwards steps to ``progress`` and turns ``Cancelled`` into a stop."""
    from transformers import TrainerCallback

    class _Bridge(TrainerCallback):
        def __init__(self):
            self.cancelled = False
            self.latest: dict[str, float] = {}
            self._t0 = None
            self._step0 = 0
            self._reported = -1

        def on_train_begin(self, args, state, control, **kwargs):
            self._t0, self._step0 = time.time(), state.global_step
            self._reported = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.latest.update(rename_metrics(logs or {}))
            self._report(state, control)

        def on_step_end(self, args, state, control, **kwargs):
            if not control.should_log:  # otherwise on_log reports this step with fresh metrics
                self._report(state, control)

        def _report(self, state, control):
            if progress is None or self.cancelled or state.global_step <= self._reported:
                return
            self._reported = state.global_step
            elapsed = max(time.time() - (self._t0 or time.time()), 1e-9)
            metrics = dict(self.latest, **{"perf/steps_per_s": (state.global_step - self._step0) / elapsed})
            try:
                progress(state.global_step, state.max_steps, metrics)
            except Cancelled:
                self.cancelled = True
                control.should_save = True  # the Trainer saves right after on_step_end/on_log, then stops
                control.should_training_stop = True

    return _Bridge()


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
