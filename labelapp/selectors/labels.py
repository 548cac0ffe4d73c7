"""Reads. Everything here is scoped to what the asking user may see: an annotator sees their
own labels only, never another annotator's ranking of an item."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, time
from itertools import combinations

from django.db.models import Q, QuerySet
from django.utils import timezone

from labelapp.models import (
    Assignment,
    Completion,
    Demonstration,
    ModelVersion,
    Project,
    Prompt,
    Queue,
    Ranking,
    RankingTask,
    Role,
)
from labelapp.services.access import RANK, role_of
from labelapp.services.queue import available_items


def projects_for(user) -> QuerySet[Project]:
    if user.is_superuser:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()


@dataclass(frozen=True)
class ProjectOverview:
    project: Project
    role: str
    waiting: dict[str, int]
    labels_today: int
    pending_reviews: int | None


def labels_today(*, project: Project, user, now: datetime | None = None) -> int:
    """Items this user submitted in the project since midnight (the server's time zone)."""
    now = now or timezone.now()
    midnight = timezone.make_aware(datetime.combine(timezone.localdate(now), time.min))
    return Assignment.objects.filter(
        project=project, user=user, status=Assignment.Status.SUBMITTED, finished_at__gte=midnight
    ).count()


@dataclass(frozen=True)
class QueueProgress:
    today: int  # labels submitted today in the project
    left: int  # items of this queue still open to this user, besides the one in hand


def queue_progress(*, project: Project, user, queue: str, now: datetime | None = None) -> QueueProgress:
    now = now or timezone.now()
    left = available_items(project=project, user=user, queue=queue, now=now).count()
    return QueueProgress(labels_today(project=project, user=user, now=now), left)


def project_overview(*, project: Project, user, now: datetime | None = None) -> ProjectOverview:
    now = now or timezone.now()
    role = role_of(project=project, user=user)
    waiting = {q: available_items(project=project, user=user, queue=q, now=now).count() for q in Queue.values}
    today = labels_today(project=project, user=user, now=now)
    pending = None
    if role and RANK[role] >= RANK[Role.REVIEWER]:
        pending = reviewable(project=project, reviewer=user).count()
    return ProjectOverview(project, role, waiting, today, pending)


def reviewable(*, project: Project, reviewer) -> QuerySet[Demonstration]:
    """Pending demonstrations by others, flagged ones (pasted, too fast, near duplicates) first."""
    return (
        Demonstration.objects.filter(prompt__project=project, review_status=Demonstration.Review.PENDING)
        .exclude(author=reviewer)
        .select_related("prompt", "author")
        .order_by("-flagged", "created_at", "id")
    )


def completions_for_annotator(*, task_id: int, user) -> list[Completion]:
    """The task's completions in an order shuffled per annotator (stable across reloads), so
    position carries no hint of which model wrote what."""
    completions = list(Completion.objects.filter(ranking_tasks__id=task_id).order_by("id"))
    random.Random(f"{task_id}:{user.pk}").shuffle(completions)
    return completions


def comparison_sides(*, task, user) -> tuple[bool, list]:
    """(candidate shown left?, [left completion, right completion]) — random per annotator and
    task, stable across reloads, so the side carries no hint."""
    a_left = random.Random(f"compare:{task.pk}:{user.pk}").random() < 0.5
    pair = [task.completion_a, task.completion_b]
    return a_left, pair if a_left else pair[::-1]


# Which runs read which labels while they run (workers/executors.py): SFT the demonstrations,
# reward models and DPO the rankings.
RUNS_READING = {"demonstrations": ("sft",), "rankings": ("reward", "dpo")}


@dataclass(frozen=True)
class UsedLabels:
    """The labels of a project that training has used: {kind: {label id: model name}}, and the
    kinds a running run is reading now ({kind: run})."""

    models: dict[str, dict[int, str]]
    running: dict[str, object]

    def reason(self, kind: str, label_id: int) -> str | None:
        """Why the label is frozen, as a sentence for the page; None when it may still change."""
        if label_id in self.models.get(kind, {}):
            return f"the model {self.models[kind][label_id]} was trained on it, and its label set must stay exact."
        run = self.running.get(kind)
        if run is not None:
            return (f"a {run.get_kind_display()} run (#{run.pk}) is training on this project's {kind} now; "
                    "try again when it has finished.")
        return None


def used_labels(*, project: Project) -> UsedLabels:
    """Read every ModelVersion's label set once (a project has few models; their id lists are
    read in Python so this works on SQLite as on PostgreSQL)."""
    from labelapp.models import TrainingRun

    models: dict[str, dict[int, str]] = {kind: {} for kind in RUNS_READING}
    for name, data in ModelVersion.objects.filter(project=project).order_by("created_at").values_list("name", "training_data"):
        for kind in RUNS_READING:
            for label_id in ((data or {}).get(kind) or {}).get("ids") or []:
                models[kind].setdefault(label_id, name)
    running = {}
    for kind, run_kinds in RUNS_READING.items():
        run = TrainingRun.objects.filter(project=project, kind__in=run_kinds, status=TrainingRun.Status.RUNNING).first()
        if run is not None:
            running[kind] = run
    return UsedLabels(models, running)


@dataclass(frozen=True)
class LabelRow:
    """One line of "My labels": an item the user submitted, skipped or withdrawn."""

    assignment: Assignment
    kind: str  # demonstration | ranking | comparison | skip | withdrawn
    prompt: Prompt
    label: object | None  # the Demonstration, Ranking or Comparison
    summary: str
    frozen: str | None  # why it can no longer change; None when it can (or it is no label)

    @property
    def editable(self) -> bool:
        return self.kind in ("demonstration", "ranking") and self.frozen is None


def _ranking_summary(ranking: Ranking, k: int) -> str:
    if ranking.none_acceptable and not ranking.order:
        return "None acceptable"
    tied = sum(len(group) for group in ranking.order if len(group) > 1)
    text = f"Ranked {k} responses" + (f", {tied} of them tied" if tied else "")
    flagged = len(ranking.flags or {})
    if flagged:
        text += f"; flagged {flagged}"
    if ranking.none_acceptable:
        text += "; none acceptable"
    return text


def label_row(assignment: Assignment, used: UsedLabels) -> LabelRow:
    """The row of one finished assignment (its label read through the reverse one-to-ones)."""
    prompt = assignment.prompt or (assignment.ranking_task or assignment.evaluation_task).prompt
    status = assignment.status
    if status == Assignment.Status.SKIPPED:
        reason = assignment.skip_reason or "no reason given"
        return LabelRow(assignment, "skip", prompt, None, f"Skipped: {reason}", None)
    if status == Assignment.Status.WITHDRAWN:
        return LabelRow(assignment, "withdrawn", prompt, None, "Withdrawn by you", None)
    if assignment.queue == Queue.WRITE:
        demo = getattr(assignment, "demonstration", None)
        summary = demo.get_review_status_display() if demo else "Submitted"
        if demo and demo.review_comment:
            summary += f": {demo.review_comment}"
        frozen = used.reason("demonstrations", demo.pk) if demo else None
        return LabelRow(assignment, "demonstration", prompt, demo, summary, frozen)
    if assignment.queue == Queue.RANK:
        ranking = getattr(assignment, "ranking", None)
        summary = _ranking_summary(ranking, sum(len(g) for g in ranking.order)) if ranking else "Submitted"
        frozen = used.reason("rankings", ranking.pk) if ranking else None
        return LabelRow(assignment, "ranking", prompt, ranking, summary, frozen)
    comparison = getattr(assignment, "comparison", None)
    summary = "Compared two answers"
    if comparison is not None:
        shown = {"a": "left" if comparison.a_shown_left else "right", "b": "right" if comparison.a_shown_left else "left"}
        summary = "Judged a tie" if comparison.winner == "tie" else f"Preferred the {shown[comparison.winner]} answer"
    return LabelRow(assignment, "comparison", prompt, comparison,
                    summary, "blind comparisons feed the round's evaluation and are not changed.")


def my_label_assignments(*, project: Project, user) -> QuerySet[Assignment]:
    """The user's finished assignments in the project, newest first (submitted, skipped, withdrawn)."""
    return (
        Assignment.objects.filter(project=project, user=user, status__in=(
            Assignment.Status.SUBMITTED, Assignment.Status.SKIPPED, Assignment.Status.WITHDRAWN))
        .select_related("prompt", "ranking_task__prompt", "evaluation_task__prompt", "demonstration", "ranking",
                        "comparison")
        .order_by("-finished_at", "-id")
    )


def my_labels(*, project: Project, user, assignments=None) -> list[LabelRow]:
    """Rows for "My labels": every submitted label, skip and withdrawal, with whether it may change."""
    used = used_labels(project=project)
    rows = assignments if assignments is not None else my_label_assignments(project=project, user=user)
    return [label_row(a, used) for a in rows]


def ranking_pairs(ranking: Ranking, min_gap: int = 1) -> list[tuple[int, int, float | None]]:
    """Reward-model pairs implied by one ranking: (chosen id, rejected id, margin).

    Every two completions in different tie groups make one pair, the better one chosen: C(K,2)
    pairs minus the tied ones. With `min_gap` > 1 only completions at least that many tie groups
    apart make a pair (K−1: the best against the worst), the pairs annotators agree on most. The
    margin is the difference of the 1–7 scores when both have one, else None. Nothing is stored:
    pairs are always derived from the ranking.
    """
    scores = {int(k): v for k, v in (ranking.scores or {}).items()}
    pairs = []
    for better, worse in combinations(range(len(ranking.order)), 2):
        if worse - better < min_gap:
            continue
        for chosen in ranking.order[better]:
            for rejected in ranking.order[worse]:
                margin = None
                if chosen in scores and rejected in scores:
                    margin = float(scores[chosen] - scores[rejected])
                pairs.append((chosen, rejected, margin))
    return pairs


# ---- API scoping: every API lookup starts from one of these ------------------------------


def project_ids(user, *, min_role: str = Role.ANNOTATOR) -> QuerySet:
    """Ids of the projects where the user holds at least `min_role`."""
    if user.is_superuser:
        return Project.objects.values("id")
    roles = [r for r, rank in RANK.items() if rank >= RANK[Role(min_role)]]
    return Project.objects.filter(memberships__user=user, memberships__role__in=roles).values("id")


def visible_projects(user) -> QuerySet[Project]:
    return Project.objects.filter(id__in=project_ids(user))


def visible_prompts(user) -> QuerySet[Prompt]:
    return Prompt.objects.filter(project_id__in=project_ids(user))


def visible_completions(user) -> QuerySet[Completion]:
    return Completion.objects.filter(prompt__project_id__in=project_ids(user)).select_related("prompt")


def visible_ranking_tasks(user) -> QuerySet[RankingTask]:
    return RankingTask.objects.filter(project_id__in=project_ids(user)).prefetch_related("completions")


def visible_model_versions(user) -> QuerySet[ModelVersion]:
    """Reviewers and admins only: names, lineage, metrics and paths would unblind annotators."""
    return ModelVersion.objects.filter(project_id__in=project_ids(user, min_role=Role.REVIEWER))


def visible_demonstrations(user) -> QuerySet[Demonstration]:
    """Reviewers and admins see their projects' demonstrations; annotators only their own."""
    reviewed = project_ids(user, min_role=Role.REVIEWER)
    return Demonstration.objects.filter(
        Q(prompt__project_id__in=reviewed) | Q(author=user, prompt__project_id__in=project_ids(user))
    ).select_related("prompt")


def visible_rankings(user) -> QuerySet[Ranking]:
    """Reviewers and admins see their projects' rankings; annotators only their own."""
    reviewed = project_ids(user, min_role=Role.REVIEWER)
    return Ranking.objects.filter(
        Q(task__project_id__in=reviewed) | Q(annotator=user, task__project_id__in=project_ids(user))
    ).select_related("task")


# ---- training data snapshots (read by the workers) ----------------------------------------


def training_demonstrations(*, project: Project, include_pending: bool = False) -> list[tuple[int, list[dict], str]]:
    """(id, prompt turns, text) of the training split's approved demonstrations (and, with
    `include_pending`, those still waiting for review; rejected ones never), oldest first
    (validation prompts stay held out for evaluation)."""
    statuses = [Demonstration.Review.APPROVED] + ([Demonstration.Review.PENDING] if include_pending else [])
    rows = (
        Demonstration.objects.filter(prompt__project=project, prompt__split=Prompt.Split.TRAIN,
                                     review_status__in=statuses)
        .order_by("id")
        .values_list("id", "prompt__text", "prompt__messages", "text")
    )
    return [(i, list(m) if m else [{"role": "user", "content": t}], text) for i, t, m, text in rows]


def label_set(ids: list[int]) -> dict:
    """The exact label set a model was trained on: ids, count and a hash of the ids."""
    ordered = sorted(ids)
    digest = hashlib.sha256(",".join(map(str, ordered)).encode()).hexdigest()
    return {"ids": ordered, "count": len(ordered), "hash": digest}


def demonstration_snapshot(*, project: Project, include_pending: bool = False) -> dict:
    """Label set of the current training demonstrations; its hash changes when any is added,
    edited away by review, approved or rejected — the round uses it to decide whether to run SFT."""
    rows = training_demonstrations(project=project, include_pending=include_pending)
    snapshot = label_set([i for i, _, _ in rows])
    content = hashlib.sha256("\x00".join(text for _, _, text in rows).encode()).hexdigest()
    return {**snapshot, "hash": hashlib.sha256((snapshot["hash"] + content).encode()).hexdigest()}
