"""Every run configuration of rlhf, in one torch-free module.

The config dataclasses of the trainers (``SFTRunConfig``, ``RewardRunConfig``, ``DPORunConfig``,
``PPOConfig``) and of sampling (``SamplingConfig``), every field with a help string, and
``load_config(cls, path_or_dict)`` (JSON or YAML; unknown keys are an error). Importing this module
loads neither torch nor transformers, so the studio can read defaults and check settings before a
run starts; the modules that train (``rlhf.sft``, ``rlhf.reward``, ``rlhf.dpo``, ``rlhf.ppo``,
``rlhf.sampling``) import their config from here and keep the old names importable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


def _help(text: str, default: Any = None, factory: Any = dataclasses.MISSING):
    """A dataclass field with a help string (default None unless given)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


THROUGHPUT_MODES = ("auto", "off")


@dataclass
class TrainerConfig:
    """Fields every trainer shares."""

    output_dir: str = _help("Directory for checkpoints, the final model and metadata.json.", "runs/out")
    model: str | None = _help("Base model: null/'bundled' (SmolLM2-135M-Instruct), a local checkpoint dir, or a hub id.")
    data: str | None = _help("Training data file (CLI only; workers pass records directly).")
    data_format: str = _help("Format of `data` (see docs/RLHF.md: jsonl, dolly, no_robots, hh_rlhf, oasst, ...).", "jsonl")
    seed: int = _help("Seed for python, numpy, torch and data shuffling.", 42)
    max_steps: int = _help("Optimizer steps; -1 means num_train_epochs epochs.", -1)
    num_train_epochs: float = _help("Epochs when max_steps is -1.", 1.0)
    learning_rate: float = _help("Peak learning rate (linear decay).", 1e-4)
    warmup_ratio: float = _help("Fraction of steps for linear warm-up.", 0.0)
    per_device_batch_size: int = _help("Examples (pairs for reward/DPO) per device per micro-batch.", 8)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", 1)
    max_length: int = _help("Max tokens per sequence (reward model: longer pairs are dropped, as in TRL).", 1024)
    save_steps: int = _help("Save a checkpoint every N optimizer steps (0: none; the final model is still saved).", 100)
    save_total_limit: int | None = _help("Keep at most this many checkpoints (null: all).", 2)
    resume: bool = _help("Resume from the last checkpoint in output_dir when there is one.", False)
    logging_steps: int = _help("Log metrics every N steps.", 1)
    device: str = _help("'auto' (CUDA if present, else CPU), 'cpu' or 'cuda[:i]'.", "auto")
    dtype: str = _help("Weight dtype: 'auto' (bf16 on a capable GPU, and for SFT and DPO with LoRA on a CPU with "
                       "native bf16; fp32 otherwise: see throughput), 'float32', 'bfloat16'.", "auto")
    bf16: bool | None = _help("bf16 autocast; null = on when the GPU supports it and for a LoRA reward run on a "
                              "CPU with native bf16 (throughput 'auto'), off otherwise on CPU.")
    gradient_checkpointing: bool = _help("Trade compute for memory (slower; useful for big models on GPU).", False)
    use_lora: bool = _help("Train a LoRA adapter (true) or all weights (false: full fine-tuning).", True)
    lora_r: int = _help("LoRA rank.", 16)
    lora_alpha: int = _help("LoRA alpha.", 32)
    lora_dropout: float = _help("LoRA dropout.", 0.05)
    lora_target_modules: str | list[str] = _help("Modules LoRA wraps ('all-linear' or a list of names).", "all-linear")
    merge: bool = _help("After LoRA training save the merged model (true) or only the adapter (false; the studio's "
                        "default: an adapter on an adapter loads through its chain).", True)
    load_in_bits: int | None = _help("4 or 8: load the base model with bitsandbytes (CUDA only; QLoRA).")
    peft: str | None = _help("Parameter-efficient method: 'lora', 'qlora' (LoRA on a 4-bit base; CUDA + bitsandbytes), "
                             "'ia3', 'prefix_tuning', 'p_tuning', 'prompt_tuning', or 'none' (full fine-tuning). "
                             "null: 'lora' when use_lora is true, else 'none'. Which trainers take which: "
                             "PEFT_SUPPORT and docs/RLHF.md.")
    num_virtual_tokens: int = _help("prefix_tuning, p_tuning, prompt_tuning: virtual tokens learned.", 20)
    prompt_encoder_hidden_size: int = _help("p_tuning: hidden size of the prompt encoder (an MLP).", 128)
    prefix_projection: bool = _help("prefix_tuning: learn the prefix through a two-layer MLP (more parameters, "
                                    "often steadier) instead of directly.", False)
    prompt_tuning_init_text: str | None = _help("prompt_tuning: start the virtual tokens from the embeddings of this "
                                                "text (e.g. 'Answer the question helpfully:'); null: random.")
    optim: str | None = _help("Optimizer name as in transformers TrainingArguments ('adamw_torch', 'adamw_torch_fused'); "
                              "null: 'adamw_torch_fused' for SFT and reward runs on a GPU with throughput 'auto', "
                              "'adamw_torch' otherwise.")
    throughput: str = _help("'auto': SFT and reward runs on a CUDA GPU use the throughput settings TRL leaves off "
                            "(padding-free SFT batches, fused AdamW, Liger kernels when the liger-kernel package is "
                            "installed, bf16 weights without autocast for adapter SFT, fp32 master weights with bf16 "
                            "autocast for full fine-tuning); 'off': TRL's defaults. CPU runs are the same either way. "
                            "metadata.json's `throughput` says what was active; a setting given explicitly wins.",
                            "auto")
    liger: bool | None = _help("Liger kernels (needs a CUDA GPU and the optional liger-kernel package); null: on "
                               "with throughput 'auto' on a GPU when the package is installed.")
    extra_args: dict[str, Any] = _help("Extra keyword arguments for the TRL config (advanced).", factory=dict)

    def __post_init__(self):
        if self.throughput not in THROUGHPUT_MODES:
            raise ValueError(f"throughput must be one of {list(THROUGHPUT_MODES)} (got {self.throughput!r}).")
        if self.peft is not None:  # `peft` names the method; `use_lora` follows it (older code reads use_lora)
            if self.peft not in PEFT_METHODS:
                raise ValueError(f"peft must be one of {list(PEFT_METHODS)} or null (got {self.peft!r}).")
            self.use_lora = self.peft in ("lora", "qlora")
            if self.peft == "qlora" and self.load_in_bits is None:
                self.load_in_bits = 4  # QLoRA is LoRA on a 4-bit base


