"""Rounds: one turn of the InstructGPT loop, advanced stage by stage.

    SFT (only when the demonstrations changed since the current policy was trained)
      → SAMPLING (K completions for N prompts from the policy, as ranking tasks)
      → RANKING  (wait until `min_rankings` rankings of this round's tasks are in)
      → REWARD   (reward model from all the project's rankings)
      → POLICY   (PPO against that reward model, or DPO on the pairs)
      → RESAMPLING (the new policy's samples become new ranking tasks)
      → EVALUATION (blind A/B tasks: new policy vs its parent on held-out prompts, plus the
                    reward model's automatic win-rate)
      → the promotion gate (`gate_verdict`): the new policy becomes the project's current policy
        only if it passes (default: reward-model win-rate over its parent ≥ 0.5 on held-out
        prompts; optionally a blind human win-rate after `min_judgments` judgments, which the
        round waits for) → DONE; otherwise → HELD ("held for review"): the parent stays current
        and an admin promotes (`round_promote`) or discards (`round_discard`) it with one click.

`round_advance` is called by the worker when a round's run ends, by the periodic
`studio.rounds_advance` task (for the RANKING wait) and from the studio page; it is idempotent.

A RANKING wait that can never end is said, not sat through: `round_start` refuses a `min_rankings` above
`prompts` × the project's overlap (the most rankings the round's tasks can take), and while the round waits
`round_advance` checks whether the people who can rank could still give the missing rankings
(`ranking_blocker`: each task takes overlap rankings, each person ranks a task once, a skip or a withdrawal is
final); when they cannot, `Round.error` says why and what would unblock it (a higher overlap, more annotators,
or a new round with a reachable `min_rankings`), and the round keeps waiting, so the fix takes effect at the
next check. The line clears itself once the rankings are reachable again.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from labelapp import round_settings
from labelapp.models import Assignment, ModelVersion, Project, Ranking, RankingTask, Role, Round, TrainingRun
from labelapp.selectors import labels as selectors
from labelapp.services.access import require_role
from labelapp.services.queue import FINISHED
from labelapp.services.runs import check_pair_settings, lock_current, make_current_locked, run_create

Stage = Round.Stage
DEFAULTS = {
    "prompts": 8,  # prompts sampled per round
    "k": None,  # completions per prompt (None: the project's K)
    "min_rankings": 8,  # rankings of this round's tasks needed before the reward model
    "priority": 10,  # rank-queue priority of this round's own tasks while it runs (the backlog has 0)
    "sft": {},  # rlhf SFT settings (max_steps, learning_rate, …)
    "reward": {},  # … and min_rank_gap: which pairs of each ranking to train on (1 = all)
    "policy": {},  # PPO or DPO settings (DPO: min_rank_gap too)
    "sample": {},  # max_new_tokens, temperature
    "evaluation": {},  # prompts (held-out, default 8), max_new_tokens, temperature
    "gate": {},  # the promotion gate: min_reward_win_rate, min_human_win_rate, min_judgments
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
MAX_LINEAGE = 1000  # parents followed looking for the demonstrations a policy was trained on (a cycle stops sooner)


def current_policy(project: Project) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=ModelVersion.Kind.POLICY, is_current=True).first()


def _clean_params(params: dict | None, method: str = Round.Method.PPO) -> dict:
    """Every setting of the round (labelapp.round_settings): the given ones over the defaults, all checked;
    every problem is reported at once, each with its path."""
    given = params or {}
    if not isinstance(given, dict):
        raise ValidationError("Round settings must be an object, like {\"prompts\": 8}.")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValidationError(f"Unknown round settings {unknown}; use {sorted(DEFAULTS)}.")
    params = {**DEFAULTS, **given}
    errors: list[str] = []
    for key in ("prompts", "min_rankings"):
        if isinstance(params[key], bool) or not isinstance(params[key], int) or params[key] < 1:
            errors.append(f"'{key}' must be a whole number of at least 1.")
    k = params["k"]
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 9):
        errors.append(f"'k' must be null (the project's K) or a whole number from 2 to 9; got {k!r}.")
    priority = params["priority"]
    if isinstance(priority, bool) or not isinstance(priority, int) or not -round_settings.MAX_PRIORITY <= priority <= round_settings.MAX_PRIORITY:
        errors.append(f"'priority' must be a whole number from {-round_settings.MAX_PRIORITY} to {round_settings.MAX_PRIORITY} "
                      f"(higher is served first; the backlog has 0); got {priority!r}.")
    for section in round_settings.SECTIONS:
        params[section] = round_settings.check_section(section, method, params[section], errors)
    for section, what in (("reward", "reward settings"), ("policy", "policy settings")):
        try:
            check_pair_settings(params[section], what)
        except ValidationError as exc:
            errors.extend(exc.messages)
    round_settings.raise_if(errors)
    return params


@transaction.atomic
def round_start(*, project: Project, user, method: str = Round.Method.PPO, params: dict | None = None) -> Round:
    """Start the next round of a project (one at a time)."""
    require_role(project=project, user=user, role=Role.ADMIN)
    Project.objects.select_for_update().get(pk=project.pk)  # one round start at a time
    if method not in Round.Method.values:
        raise ValidationError(f"Unknown method {method!r}: use {', '.join(Round.Method.values)}.")
    params = _clean_params(params, method)  # checked before anything is written
    most = params["prompts"] * project.overlap
    if params["min_rankings"] > most:
        raise ValidationError(
            f"'min_rankings' {params['min_rankings']} can never be reached: the round samples at most "
            f"{params['prompts']} prompts and each of their tasks takes {project.overlap} ranking"
            f"{'s' if project.overlap != 1 else ''} (the project's overlap), {most} in all. Lower min_rankings to "
            f"{most} or less, or raise prompts or the project's overlap.")
    running = Round.objects.filter(project=project).exclude(stage__in=Round.ENDED)
    if running.exists():
        raise ValidationError(f"Round {running.first().number} is still in progress; finish or cancel it first.")
    number = (Round.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
    policy = current_policy(project)
    rnd = Round.objects.create(
        project=project, number=number, method=method, params=params, base_policy=policy,
        created_by=user,
    )
    snapshot = selectors.demonstration_snapshot(project=project, include_pending=params["sft"]["include_pending"])
    if snapshot["count"] and snapshot["hash"] != demonstrations_hash(policy):
        _enter(rnd, Stage.SFT, input_model=policy)
    else:
        rnd.sft_policy = policy
        _enter(rnd, Stage.SAMPLING, input_model=policy)
    return rnd


def demonstrations_hash(policy: ModelVersion | None) -> str | None:
    """The demonstration snapshot hash `policy` was trained on: its own SFT lineage, else the nearest one up its
    `parent` chain (a PPO, DPO, RLOO or GRPO policy records its prompts or pairs, and keeps its SFT ancestor's
    demonstrations); None when no ancestor trained on demonstrations."""
    seen: set[int] = set()
    while policy is not None and policy.pk not in seen and len(seen) < MAX_LINEAGE:
        demonstrations = (policy.training_data or {}).get("demonstrations")
        if demonstrations:
            return demonstrations.get("hash")
        seen.add(policy.pk)
        policy = policy.parent
    return None


def _set(section: dict) -> dict:
    """A studio section's settings less the unset ones (a null seed: the run draws its own)."""
    return {k: v for k, v in section.items() if v is not None}


