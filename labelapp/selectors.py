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


def project_overview(*, project: Project, user, now: datetime | None = None) -> ProjectOverview:
    now = now or timezone.now()
    role = role_of(project=project, user=user)
    waiting = {q: available_items(project=project, user=user, queue=q, now=now).count() for q in Queue.values}
    midnight = timezone.make_aware(datetime.combine(timezone.localdate(now), time.min))
    labels_today = Assignment.objects.filter(
        project=project, user=user, status=Assignment.Status.SUBMITTED, finished_at__gte=midnight
    ).count()
    pending = None
    if role and RANK[role] >= RANK[Role.REVIEWER]:
        pending = reviewable(project=project, reviewer=user).count()
    return ProjectOverview(project, role, waiting, labels_today, pending)


def reviewable(*, project: Project, reviewer) -> QuerySet[Demonstration]:
    return (
        Demonstration.objects.filter(prompt__project=project, review_status=Demonstration.Review.PENDING)
        .exclude(author=reviewer)
        .select_related("prompt", "author")
        .order_by("created_at", "id")
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


def my_labels(*, project: Project, user, limit: int = 100) -> dict[str, list]:
    demonstrations = list(
        Demonstration.objects.filter(prompt__project=project, author=user)
        .select_related("prompt")
        .order_by("-created_at")[:limit]
    )
    rankings = list(
        Ranking.objects.filter(task__project=project, annotator=user)
        .select_related("task__prompt")
        .order_by("-created_at")[:limit]
    )
    return {"demonstrations": demonstrations, "rankings": rankings}


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


def training_demonstrations(*, project: Project) -> list[tuple[int, list[dict], str]]:
    """(id, prompt turns, text) of the training split's demonstrations not rejected in review,
    oldest first (validation prompts stay held out for evaluation)."""
    rows = (
        Demonstration.objects.filter(prompt__project=project, prompt__split=Prompt.Split.TRAIN)
        .exclude(review_status=Demonstration.Review.REJECTED)
        .order_by("id")
        .values_list("id", "prompt__text", "prompt__messages", "text")
    )
    return [(i, list(m) if m else [{"role": "user", "content": t}], text) for i, t, m, text in rows]


def label_set(ids: list[int]) -> dict:
    """The exact label set a model was trained on: ids, count and a hash of the ids."""
    ordered = sorted(ids)
    digest = hashlib.sha256(",".join(map(str, ordered)).encode()).hexdigest()
    return {"ids": ordered, "count": len(ordered), "hash": digest}


def demonstration_snapshot(*, project: Project) -> dict:
    """Label set of the current training demonstrations; its hash changes when any is added,
    edited away by review, or rejected — the round uses it to decide whether to run SFT."""
    rows = training_demonstrations(project=project)
    snapshot = label_set([i for i, _, _ in rows])
    content = hashlib.sha256("\x00".join(text for _, _, text in rows).encode()).hexdigest()
    return {**snapshot, "hash": hashlib.sha256((snapshot["hash"] + content).encode()).hexdigest()}
