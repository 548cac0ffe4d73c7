"""What each kind of run does: read its rows, call rlhf, write results through labelapp services.

An executor takes the run and a `progress(step, total, metrics)` callback (which raises
rlhf.Cancelled when a cancel was requested) and returns an Outcome. rlhf is imported inside the
functions, so importing this module stays cheap for processes that never train.

Executors write nothing themselves: an Outcome's `store` writes the run's outputs (the registered
model, ranking tasks and their completions, evaluation tasks), and `run_finish` calls it in the
transaction that checks the run's execution token and records the outcome. A worker killed before
that commit leaves no outputs, and the retried attempt writes them once.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from django.core.exceptions import ValidationError
from django.db import transaction

from labelapp.models import Completion, ModelVersion, Project, Prompt, RankingTask, TrainingRun
from labelapp.round_settings import STUDIO_DEFAULTS  # LoRA runs keep their adapter only
from labelapp.selectors import labels as selectors
from labelapp.services.projects import completion_create, ranking_task_create
from labelapp.services.rounds import task_priority
from labelapp.services.runs import model_version_register
from workers import launch

Progress = Callable[[int, int, dict], None]
log = logging.getLogger(__name__)
INPUTS_FILE = "inputs.json"  # in a run's directory: the hash of the records it trains on


@dataclass
class Outcome:
    result: dict = field(default_factory=dict)
    model: ModelVersion | None = None
    # writes the outputs inside run_finish's transaction: store(locked run, result) -> registered model or None
    store: Callable[[TrainingRun, dict], ModelVersion | None] | None = None


def register(run: TrainingRun, *, make_current: bool = True, **fields) -> Callable[[TrainingRun, dict], ModelVersion]:
    """A store that registers the run's model (as the project's current one of its kind unless told not to)."""
    return lambda locked, result: model_version_register(project=run.project, parent=run.input_model,
                                                         make_current=make_current, run=locked, **fields)


def model_ref(run: TrainingRun, version: ModelVersion | None = None) -> str:
    """The checkpoint a run starts from: its input model, else the project's base model."""
    version = version or run.input_model
    if version is not None:
        return version.artifact_path
    return run.project.base_model


PAIR_SETTINGS = ("min_rank_gap",)  # how rankings become pairs: the studio's business, not rlhf's




def make_config(cls, run: TrainingRun, exclude: tuple = (), **fixed):
    """The rlhf config: defaults < the studio's defaults < the run's params (less the studio's own
    `exclude`) < what the worker decides (paths)."""
    from rlhf.contract import load_config

    params = {k: v for k, v in run.params.items() if k not in exclude}
    known = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValidationError(f"Unknown {cls.__name__} settings: {unknown}.")
    studio = {k: v for k, v in STUDIO_DEFAULTS.items() if k in known}  # head_init: reward runs only
    return load_config(cls, {**studio, **params, **fixed, "output_dir": run.output_dir})


def resume_retried(run: TrainingRun, records) -> dict:
    """{"resume": True} when this run is the retry (`retry_of`) of a failed run that left a checkpoint and
    trained on the same records (same data hash): that checkpoint is linked into this run's directory (hard
    links, a copy across file systems) and training continues from it instead of from step 0. {} otherwise.
    {"resume": False} when this run's own checkpoints (a re-queued attempt) were trained on other records
    than these: they are removed. Records this run's data hash in its directory for a later attempt to compare."""
    from rlhf.contract import data_hash, last_checkpoint

    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = data_hash(records)
    try:
        before = json.loads((out / INPUTS_FILE).read_text()).get("data_hash")
    except (OSError, ValueError, AttributeError):
        before = None
    (out / INPUTS_FILE).write_text(json.dumps({"data_hash": digest}))
    if before is not None and before != digest and last_checkpoint(out):
        # A re-queued attempt (a lost worker) whose labels changed meanwhile: its checkpoints trained on other
        # data, so resuming would mix the two and the lineage would name only the new set. Start over.
        for stale in out.glob("checkpoint-*"):
            shutil.rmtree(stale, ignore_errors=True)
        log.info("run %s starts from step 0: its checkpoints are of other training data", run.pk)
        return {"resume": False}
    old = run.retry_of
    if old is None or old.status != TrainingRun.Status.FAILED or last_checkpoint(out):
        return {}  # not a retry, or this run has checkpoints of its own (a re-queued attempt resumes from those)
    checkpoint = last_checkpoint(old.output_dir)
    try:
        same = json.loads((Path(old.output_dir) / INPUTS_FILE).read_text()).get("data_hash") == digest
    except (OSError, ValueError, AttributeError):
        same = False
    if checkpoint is None or not same:
        log.info("run %s starts from step 0: run %s left %s", run.pk, old.pk,
                 "no checkpoint" if checkpoint is None else "a checkpoint of other training data")
        return {}
    # copied whole under another name, then renamed: a copy that breaks off leaves no half checkpoint that
    # last_checkpoint would trust (it looks for checkpoint-<step> with a trainer state)
    target = out / Path(checkpoint).name
    partial = out / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(checkpoint, partial, copy_function=_link_or_copy)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)  # an incomplete one (no trainer state) left by an older copy
    os.replace(partial, target)
    log.info("run %s resumes from run %s's %s", run.pk, old.pk, Path(checkpoint).name)
    return {"resume": True}


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _cancelled(artifacts) -> bool:
    if artifacts.status == "cancelled":
        from rlhf import Cancelled

        raise Cancelled("cancelled at the user's request")
    return False


