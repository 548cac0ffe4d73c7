"""A round's effective settings: every default of each stage, and the check that runs before a round starts.

The stage sections map onto rlhf's run configs (rlhf.config, torch-free): `sft` → SFTRunConfig,
`reward` → RewardRunConfig, `policy` → PPOConfig, DPORunConfig, RLOOConfig or GRPOConfig (by the round's
method). Each
section shows every field an admin may set, with its default; the fields the worker decides (paths:
`output_dir`, `model`, `reward_model`, …) and the ones PPO ignores are left out. The studio adds a
few keys of its own (`min_rank_gap` of reward and DPO runs, see labelapp.services.runs;
`sft.include_pending`; the `sample` and `evaluation` sections the executors read; `gate`, the
promotion gate).

`effective_settings(params, method)` merges what was given over the defaults and checks all of it:
an unknown key is refused with its path (`reward.lerning_rate`, with the nearest known name), a bad
value with the field named (`sft.learning_rate must be a number greater than 0`). The round stores
the merged result, so `Round.params` is exactly what its runs are given.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from django.core.exceptions import ValidationError

from rlhf.config import (
    QUANTIZE_METHODS,
    DPORunConfig,
    GRPOConfig,
    PPOConfig,
    RewardRunConfig,
    RLOOConfig,
    SFTRunConfig,
    check_dpo_config,
    check_peft,
    check_policy_config,
    check_reward_config,
)

POLICY_CONFIGS = {"ppo": PPOConfig, "dpo": DPORunConfig, "rloo": RLOOConfig, "grpo": GRPOConfig}

# Where the studio's default differs from rlhf's, for every config class that has the field: LoRA runs keep
# their adapter only (MBs, not a full copy of the model; docs/OPERATIONS.md "Disk use"); reward runs start their
# score head from a linear probe (LP-FT, 4.5-9 points of held-out accuracy on real rankings: docs/QUALITY.md
# "Reward models that start from the probe"). The worker applies the same (workers.executors.make_config).
STUDIO_DEFAULTS = {"merge": False, "head_init": "probe"}

# Decided by the worker for every run (paths and the data it is given), never by the round.
WORKER_FIELDS = frozenset({"output_dir", "model", "data", "data_format", "resume", "reward_model", "value_model",
                           "ptx_data"})
MAX_PRIORITY = 1000
FEW_DEMONSTRATIONS = 8  # the studio warns when a project has fewer approved demonstrations than this

# The studio's own keys per section: name -> (default, kind, help). kind as in _check_value.
STUDIO_KEYS: dict[str, dict[str, tuple[Any, str, str]]] = {
    "sft": {"include_pending": (False, "bool", ("Also train on demonstrations still pending review (default: "
                                                "approved ones only; rejected ones never)."))},
    "reward": {"min_rank_gap": (1, "Any", "Train on completions at least this many places apart (1 = every pair).")},
    "dpo": {"min_rank_gap": (1, "Any", "Train on completions at least this many places apart (1 = every pair).")},
}
SAMPLE = {  # what workers.executors.run_sample reads
    "max_new_tokens": (64, "int", "Max tokens per sampled completion."),
    "temperature": (1.0, "float", "Sampling temperature."),
    "seed": (None, "int | None", "Seed of the prompt choice and the samples (null: a fresh one per run)."),
    "quantize": (None, "str | None", "'int8': sample from an int8 copy of the policy (CPU workers only; "
                 "docs/RLHF.md); null: the weights as trained."),
}
EVALUATION = {  # what workers.executors.run_evaluate reads
    "prompts": (8, "int", "Held-out (validation) prompts answered by the new policy and its parent."),
    "max_new_tokens": (64, "int", "Max tokens per answer."),
    "temperature": (0.7, "float", "Sampling temperature."),
    "seed": (0, "int", "Sampling seed."),
    "quantize": (None, "str | None", "'int8': answer with int8 copies of both policies (CPU workers only); null: "
                 "the weights as trained."),
}

GATE = {  # the promotion gate (labelapp.services.rounds.gate_verdict): null switches a check off
    "min_reward_win_rate": (0.5, "float | None", ("The new policy becomes current only if the round's reward model "
                                                  "prefers its answers to its parent's on at least this share of "
                                                  "held-out prompts.")),
    "min_human_win_rate": (None, "float | None", "Also require this blind human win-rate over the parent (null: off)."),
    "min_judgments": (8, "int", "With a human check: blind judgments needed before the gate decides."),
    "min_reward_lc_win_rate": (None, "float | None", ("Also require the reward model's length-controlled win-rate "
                                                       "(read at equal answer length, docs/RLHF.md) to reach this "
                                                       "(null: off).")),
    "min_human_lc_win_rate": (None, "float | None", ("Also require the blind human length-controlled win-rate to "
                                                      "reach this once min_judgments are in (null: off).")),
}

# Ranges checked beyond the type (numbers only): name -> (test, "must be …").
AT_LEAST_1 = ("per_device_batch_size", "gradient_accumulation_steps", "max_length", "max_new_tokens",
              "rollout_batch_size", "mini_batch_size", "ppo_epochs", "lora_r", "lora_alpha", "eval_batch_size",
              "ptx_batch_size", "logging_steps", "kl_horizon", "prompts")  # min_rank_gap: runs.check_pair_settings
POSITIVE = ("learning_rate", "num_train_epochs", "temperature", "cliprange", "cliprange_value", "kl_target")
NOT_NEGATIVE = ("save_steps", "max_grad_norm", "vf_coef", "kl_coef", "ptx_coef", "top_k", "seed", "length_penalty")
RANGES: dict[str, tuple] = {
    **{name: (lambda v: v >= 1, "a whole number of at least 1") for name in AT_LEAST_1},
    **{name: (lambda v: v > 0, "a number greater than 0") for name in POSITIVE},
    **{name: (lambda v: v >= 0, "0 or more") for name in NOT_NEGATIVE},
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (use num_train_epochs) or a whole number of at least 1"),
    "save_total_limit": (lambda v: v >= 1, "null (keep all) or a whole number of at least 1"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "eval_fraction": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "top_p": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "gamma": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "lam": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "load_in_bits": (lambda v: v in (4, 8), "4, 8 or null"),
    "min_reward_win_rate": (lambda v: 0 <= v <= 1, "null (off) or a number in [0, 1]"),
    "min_human_win_rate": (lambda v: 0 <= v <= 1, "null (off) or a number in [0, 1]"),
    "min_reward_lc_win_rate": (lambda v: 0 <= v <= 1, "null (off) or a number in [0, 1]"),
    "min_human_lc_win_rate": (lambda v: 0 <= v <= 1, "null (off) or a number in [0, 1]"),
    "min_judgments": (lambda v: v >= 1, "a whole number of at least 1"),
}


def stage_config(section: str, method: str):
    """The rlhf config class behind a section, or None for the studio's own sections."""
    if section == "policy":
        return POLICY_CONFIGS[method]
    return {"sft": SFTRunConfig, "reward": RewardRunConfig}.get(section)


