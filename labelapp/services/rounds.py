"""Rounds: one turn of the InstructGPT loop, advanced stage by stage.

    SFT (only when the demonstrations changed since the current policy was trained)
      → SAMPLING (K completions for N prompts from the policy, as ranking tasks)
      → RANKING  (wait until `min_rankings` rankings of this round's tasks are in)
      → REWARD   (reward model from all the project's rankings)
      → POLICY   (PPO against that reward model, or DPO on the pairs)
      → RESAMPLING (the new policy's samples become new ranking tasks)
      → EVALUATION (blind A/B tasks: new policy vs its parent on held-out prompts, plus the
                    reward model's automatic win-rate)
      → DONE

`round_advance` is called by the worker when a round's run ends, by the periodic
`studio.rounds_advance` task (for the RANKING wait) and from the studio page; it is idempotent.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from labelapp import selectors
from labelapp.models import ModelVersion, Project, Ranking, Role, Round, TrainingRun
from labelapp.services.access import require_role
from labelapp.services.runs import check_pair_settings, run_create

Stage = Round.Stage
DEFAULTS = {
    "prompts": 8,  # prompts sampled per round
    "k": None,  # completions per prompt (None: the project's K)
    "min_rankings": 8,  # rankings of this round's tasks needed before the reward model
    "sft": {},  # rlhf SFT settings (max_steps, learning_rate, …)
    "reward": {},  # … and min_rank_gap: which pairs of each ranking to train on (1 = all)
    "policy": {},  # PPO or DPO settings (DPO: min_rank_gap too)
    "sample": {},  # max_new_tokens, temperature
    "evaluation": {},  # prompts (held-out, default 8), max_new_tokens, temperature
}
STAGE_RUN = {
    Stage.SFT: TrainingRun.Kind.SFT,
    Stage.SAMPLING: TrainingRun.Kind.SAMPLE,
    Stage.REWARD: TrainingRun.Kind.REWARD,
    Stage.RESAMPLING: TrainingRun.Kind.SAMPLE,
    Stage.EVALUATION: TrainingRun.Kind.EVALUATE,
}


# The POLICY stage's run kinds (one per Round.Method); those that score rollouts with the round's reward model.
POLICY_KINDS = [TrainingRun.Kind.PPO, TrainingRun.Kind.DPO, TrainingRun.Kind.RLOO, TrainingRun.Kind.GRPO]
REWARD_MODEL_KINDS = (TrainingRun.Kind.PPO, TrainingRun.Kind.RLOO, TrainingRun.Kind.GRPO)


def current_policy(project: Project) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY, is_current=True).first()


def _clean_params(params: dict | None) -> dict:
    params = {**DEFAULTS, **(params or {})}
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValidationError(f"Unknown round settings {unknown}; use {sorted(DEFAULTS)}.")
    for key in ("prompts", "min_rankings"):
        if not isinstance(params[key], int) or params[key] < 1:
            raise ValidationError(f"'{key}' must be a whole number of at least 1.")
    for key in ("sft", "reward", "policy", "sample", "evaluation"):
        if not isinstance(params[key], dict):
            raise ValidationError(f"'{key}' must be an object of settings, e.g. {{}}.")
    check_pair_settings(params["reward"], "reward settings")
    check_pair_settings(params["policy"], "policy settings")
    return params


@transaction.atomic
def round_start(*, project: Project, user, method: str = Round.Method.PPO, params: dict | None = None) -> Round:
    """Start the next round of a project (one at a time)."""
    require_role(project=project, user=user, role=Role.ADMIN)
    Project.objects.select_for_update().get(pk=project.pk)  # one round start at a time
    if method not in Round.Method.values:
        raise ValidationError(f"Unknown method {method!r}: use {', '.join(Round.Method.values)}.")
    running = Round.objects.filter(project=project).exclude(stage__in=[Stage.DONE, Stage.FAILED, Stage.CANCELLED])
    if running.exists():
        raise ValidationError(f"Round {running.first().number} is still in progress; finish or cancel it first.")
    number = (Round.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
    policy = current_policy(project)
    rnd = Round.objects.create(
        project=project, number=number, method=method, params=_clean_params(params), base_policy=policy,
        created_by=user,
    )
    snapshot = selectors.demonstration_snapshot(project=project)
    trained_on = (policy.training_data.get("demonstrations") or {}).get("hash") if policy else None
    if snapshot["count"] and snapshot["hash"] != trained_on:
        _enter(rnd, Stage.SFT, input_model=policy)
    else:
        rnd.sft_policy = policy
        _enter(rnd, Stage.SAMPLING, input_model=policy)
    return rnd


def _enter(rnd: Round, stage: str, input_model: ModelVersion | None = None) -> None:
    """Move the round to `stage` and queue that stage's run, if it has one."""
    rnd.stage = stage
    if stage in (Stage.DONE, Stage.FAILED, Stage.CANCELLED):
        rnd.finished_at = timezone.now()
    rnd.save()
    p = rnd.params
    if stage == Stage.SFT:
        run_create(project=rnd.project, kind=TrainingRun.Kind.SFT, params=p["sft"], input_model=input_model, round=rnd)
    elif stage in (Stage.SAMPLING, Stage.RESAMPLING):
        sample = {**p["sample"], "prompts": p["prompts"], "k": p["k"] or rnd.project.k}
        run_create(project=rnd.project, kind=TrainingRun.Kind.SAMPLE, params=sample, input_model=input_model, round=rnd)
    elif stage == Stage.REWARD:
        run_create(project=rnd.project, kind=TrainingRun.Kind.REWARD, params=p["reward"], input_model=input_model, round=rnd)
    elif stage == Stage.EVALUATION:
        baseline = rnd.sft_policy or rnd.base_policy
        params = {**p["evaluation"], "baseline_id": baseline.pk if baseline else None}
        run_create(project=rnd.project, kind=TrainingRun.Kind.EVALUATE, params=params, input_model=input_model, round=rnd)
    elif stage == Stage.POLICY:
        kind = TrainingRun.Kind(rnd.method)  # ppo, dpo, rloo, grpo: a run kind of the same name
        params = dict(p["policy"])
        if kind in REWARD_MODEL_KINDS:
            params["reward_model_id"] = rnd.reward_model_id
        run_create(project=rnd.project, kind=kind, params=params, input_model=input_model, round=rnd)