def _enter(rnd: Round, stage: str, input_model: ModelVersion | None = None) -> None:
    """Move the round to `stage` and queue that stage's run, if it has one."""
    rnd.stage = stage
    if stage in Round.ENDED:
        rnd.finished_at = timezone.now()
        # its tasks join the backlog, so they never outrank the next round's own samples
        RankingTask.objects.filter(round=rnd).exclude(priority=0).update(priority=0)
    rnd.save()
    p = rnd.params
    if stage == Stage.SFT:
        run_create(project=rnd.project, kind=TrainingRun.Kind.SFT, params=p["sft"], input_model=input_model, round=rnd)
    elif stage in (Stage.SAMPLING, Stage.RESAMPLING):
        sample = {**_set(p["sample"]), "prompts": p["prompts"], "k": p["k"] or rnd.project.k}
        run_create(project=rnd.project, kind=TrainingRun.Kind.SAMPLE, params=sample, input_model=input_model, round=rnd)
    elif stage == Stage.REWARD:
        run_create(project=rnd.project, kind=TrainingRun.Kind.REWARD, params=p["reward"], input_model=input_model, round=rnd)
    elif stage == Stage.EVALUATION:
        baseline = rnd.sft_policy or rnd.base_policy
        params = {**_set(p["evaluation"]), "baseline_id": baseline.pk if baseline else None,
                  "reward_model_id": rnd.reward_model_id}  # the gate judges with the round's reward model
        run_create(project=rnd.project, kind=TrainingRun.Kind.EVALUATE, params=params, input_model=input_model, round=rnd)
    elif stage == Stage.POLICY:
        kind = TrainingRun.Kind(rnd.method)  # ppo, dpo, rloo, grpo: a run kind of the same name
        params = dict(p["policy"])
        if kind in REWARD_MODEL_KINDS:
            params["reward_model_id"] = rnd.reward_model_id
        run_create(project=rnd.project, kind=kind, params=params, input_model=input_model, round=rnd)


