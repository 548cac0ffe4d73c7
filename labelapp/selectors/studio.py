"""Reads for the admin studio: rounds and their runs, run progress, model lineage, queue depths
and annotator throughput. Nothing here writes; the studio's buttons call labelapp.services.

Every function takes a project the caller has already checked the admin role on; annotator
names are shown because only admins reach these pages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from numbers import Real

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from labelapp.models import Assignment, Comparison, Demonstration, ModelVersion, Project, Ranking, Round, TrainingRun
from labelapp.selectors.length_watch import reward_length_text
from labelapp.selectors.stats import evaluation_summaries, evaluation_summary
from labelapp.services.queue import SPECS, live_lease

WAITING_STAGES = (Round.Stage.RANKING,)  # a round here waits for people, not for a run
HISTORY_POINTS = 500  # metric points per run sent to the browser
LINEAGE_DEPTH = 20
# Charts and summaries show these first, then any other numeric key, alphabetically.
PREFERRED_METRICS = ("loss/train", "objective/reward", "objective/response_length", "objective/kl",
                     "eval/pairwise_accuracy", "eval/accuracy_chosen_shorter", "eval/accuracy",
                     "loss/eval", "loss/policy", "loss/value")


# ---- rounds and runs ----------------------------------------------------------------------


def round_steps(rnd: Round) -> list[dict]:
    """The round's stages in order, each marked done / current / todo (or failed / cancelled)."""
    order = [s for s in Round.Stage if s not in (Round.Stage.FAILED, Round.Stage.CANCELLED, Round.Stage.HELD)]
    if rnd.stage == Round.Stage.HELD:  # every stage ran; the gate held the new policy
        steps = [{"stage": s.value, "label": s.label, "state": "done"} for s in order if s != Round.Stage.DONE]
        return steps + [{"stage": rnd.stage, "label": rnd.get_stage_display(), "state": rnd.stage}]
    if rnd.stage in order:
        here = order.index(rnd.stage)

        def state(i: int) -> str:
            if i < here or rnd.stage == Round.Stage.DONE:
                return "done"
            return "current" if i == here else "todo"

        return [{"stage": s.value, "label": s.label, "state": state(i)} for i, s in enumerate(order)]
    # Failed or cancelled: the stages its runs reached are done, the last one is where it stopped.
    reached = {run.kind for run in rnd.runs.all()}
    steps = [{"stage": s.value, "label": s.label, "state": "todo"} for s in order if s != Round.Stage.DONE]
    last = None
    for step in steps:
        if _stage_kinds(step["stage"], rnd) & reached:
            step["state"], last = "done", step
    if last is not None:
        last["state"] = rnd.stage
    steps.append({"stage": rnd.stage, "label": rnd.get_stage_display(), "state": rnd.stage})
    return steps


def _stage_kinds(stage: str, rnd: Round) -> set[str]:
    return {
        "sft": {"sft"}, "sampling": {"sample"}, "reward": {"reward"}, "policy": {rnd.method},
        "evaluation": {"evaluate"},
    }.get(stage, set())


def rounds_timeline(*, project: Project, limit: int = 10) -> list[Round]:
    """The latest rounds, newest first, with their runs (oldest first) prefetched and `steps`
    (see round_steps) set."""
    from django.db.models import Prefetch

    runs = TrainingRun.objects.order_by("created_at", "id")
    rounds = list(
        Round.objects.filter(project=project).select_related("created_by")
        .prefetch_related(Prefetch("runs", queryset=runs)).order_by("-number")[:limit]
    )
    summaries = evaluation_summaries(project=project, round_ids=[rnd.pk for rnd in rounds])
    for rnd in rounds:
        rnd.steps = round_steps(rnd)
        rnd.evaluation_text = evaluation_text(summaries[rnd.pk])
        rnd.evaluation_warning = evaluation_warning(summaries[rnd.pk])
        rnd.evaluation_categories = category_rows(summaries[rnd.pk])
        rnd.ranking = round_ranking(rnd)
        rnd.waiting_text = waiting_text(rnd, rnd.ranking)
        rnd.evaluation_templates = category_rows(summaries[rnd.pk], key="templates")
    return rounds


def _rate(result: dict) -> str:
    return f"{result['win_rate']:.1%} [95% CI {result['low']:.1%}–{result['high']:.1%}]"