def _studio_keys(section: str, method: str) -> dict[str, tuple]:
    if section == "policy":
        return STUDIO_KEYS.get(method, {})
    return {"sample": SAMPLE, "evaluation": EVALUATION, "gate": GATE}.get(section, STUDIO_KEYS.get(section, {}))


def section_fields(section: str, method: str) -> dict[str, tuple[Any, str, str]]:
    """Every setting of a section: name -> (default, type, help)."""
    fields: dict[str, tuple] = {}
    cls = stage_config(section, method)
    if cls is not None:
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help", "")
            if f.name in WORKER_FIELDS or help_text.startswith("Ignored"):
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            default = STUDIO_DEFAULTS.get(f.name, default)
            fields[f.name] = (default, str(f.type), help_text)
    fields.update(_studio_keys(section, method))
    return fields


SECTIONS = ("sft", "reward", "policy", "sample", "evaluation", "gate")


def section_defaults(section: str, method: str) -> dict[str, Any]:
    return {name: default for name, (default, _, _) in section_fields(section, method).items()}


def _describe(kind: str) -> str:
    words = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text", "None": "null",
             "list[str]": "a list of texts", "list[int]": "a list of whole numbers"}
    parts = [p.strip() for p in kind.split("|")]
    return " or ".join(words.get(p, "an object" if p.startswith("dict") else p) for p in parts)


