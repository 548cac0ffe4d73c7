"""What each kind of run does: read its rows, call rlhf, write results through labelapp services.

An executor takes the run and a `progress(step, total, metrics)` callback (which raises
rlhf.Cancelled when a cancel was requested) and returns an Outcome. rlhf is imported inside the
functions, so importing this module stays cheap for processes that never train.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from django.core.exceptions import ValidationError

from labelapp import exports, selectors
from labelapp.models import Completion, ModelVersion, Prompt, RankingTask, TrainingRun
from labelapp.services.projects import completion_create, ranking_task_create
from labelapp.services.runs import model_version_register
from workers import launch

Progress = Callable[[int, int, dict], None]


@dataclass
class Outcome:
    result: dict = field(default_factory=dict)
    model: ModelVersion | None = None


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
    config = make_config(SFTRunConfig, run, model=model_ref(run))
    artifacts = launch.train("sft", config, demos, progress)
    _cancelled(artifacts)
    version = model_version_register(
        project=run.project, name=f"sft-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
        parent=run.input_model, training_data={"demonstrations": snapshot}, metrics=artifacts.metrics, make_current=True,
    )
    return Outcome({"demonstrations": snapshot["count"], **artifacts.metrics}, version)


def run_reward(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.reward import RewardRunConfig

    gap = run.params.get("min_rank_gap", 1)
    pairs, ids = preference_pairs(run.project, gap)
    if len(pairs) < 2:
        raise ValidationError(f"The reward model needs at least 2 preference pairs; there are {len(pairs)}"
                              + (f" with min_rank_gap {gap}." if gap > 1 else "."))
    config = make_config(RewardRunConfig, run, exclude=PAIR_SETTINGS, model=model_ref(run))
    artifacts = launch.train("reward", config, pairs, progress)
    _cancelled(artifacts)
    label_set = selectors.label_set(ids)
    version = model_version_register(
        project=run.project, name=f"reward-{run.pk}", kind=ModelVersion.Kind.REWARD, artifact_path=artifacts.model_dir,
        parent=run.input_model, training_data={"rankings": label_set, "pairs": len(pairs), "min_rank_gap": gap},
        metrics=artifacts.metrics,
        make_current=True,
    )
    return Outcome({"pairs": len(pairs), **artifacts.metrics}, version)


def run_dpo(run: TrainingRun, progress: Progress) -> Outcome:
    from rlhf.dpo import DPORunConfig

    gap = run.params.get("min_rank_gap", 1)
    pairs, ids = preference_pairs(run.project, gap)
    if not pairs:
        raise ValidationError("DPO needs preference pairs; there are none yet"
                              + (f" with min_rank_gap {gap}." if gap > 1 else "."))
    artifacts = launch.train("dpo", make_config(DPORunConfig, run, exclude=PAIR_SETTINGS, model=model_ref(run)), pairs, progress)
    _cancelled(artifacts)
    version = model_version_register(
        project=run.project, name=f"dpo-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
        parent=run.input_model,
        training_data={"rankings": selectors.label_set(ids), "pairs": len(pairs), "min_rank_gap": gap},
        metrics=artifacts.metrics, make_current=True,
    )
    return Outcome({"pairs": len(pairs), **artifacts.metrics}, version)


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
    config = make_config(PPOConfig, run, model=model_ref(run), reward_model=reward.artifact_path)
    artifacts = train(config, prompts, progress=progress)
    _cancelled(artifacts)
    version = model_version_register(
        project=run.project, name=f"ppo-{run.pk}", kind=ModelVersion.Kind.POLICY, artifact_path=artifacts.model_dir,
        parent=run.input_model, training_data={"prompts": len(prompts), "reward_model_id": reward.pk},
        metrics=artifacts.metrics, make_current=True,
    )
    return Outcome({"prompts": len(prompts), **artifacts.metrics}, version)


def run_sample(run: TrainingRun, progress: Progress) -> Outcome:
    """K completions for N prompts from the run's input policy, stored as ranking tasks."""
    from rlhf.models import load_for_sampling, load_tokenizer
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
    if version is None:  # sampling from the base model: register it once so completions can name it
        version = ModelVersion.objects.filter(project=project, artifact_path=project.base_model).first() or model_version_register(
            project=project, name=f"base ({project.base_model})", kind=ModelVersion.Kind.POLICY,
            artifact_path=project.base_model,
        )
    tokenizer = load_tokenizer(version.artifact_path, padding_side="left")
    model = load_for_sampling(version.artifact_path, quantize=run.params.get("quantize"))  # "int8": CPU int8
    samples = sample(
        model, tokenizer, [p.turns for p in prompts], k=k, max_new_tokens=int(run.params.get("max_new_tokens", 64)),
        temperature=float(run.params.get("temperature", 1.0)), seed=seed, progress=progress,
    )
    by_prompt: dict[int, list] = {}
    for item in samples:
        by_prompt.setdefault(item.prompt_index, []).append(item)
    tasks = 0
    for index, prompt in enumerate(prompts):
        completions = [
            completion_create(
                prompt=prompt, text=item.completion.strip() or "(empty response)", source=Completion.Source.MODEL,
                model_version=version,
                decoding={**item.decoding, "seed": item.seed, "completion_tokens": item.completion_tokens,
                          "prompt_tokens": item.prompt_tokens, "finish_reason": item.finish_reason},
            )
            for item in sorted(by_prompt.get(index, []), key=lambda s: s.sample_index)
        ]
        if len(completions) >= 2:
            ranking_task_create(project=project, prompt=prompt, completions=completions)
            tasks += 1
    return Outcome({"prompts": len(prompts), "tasks": tasks, "k": k, "seed": seed})


