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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from django.core.exceptions import ValidationError

from labelapp import exports, selectors
from labelapp.models import Completion, ModelVersion, Project, Prompt, RankingTask, TrainingRun
from labelapp.services.projects import completion_create, ranking_task_create
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


def register(run: TrainingRun, **fields) -> Callable[[TrainingRun, dict], ModelVersion]:
    """A store that registers the run's model as the project's current one of its kind."""
    return lambda locked, result: model_version_register(project=run.project, parent=run.input_model,
                                                         make_current=True, run=locked, **fields)


def model_ref(run: TrainingRun, version: ModelVersion | None = None) -> str:
    """The checkpoint a run starts from: its input model, else the project's base model."""
    version = version or run.input_model
    if version is not None:
        return version.artifact_path
    return run.project.base_model


PAIR_SETTINGS = ("min_rank_gap",)  # how rankings become pairs: the studio's business, not rlhf's


def make_config(cls, run: TrainingRun, exclude: tuple = (), **fixed):
    """The rlhf config: defaults < the run's params (less the studio's own `exclude`) < what the worker
    decides (paths)."""
    from rlhf.contract import load_config

    params = {k: v for k, v in run.params.items() if k not in exclude}
    known = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValidationError(f"Unknown {cls.__name__} settings: {unknown}.")
    return load_config(cls, {**params, **fixed, "output_dir": run.output_dir})


def resume_retried(run: TrainingRun, records) -> dict:
    """{"resume": True} when this run is the retry (`retry_of`) of a failed run that left a checkpoint and
    trained on the same records (same data hash): that checkpoint is linked into this run's directory (hard
    links, a copy across file systems) and training continues from it instead of from step 0. {} otherwise.
    Records this run's data hash in its directory for a later retry to compare."""
    from rlhf.contract import data_hash, last_checkpoint

    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = data_hash(records)
    (out / INPUTS_FILE).write_text(json.dumps({"data_hash": digest}))
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
    shutil.copytree(checkpoint, out / Path(checkpoint).name, copy_function=_link_or_copy, dirs_exist_ok=True)
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


def preference_pairs(project, min_gap: int = 1) -> tuple[list, list[int]]:
    """rlhf PreferencePairs from every ranking of the project (completions at least `min_gap` tie
    groups apart), and the ranking ids used."""
    from rlhf.data import PreferencePair

    pairs, ids = [], []
    for row in exports._ranking_rows(exports.ExportFilter(project=project)):
        ids.append(row.id)
        texts = {cid: text for cid, (text, _) in row.completions.items()}
        for chosen, rejected, margin in selectors.ranking_pairs(row, min_gap):
            pairs.append(PreferencePair(prompt=row.turns, chosen=texts[chosen], rejected=texts[rejected], margin=margin))
    return pairs, ids