def _matches(value, part: str) -> bool:
    if part == "Any":
        return True
    if part == "None":
        return value is None
    if part == "bool":
        return isinstance(value, bool)
    if part == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if part == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if part == "str":
        return isinstance(value, str)
    if part.startswith("dict"):
        return isinstance(value, dict)
    if part.startswith("list[") and part.endswith("]"):
        return isinstance(value, list) and all(_matches(v, part[5:-1]) for v in value)
    return False


def _check_value(path: str, name: str, value, kind: str) -> str | None:
    if not any(_matches(value, part.strip()) for part in kind.split("|")):
        return f"{path} must be {_describe(kind)} (got {value!r})."
    if name == "quantize" and value is not None and value not in QUANTIZE_METHODS:
        return f"{path} must be null or one of {', '.join(QUANTIZE_METHODS)} (got {value!r})."
    rule = RANGES.get(name)
    if rule is not None and value is not None and not isinstance(value, bool) and isinstance(value, (int, float)):
        test, what = rule
        if not test(value):
            return f"{path} must be {what} (got {value!r})."
    return None


def _unknown(path: str, key: str, known) -> str:
    near = difflib.get_close_matches(str(key), list(known), n=1)
    return f"{path}.{key} is not a setting" + (f" (did you mean {path}.{near[0]}?)." if near else ".")


def _cross_checks(section: str, method: str, values: dict) -> list[str]:
    """rlhf's own checks of a whole config (they raise ValueError naming the field)."""
    cls = stage_config(section, method)
    if cls is None:
        return []
    try:
        config = cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})
        kind = {SFTRunConfig: "sft", RewardRunConfig: "reward", DPORunConfig: "dpo"}.get(cls, "ppo")
        check_peft(config, kind, hardware=False)  # the trainer takes the method (the worker checks its hardware)
        if cls is RewardRunConfig:
            check_reward_config(config)
        elif cls is DPORunConfig:
            check_dpo_config(config)
        elif issubclass(cls, PPOConfig):  # PPO, RLOO, GRPO
            if config.rollout_batch_size % config.mini_batch_size:
                raise ValueError(f"mini_batch_size ({config.mini_batch_size}) must divide rollout_batch_size "
                                 f"({config.rollout_batch_size}).")
            check_policy_config(config)
            if config.merged_generation and not config.use_lora:
                raise ValueError("merged_generation needs use_lora (it folds the LoRA adapter into a copy).")
    except (TypeError, ValueError) as exc:
        return [f"{section}: {exc}"]
    return []


def check_section(section: str, method: str, given, errors: list[str]) -> dict:
    """`given` merged over the section's defaults; problems are appended to `errors` with their path."""
    if not isinstance(given, dict):
        errors.append(f"'{section}' must be an object of settings, e.g. {{}} (got {given!r}).")
        return section_defaults(section, method)
    fields = section_fields(section, method)
    values = section_defaults(section, method)
    before = len(errors)
    for key, value in given.items():
        if key not in fields:
            errors.append(_unknown(section, key, fields))
            continue
        problem = _check_value(f"{section}.{key}", key, value, fields[key][1])
        if problem:
            errors.append(problem)
        else:
            values[key] = value
    if len(errors) == before:
        errors.extend(_cross_checks(section, method, values))
    return values


def effective_defaults(method: str = "ppo", project=None) -> dict:
    """Every setting of a round with its default (k: the project's K when a project is given)."""
    from labelapp.services.rounds import DEFAULTS

    top = {k: v for k, v in DEFAULTS.items() if k not in SECTIONS}
    if project is not None and top.get("k") is None:
        top["k"] = project.k
    return {**top, **{section: section_defaults(section, method) for section in SECTIONS}}


def raise_if(errors: list[str]) -> None:
    if errors:
        raise ValidationError(errors)