def run_evaluate(run: TrainingRun, progress: Progress) -> Outcome:
    """One answer per held-out prompt from the candidate (the run's input model) and the
    baseline; both scored by the current reward model; stored as blind A/B tasks."""
    from rlhf.models import load_for_sampling, load_reward_model, load_tokenizer
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
        model = load_for_sampling(version.artifact_path, quantize=run.params.get("quantize"))  # "int8": CPU int8
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
    for prompt, text_a, text_b, ra, rb, end_a, end_b in zip(prompts, answers[candidate.pk], answers[baseline.pk], rewards_a,
                                                           rewards_b, finish[candidate.pk], finish[baseline.pk]):
        evaluation_task_create(
            project=project, prompt=prompt, model_a=candidate, model_b=baseline, text_a=text_a, text_b=text_b,
            round=run.round, reward_a=ra, reward_b=rb, decoding=settings,
            decoding_a={**settings, **end_a}, decoding_b={**settings, **end_b},
        )
    progress(3, 3, {})
    summary = evaluation_summary(project=project, round_id=run.round_id) if run.round_id else {}
    auto = summary.get("reward_model", {})
    controlled = summary.get("length_controlled", {}).get("reward_model", {})
    lengths = summary.get("lengths", {})
    return Outcome({"tasks": len(prompts), "auto_win_rate": auto.get("win_rate"), "auto_low": auto.get("low"),
                    "auto_high": auto.get("high"), "auto_lc_win_rate": controlled.get("win_rate"),
                    "auto_lc_low": controlled.get("low"), "auto_lc_high": controlled.get("high"),
                    "mean_length_candidate": lengths.get("candidate"), "mean_length_baseline": lengths.get("baseline"),
                    "mean_length_reference": lengths.get("reference"), "note": note})


EXECUTORS: dict[str, Callable[[TrainingRun, Progress], Outcome]] = {
    TrainingRun.Kind.SFT: run_sft,
    TrainingRun.Kind.REWARD: run_reward,
    TrainingRun.Kind.DPO: run_dpo,
    TrainingRun.Kind.PPO: run_ppo,
    TrainingRun.Kind.SAMPLE: run_sample,
    TrainingRun.Kind.EVALUATE: run_evaluate,
}
