"""The studio's label-quality page: annotator reliability, gold items, a refit (admins only)."""
from __future__ import annotations

import re

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Avg, Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from labelapp.models import EvaluationTask, RankingTask, Role
from labelapp.pages.annotate import _render
from labelapp.pages.studio import _project
from labelapp.selectors.quality import annotator_report
from labelapp.services.quality import gold_import, reliability_refit_enqueue

CHART_ROW, CHART_LEFT, CHART_WIDTH = 26, 150, 420  # px: one row per annotator, label column, plot width


def parse_expected(text: str) -> list[list[int]] | str:
    """'12 > 15 = 13 > 14' (completion ids, best first, = ties) -> [[12], [13, 15], [14]];
    'a', 'b' or 'tie' for an evaluation task are returned as they are."""
    text = text.strip().lower()
    if text in ("a", "b", "tie"):
        return text
    if not re.fullmatch(r"\d+(\s*[>=]\s*\d+)*", text):
        raise ValidationError("Write the expected ranking as completion ids, best first, like 12 > 15 = 13 > 14 "
                              "(= ties), or a, b or tie for an evaluation task.")
    return [sorted(int(x) for x in group.split("=")) for group in text.split(">")]


def _chart(rows: list[dict]) -> dict:
    """Positions for the reliability interval plot (drawn as inline SVG, no script)."""
    fitted = [r for r in rows if r["reliability"] is not None]

    def x(value: float) -> float:
        return round(CHART_LEFT + value * CHART_WIDTH, 1)

    points = [
        {"name": r["username"], "y": 20 + i * CHART_ROW, "x": x(r["reliability"]), "low": x(r["reliability_low"]),
         "high": x(r["reliability_high"]), "flagged": bool(r["flags"]),
         "label": f"{r['username']}: {r['reliability']:.2f} [{r['reliability_low']:.2f}, {r['reliability_high']:.2f}]"}
        for i, r in enumerate(fitted)
    ]
    height = 40 + CHART_ROW * len(points)
    ticks = [{"x": x(v), "label": f"{v:.1f}"} for v in (0, 0.25, 0.5, 0.75, 1.0)]
    return {"points": points, "height": height, "width": CHART_LEFT + CHART_WIDTH + 20, "ticks": ticks,
            "chance": x(0.5), "instructgpt": x(0.836), "bottom": height - 16}