# --------------------------------------------------------------------------------------- PEFT
PEFT_METHODS = ("none", "lora", "qlora", "ia3", "prefix_tuning", "p_tuning", "prompt_tuning")
PROMPT_LEARNING = ("prefix_tuning", "p_tuning", "prompt_tuning")  # virtual tokens; nothing to merge
MERGEABLE = ("lora", "qlora", "ia3")  # folded into the base weights by merge_and_unload

_PREFIX_RM = ("peft's prefix-tuning needs a model that takes past key values; a sequence-classification reward "
              "model does not (peft refuses it when the model loads)")
_PROMPT_RM = ("peft's prompt-learning methods feed the sequence classifier embeddings instead of token ids, so it "
              "reads the score at the last position, which is padding for the shorter answers of a right-padded "
              "batch: their scores would change with what they are batched with")
# trainer kind -> method -> why it is refused (methods not listed are supported)
PEFT_UNSUPPORTED: dict[str, dict[str, str]] = {
    "sft": {},
    "dpo": {},
    "reward": {"prefix_tuning": _PREFIX_RM, "p_tuning": _PROMPT_RM, "prompt_tuning": _PROMPT_RM},
    "ppo": {m: "rlhf's PPO trains LoRA adapters or all weights (its value model shares the LoRA machinery)"
            for m in ("ia3", "prefix_tuning", "p_tuning", "prompt_tuning")},
}
PEFT_SUPPORT = {kind: [m for m in PEFT_METHODS if m not in refused] for kind, refused in PEFT_UNSUPPORTED.items()}


def peft_method(config) -> str:
    """The PEFT method a config trains with: `peft`, or 'lora'/'none' from `use_lora` when `peft` is null."""
    return config.peft if config.peft is not None else ("lora" if config.use_lora else "none")


