"""Annotator pages. Views parse the request, call a service or selector, and render.

Nothing is claimed on GET: taking the next item is a POST (a button, or the submit of the
previous item), and GET pages only show an assignment that is already the user's.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from labelapp import selectors
from labelapp.keymap import bindings_for
from labelapp.models import Assignment, Flag, Project, Queue, Role
from labelapp.services.access import has_role
from labelapp.services.labels import (
    comparison_submit,
    demonstration_review,
    demonstration_submit,
    order_from_ranks,
    ranking_submit,
)
from labelapp.services.queue import assignment_skip, task_claim


def _render(request: HttpRequest, template: str, page: str, context: dict, status: int = 200) -> HttpResponse:
    context = {"page": page, "keymap": bindings_for(page), **context}
    return render(request, template, context, status=status)


def _project(request: HttpRequest, slug: str, role: str = Role.ANNOTATOR) -> Project:
    project = get_object_or_404(Project, slug=slug)
    if not has_role(project=project, user=request.user, role=role):
        raise Http404("No such project.")  # do not reveal projects the user is not part of
    return project


def _errors(exc: ValidationError) -> list[str]:
    return list(exc.messages)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = list(selectors.projects_for(request.user))
    if len(projects) == 1:
        return redirect("labelapp:project", slug=projects[0].slug)
    return _render(request, "labelapp/home.html", "home", {"projects": projects})


@login_required
def project_home(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    overview = selectors.project_overview(project=project, user=request.user)
    return _render(request, "labelapp/project.html", "project", {"project": project, "overview": overview})


@login_required
@require_POST
def claim_next(request: HttpRequest, slug: str, queue: str) -> HttpResponse:
    project = _project(request, slug)
    if queue not in Queue.values:
        raise Http404("No such queue.")
    return _go_to_next(request, project, queue)


def _go_to_next(request: HttpRequest, project: Project, queue: str) -> HttpResponse:
    assignment = task_claim(project=project, user=request.user, queue=queue)
    if assignment is None:
        messages.info(request, f"Nothing is waiting in the {Queue(queue).label.lower()} queue. Thank you!")
        return redirect("labelapp:project", slug=project.slug)
    return redirect(f"labelapp:{queue}", slug=project.slug, assignment_id=assignment.pk)


def _assignment(request: HttpRequest, project: Project, assignment_id: int, queue: str) -> Assignment:
    assignment = (
        Assignment.objects.select_related(
            "prompt", "ranking_task__prompt", "evaluation_task__prompt", "evaluation_task__completion_a",
            "evaluation_task__completion_b",
        )
        .filter(pk=assignment_id, project=project, queue=queue, user=request.user)
        .first()
    )
    if assignment is None:
        raise Http404("This item is not yours.")
    return assignment


def _finished_redirect(request: HttpRequest, project: Project, assignment: Assignment) -> HttpResponse | None:
    """An assignment that is no longer open sends the user on instead of showing a dead form."""
    if assignment.status == Assignment.Status.ACTIVE and assignment.expires_at > timezone.now():
        return None
    if assignment.status in (Assignment.Status.ACTIVE, Assignment.Status.EXPIRED):
        messages.warning(request, "Your lease on that item expired; it went back to the queue.")
    return redirect("labelapp:project", slug=project.slug)


@login_required
@require_http_methods(["GET", "POST"])
def write(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, Queue.WRITE)
    errors: list[str] = []
    if request.method == "POST":
        try:
            demonstration_submit(
                assignment_id=assignment.pk,
                user=request.user,
                text=request.POST.get("text", ""),
                time_spent_ms=request.POST.get("time_spent_ms") or 0,
            )
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Demonstration saved.")
            return _go_to_next(request, project, Queue.WRITE)
    elif (gone := _finished_redirect(request, project, assignment)) is not None:
        return gone
    context = {
        "project": project,
        "assignment": assignment,
        "prompt": assignment.prompt,
        "errors": errors,
        "text": request.POST.get("text", ""),
    }
    return _render(request, "labelapp/write.html", "write", context, status=400 if errors else 200)


def _rank_form(request: HttpRequest, completions) -> dict:
    """Read the rank page's form: rank_<id>, score_<id>, flag_<id> (several), none_acceptable."""
    post = request.POST
    ranks = {c.pk: post.get(f"rank_{c.pk}", "").strip() for c in completions}
    return {
        "ranks": {cid: r for cid, r in ranks.items() if r},
        "scores": {c.pk: post.get(f"score_{c.pk}", "").strip() for c in completions},
        "flags": {c.pk: post.getlist(f"flag_{c.pk}") for c in completions},
        "none_acceptable": post.get("none_acceptable") == "on",
    }