def _controlled(result: dict) -> str:
    text = f", length-controlled {_rate(result)}"
    if result.get("separation") == "length":
        text += " (length alone orders the outcomes: weakly determined)"
    return text


def evaluation_text(summary: dict) -> str:
    """One line for a round's blind evaluation: the new policy's win-rate over its parent from the
    comparisons so far and from the reward model, each raw and length-controlled, and the mean answer
    lengths; "" while the round has no evaluation tasks."""
    if not summary["tasks"]:
        return ""
    human, auto = summary["human"], summary["reward_model"]
    controlled = summary.get("length_controlled", {})
    prompts = f"{summary['tasks']} held-out prompt{'s' if summary['tasks'] != 1 else ''}"
    if human["n"]:
        judged = f"{human['n']} judgment{'s' if human['n'] != 1 else ''} on {human['items']}"
        text = f"Blind evaluation, {prompts}: the new policy wins {_rate(human)} ({judged} prompts)"
        if controlled.get("human", {}).get("win_rate") is not None:
            text += _controlled(controlled["human"])
    else:
        text = f"Blind evaluation, {prompts}: no judgments yet"
    if auto["n"]:
        text += f"; reward model {_rate(auto)}"
        if controlled.get("reward_model", {}).get("win_rate") is not None:
            text += _controlled(controlled["reward_model"])
    lengths = summary.get("lengths") or {}
    if lengths.get("candidate") is not None:
        text += (f". Mean answer length: new policy {lengths['candidate']:.0f}, parent {lengths['baseline']:.0f}"
                 + (f", references {lengths['reference']:.0f}" if lengths.get("reference") is not None else "")
                 + " characters")
    return text + "."


def evaluation_warning(summary: dict) -> str:
    """The evaluation's over-optimisation warnings (labelapp.selectors.length_watch) as one line, "" when none."""
    return " ".join(w["text"] for w in summary.get("warnings", []))


def category_rows(summary: dict, key: str = "categories") -> list[dict]:
    """Per prompt category (or per prompt template and few-shot count, key="templates"): tasks, raw and
    length-controlled win-rates (human, reward model), mean lengths."""
    rows = []
    for category, block in (summary.get(key) or {}).items():
        cells = {"category": category or "(no category)", "tasks": block["tasks"]}
        for side in ("human", "reward_model"):
            raw, lc = block[side], block["length_controlled"][side]
            cells[side] = _rate(raw) if raw["n"] else "—"
            cells[f"{side}_lc"] = _rate(lc) if lc["win_rate"] is not None else "—"
        lengths = block["lengths"]
        cells["lengths"] = (f"{lengths['candidate']:.0f} / {lengths['baseline']:.0f}"
                            if lengths["candidate"] is not None else "—")
        rows.append(cells)
    return rows


def recent_runs(*, project: Project, limit: int = 25) -> QuerySet[TrainingRun]:
    return (
        TrainingRun.objects.filter(project=project)
        .select_related("round", "input_model", "output_model")
        .order_by("-created_at", "-id")[:limit]
    )


def run_for(*, project: Project, run_id: int) -> TrainingRun | None:
    return TrainingRun.objects.select_related("round", "input_model", "output_model", "retry_of").filter(
        project=project, pk=run_id
    ).first()


def percent(run: TrainingRun) -> float:
    if run.status == TrainingRun.Status.SUCCEEDED:
        return 100.0
    if not run.total:
        return 0.0
    return round(min(100.0, 100.0 * run.step / run.total), 1)