@login_required
@require_GET
def quality(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    report = annotator_report(project=project)
    gold_ranking = (RankingTask.objects.filter(project=project, gold_order__isnull=False).select_related("prompt")
                    .annotate(labels=Count("rankings"), accuracy=Avg("rankings__gold_score")).order_by("id"))
    gold_evaluation = (EvaluationTask.objects.filter(project=project).exclude(gold_winner="").select_related("prompt")
                       .annotate(labels=Count("comparisons"),
                                 right=Count("comparisons", filter=Q(comparisons__gold_correct=True))).order_by("id"))
    from labelapp.models import AILabel, ModelVersion
    from labelapp.selectors.quality import ai_human_agreement

    context = {"project": project, "studio": True, "report": report, "chart": _chart(report["annotators"]),
               "gold_ranking": gold_ranking, "gold_evaluation": gold_evaluation,
               "ai_agreement": ai_human_agreement(project=project),
               "ai_labels": AILabel.objects.filter(task__project=project).count(),
               "reward_model": ModelVersion.objects.filter(project=project, kind="reward", is_current=True).first(),
               "policy": ModelVersion.objects.filter(project=project, kind="policy", is_current=True).first(),
               "uncertainty": _uncertainty(project)}
    return _render(request, "labelapp/studio/quality.html", "studio", context)


def _uncertainty(project) -> dict:
    tasks = RankingTask.objects.filter(project=project, gold_order__isnull=True)
    scored = tasks.filter(uncertainty__isnull=False)
    latest = scored.select_related("uncertainty_model").order_by("-uncertainty_model_id").first()
    top = (scored.filter(ranking_count__lt=project.overlap).select_related("prompt")
           .order_by("-uncertainty", "id")[:10])
    return {"tasks": tasks.count(), "scored": scored.count(), "top": top,
            "model": latest.uncertainty_model.name if latest and latest.uncertainty_model else None}


@login_required
@require_POST
def active_learning(request: HttpRequest, slug: str) -> HttpResponse:
    """Turn active learning on or off, or queue a scoring of the tasks by the current reward model."""
    from labelapp.services.quality import active_learning_set, uncertainty_score_enqueue

    project = _project(request, slug)
    try:
        if request.POST.get("score"):
            if uncertainty_score_enqueue(project=project, user=request.user):
                messages.success(request, "Scoring queued (gpu queue): reload in a while to see the scores.")
            else:
                messages.error(request, "The job queue is unreachable; try again when it is back.")
        elif request.POST.get("enabled") in ("0", "1"):
            on = request.POST["enabled"] == "1"
            active_learning_set(project=project, user=request.user, enabled=on)
            messages.success(request, f"Active learning is {'on' if on else 'off'}.")
        else:
            messages.error(request, "Say whether to turn active learning on or off, or to score the tasks.")
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("studio:quality", slug=project.slug)


@login_required
@require_POST
def quality_refit(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    if reliability_refit_enqueue(project=project, user=request.user):
        messages.success(request, "Refit queued: reload in a few seconds to see the new fit.")
    else:
        messages.error(request, "The job queue is unreachable; the periodic refresh will refit when it is back.")
    return redirect("studio:quality", slug=project.slug)


@login_required
@require_POST
def gold_mark(request: HttpRequest, slug: str) -> HttpResponse:
    """Mark one ranking or evaluation task gold (or ordinary, with an empty expected answer)."""
    project = _project(request, slug)
    kind = request.POST.get("kind", "ranking_task")
    try:
        if kind not in ("ranking_task", "evaluation_task"):
            raise ValidationError("Choose a ranking task or an evaluation task.")
        try:
            task_id = int(request.POST.get("task", ""))
        except ValueError:
            raise ValidationError("The task id must be a whole number.") from None
        raw = request.POST.get("expected", "")
        expected = parse_expected(raw) if raw.strip() else None
        if kind == "ranking_task" and isinstance(expected, str) or kind == "evaluation_task" and isinstance(expected, list):
            raise ValidationError("A ranking task expects an order of completion ids; an evaluation task a, b or tie.")
        gold_import(project=project, user=request.user, items=[{kind: task_id, "expected": expected}])
    except ValidationError as exc:
        messages.error(request, " ".join(m.removeprefix("item 1: ") for m in exc.messages))
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    else:
        what = "gold" if expected is not None else "ordinary again"
        messages.success(request, f"{kind.replace('_', ' ').capitalize()} {task_id} is {what}.")
    return redirect("studio:quality", slug=project.slug)


# ----------------------------------------------------------------------------- adjudication (reviewers)


@login_required
@require_GET
def adjudicate_list(request: HttpRequest, slug: str) -> HttpResponse:
    from labelapp.pages.annotate import _project as member_project
    from labelapp.selectors.quality import disputed_tasks

    project = member_project(request, slug, role=Role.REVIEWER)
    disputed = disputed_tasks(project=project, reviewer=request.user)
    return _render(request, "labelapp/adjudicate_list.html", "adjudicate",
                   {"project": project, "disputed": disputed})


@login_required
def adjudicate(request: HttpRequest, slug: str, task_id: int) -> HttpResponse:
    """A disputed task: every annotator's ranking, pseudonymised, and the reviewer's decision. A task that is not
    in the adjudication queue is shown without the form; a decision posted for it anyway is refused by the service."""
    from labelapp.pages.annotate import _project as member_project
    from labelapp.selectors.quality import adjudication_view, disputed_tasks
    from labelapp.services.labels import order_from_ranks
    from labelapp.services.quality import ranking_task_adjudicate

    project = member_project(request, slug, role=Role.REVIEWER)
    task = RankingTask.objects.filter(pk=task_id, project=project).select_related("prompt").first()
    if task is None:
        raise Http404("No such task in this project.")
    completions = list(task.completions.order_by("id"))
    letters = {c.pk: chr(ord("A") + i) for i, c in enumerate(completions)}
    errors: list[str] = []
    ranks = {c.pk: request.POST.get(f"rank_{c.pk}", "").strip() for c in completions}
    if request.method == "POST":
        try:
            order = order_from_ranks({cid: r for cid, r in ranks.items() if r}, completion_ids=list(letters),
                                     names=letters)
            ranking_task_adjudicate(task_id=task.pk, reviewer=request.user, order=order,
                                    comment=request.POST.get("comment", ""))
        except ValidationError as exc:
            errors = list(exc.messages)
        except PermissionDenied as exc:
            errors = [str(exc)]
        else:
            messages.success(request, f"Task {task.pk} decided; its rankings give way to your decision in training.")
            left = disputed_tasks(project=project, reviewer=request.user)
            if left:
                return redirect("labelapp:adjudicate", slug=project.slug, task_id=left[0][0].pk)
            return redirect("labelapp:adjudicate-list", slug=project.slug)
    confidence = dict((t.pk, c) for t, c in disputed_tasks(project=project)).get(task.pk)
    annotators = adjudication_view(task=task)
    rows = [{"completion": c, "letter": letters[c.pk], "ranks": [a["ranks"].get(c.pk) for a in annotators],
             "flags": sorted({f for a in annotators for f in a["flags"].get(c.pk, [])}), "decision": ranks[c.pk]}
            for c in completions]
    decided = getattr(task, "adjudication", None) if hasattr(task, "adjudication") else None
    context = {"project": project, "task": task, "prompt": task.prompt, "annotators": annotators, "rows": rows,
               "confidence": confidence, "disputed": confidence is not None, "errors": errors, "decided": decided,
               "k": len(completions), "comment": request.POST.get("comment", "")}
    return _render(request, "labelapp/adjudicate.html", "adjudicate", context, status=400 if errors else 200)


@login_required
@require_POST
def ai_label_start(request: HttpRequest, slug: str) -> HttpResponse:
    """Queue the AI annotator over the waiting ranking tasks (the current reward model or a judge prompt)."""
    from labelapp.services.quality import ai_labels_enqueue

    project = _project(request, slug)
    source = request.POST.get("source", "")
    try:
        queued = ai_labels_enqueue(project=project, user=request.user, source=source)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        if queued:
            messages.success(request, "The AI annotator is labelling the waiting ranking tasks (gpu queue).")
        else:
            messages.error(request, "The job queue is unreachable; try again when it is back.")
    return redirect("studio:quality", slug=project.slug)


@login_required
@require_GET
def categories(request: HttpRequest, slug: str) -> HttpResponse:
    """The project's category mix beside InstructGPT's (labelapp.selectors.category_mix), admins only."""
    from labelapp.selectors.category_mix import KINDS, category_mix

    project = _project(request, slug)
    mix = category_mix(project=project)
    return _render(request, "labelapp/studio/categories.html", "studio",
                   {"project": project, "studio": True, "mix": mix, "kinds": KINDS})