@login_required
@require_http_methods(["GET", "POST"])
def rank(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, Queue.RANK)
    completions = selectors.completions_for_annotator(task_id=assignment.ranking_task_id, user=request.user)
    errors: list[str] = []
    form = {"ranks": {}, "scores": {}, "flags": {}, "none_acceptable": False}
    if request.method == "POST":
        form = _rank_form(request, completions)
        try:
            order = None
            if form["ranks"] or not form["none_acceptable"]:
                order = order_from_ranks(form["ranks"], completion_ids=[c.pk for c in completions])
            ranking_submit(
                assignment_id=assignment.pk,
                user=request.user,
                order=order,
                none_acceptable=form["none_acceptable"],
                flags=form["flags"],
                scores=form["scores"],
                time_spent_ms=request.POST.get("time_spent_ms") or 0,
            )
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Ranking saved.")
            return _go_to_next(request, project, Queue.RANK)
    elif (gone := _finished_redirect(request, project, assignment)) is not None:
        return gone
    rows = [
        {
            "completion": c,
            "letter": chr(ord("A") + i),
            "rank": form["ranks"].get(c.pk, ""),
            "score": form["scores"].get(c.pk, ""),
            "flags": form["flags"].get(c.pk, []),
        }
        for i, c in enumerate(completions)
    ]
    context = {
        "project": project,
        "assignment": assignment,
        "prompt": assignment.ranking_task.prompt,
        "rows": rows,
        "k": len(rows),
        "flag_choices": Flag.choices,
        "none_acceptable": form["none_acceptable"],
        "errors": errors,
    }
    return _render(request, "labelapp/rank.html", "rank", context, status=400 if errors else 200)


@login_required
@require_http_methods(["GET", "POST"])
def compare(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, Queue.COMPARE)
    task = assignment.evaluation_task
    a_left, sides = selectors.comparison_sides(task=task, user=request.user)
    errors: list[str] = []
    if request.method == "POST":
        try:
            comparison_submit(
                assignment_id=assignment.pk,
                user=request.user,
                preferred=request.POST.get("preferred", ""),
                a_shown_left=a_left,
                time_spent_ms=request.POST.get("time_spent_ms") or 0,
            )
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Comparison saved.")
            return _go_to_next(request, project, Queue.COMPARE)
    elif (gone := _finished_redirect(request, project, assignment)) is not None:
        return gone
    context = {"project": project, "assignment": assignment, "prompt": task.prompt, "sides": sides, "errors": errors}
    return _render(request, "labelapp/compare.html", "compare", context, status=400 if errors else 200)


@login_required
@require_POST
def skip(request: HttpRequest, slug: str, queue: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, queue)
    reason = request.POST.get("reason", "")
    if queue == Queue.WRITE and not reason.strip():
        messages.error(request, "Say why you skip this prompt (the reason helps us fix bad prompts).")
        return redirect(f"labelapp:{queue}", slug=project.slug, assignment_id=assignment.pk)
    try:
        assignment_skip(assignment_id=assignment.pk, user=request.user, reason=reason)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("labelapp:project", slug=project.slug)
    messages.info(request, "Skipped.")
    return _go_to_next(request, project, queue)


@login_required
@require_http_methods(["GET", "POST"])
def review(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug, role=Role.REVIEWER)
    errors: list[str] = []
    if request.method == "POST":
        decision = request.POST.get("decision")
        if decision not in ("approve", "reject"):
            errors = ["Choose approve or reject."]
        else:
            try:
                demonstration_review(
                    demonstration_id=int(request.POST.get("demonstration_id", "0") or 0),
                    reviewer=request.user,
                    approve=decision == "approve",
                    comment=request.POST.get("comment", ""),
                )
            except (ValidationError, PermissionDenied) as exc:
                errors = _errors(exc) if isinstance(exc, ValidationError) else [str(exc)]
            else:
                messages.success(request, "Approved." if decision == "approve" else "Rejected.")
                return redirect("labelapp:review", slug=project.slug)
    pending = selectors.reviewable(project=project, reviewer=request.user)
    current = pending.first()
    if errors and request.POST.get("demonstration_id", "").isdigit():
        current = pending.filter(pk=int(request.POST["demonstration_id"])).first() or current
    context = {
        "project": project,
        "demonstration": current,
        "remaining": pending.count(),
        "errors": errors,
        "comment": request.POST.get("comment", ""),
    }
    return _render(request, "labelapp/review.html", "review", context, status=400 if errors else 200)


@login_required
def mine(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    labels = selectors.my_labels(project=project, user=request.user)
    return _render(request, "labelapp/mine.html", "mine", {"project": project, **labels})