def preference_pairs(project, min_gap: int = 1, mode: str = "none", min_confidence: float = 0.0):
    """rlhf PreferencePairs for a reward-model or DPO run of `project` (labelapp.selectors.quality.training_pairs:
    people's rankings with gold left out and disputes adjudicated, reliability weights and confidences for
    `label_weights` `mode`, confidences too when `min_confidence` filters, AI labels at the project's
    `ai_label_weight`), and the selection itself (its ids, the mode to train with and the lineage)."""
    from labelapp.selectors.quality import training_pairs
    from rlhf.data import PreferencePair

    selected = training_pairs(project=project, min_gap=min_gap, mode=mode, min_confidence=min_confidence)
    pairs = [PreferencePair(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, margin=p.margin,
                            weight=p.weight, confidence=p.confidence) for p in selected.pairs]
    return pairs, selected


def pairs_lineage(selected, pairs: list, gap: int, artifacts) -> dict:
    """A preference model's training_data: the exact label sets it read, how its pairs were made, and the
    weighting the trainer applied (mode, pairs kept, hash of the weights: rlhf.weighting.summary)."""
    data = {"rankings": selectors.label_set(selected.rankings), "pairs": len(pairs), "min_rank_gap": gap,
            **selected.lineage()}
    try:
        data["label_weighting"] = json.loads(Path(artifacts.metadata_path).read_text()).get("label_weighting")
    except (OSError, ValueError):
        data["label_weighting"] = None  # a launched run's rank 0 writes it; absence is recorded, not guessed
    if selected.adjudications:
        data["adjudications"] = selectors.label_set(selected.adjudications)
    if selected.ai_labels:
        data["ai_labels"] = selectors.label_set(selected.ai_labels)
    return data