def _numeric(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and value == value  # not NaN


def metric_keys(history: list[dict]) -> list[str]:
    keys = {k for point in history for k, v in point.items() if k != "step" and _numeric(v)}
    first = [k for k in PREFERRED_METRICS if k in keys]
    return first + sorted(keys - set(first))


def capped_history(history: list[dict], limit: int = HISTORY_POINTS) -> list[dict]:
    """At most `limit` points, evenly spread, always keeping the last one."""
    if len(history) <= limit:
        return list(history)
    stride = len(history) / (limit - 1)
    picked = [history[int(i * stride)] for i in range(limit - 1)]
    return picked + [history[-1]]


def metric_series(history: list[dict]) -> list[dict]:
    """One series per metric key: points (step, value) and the summary shown under its chart."""
    series = []
    for key in metric_keys(history):
        points = [(p.get("step") or i, p[key]) for i, p in enumerate(history) if _numeric(p.get(key))]
        values = [v for _, v in points]
        summary = {"last": values[-1], "min": min(values), "max": max(values)}
        text = ", ".join(f"{name} {value:.4g}" for name, value in summary.items()) + f" ({len(values)} point{'s' if len(values) != 1 else ''})"
        series.append({"key": key, "points": points, **summary, "summary": text})
    return series


def duration_text(seconds: float | None) -> str:
    """12 s, 3 min 5 s, 2 h 4 min; an em dash when unknown."""
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def run_status(run: TrainingRun, *, history: bool = False, now: datetime | None = None) -> dict:
    """What the studio polls: progress, ETA, liveness and the latest metrics of one run."""
    now = now or timezone.now()
    metrics = run.metrics or []
    data = {
        "id": run.pk,
        "kind": run.kind,
        "kind_label": run.get_kind_display(),
        "status": run.status,
        "status_label": run.get_status_display() + (" (cancelling)" if run.cancel_requested and run.status == "running" else ""),
        "finished": run.status in TrainingRun.TERMINAL,
        "retryable": run.status in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED),
        "cancel_requested": run.cancel_requested,
        "step": run.step,
        "total": run.total,
        "percent": percent(run),
        "eta_seconds": None if run.eta_seconds is None else round(run.eta_seconds, 1),
        "heartbeat_age_seconds": None if run.heartbeat_at is None else round((now - run.heartbeat_at).total_seconds(), 1),
        "eta_text": duration_text(run.eta_seconds) if run.status == TrainingRun.Status.RUNNING else "—",
        "attempts": run.attempts,
        "last_metrics": {k: v for k, v in (metrics[-1] if metrics else {}).items() if _numeric(v)},
        "error": run.error[-2000:],
        "output_model_id": run.output_model_id,
        "round": None if run.round is None else {
            "id": run.round_id, "number": run.round.number, "stage": run.round.stage,
            "stage_label": run.round.get_stage_display(),
        },
    }
    age = data["heartbeat_age_seconds"]
    data["heartbeat_stale"] = run.status == TrainingRun.Status.RUNNING and age is not None and (
        age > settings.RUN_HEARTBEAT_TIMEOUT)
    data["heartbeat_text"] = "—" if age is None or data["finished"] else (
        f"{duration_text(age)} ago" + (" (worker lost?)" if data["heartbeat_stale"] else ""))
    if history:
        data["history"] = capped_history(metrics)
        data["metric_keys"] = metric_keys(metrics)
        data["logs_tail"] = run.logs_tail[-4000:]
        data["length_watch"] = run_length_watch(run)
    return data


def run_length_watch(run: TrainingRun) -> dict:
    """labelapp.selectors.length_watch.run_length_watch with the run's round evaluation, and one warning line."""
    from labelapp.selectors.length_watch import run_length_watch as watch

    summary = None
    if run.round_id and run.kind not in (TrainingRun.Kind.SFT, TrainingRun.Kind.REWARD, TrainingRun.Kind.SAMPLE):
        summary = evaluation_summary(project=run.project, round_id=run.round_id)
    data = watch(run, summary)
    data["warning"] = " ".join(data["warnings"])
    data["trend_text"] = data["trend"]["text"] if data["trend"] else ""
    return data


def round_ranking(rnd: Round, now: datetime | None = None) -> dict | None:
    """While a round waits for people: rankings of its own tasks (RankingTask.round) against
    `min_rankings`, and who holds a lease on one of them now; None at any other stage."""
    if rnd.stage != Round.Stage.RANKING:
        return None
    from labelapp.services.rounds import round_rankings

    needed = (rnd.params or {}).get("min_rankings")
    done = round_rankings(rnd)
    leases = Assignment.objects.filter(live_lease(now or timezone.now()), ranking_task__round=rnd)
    working = sorted(set(leases.values_list("user__username", flat=True)))
    text = f"{done} / {needed} rankings of this round's tasks" if needed else f"{done} rankings of this round's tasks"
    return {"done": done, "needed": needed, "text": text, "working": [{"username": name} for name in working]}


def waiting_text(rnd: Round, ranking: dict | None = None) -> str:
    """The waiting stage's line: "k / n rankings of this round's tasks", and who is on them now."""
    ranking = ranking or round_ranking(rnd)
    if ranking is None:
        return ""
    names = [w["username"] for w in ranking["working"]]
    return ranking["text"] + (f" · working on them now: {', '.join(names)}" if names else "")