def task_priority(rnd: Round | None) -> int:
    """The rank-queue priority of a task a round's sampling creates now (0 outside a running round)."""
    if rnd is None or rnd.finished:
        return 0
    return int((rnd.params or {}).get("priority", DEFAULTS["priority"]))


def round_rankings(rnd: Round) -> int:
    """Rankings submitted on the tasks this round sampled (RankingTask.round; gold tasks are never a round's)."""
    if RankingTask.objects.filter(round=rnd).exists():
        return Ranking.objects.filter(task__round=rnd).count()
    # rounds sampled before tasks named their round: the project's tasks created since its first sampling
    sample_runs = rnd.runs.filter(kind=TrainingRun.Kind.SAMPLE, status=TrainingRun.Status.SUCCEEDED)
    first = sample_runs.order_by("finished_at").first()
    if first is None:
        return 0
    return Ranking.objects.filter(task__project=rnd.project, task__created_at__gte=first.started_at).count()


def _leave_ranking_or_say_why(rnd: Round) -> None:
    """RANKING: on to the reward model once `min_rankings` are in; else keep waiting, with `error` saying why
    the wait cannot end when it cannot (cleared once it can)."""
    if round_rankings(rnd) >= rnd.params["min_rankings"]:
        rnd.error = ""
        _enter(rnd, Stage.REWARD, input_model=rnd.sft_policy)
        return
    blocker = ranking_blocker(rnd)
    if blocker != rnd.error:
        rnd.error = blocker
        rnd.save(update_fields=["error"])


def _reachable(done: int, tasks: list[tuple[int, int]], overlap: int, extra_people: int = 0) -> int:
    """Rankings the round can have at most: those in, plus per open task min(free slots, people who may still
    rank it); `tasks` is (rankings so far, people who may still rank it) per task."""
    return done + sum(min(max(0, overlap - count), people + extra_people) for count, people in tasks)