def run_sft(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.data import Demonstration
    from rlhf.sft import SFTRunConfig

    pending = bool(run.params.get("include_pending", False))  # default: approved demonstrations only
    snapshot = selectors.demonstration_snapshot(project=run.project, include_pending=pending)
    if not snapshot["count"]:
        raise ValidationError("There are no demonstrations (approved or pending) to train on yet." if pending else
                              "There are no approved demonstrations to train on yet (review them first, or set "
                              "sft.include_pending to also use pending ones).")
    rows = selectors.training_demonstrations(project=run.project, include_pending=pending)
    demos = [Demonstration(prompt=turns, response=text) for _, turns, text in rows]
    config = make_config(SFTRunConfig, run, exclude=("include_pending",), model=model_ref(run),
                         **resume_retried(run, demos))
    artifacts = launch.train("sft", config, demos, progress)
    _cancelled(artifacts)
    store = register(run, name=f"sft-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
                     training_data={"demonstrations": {**snapshot, "include_pending": pending}},
                     metrics=artifacts.metrics)
    return Outcome({"demonstrations": snapshot["count"], "include_pending": pending, **artifacts.metrics}, store=store)


def run_reward(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.reward import RewardRunConfig

    gap = run.params.get("min_rank_gap", 1)
    config = make_config(RewardRunConfig, run, exclude=PAIR_SETTINGS, model=model_ref(run))
    pairs, selected = preference_pairs(run.project, gap, config.label_weights, config.min_confidence)
    if len(pairs) < 2:
        raise ValidationError(f"The reward model needs at least 2 preference pairs; there are {len(pairs)}"
                              + (f" with min_rank_gap {gap}." if gap > 1 else "."))
    config = replace(config, label_weights=selected.mode, **resume_retried(run, pairs))
    artifacts = launch.train("reward", config, pairs, progress)
    _cancelled(artifacts)
    store = register(
        run, name=f"reward-{run.pk}", kind=ModelVersion.Kind.REWARD, artifact_path=artifacts.model_dir,
        training_data=pairs_lineage(selected, pairs, gap, artifacts), metrics=artifacts.metrics,
    )
    return Outcome({"pairs": len(pairs), **artifacts.metrics}, store=store)


def after_finish(run: TrainingRun) -> None:
    """What follows a stored, succeeded run (workers.tasks.run_execute, before the round advances): after a
    reward-model run of a project with active learning, score its ranking tasks with the new model and add
    the outcome to the run's result (`uncertainty`)."""
    from labelapp.services.runs import run_result_add

    if run.kind != TrainingRun.Kind.REWARD or run.output_model is None or not run.project.active_learning:
        return
    run_result_add(run_id=run.pk, uncertainty=score_tasks(run.project, run.output_model))


def score_tasks(project, version: ModelVersion) -> dict:
    """Active learning after a reward-model run has been stored: the new model's uncertainty about every
    ranking task (workers.checks). The model is already registered, so a scoring failure is reported in
    the run's result (and the studio's "Score tasks now" can retry) rather than failing the run."""
    from workers.checks import score_uncertainty

    try:
        return {"tasks": score_uncertainty(project_id=project.pk, model_version_id=version.pk)}
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed: the run's result says what failed
        log.warning("uncertainty scoring failed for project %s", project.pk, exc_info=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_dpo(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.dpo import DPORunConfig

    gap = run.params.get("min_rank_gap", 1)
    config = make_config(DPORunConfig, run, exclude=PAIR_SETTINGS, model=model_ref(run))
    pairs, selected = preference_pairs(run.project, gap, config.label_weights, config.min_confidence)
    if not pairs:
        raise ValidationError("DPO needs preference pairs; there are none yet"
                              + (f" with min_rank_gap {gap}." if gap > 1 else "."))
    config = replace(config, label_weights=selected.mode, **resume_retried(run, pairs))
    artifacts = launch.train("dpo", config, pairs, progress)
    _cancelled(artifacts)
    store = register(
        run, name=f"dpo-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
        training_data=pairs_lineage(selected, pairs, gap, artifacts), metrics=artifacts.metrics,
        make_current=run.round_id is None,  # a round's policy: its promotion gate decides
    )
    return Outcome({"pairs": len(pairs), **artifacts.metrics}, store=store)


def run_ppo(run: TrainingRun, progress: Progress) -> Outcome:
    """PPO, RLOO or GRPO (the run's kind picks the config class) against the round's reward model."""
    from rlhf.ppo import GRPOConfig, PPOConfig, RLOOConfig

    config_class = {TrainingRun.Kind.RLOO: RLOOConfig, TrainingRun.Kind.GRPO: GRPOConfig}.get(run.kind, PPOConfig)
    method = config_class.method.upper()

    reward = ModelVersion.objects.filter(pk=run.params.get("reward_model_id")).first() or ModelVersion.objects.filter(
        project=run.project, kind=ModelVersion.Kind.REWARD, is_current=True
    ).first()
    if reward is None:
        raise ValidationError(f"{method} needs a reward model: train one first.")
    params = {k: v for k, v in run.params.items() if k != "reward_model_id"}
    run.params = params
    prompts = [p.turns for p in Prompt.objects.filter(project=run.project, split=Prompt.Split.TRAIN).order_by("id")]
    config = make_config(config_class, run, model=model_ref(run), reward_model=reward.artifact_path,
                         **resume_retried(run, [*prompts, {"reward_model": reward.artifact_path}]))
    artifacts = launch.train("ppo", config, prompts, progress)  # PPO, RLOO or GRPO by the config's class
    _cancelled(artifacts)
    store = register(run, name=f"{run.kind}-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
                     training_data={"prompts": len(prompts), "reward_model_id": reward.pk}, metrics=artifacts.metrics,
                     make_current=run.round_id is None)  # a round's policy: its promotion gate decides
    return Outcome({"prompts": len(prompts), **artifacts.metrics}, store=store)


def run_sample(run: TrainingRun, progress: Progress) -> Outcome:
    """K completions for N prompts from the run's input policy, stored as ranking tasks."""
    from rlhf.models import load_for_sampling, load_tokenizer, weights_dtype
    from rlhf.sampling import sample

    project = run.project
    k = int(run.params.get("k", project.k))
    n = int(run.params.get("prompts", 8))
    version = run.input_model
    seed = int(run.params.get("seed", random.SystemRandom().randrange(1 << 30)))
    candidates = Prompt.objects.filter(project=project, split=Prompt.Split.TRAIN)
    if version:  # prompts this policy has not answered yet
        candidates = candidates.exclude(
            id__in=RankingTask.objects.filter(project=project, completions__model_version=version).values("prompt_id"))
    ids = list(candidates.order_by("id").values_list("id", flat=True))
    if project.active_learning:  # the prompts the reward model is least sure of first; unscored ones after
        uncertainty = dict(candidates.filter(uncertainty__isnull=False).values_list("id", "uncertainty"))
        chosen = random.Random(seed).sample(ids, len(ids))  # the seeded order breaks ties (a stable sort)
        chosen = sorted(chosen, key=lambda i: -uncertainty.get(i, -1.0))[:n]
    else:
        chosen = random.Random(seed).sample(ids, min(n, len(ids)))  # the run's seed also fixes which prompts
    by_id = Prompt.objects.in_bulk(chosen)
    prompts = [by_id[i] for i in chosen]
    if not prompts:
        return Outcome({"prompts": 0, "tasks": 0})
    path = version.artifact_path if version else project.base_model
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_for_sampling(path, quantize=run.params.get("quantize"))  # "int8": CPU int8
    samples = sample(
        model, tokenizer, [p.turns for p in prompts], k=k, max_new_tokens=int(run.params.get("max_new_tokens", 64)),
        temperature=float(run.params.get("temperature", 1.0)), seed=seed, progress=progress,
    )
    by_prompt: dict[int, list] = {}
    for item in samples:
        by_prompt.setdefault(item.prompt_index, []).append(item)

    def store(locked: TrainingRun, result: dict) -> None:
        """The completions and ranking tasks, keyed by (run, prompt[, sample]), with run_finish."""
        policy = version or base_version(project)
        tasks = 0
        for index, prompt in enumerate(prompts):
            completions = [
                completion_create(
                    prompt=prompt, text=item.completion.strip() or "(empty response)", source=Completion.Source.MODEL,
                    model_version=policy, run=locked, sample_index=item.sample_index,
                    decoding={**item.decoding, "seed": item.seed, "completion_tokens": item.completion_tokens,
                              "prompt_tokens": item.prompt_tokens, "finish_reason": item.finish_reason},
                )
                for item in sorted(by_prompt.get(index, []), key=lambda s: s.sample_index)
            ]
            if len(completions) >= 2:
                ranking_task_create(project=project, prompt=prompt, completions=completions, run=locked,
                                    round=run.round, priority=task_priority(run.round))
                tasks += 1
        result["tasks"] = tasks

    dtype = "int8" if run.params.get("quantize") else weights_dtype(model)  # bf16 on a native-bf16 CPU
    return Outcome({"prompts": len(prompts), "k": k, "seed": seed, "weights_dtype": dtype}, store=store)


def base_version(project) -> ModelVersion:
    """The project's base model as a ModelVersion (so completions sampled from it can name it), registered
    once: the project row's lock serialises two runs registering it at the same time."""
    Project.objects.select_for_update().filter(pk=project.pk).first()
    existing = ModelVersion.objects.filter(project=project, artifact_path=project.base_model).first()
    return existing or model_version_register(
        project=project, name=f"base ({project.base_model})", kind=ModelVersion.Kind.POLICY,
        artifact_path=project.base_model,
    )


def run_evaluate(run: TrainingRun, progress: Progress) -> Outcome:
    """One answer per held-out prompt from the candidate (the run's input model) and the baseline
    (`baseline_id`, else the candidate's parent, else the project's base model); both scored by the
    round's reward model (`reward_model_id`; the current one for a standalone evaluation); stored as
    blind A/B tasks."""
    from labelapp.selectors.stats import evaluation_summary
    from labelapp.services.projects import evaluation_task_create
    from rlhf.models import load_for_sampling, load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score
    from rlhf.sampling import sample

    project, candidate = run.project, run.input_model
    if candidate is None:
        raise ValidationError("An evaluation needs a candidate model (the run's input model).")
    baseline = ModelVersion.objects.filter(pk=run.params.get("baseline_id")).first() or candidate.parent
    if baseline is None:  # a policy trained straight from the base model (a first round without SFT): against it
        with transaction.atomic():
            baseline = base_version(project)
        if baseline.pk == candidate.pk:
            raise ValidationError("An evaluation needs a baseline other than the candidate: the candidate is the "
                                  "project's base model and has no parent.")
    n = int(run.params.get("prompts", 8))
    held_out = Prompt.objects.filter(project=project, split=Prompt.Split.VALIDATION)
    note = ""
    if not held_out.exists():
        held_out, note = Prompt.objects.filter(project=project), "no validation prompts: used training prompts"
    prompts = list(held_out.order_by("id")[:n])
    settings = {"max_new_tokens": int(run.params.get("max_new_tokens", 64)),
                "temperature": float(run.params.get("temperature", 0.7)), "seed": int(run.params.get("seed", 0))}
    answers, finish = {}, {}
    # fp32 here whatever the host (bf16 on a native-bf16 CPU is for sampling to rank): folding an adapter into
    # bf16 weights rounds away updates below bf16's resolution, and bf16 scores tie where fp32 ones do not, so
    # the comparison the promotion gate reads is made at full precision ("int8" stays an explicit choice)
    for step, version in enumerate((candidate, baseline), start=1):
        model = load_for_sampling(version.artifact_path, quantize=run.params.get("quantize"), dtype="float32")
        tokenizer = load_tokenizer(version.artifact_path, padding_side="left")
        samples = sample(model, tokenizer, [p.turns for p in prompts], k=1, **settings)
        answers[version.pk] = [s.completion.strip() for s in samples]
        # how each answer ended, so the compare page can mark one the token limit cut off
        finish[version.pk] = [{"finish_reason": s.finish_reason, "completion_tokens": s.completion_tokens} for s in samples]
        del model
        progress(step, 3, {})
    rewards = ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.REWARD)
    reward = rewards.filter(pk=run.params.get("reward_model_id")).first() or rewards.filter(is_current=True).first()
    rewards_a = rewards_b = [None] * len(prompts)
    if reward is not None:
        rm = load_reward_model(reward.artifact_path, dtype="float32")
        rm_tokenizer = load_tokenizer(reward.artifact_path)
        a_items = [conversation(p.turns, t) for p, t in zip(prompts, answers[candidate.pk])]
        b_items = [conversation(p.turns, t) for p, t in zip(prompts, answers[baseline.pk])]
        rewards_a, rewards_b = score(rm, rm_tokenizer, a_items).tolist(), score(rm, rm_tokenizer, b_items).tolist()
    progress(3, 3, {})

    def store(locked: TrainingRun, result: dict) -> None:
        """The evaluation tasks, one per (run, prompt), with run_finish; then the round's automatic summary."""
        for prompt, text_a, text_b, ra, rb, end_a, end_b in zip(prompts, answers[candidate.pk], answers[baseline.pk],
                                                               rewards_a, rewards_b, finish[candidate.pk],
                                                               finish[baseline.pk]):
            evaluation_task_create(
                project=project, prompt=prompt, model_a=candidate, model_b=baseline, text_a=text_a, text_b=text_b,
                round=run.round, reward_a=ra, reward_b=rb, decoding=settings,
                decoding_a={**settings, **end_a}, decoding_b={**settings, **end_b}, run=locked,
            )
        summary = evaluation_summary(project=project, round_id=run.round_id) if run.round_id else {}
        auto = summary.get("reward_model", {})
        controlled = summary.get("length_controlled", {}).get("reward_model", {})
        lengths = summary.get("lengths", {})
        result.update({"auto_win_rate": auto.get("win_rate"), "auto_low": auto.get("low"),
                       "auto_high": auto.get("high"), "auto_lc_win_rate": controlled.get("win_rate"),
                       "auto_lc_low": controlled.get("low"), "auto_lc_high": controlled.get("high"),
                       "mean_length_candidate": lengths.get("candidate"),
                       "mean_length_baseline": lengths.get("baseline"),
                       "mean_length_reference": lengths.get("reference")})

    return Outcome({"tasks": len(prompts), "note": note}, store=store)


EXECUTORS: dict[str, Callable[[TrainingRun, Progress], Outcome]] = {
    TrainingRun.Kind.SFT: run_sft,
    TrainingRun.Kind.REWARD: run_reward,
    TrainingRun.Kind.DPO: run_dpo,
    TrainingRun.Kind.PPO: run_ppo,
    TrainingRun.Kind.RLOO: run_ppo,
    TrainingRun.Kind.GRPO: run_ppo,
    TrainingRun.Kind.SAMPLE: run_sample,
    TrainingRun.Kind.EVALUATE: run_evaluate,
}