def check_peft(config, kind: str, *, cuda_available: bool | None = None, hardware: bool = True) -> str:
    """The config's PEFT method, or ValueError (with the reason) when `kind` ('sft', 'reward', 'dpo', 'ppo')
    cannot train with it or this host cannot run it. Torch-free: call it before any model loads;
    `cuda_available` (None: unknown, e.g. in the web process) decides about 4/8-bit loading;
    `hardware=False` checks only that the trainer takes the method."""
    method = peft_method(config)
    why = PEFT_UNSUPPORTED[kind].get(method)
    if why:
        raise ValueError(f"peft {method!r} is not supported for the {kind} trainer: {why}. "
                         f"Supported: {', '.join(PEFT_SUPPORT[kind])}.")
    if not hardware:
        return method
    bits = config.load_in_bits
    if bits not in (None, 4, 8):
        raise ValueError(f"load_in_bits must be 4, 8 or null (got {bits!r}).")
    if method == "qlora" and bits != 4:
        raise ValueError(f"peft 'qlora' loads the base model in 4 bits; load_in_bits {config.load_in_bits} "
                         "contradicts it (leave it null).")
    if bits and method == "none":
        raise ValueError(f"a {bits}-bit base model cannot be fully fine-tuned (its weights are frozen integers); "
                         "train an adapter (peft 'lora' or 'qlora').")
    if bits and (str(config.device).startswith("cpu") or cuda_available is False):
        what = "QLoRA (peft 'qlora')" if method == "qlora" else f"{bits}-bit loading (load_in_bits)"
        raise ValueError(f"{what} needs a CUDA GPU and the bitsandbytes package; this run is on the CPU. "
                         "Use peft 'lora' (same adapter, full-precision base) on the CPU.")
    if method in PROMPT_LEARNING and config.num_virtual_tokens < 1:
        raise ValueError(f"num_virtual_tokens must be at least 1 (got {config.num_virtual_tokens}).")
    if method == "p_tuning" and config.prompt_encoder_hidden_size < 1:
        raise ValueError(f"prompt_encoder_hidden_size must be at least 1 (got {config.prompt_encoder_hidden_size}).")
    return method


def config_to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_config(cls, source: str | os.PathLike | dict[str, Any]):
    """Build a config dataclass from a dict or a .json/.yaml file; unknown keys raise ``ValueError``."""
    if isinstance(source, dict):
        raw = dict(source)
    else:
        text = Path(source).read_text()
        if str(source).endswith((".yaml", ".yml")):
            import yaml  # optional dependency

            raw = yaml.safe_load(text) or {}
        else:
            raw = json.loads(text)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**raw)