def ranking_blocker(rnd: Round) -> str:
    """Why the round's RANKING wait cannot reach `min_rankings` as things stand, and what would unblock it;
    "" when it can (or when its tasks cannot be told apart: rounds sampled before tasks named their round).

    At most: each task of the round not yet decided in adjudication takes the project's overlap in rankings,
    each from a different person who may rank in the project (a member, any role, or a superuser; active) and
    has not ranked, skipped or withdrawn it."""
    needed, done = rnd.params["min_rankings"], round_rankings(rnd)
    if done >= needed:
        return ""
    project = rnd.project
    if not RankingTask.objects.filter(round=rnd).exists():
        sampled = (rnd.runs.filter(kind=TrainingRun.Kind.SAMPLE, status=TrainingRun.Status.SUCCEEDED)
                   .order_by("-finished_at", "-id").first())
        if sampled is None or (sampled.result or {}).get("tasks", 1):
            return ""  # not sampled yet, or an old round whose tasks do not name it
        return (f"Waiting for rankings cannot finish: this round's sampling made no ranking tasks (no training prompt "
                f"that the policy had not answered yet), and it needs {needed} rankings. To unblock it: add training "
                "prompts, then cancel this round and start a new one.")
    rankers = set(get_user_model().objects.filter(is_active=True).filter(
        Q(memberships__project=project) | Q(is_superuser=True)).values_list("pk", flat=True))
    open_tasks = dict(RankingTask.objects.filter(round=rnd, adjudication__isnull=True).values_list("pk", "ranking_count"))
    gone: dict[int, set[int]] = {pk: set() for pk in open_tasks}  # per task: who may not rank it (again)
    for task_id, user_id in [
        *Assignment.objects.filter(ranking_task__in=open_tasks, status__in=FINISHED).values_list("ranking_task", "user"),
        *Ranking.objects.filter(task__in=open_tasks).values_list("task", "annotator"),
    ]:
        gone[task_id].add(user_id)
    tasks = [(count, len(rankers - gone[pk])) for pk, count in open_tasks.items()]
    overlap = project.overlap
    most = _reachable(done, tasks, overlap)
    if most >= needed:
        return ""
    fixes = []
    raised = next((o for o in range(overlap + 1, 21) if _reachable(done, tasks, o) >= needed), None)
    if raised is not None:
        fixes.append(f"raise the project's overlap to {raised}")
    people = next((p for p in range(1, needed + 1) if _reachable(done, tasks, overlap, p) >= needed), None)
    if people is not None:
        fixes.append(f"add {people} more annotator{'s' if people != 1 else ''} to the project")
    fixes.append(f"cancel this round and start one with min_rankings {most} or less" if most
                 else "cancel this round and start a new one")
    return (f"Waiting for rankings cannot finish: this round needs {needed} rankings of its tasks, {done} "
            f"{'is' if done == 1 else 'are'} in, and at most {most - done} more can come ({len(open_tasks)} open "
            f"task{'s' if len(open_tasks) != 1 else ''}, overlap {overlap}, {len(rankers)} "
            f"{'person' if len(rankers) == 1 else 'people'} who can rank, each ranking a task once). To unblock it: "
            + ", or ".join(fixes) + ".")


@transaction.atomic
def round_advance(*, round_id: int) -> Round:
    """Look at the round's latest run (or its rankings) and move it on when it can."""
    rnd = Round.objects.select_for_update(of=("self",)).select_related("project").get(pk=round_id)
    if rnd.finished:
        return rnd
    if rnd.stage == Stage.RANKING:
        _leave_ranking_or_say_why(rnd)
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
        _leave_ranking_or_say_why(rnd)
    elif rnd.stage == Stage.REWARD:
        rnd.reward_model = run.output_model
        _enter(rnd, Stage.POLICY, input_model=rnd.sft_policy)
    elif rnd.stage == Stage.POLICY:
        rnd.new_policy = run.output_model
        _enter(rnd, Stage.RESAMPLING, input_model=rnd.new_policy)
    elif rnd.stage == Stage.RESAMPLING:
        _enter(rnd, Stage.EVALUATION, input_model=rnd.new_policy)
    elif rnd.stage == Stage.EVALUATION:
        lock_current(rnd.project_id)  # the verdict's "parent still current" holds until the policy is made current
        verdict = gate_verdict(rnd)
        rnd.gate = verdict
        if verdict["state"] == "waiting":  # for blind judgments; beat's rounds_advance looks again
            rnd.save(update_fields=["gate"])
        elif verdict["state"] == "passed":
            make_current_locked(rnd.new_policy)
            _enter(rnd, Stage.DONE)
        else:
            _enter(rnd, Stage.HELD)
    return rnd