def round_status(rnd: Round) -> dict:
    if not hasattr(rnd, "evaluation_text"):
        summary = evaluation_summary(project=rnd.project, round_id=rnd.pk)
        rnd.evaluation_text, rnd.evaluation_warning = evaluation_text(summary), evaluation_warning(summary)
    if not hasattr(rnd, "ranking"):
        rnd.ranking = round_ranking(rnd)
    return {
        "id": rnd.pk, "number": rnd.number, "method": rnd.method, "method_label": rnd.get_method_display(),
        "stage": rnd.stage, "waiting_text": waiting_text(rnd, rnd.ranking), "ranking": rnd.ranking,
        "stage_label": rnd.get_stage_display(), "finished": rnd.finished, "error": rnd.error[:500],
        "steps": getattr(rnd, "steps", None) or round_steps(rnd),
        "runs": [{"id": run.pk, "kind_label": run.get_kind_display(), "status": run.status} for run in rnd.runs.all()],
        "evaluation_text": rnd.evaluation_text,
        "evaluation_warning": rnd.evaluation_warning,
        "gate": round_gate(rnd),
    }


def round_gate(rnd: Round) -> dict | None:
    """The promotion gate's line and state for the studio ({text, state, held, decision}), None before it ran."""
    gate = rnd.gate or {}
    if not gate.get("text"):
        return None
    return {"text": gate["text"], "state": gate.get("state"), "held": rnd.stage == Round.Stage.HELD,
            "decision": gate.get("decision", "")}


def studio_status(*, project: Project, now: datetime | None = None) -> dict:
    """The overview's polling payload: rounds, runs, model versions, queues and throughput.
    `active` says whether anything may still move without a person acting (a queued or running
    run, or an unfinished round between two runs): the page then polls every second. `open` says
    a round is unfinished (it may be waiting for rankings); otherwise the page backs off while
    nothing changes, and keeps looking, so a round started elsewhere appears without a reload."""
    now = now or timezone.now()
    runs = [run_status(run, now=now) for run in recent_runs(project=project)]
    rounds = [round_status(rnd) for rnd in rounds_timeline(project=project)]
    active = any(not r["finished"] for r in runs) or any(
        not r["finished"] and r["stage"] not in WAITING_STAGES and (r["gate"] or {}).get("state") != "waiting"
        for r in rounds
    )
    return {
        "active": active,
        "open": any(not r["finished"] for r in rounds),
        "runs": runs,
        "rounds": rounds,
        "models": [version_status(row) for row in model_versions(project=project)],
        "queues": queue_depths(project=project, now=now),
        "throughput": [{k: v for k, v in row.items() if k != "user_id"}
                       for row in annotator_throughput(project=project, now=now)],
    }


# ---- model versions -----------------------------------------------------------------------


@dataclass
class VersionRow:
    version: ModelVersion
    lineage: list[ModelVersion] = field(default_factory=list)  # root first, the version last
    key_metrics: list[tuple[str, float]] = field(default_factory=list)
    length_text: str = ""  # reward models: labelapp.selectors.length_watch.reward_length_text

    @property
    def metric_cells(self) -> list[tuple[str, float, str]]:
        """(name, value, what it means) for the template."""
        return [(key, value, metric_help(key)) for key, value in self.key_metrics]


# The model table shows held-out figures (measured on data the model did not train on) when a model
# has them; otherwise whole-run summaries, and last-batch values only as a last resort, each with
# its meaning (METRIC_HELP: the cell's title and the legend under the table).
HELD_OUT_METRICS = ("eval/rm_win_rate", "eval/pairwise_accuracy", "loss/eval", "eval/pairs")
RUN_SUMMARY_METRICS = ("loss/train_mean",)
BATCH_METRICS = ("objective/reward", "objective/kl", "loss/train", "accuracy")
NOT_SHOWN = frozenset({"global_step", "epoch", "perf/steps_per_s", "train/learning_rate", "grad_norm", "num_tokens",
                       "resumed_from", "total_flos", "train_runtime"})