def run_sft(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.data import Demonstration
    from rlhf.sft import SFTRunConfig

    snapshot = selectors.demonstration_snapshot(project=run.project)
    if not snapshot["count"]:
        raise ValidationError("There are no demonstrations to train on yet.")
    demos = [Demonstration(prompt=turns, response=text) for _, turns, text in selectors.training_demonstrations(project=run.project)]
    config = make_config(SFTRunConfig, run, model=model_ref(run), **resume_retried(run, demos))
    artifacts = launch.train("sft", config, demos, progress)
    _cancelled(artifacts)
    store = register(run, name=f"sft-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
                     training_data={"demonstrations": snapshot}, metrics=artifacts.metrics)
    return Outcome({"demonstrations": snapshot["count"], **artifacts.metrics}, store=store)


def run_reward(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.reward import RewardRunConfig

    gap = run.params.get("min_rank_gap", 1)
    pairs, ids = preference_pairs(run.project, gap)
    if len(pairs) < 2:
        raise ValidationError(f"The reward model needs at least 2 preference pairs; there are {len(pairs)}"
                              + (f" with min_rank_gap {gap}." if gap > 1 else "."))
    config = make_config(RewardRunConfig, run, exclude=PAIR_SETTINGS, model=model_ref(run),
                         **resume_retried(run, pairs))
    artifacts = launch.train("reward", config, pairs, progress)
    _cancelled(artifacts)
    label_set = selectors.label_set(ids)
    store = register(
        run, name=f"reward-{run.pk}", kind=ModelVersion.Kind.REWARD, artifact_path=artifacts.model_dir,
        training_data={"rankings": label_set, "pairs": len(pairs), "min_rank_gap": gap}, metrics=artifacts.metrics,
    )
    return Outcome({"pairs": len(pairs), **artifacts.metrics}, store=store)


def run_dpo(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.dpo import DPORunConfig

    gap = run.params.get("min_rank_gap", 1)
    pairs, ids = preference_pairs(run.project, gap)
    if not pairs:
        raise ValidationError("DPO needs preference pairs; there are none yet"
                              + (f" with min_rank_gap {gap}." if gap > 1 else "."))
    config = make_config(DPORunConfig, run, exclude=PAIR_SETTINGS, model=model_ref(run), **resume_retried(run, pairs))
    artifacts = launch.train("dpo", config, pairs, progress)
    _cancelled(artifacts)
    store = register(
        run, name=f"dpo-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
        training_data={"rankings": selectors.label_set(ids), "pairs": len(pairs), "min_rank_gap": gap},
        metrics=artifacts.metrics,
    )
    return Outcome({"pairs": len(pairs), **artifacts.metrics}, store=store)


def run_ppo(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.ppo import PPOConfig, train

    reward = ModelVersion.objects.filter(pk=run.params.get("reward_model_id")).first() or ModelVersion.objects.filter(
        project=run.project, kind=ModelVersion.Kind.REWARD, is_current=True
    ).first()
    if reward is None:
        raise ValidationError("PPO needs a reward model: train one first.")
    params = {k: v for k, v in run.params.items() if k != "reward_model_id"}
    run.params = params
    prompts = [p.turns for p in Prompt.objects.filter(project=run.project, split=Prompt.Split.TRAIN).order_by("id")]
    config = make_config(PPOConfig, run, model=model_ref(run), reward_model=reward.artifact_path,
                         **resume_retried(run, [*prompts, {"reward_model": reward.artifact_path}]))
    artifacts = train(config, prompts, progress=progress)
    _cancelled(artifacts)
    store = register(run, name=f"ppo-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
                     training_data={"prompts": len(prompts), "reward_model_id": reward.pk}, metrics=artifacts.metrics)
    return Outcome({"prompts": len(prompts), **artifacts.metrics}, store=store)


def run_sample(run: TrainingRun, progress: Progress) -> Outcome:
    """K completions for N prompts from the run's input policy, stored as ranking tasks."""
    from rlhf.models import load_causal_lm, load_tokenizer
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
    chosen = random.Random(seed).sample(ids, min(n, len(ids)))  # the run's seed also fixes which prompts
    by_id = Prompt.objects.in_bulk(chosen)
    prompts = [by_id[i] for i in chosen]
    if not prompts:
        return Outcome({"prompts": 0, "tasks": 0})
    path = version.artifact_path if version else project.base_model
    tokenizer = load_tokenizer(path, padding_side="left")
    model = load_causal_lm(path)
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
                ranking_task_create(project=project, prompt=prompt, completions=completions, run=locked)
                tasks += 1
        result["tasks"] = tasks

    return Outcome({"prompts": len(prompts), "k": k, "seed": seed}, store=store)


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
    """One answer per held-out prompt from the candidate (the run's input model) and the
    baseline; both scored by the current reward model; stored as blind A/B tasks."""
    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score
    from rlhf.sampling import sample

    from labelapp.services.projects import evaluation_task_create
    from labelapp.stats import evaluation_summary

    project, candidate = run.project, run.input_model
    baseline = ModelVersion.objects.filter(pk=run.params.get("baseline_id")).first() or (candidate and candidate.parent)
    if candidate is None or baseline is None:
        raise ValidationError("An evaluation needs a candidate model and a baseline (its parent).")
    n = int(run.params.get("prompts", 8))
    held_out = Prompt.objects.filter(project=project, split=Prompt.Split.VALIDATION)
    note = ""
    if not held_out.exists():
        held_out, note = Prompt.objects.filter(project=project), "no validation prompts: used training prompts"
    prompts = list(held_out.order_by("id")[:n])
    settings = {"max_new_tokens": int(run.params.get("max_new_tokens", 64)),
                "temperature": float(run.params.get("temperature", 0.7)), "seed": int(run.params.get("seed", 0))}
    answers, finish = {}, {}
    for step, version in enumerate((candidate, baseline), start=1):
        model = load_causal_lm(version.artifact_path)
        tokenizer = load_tokenizer(version.artifact_path, padding_side="left")
        samples = sample(model, tokenizer, [p.turns for p in prompts], k=1, **settings)
        answers[version.pk] = [s.completion.strip() for s in samples]
        # how each answer ended, so the compare page can mark one the token limit cut off
        finish[version.pk] = [{"finish_reason": s.finish_reason, "completion_tokens": s.completion_tokens} for s in samples]
        del model
        progress(step, 3, {})
    reward = ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.REWARD, is_current=True).first()
    rewards_a = rewards_b = [None] * len(prompts)
    if reward is not None:
        rm, rm_tokenizer = load_reward_model(reward.artifact_path), load_tokenizer(reward.artifact_path)
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
    TrainingRun.Kind.SAMPLE: run_sample,
    TrainingRun.Kind.EVALUATE: run_evaluate,
}