def _pct(value: float) -> str:
    return f"{value:.1%}"


def gate_verdict(rnd: Round) -> dict:
    """The promotion gate of a round whose evaluation has run: {state: waiting / passed / held, checks, text}.

    The reward-model check reads the round's own evaluation (its reward model's scores of the new
    policy's and the parent's answers on held-out prompts, labelapp.selectors.stats); prompts that are not
    held out (a project without validation prompts) cannot pass it. The human check waits until
    `min_judgments` blind judgments are in (unless another check has already failed)."""
    from labelapp.models import EvaluationTask, Prompt
    from labelapp.selectors.stats import evaluation_summary

    settings = {**round_settings.section_defaults("gate", rnd.method), **((rnd.params or {}).get("gate") or {})}
    summary = evaluation_summary(project=rnd.project, round_id=rnd.pk)
    tasks = EvaluationTask.objects.filter(round=rnd)
    held_out = tasks.exists() and not tasks.exclude(prompt__split=Prompt.Split.VALIDATION).exists()
    checks, waiting = [], False
    auto = summary["reward_model"]
    for name, key, lc in (("reward_model", "min_reward_win_rate", False),
                          ("reward_model_lc", "min_reward_lc_win_rate", True)):
        need = settings.get(key)
        if need is None:
            continue
        what = "length-controlled win-rate" if lc else "win-rate"
        rate = summary["length_controlled"]["reward_model"]["win_rate"] if lc else auto["win_rate"]
        if not auto["n"] or rate is None:
            checks.append({"name": name, "passed": False, "text": "no reward-model scores of the evaluation"
                                                                  + (" (length-controlled check)" if lc else "")})
        elif not held_out:
            checks.append({"name": name, "passed": False, "win_rate": rate,
                           "text": "the evaluation had no held-out (validation) prompts "
                                   + ("for the length-controlled check" if lc else "to judge on")})
        else:
            checks.append({"name": name, "passed": rate >= need, "win_rate": rate, "n": auto["n"],
                           "text": f"reward-model {what} {_pct(rate)} over the parent on {auto['n']} held-out "
                                   f"prompts (needs ≥ {_pct(need)})"})
    human, judgments = summary["human"], settings["min_judgments"]
    for name, key, lc in (("human", "min_human_win_rate", False), ("human_lc", "min_human_lc_win_rate", True)):
        need = settings.get(key)
        if need is None:
            continue
        what = "length-controlled win-rate" if lc else "win-rate"
        rate = summary["length_controlled"]["human"]["win_rate"] if lc else human["win_rate"]
        if human["n"] < judgments:
            waiting = True
            checks.append({"name": name, "passed": None, "n": human["n"],
                           "text": f"{human['n']} / {judgments} blind judgments in (needs a {what} ≥ {_pct(need)})"})
        else:
            checks.append({"name": name, "passed": rate >= need, "win_rate": rate, "n": human["n"],
                           "text": f"blind human {what} {_pct(rate)} over {human['n']} judgments "
                                   f"(needs ≥ {_pct(need)})"})
    moved_on = _moved_on(rnd)
    if moved_on:  # promoting would drop newer work (as round_promote refuses): held, however it scored
        checks.append({"name": "parent_current", "passed": False, "text": moved_on})
    failed = any(c["passed"] is False for c in checks)
    state = "held" if failed else "waiting" if waiting else "passed"
    said = "; ".join(c["text"] for c in checks) or "no checks set"
    text = {
        "held": f"Promotion gate: held for review — {said}. "
                + ("Discard this round or start a new one." if moved_on else
                   "The previous policy stays current until an admin promotes or discards the new one."),
        "waiting": f"Promotion gate: waiting — {said}.",
        "passed": f"Promotion gate: passed — {said}; the new policy is now current.",
    }[state]
    return {"state": state, "checks": checks, "summary": said, "text": text}