METRIC_HELP = {
    "eval/rm_win_rate": "Held out: the round's reward model prefers this policy's answer to its parent's on this "
                        "share of held-out prompts (ties count half) — the promotion gate's figure.",
    "eval/pairwise_accuracy": "Held out: share of held-out preference pairs the reward model orders as the "
                              "annotators did (ties count half).",
    "loss/eval": "Held out: loss on held-out examples.",
    "eval/pairs": "Held out: how many held-out pairs the accuracy was measured on.",
    "loss/train_mean": "Training loss averaged over the whole run (not one batch).",
    "objective/reward": "Last PPO update only: mean reward-model score of that rollout batch (training prompts).",
    "objective/kl": "Last PPO update only: KL divergence from the starting policy, summed over a response.",
    "loss/train": "Last logged training batch only (noisy): training loss.",
    "accuracy": "Last training batch only (noisy; a handful of pairs): share ordered correctly. See "
                "eval/pairwise_accuracy for the held-out figure.",
    "margin": "Last training batch only: mean reward difference, chosen minus rejected.",
}


def metric_help(key: str) -> str:
    if key in METRIC_HELP:
        return METRIC_HELP[key]
    if key.startswith("eval/"):
        return "Held out: measured on data the model did not train on."
    return "Last logged training value (one batch or update)."


def key_metrics(metrics: dict, limit: int = 4) -> list[tuple[str, float]]:
    """The figures the model table shows: held-out ones when there are any, else the whole-run mean, else
    the last batch's (labelled as such by metric_help)."""
    numeric = {k: v for k, v in (metrics or {}).items() if _numeric(v) and k not in NOT_SHOWN}
    held_out = [k for k in HELD_OUT_METRICS if k in numeric]
    if held_out:
        keys = held_out
    else:
        first = [k for k in RUN_SUMMARY_METRICS + BATCH_METRICS if k in numeric]
        rest = sorted(k for k in set(numeric) - set(first) if not k.startswith("eval/"))  # eval/*: length_text
        keys = first + rest
    return [(k, numeric[k]) for k in keys[:limit]]


def model_versions(*, project: Project, limit: int = 50) -> list[VersionRow]:
    """The project's versions, newest first, each with its parent chain (root → version)."""
    versions = list(ModelVersion.objects.filter(project=project).order_by("-created_at", "-id")[:limit])
    known = {v.pk: v for v in versions}
    missing = {v.parent_id for v in versions if v.parent_id and v.parent_id not in known}
    while missing:  # parents outside the page (or shared base models): fetch level by level
        more = list(ModelVersion.objects.filter(pk__in=missing))
        known.update({v.pk: v for v in more})
        missing = {v.parent_id for v in more if v.parent_id and v.parent_id not in known}
    win_rates = _policy_win_rates(project, versions)
    rows = []
    for version in versions:
        metrics = version.metrics or {}
        if version.pk in win_rates:
            metrics = {"eval/rm_win_rate": win_rates[version.pk], **metrics}
        chain, node = [], version
        while node is not None and len(chain) < LINEAGE_DEPTH:
            chain.append(node)
            node = known.get(node.parent_id) if node.parent_id else None
        rows.append(VersionRow(version, list(reversed(chain)), key_metrics(metrics),
                               reward_length_text(version.metrics)))
    return rows


def _policy_win_rates(project: Project, versions: list[ModelVersion]) -> dict[int, float]:
    """{policy id: the reward-model win-rate over its parent from the blind evaluation of the round that made it}."""
    from labelapp.models import EvaluationTask

    policies = [v.pk for v in versions if v.kind == ModelVersion.Kind.POLICY]
    outcomes: dict[int, list[float]] = {}
    rows = EvaluationTask.objects.filter(
        project=project, round__new_policy_id__in=policies, model_a_id=F("round__new_policy_id"),
        reward_a__isnull=False, reward_b__isnull=False,
    ).values_list("model_a_id", "reward_a", "reward_b")
    for policy, a, b in rows:  # as labelapp.selectors.stats scores the reward model's verdicts
        outcomes.setdefault(policy, []).append(1.0 if a > b else 0.5 if a == b else 0.0)
    return {policy: sum(values) / len(values) for policy, values in outcomes.items()}


def disk_text(n: int | None) -> str:
    """A version's artifact size as the studio shows it (stored when its run finished: no disk access here)."""
    from django.template.defaultfilters import filesizeformat

    return "—" if n is None else filesizeformat(n)