def round_rankings(rnd: Round) -> int:
    """Rankings submitted on the tasks this round sampled."""
    sample_runs = rnd.runs.filter(kind=TrainingRun.Kind.SAMPLE, status=TrainingRun.Status.SUCCEEDED)
    first = sample_runs.order_by("finished_at").first()
    if first is None:
        return 0
    return Ranking.objects.filter(task__project=rnd.project, task__created_at__gte=first.started_at).count()


@transaction.atomic
def round_advance(*, round_id: int) -> Round:
    """Look at the round's latest run (or its rankings) and move it on when it can."""
    rnd = Round.objects.select_for_update().select_related("project").get(pk=round_id)
    if rnd.finished:
        return rnd
    if rnd.stage == Stage.RANKING:
        if round_rankings(rnd) >= rnd.params["min_rankings"]:
            _enter(rnd, Stage.REWARD, input_model=rnd.sft_policy)
        return rnd
    kinds = POLICY_KINDS if rnd.stage == Stage.POLICY else [STAGE_RUN[rnd.stage]]
    run = rnd.runs.filter(kind__in=kinds).order_by("-created_at", "-id").first()
    if run is None or run.status in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING):
        return rnd
    if run.status != TrainingRun.Status.SUCCEEDED:
        rnd.error = f"{run.get_kind_display()} run {run.pk} {run.status}." + (f" {run.error[:500]}" if run.error else "")
        _enter(rnd, Stage.CANCELLED if run.status == TrainingRun.Status.CANCELLED else Stage.FAILED)
        return rnd
    if rnd.stage == Stage.SFT:
        rnd.sft_policy = run.output_model
        _enter(rnd, Stage.SAMPLING, input_model=rnd.sft_policy)
    elif rnd.stage == Stage.SAMPLING:
        _enter(rnd, Stage.RANKING)
        if round_rankings(rnd) >= rnd.params["min_rankings"]:
            _enter(rnd, Stage.REWARD, input_model=rnd.sft_policy)
    elif rnd.stage == Stage.REWARD:
        rnd.reward_model = run.output_model
        _enter(rnd, Stage.POLICY, input_model=rnd.sft_policy)
    elif rnd.stage == Stage.POLICY:
        rnd.new_policy = run.output_model
        _enter(rnd, Stage.RESAMPLING, input_model=rnd.new_policy)
    elif rnd.stage == Stage.RESAMPLING:
        _enter(rnd, Stage.EVALUATION, input_model=rnd.new_policy)
    elif rnd.stage == Stage.EVALUATION:
        _enter(rnd, Stage.DONE)
    return rnd


@transaction.atomic
def round_cancel(*, round_id: int, user) -> Round:
    from labelapp.services.runs import run_cancel

    rnd = Round.objects.select_for_update().select_related("project").get(pk=round_id)
    require_role(project=rnd.project, user=user, role=Role.ADMIN)
    if rnd.finished:
        raise ValidationError(f"Round {rnd.number} already ended ({rnd.get_stage_display().lower()}).")
    for run in rnd.runs.filter(status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]):
        run_cancel(run_id=run.pk, user=user)
    rnd.error = "Cancelled by an admin."
    _enter(rnd, Stage.CANCELLED)
    return rnd


def rounds_advance_all() -> int:
    """Advance every unfinished round (the periodic task); returns how many moved."""
    moved = 0
    for rnd in Round.objects.exclude(stage__in=[Stage.DONE, Stage.FAILED, Stage.CANCELLED]):
        before = rnd.stage
        if round_advance(round_id=rnd.pk).stage != before:
            moved += 1
    return moved