def config_help(cls) -> dict[str, str]:
    """``{field: help}`` for docs and the CLI."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------------------------ SFT
@dataclass
class SFTRunConfig(TrainerConfig):
    output_dir: str = _help("Directory for checkpoints, the final model and metadata.json.", "runs/sft")
    learning_rate: float = _help("Peak learning rate (linear decay).", 2e-4)
    completion_only_loss: bool = _help("Loss on the assistant's completion tokens only.", True)
    packing: bool = _help("Pack several examples into one max_length sequence (BFD packing).", False)
    padding_free: bool | None = _help("Padding-free batches: each micro-batch concatenated into one row with "
                                      "position ids, so no padding is computed (the same examples per optimizer "
                                      "step as padded batches; `packing` is padding-free already). null: on with "
                                      "throughput 'auto' on a GPU (not with prompt-learning methods), off otherwise.")


# --------------------------------------------------------------------------------- reward model
@dataclass
class RewardRunConfig(TrainerConfig):
    output_dir: str = _help("Directory for checkpoints, the final model and metadata.json.", "runs/reward")
    model: str | None = _help("Initial weights, normally the SFT checkpoint (null/'bundled': SmolLM2-135M-Instruct).")
    learning_rate: float = _help("Peak learning rate (linear decay).", 1e-4)
    eval_fraction: float = _help("Held-out fraction of pairs when no eval pairs are given.", 0.1)
    eval_batch_size: int = _help("Sequences per forward pass when scoring held-out pairs.", 16)
    margin_scale: float | None = _help("Margin = scale x (score_chosen - score_rejected) from 1-7 scores (rankings).")
    center_rewards_coefficient: float | None = _help(
        "Weight of TRL's centring penalty, mean((r_chosen + r_rejected)²) over the pairs of a batch; the same "
        "term in every reward trainer.")
    lora_layers: list[int] | None = _help("Only these decoder-layer indices get LoRA (null: all); top layers = cheap.")
    group_by_length: bool = _help("Batch pairs of similar token length together (batches in random order): far "
                                  "less padding (one fixed order, reused if there are several epochs).", True)
    group_by_prompt: bool = _help("Put the pairs of one prompt next to each other in the epoch order (prompts in "
                                  "length-grouped random order) and score each distinct conversation of a batch "
                                  "once: a ranking of K answers gives K(K-1)/2 pairs but only K answers, so a batch "
                                  "holding a prompt's pairs needs up to (K-1) x overlap fewer forward passes "
                                  "(InstructGPT trains a prompt's comparisons as one batch element). The loss per "
                                  "pair is unchanged; only the order of the pairs is.", False)
    length_control: str = _help("'none': plain Bradley-Terry. 'odin': ODIN (Chen et al. 2024): a quality head and a "
                                "length head trained together, the quality head kept as the reward. 'poe': the "
                                "reward trained beside a length-only expert w*log(1+characters), which is dropped. "
                                "'balance': the pairs reweighted so that, within bands of length difference, "
                                "chosen-longer and chosen-shorter pairs weigh the same (see docs/RLHF.md, Length "
                                "bias).", "none")
    length_balance_bins: int = _help("'balance': how many equal-count bands of |log length ratio| the pairs are "
                                     "balanced within (1: one balance over all pairs).", 4)
    length_calibration: str = _help("Post-hoc length calibration after training: 'none', 'chars' or 'log_chars'. "
                                    "The reward becomes r - beta * L (L: the answer's characters, or log(1 + "
                                    "characters)), beta fitted on training pairs so that the calibrated reward "
                                    "prefers the longer answer no more often than their labels do; stored in the "
                                    "model (config.json `rlhf_length_calibration`) and applied wherever it scores "
                                    "(see docs/RLHF.md, Length bias).", "none")
    length_calibration_pairs: int = _help("Training pairs scored to fit the length calibration (a random sample; "
                                          "all of them when fewer).", 256)
    odin_length_weight: float = _help("ODIN: weight of the length-correlation loss |corr(quality, length)| + "
                                      "1 - corr(length head, length), over each batch's answers.", 1.0)
    odin_orthogonal_weight: float = _help("ODIN: weight of |cos| between the quality and the length head's weights.",
                                          1.0)
    label_weights: str = _help("How the pairs' reliability reaches the loss: 'none' (every pair counts the same), "
                               "'weight' (each pair's term scaled by its `weight`, a weighted mean), 'soft' (each "
                               "pair's `confidence` as a soft label: -[c log s(d) + (1-c) log s(-d)]). See "
                               "rlhf.weighting and docs/QUALITY.md.", "none")
    min_confidence: float = _help("Drop pairs whose `confidence` is below this (0 keeps every pair; pairs without a "
                                  "confidence are kept).", 0.0)
    head_init: str = _help("How the score head starts. 'random': as transformers initialises a fresh head. 'probe': "
                           "linear probing, then fine-tuning (LP-FT, Kumar et al. 2022): every training answer is "
                           "scored once by the model as loaded, a Bradley-Terry head is fitted to convergence on "
                           "the pairs' frozen features (rlhf.active.standardised_probe) and training starts from "
                           "it. Costs one forward pass over the distinct answers; see docs/QUALITY.md.", "random")


HEAD_INITS = ("random", "probe")


LENGTH_CONTROLS = ("none", "odin", "poe", "balance")
LENGTH_CALIBRATIONS = ("none", "chars", "log_chars")  # "none" or an rlhf.length.CALIBRATION_SCALES scale


LABEL_WEIGHTS = ("none", "weight", "soft")


def check_label_weights(config) -> None:
    if config.label_weights not in LABEL_WEIGHTS:
        raise ValueError(f"label_weights must be one of {list(LABEL_WEIGHTS)} (got {config.label_weights!r}).")
    if not 0.0 <= config.min_confidence < 1.0:
        raise ValueError(f"min_confidence must lie in [0, 1) (got {config.min_confidence}).")


def check_reward_config(config: RewardRunConfig) -> None:
    """Raise ``ValueError`` for bad settings before any model loads."""
    check_label_weights(config)
    if config.head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {list(HEAD_INITS)} (got {config.head_init!r}).")
    if config.length_control not in LENGTH_CONTROLS:
        raise ValueError(f"length_control must be one of {list(LENGTH_CONTROLS)} (got {config.length_control!r}).")
    if isinstance(config.length_balance_bins, bool) or not isinstance(config.length_balance_bins, int) \
            or config.length_balance_bins < 1:
        raise ValueError(f"length_balance_bins must be a whole number, 1 or more (got {config.length_balance_bins!r}).")
    if config.length_calibration not in LENGTH_CALIBRATIONS:
        raise ValueError(f"length_calibration must be one of {list(LENGTH_CALIBRATIONS)} "
                         f"(got {config.length_calibration!r}).")
    pairs = config.length_calibration_pairs
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2:
        raise ValueError(f"length_calibration_pairs must be a whole number, 2 or more (got {pairs!r}).")
    for name in ("odin_length_weight", "odin_orthogonal_weight"):
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be 0 or more (got {getattr(config, name)}).")


# ------------------------------------------------------------------------------------------ DPO
@dataclass
class DPORunConfig(TrainerConfig):
    output_dir: str = _help("Directory for checkpoints, the final model and metadata.json.", "runs/dpo")
    learning_rate: float = _help("Peak learning rate (linear decay).", 5e-5)
    beta: float = _help("DPO temperature: strength of the implicit KL constraint to the reference.", 0.1)
    loss_type: str = _help("TRL DPO loss ('sigmoid' = DPO, 'ipo', 'hinge', ...).", "sigmoid")
    sft_weight: float = _help("Weight of an added negative log-likelihood term on the chosen answers (RPO, Pang et "
                              "al. 2024); 0 = plain DPO. It keeps the chosen answers likely instead of only "
                              "widening the margin.", 0.0)
    ld_alpha: float | None = _help("LD-DPO (Liu et al. 2024): the weight, in [0, 1], of the log-probabilities of the "
                                   "tokens by which the longer answer of a pair outruns the shorter; lower values "
                                   "stop DPO from learning plain length. null = plain DPO (same as 1).")
    label_weights: str = _help("How the pairs' reliability reaches the loss: 'none' (every pair counts the same), "
                               "'weight' (each pair's term scaled by its `weight`, a weighted mean), 'soft' (each "
                               "pair's `confidence` as a soft label: -[c log s(d) + (1-c) log s(-d)]). See "
                               "rlhf.weighting and docs/QUALITY.md.", "none")
    min_confidence: float = _help("Drop pairs whose `confidence` is below this (0 keeps every pair; pairs without a "
                                  "confidence are kept).", 0.0)


def check_dpo_config(config: DPORunConfig) -> None:
    """Raise ``ValueError`` for settings TRL would only reject after the model has loaded."""
    check_label_weights(config)
    if config.sft_weight < 0:
        raise ValueError(f"sft_weight must be 0 or more (got {config.sft_weight}).")
    if config.sft_weight and config.loss_type == "sft":
        raise ValueError("sft_weight adds an 'sft' term to the DPO loss; with loss_type 'sft' use sft_weight 0.")
    if config.ld_alpha is not None and not 0.0 <= config.ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must lie in [0, 1] (got {config.ld_alpha}).")


# ------------------------------------------------------------------------------------------ PPO
@dataclass
class PPOConfig(TrainerConfig):
    method: ClassVar[str] = "ppo"  # the policy method rlhf.ppo.train runs for this config class
    output_dir: str = _help("Directory for checkpoints, the final policy and metadata.json.", "runs/ppo")
    model: str | None = _help("The SFT policy PPO starts from and stays close to (null/'bundled': SmolLM2-135M-Instruct).")
    data: str | None = _help("Prompt file (CLI only; workers pass prompts directly).")
    data_format: str = _help("'prompts' (see rlhf.data.load_prompts) or 'hh_rlhf' (the prompts of HH-RLHF pairs).", "prompts")
    reward_model: str | None = _help("Reward model checkpoint (sequence classifier, one label). Needed unless train() gets reward_fn.")
    value_model: str | None = _help("Value model initialisation; null = the reward model (or the policy checkpoint with a fresh head when there is none).")
    value_head: str = _help("'separate': a value model of its own (value_model, or the reward model: InstructGPT's "
                            "choice). 'shared': a scalar head on the policy's final hidden states (one trunk for "
                            "policy and value, as TRL's former AutoModelForCausalLMWithValueHead): one trunk pass "
                            "fewer per rollout and one forward + backward fewer per micro-step, and the value "
                            "loss (vf_coef) trains the policy's trunk too.", "separate")
    dtype: str = _help("Weight dtype: 'auto' (bf16 on a capable GPU and on a CPU with native bf16, AVX512-BF16 or "
                       "AMX, with fp32 LoRA adapters and fp32 master weights for full fine-tuning; fp32 otherwise; "
                       "RLHF_CPU_BF16=0/1 overrides the CPU check), 'float32', 'bfloat16'.", "auto")
    max_steps: int = _help("PPO updates (each = one rollout batch); -1 means num_train_epochs passes over the prompts.", -1)
    learning_rate: float = _help("Peak learning rate (linear warm-up, then linear decay to 0).", 1e-5)
    rollout_batch_size: int = _help("Episodes (prompts, one response each) per PPO update: B.", 16)
    mini_batch_size: int = _help("Episodes per optimizer step; B / mini_batch_size optimizer steps per PPO epoch.", 4)
    gradient_accumulation_steps: int = _help("Micro-batches per minibatch (memory knob; mini_batch_size must divide evenly).", 1)
    per_device_batch_size: int = _help("Sequences per no-grad forward pass (rollout log-probs, reference, values, scores).", 16)
    max_length: int = _help("Max prompt tokens after the chat template; longer prompts are skipped.", 512)
    max_new_tokens: int = _help("Max response tokens; responses stop earlier at EOS.", 64)
    temperature: float = _help("Sampling temperature (log-probs use the same temperature).", 1.0)
    top_k: int = _help("Top-k sampling (0 = off). Anything but 0/1.0 makes the ratio approximate.", 0)
    top_p: float = _help("Nucleus sampling (1.0 = off).", 1.0)
    cache_implementation: str | None = _help("Roll out with HF generate() and this cache, e.g. 'static' on GPU (compiled "
                                             "decode step; much faster after a slow first call); null: rlhf's own "
                                             "decoding loop, which drops finished responses from the batch.", None)
    compile_update: bool = _help("Compile the rollout's scoring passes (policy, reference, value, and the reward model when it "
                                 "is scored from token ids) and each training "
                                 "micro-step (policy and value forward, the losses and, through AOTAutograd, their "
                                 "backward) with torch.compile at fixed shapes: queries padded to "
                                 "power-of-two buckets, responses to max_new_tokens. CUDA: replayed as CUDA graphs; CPU: "
                                 "inductor's C++ kernels. Recompiles only for a new prompt bucket; the first update "
                                 "pays the compile (minutes on a CPU). Off: eager.", False)
    merged_generation: bool = _help("LoRA only (an error with full fine-tuning): sample rollouts from a plain copy of the policy with the adapter folded in "
                                    "(W + scale * B @ A, refreshed before every rollout) instead of through the adapter "
                                    "layers: faster decoding for one more copy of the policy's weights.", False)
    ppo_epochs: int = _help("Passes over each rollout batch.", 4)
    cliprange: float = _help("Policy ratio clip epsilon.", 0.2)
    cliprange_value: float = _help("Value clip: new values stay within old +- this.", 0.2)
    vf_coef: float = _help("Weight of the value loss.", 0.1)
    max_grad_norm: float = _help("Gradient norm clip (policy and value parameters together).", 1.0)
    gamma: float = _help("Discount factor for GAE.", 1.0)
    lam: float = _help("GAE lambda.", 0.95)
    whiten_advantages: bool = _help("Normalise advantages to mean 0, std 1 over the batch's valid tokens.", True)
    target_kl: float | None = _help("Stop the PPO epochs of an update once approx_kl exceeds this (null = never).", None)
    kl_coef: float = _help("Initial (or fixed) coefficient beta of the per-token KL penalty.", 0.05)
    adaptive_kl: bool = _help("Adapt beta towards kl_target (Ziegler et al. 2019) instead of keeping it fixed.", False)
    kl_target: float = _help("Target KL per response (nats, summed over tokens) for the adaptive controller.", 6.0)
    kl_horizon: int = _help("Horizon (episodes) of the adaptive KL controller.", 10000)
    missing_eos_penalty: float | None = _help("Subtract this from the score of responses that end without EOS (null = off).", None)
    length_penalty: float = _help("Length penalty (Singhal et al. 2023): subtract this x the answer's length in tokens "
                                  "(EOS not counted) from each score, before normalisation and the RLOO/GRPO "
                                  "baseline; e.g. 0.01 costs 0.64 reward at 64 tokens. 0 = off.", 0.0)
    normalize_reward: bool = _help("Normalise scores with the running mean/std of all scores so far.", False)
    reward_clip: float | None = _help("Clip (normalised) scores to [-reward_clip, reward_clip] (null = off).", None)
    ptx_coef: float = _help("PPO-ptx: weight of the SFT loss on demonstrations mixed into each minibatch (0 = off).", 0.0)
    ptx_data: str | None = _help("Demonstrations for PPO-ptx (CLI; rlhf.data JSONL). Workers pass them directly.", None)
    ptx_batch_size: int = _help("Demonstrations per minibatch for PPO-ptx.", 4)
    lora_dropout: float = _help("Ignored by PPO: dropout is switched off in every model.", 0.0)
    optim: str = _help("Ignored by PPO/RLOO/GRPO: AdamW with eps 1e-5, fused kernels on CUDA and CPU and foreach "
                       "kernels elsewhere; fp32 master weights for parameters that are not fp32.", "adamw_torch")
    throughput: str = _help("Ignored by PPO/RLOO/GRPO (for SFT and reward runs; PPO's own GPU settings: "
                            "compile_update, fused AdamW, no autocast over bf16 weights).", "auto")
    liger: bool | None = _help("Ignored by PPO/RLOO/GRPO (Liger kernels are for SFT and reward runs).")
    logging_steps: int = _help("Ignored by PPO: metrics are reported after every update (and metrics.jsonl).", 1)
    extra_args: dict[str, Any] = _help("Ignored by PPO (there is no TRL config underneath).", factory=dict)
    save_steps: int = _help("Save a checkpoint every N PPO updates (0: none; the final model is still saved).", 20)
    reward_from_ids: bool = _help("Score rollouts with the reward model from the policy's token ids (built on the "
                                  "device) when both share a tokenizer and chat template; false, or other "
                                  "tokenizers: decode, chat template, re-tokenize (the text path).", True)

    def __post_init__(self):
        super().__post_init__()
        check_peft(self, "ppo", hardware=False)  # before any model loads: PPO trains LoRA or all weights


# --------------------------------------------------------------------------------- RLOO and GRPO

POLICY_METHODS = ("ppo", "rloo", "grpo")
VALUE_HEADS = ("separate", "shared")
KL_PENALTIES = ("reward", "loss")
LOSS_AGGREGATIONS = ("token", "sequence")


@dataclass
class RLOOConfig(PPOConfig):
    """RLOO (Ahmadian et al. 2024): K answers per prompt, each answer's baseline is the mean reward of the other
    K-1; no value model. Same rollout, clipped loss and checkpoints as PPO (rlhf.ppo.train)."""

    method: ClassVar[str] = "rloo"
    output_dir: str = _help("Directory for checkpoints, the final policy and metadata.json.", "runs/rloo")
    num_samples: int = _help("K: answers sampled per prompt (>= 2); rollout_batch_size counts answers, so "
                             "rollout_batch_size / K prompts per update.", 4)
    rollout_batch_size: int = _help("Answers per update (prompts x num_samples); a multiple of num_samples.", 16)
    kl_penalty: str = _help("'reward': subtract kl_coef x the answer's summed k1 KL to the reference from its "
                            "reward before the baseline; 'loss': add kl_coef x the per-token k3 KL to the loss.",
                            "reward")
    loss_aggregation: str = _help("'token': mean over all answer tokens of a minibatch; 'sequence': mean over "
                                  "answers of each answer's token mean.", "token")
    whiten_advantages: bool = _help("Normalise advantages to mean 0, std 1 over the batch's valid tokens.", False)
    ppo_epochs: int = _help("Passes over each rollout batch (1: on-policy; more reuse it with the clipped ratio).", 1)
    value_model: str | None = _help("Ignored by RLOO and GRPO (no value model).")
    value_head: str = _help("Ignored by RLOO and GRPO (no value model).", "separate")


@dataclass
class GRPOConfig(RLOOConfig):
    """GRPO (Shao et al. 2024, DeepSeekMath): advantages are each answer's reward normalised within its group
    of K; KL to the reference as a k3 loss term by default; no value model."""

    method: ClassVar[str] = "grpo"
    output_dir: str = _help("Directory for checkpoints, the final policy and metadata.json.", "runs/grpo")
    kl_penalty: str = _help("'loss' (GRPO): add kl_coef x the per-token k3 KL to the reference to the loss; "
                            "'reward': subtract kl_coef x summed k1 KL from each answer's reward.", "loss")
    kl_coef: float = _help("Coefficient beta of the KL to the reference.", 0.04)
    loss_aggregation: str = _help("'sequence' (GRPO's paper): mean over answers of each answer's token mean; "
                                  "'token' (token-level, DAPO): mean over all answer tokens of a minibatch.",
                                  "sequence")
    scale_rewards: bool = _help("Divide each group's centred rewards by the group's std (+1e-4); false: centre "
                                "only (Dr. GRPO).", True)


def check_policy_config(config: PPOConfig) -> None:
    """Raise ``ValueError`` for bad PPO/RLOO/GRPO settings before any model loads."""
    if config.mini_batch_size > config.rollout_batch_size or config.rollout_batch_size % config.mini_batch_size:
        raise ValueError("mini_batch_size must divide rollout_batch_size")
    penalty = config.length_penalty
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not math.isfinite(penalty) or penalty < 0:
        raise ValueError(f"length_penalty must be 0 (off) or a positive number (got {penalty!r}).")
    if config.value_head not in VALUE_HEADS:
        raise ValueError(f"value_head must be one of {list(VALUE_HEADS)} (got {config.value_head!r}).")
    if config.value_head == "shared" and config.value_model and not isinstance(config, RLOOConfig):
        raise ValueError("value_model initialises a separate value model, and value_head 'shared' has none (the "
                         "value head reads the policy's trunk): set one of them, not both.")
    if isinstance(config, RLOOConfig):
        if config.num_samples < 2:
            raise ValueError(f"num_samples must be 2 or more for {config.method} (got {config.num_samples}): the "
                             "baseline comes from the other answers to the same prompt.")
        if config.rollout_batch_size % config.num_samples:
            raise ValueError(f"rollout_batch_size ({config.rollout_batch_size}) must be a multiple of num_samples "
                             f"({config.num_samples}).")
        if config.kl_penalty not in KL_PENALTIES:
            raise ValueError(f"kl_penalty must be one of {list(KL_PENALTIES)} (got {config.kl_penalty!r}).")
        if config.loss_aggregation not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_aggregation must be one of {list(LOSS_AGGREGATIONS)} "
                             f"(got {config.loss_aggregation!r}).")


# ------------------------------------------------------------------------------------- sampling
@dataclass
class SamplingConfig:
    model: str | None = _help("Policy: null/'bundled', a local checkpoint or adapter dir, or a hub id.")
    prompts: str | None = _help("Prompt file (JSONL with `prompt`/`turns`/`instruction`, or one prompt per line).")
    output_dir: str = _help("Directory for samples.jsonl and metadata.json.", "runs/samples")
    k: int = _help("Completions per prompt.", 4)
    max_new_tokens: int = _help("Max generated tokens per completion (generation stops earlier at EOS).", 128)
    do_sample: bool = _help("Sample (true) or greedy decoding (false).", True)
    temperature: float = _help("Softmax temperature.", 1.0)
    top_p: float = _help("Nucleus sampling threshold (1.0 = off).", 1.0)
    top_k: int = _help("Top-k sampling (0 = off).", 0)
    repetition_penalty: float = _help("HF repetition penalty (1.0 = off).", 1.0)
    seed: int = _help("Random seed.", 0)
    batch_size: int = _help("Sequences decoded together: batch_size // k whole prompts (at least one), each prompt's K samples sharing one prefill.", 32)
    device: str = _help("'auto', 'cpu' or 'cuda[:i]'.", "auto")
    dtype: str = _help("'auto' (bf16 on a capable GPU and on a CPU with native bf16, AVX512-BF16 or AMX; fp32 "
                       "otherwise; RLHF_CPU_BF16=0/1 overrides the CPU check), 'float32', 'bfloat16'.", "auto")
    quantize: str | None = _help("'int8': dynamic int8 quantization of the policy's linear layers for sampling (CPU "
                                 "only; torch.ao, weights int8 per output channel, activations quantized on the fly; "
                                 "a LoRA/IA3 adapter is merged first). null: the weights as loaded.", None)
    cache_implementation: str | None = _help("Decode with HF generate() and this cache, e.g. 'static' (compiled decode "
                                             "on GPU); null: rlhf's own loop, which drops finished sequences from the "
                                             "batch.")
    decoder: str = _help("rlhf's decoder engine: 'auto' (static KV cache + compiled step on CUDA for Llama-family "
                         "models, else eager), 'eager' (the model's forward; on CPU finished rows leave the batch) or "
                         "'static'. The environment variable RLHF_DECODER sets it where no config reaches "
                         "(PPO rollouts); RLHF_DECODER_COMPILE=0 turns compilation off.", "auto")


QUANTIZE_METHODS = ("int8",)


def check_quantize(quantize: str | None, device: str = "cpu", *, cuda_available: bool | None = None) -> None:
    """ValueError when `quantize` (a sampling/evaluation option) is unknown or cannot run on `device`. Torch-free."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_METHODS:
        raise ValueError(f"quantize must be one of {list(QUANTIZE_METHODS)} or null (got {quantize!r}).")
    if str(device).startswith("cuda") or (device == "auto" and cuda_available):
        raise ValueError("quantize 'int8' is dynamic quantization for CPU inference (torch.ao has no CUDA kernels "
                         "for it); sample on the CPU (device 'cpu') or leave quantize null on a GPU.")