def version_status(row: VersionRow) -> dict:
    """One row of the model versions table, as the overview polls it."""
    version = row.version
    return {
        "id": version.pk, "name": version.name, "kind_label": version.get_kind_display(),
        "created_text": timezone.localtime(version.created_at).strftime("%Y-%m-%d %H:%M"),
        "lineage": [{"id": v.pk, "name": v.name} for v in row.lineage],
        "metrics": [[key, f"{value:.4f}"] for key, value in row.key_metrics],
        "metric_help": {key: metric_help(key) for key, _ in row.key_metrics},
        "length_text": row.length_text,
        "is_current": version.is_current,
        "disk_text": disk_text(version.disk_bytes),
    }


def version_for(*, project: Project, version_id: int) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, pk=version_id).first()


# ---- queues and people ----------------------------------------------------------------------


def demonstration_warning(*, project: Project) -> str:
    """A line for the round form when SFT would train on few approved demonstrations ("" otherwise)."""
    from labelapp.models import Prompt
    from labelapp.round_settings import FEW_DEMONSTRATIONS

    counts = dict(
        Demonstration.objects.filter(prompt__project=project, prompt__split=Prompt.Split.TRAIN)
        .order_by().values_list("review_status").annotate(n=Count("id")).values_list("review_status", "n")
    )
    approved, pending = counts.get(Demonstration.Review.APPROVED, 0), counts.get(Demonstration.Review.PENDING, 0)
    if approved >= FEW_DEMONSTRATIONS:
        return ""
    what = "no approved demonstrations" if not approved else (
        f"only {approved} approved demonstration{'s' if approved != 1 else ''}")
    return (f"SFT trains on approved demonstrations only, and there {'is' if approved == 1 else 'are'} {what} "
            f"(fewer than {FEW_DEMONSTRATIONS}); {pending} {'is' if pending == 1 else 'are'} pending review. "
            + ("Review them first, or set sft.include_pending to train on pending ones too."
               if pending else "Write and approve more before relying on SFT.")
            + (" With none (and sft.include_pending off) a round skips SFT and samples from the current policy."
               if not approved else ""))




def queue_depths(*, project: Project, now: datetime | None = None) -> list[dict]:
    """Items waiting per queue (below their capacity), live leases, and demonstrations to review."""
    now = now or timezone.now()
    rows = []
    for queue, spec in SPECS.items():
        capacity = getattr(project, spec.capacity_field)
        items = spec.model.objects.filter(project=project, **{f"{spec.count_field}__lt": capacity})
        waiting = (items.exclude(spec.gold) if spec.gold is not None else items).count()  # gold is not work to do
        leased = Assignment.objects.filter(live_lease(now), project=project, queue=queue).count()
        rows.append({"queue": str(queue), "label": queue.label, "waiting": waiting, "leased": leased})
    review = Demonstration.objects.filter(prompt__project=project, review_status=Demonstration.Review.PENDING).count()
    rows.append({"queue": "review", "label": "Review demonstrations", "waiting": review, "leased": None})
    return rows


def annotator_throughput(*, project: Project, now: datetime | None = None) -> list[dict]:
    """Labels (demonstrations, rankings, blind comparisons) per annotator in the last 24 hours and 7 days."""
    now = now or timezone.now()
    day, week = now - timedelta(days=1), now - timedelta(days=7)
    counts: dict[int, dict] = {}
    sources = (
        (Demonstration.objects.filter(prompt__project=project), "author", "demonstrations"),
        (Ranking.objects.filter(task__project=project), "annotator", "rankings"),
        (Comparison.objects.filter(task__project=project), "annotator", "comparisons"),
    )
    for queryset, who, kind in sources:
        rows = (
            queryset.filter(created_at__gte=week).order_by().values(who)
            .annotate(week=Count("id"), day=Count("id", filter=Q(created_at__gte=day)))
        )
        for row in rows:
            entry = counts.setdefault(row[who], {"day": 0, "week": 0, "demonstrations": 0, "rankings": 0, "comparisons": 0})
            entry["day"] += row["day"]
            entry["week"] += row["week"]
            entry[kind] += row["week"]
    names = dict(get_user_model().objects.filter(pk__in=counts).values_list("pk", "username"))
    table = [{"user_id": uid, "username": names.get(uid, f"user {uid}"), **c} for uid, c in counts.items()]
    return sorted(table, key=lambda r: (-r["day"], -r["week"], r["username"]))