def _moved_on(rnd: Round) -> str | None:
    """Why the round's new policy may not become current: the current policy is no longer its parent (the
    round's starting point), so promoting it would drop that newer work. None when it may."""
    policy = rnd.new_policy
    parent = policy.parent if policy else None
    current = current_policy(rnd.project)
    if current is None or parent is None or current.pk == parent.pk:
        return None
    return (f"the current policy is now {current.name}, not {parent.name} (this round's starting point): "
            "promoting would drop that newer work")


def _held(round_id: int, user) -> Round:
    rnd = Round.objects.select_for_update(of=("self",)).select_related("project", "new_policy").get(pk=round_id)
    require_role(project=rnd.project, user=user, role=Role.ADMIN)
    if rnd.stage != Stage.HELD:
        raise ValidationError(f"Round {rnd.number} is not held for review ({rnd.get_stage_display().lower()}).")
    return rnd


def _decide(rnd: Round, user, decision: str, text: str) -> Round:
    rnd.gate = {**(rnd.gate or {}), "decision": decision, "decided_by": user.get_username(),
                "decided_at": timezone.now().isoformat(), "text": text}
    _enter(rnd, Stage.DONE)
    return rnd


@transaction.atomic
def round_promote(*, round_id: int, user) -> Round:
    """An admin overrides the gate: the held round's new policy becomes current, the round is done."""
    rnd = _held(round_id, user)
    lock_current(rnd.project_id)  # no other "make current" between the check and the change
    policy, moved_on = rnd.new_policy, _moved_on(rnd)
    if moved_on:
        raise ValidationError(f"{moved_on[0].upper()}{moved_on[1:]}. Discard this round or start a new one.")
    make_current_locked(policy)
    return _decide(rnd, user, "promoted", f"Promotion gate: held for review — {_said(rnd)}. Promoted by "
                                          f"{user.get_username()}: {policy.name} is now the current policy.")


@transaction.atomic
def round_discard(*, round_id: int, user) -> Round:
    """An admin agrees with the gate: the held policy stays registered but never becomes current."""
    rnd = _held(round_id, user)
    return _decide(rnd, user, "discarded", f"Promotion gate: held for review — {_said(rnd)}. Discarded by "
                                           f"{user.get_username()}: the previous policy stays current.")


def _said(rnd: Round) -> str:
    return (rnd.gate or {}).get("summary") or "no verdict recorded"


@transaction.atomic
def round_cancel(*, round_id: int, user) -> Round:
    from labelapp.services.runs import run_cancel

    rnd = Round.objects.select_for_update(of=("self",)).select_related("project").get(pk=round_id)
    require_role(project=rnd.project, user=user, role=Role.ADMIN)
    if rnd.finished:
        raise ValidationError(f"Round {rnd.number} already ended ({rnd.get_stage_display().lower()}).")
    # locked, so a run that finishes meanwhile is skipped (it is checked again once its lock is free), not refused
    unfinished = rnd.runs.select_for_update(of=("self",)).filter(
        status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING])
    for run in unfinished:
        run_cancel(run_id=run.pk, user=user)
    rnd.error = "Cancelled by an admin."
    _enter(rnd, Stage.CANCELLED)
    return rnd


def rounds_advance_all() -> int:
    """Advance every unfinished round (the periodic task); returns how many moved."""
    moved = 0
    for rnd in Round.objects.exclude(stage__in=Round.ENDED):
        before = rnd.stage
        if round_advance(round_id=rnd.pk).stage != before:
            moved += 1
    return moved
