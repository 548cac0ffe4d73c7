"""Annotator pages. Views parse the request, call a service or selector, and render.

Nothing is claimed on GET: taking the next item is a POST (a button, or the submit of the
previous item), and GET pages only show an assignment that is already the user's.
"""
from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import InterfaceError, OperationalError, connection
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from labelapp.models import Assignment, Demonstration, Flag, Project, Queue, Role
from labelapp.pages.keymap import bindings_for
from labelapp.selectors import labels as selectors
from labelapp.services.access import has_role
from labelapp.services.label_changes import demonstration_edit, demonstration_withdraw, ranking_edit, ranking_withdraw
from labelapp.services.labels import (
    comparison_submit,
    demonstration_review,
    demonstration_submit,
    order_from_ranks,
    ranking_submit,
    text_sha256,
)
from labelapp.services.queue import assignment_skip, task_claim

logger = logging.getLogger(__name__)


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


DB_ERRORS = (OperationalError, InterfaceError)  # the connection dropped, a deadlock, a failover


def _submit(call):
    """Run an idempotent submit service; if the database connection dropped under it, run it once
    more on a new connection (a repeat of a stored submission returns the stored label)."""
    try:
        return call()
    except DB_ERRORS:
        if connection.in_atomic_block:
            raise
        # the service's transaction was rolled back, and a broken connection closed (Django's
        # atomic does both), so the retry runs on a new connection
        logger.warning("database error during a submission; retrying once", exc_info=True)
        return call()


START = {Queue.WRITE: "Start writing", Queue.RANK: "Start ranking", Queue.COMPARE: "Start comparing"}


def _go_to_next(request: HttpRequest, project: Project, queue: str, saved: bool = False) -> HttpResponse:
    """Claim the next item and go there. After a saved label a database error while claiming must
    not turn into an error page: the label is stored (its "saved" message is already queued), so
    say that the next item could not be fetched and offer to continue from the project page."""
    try:
        assignment = task_claim(project=project, user=request.user, queue=queue)
    except DB_ERRORS:
        if not saved:  # nothing was saved: the error page (503, labelapp.middleware) says to retry
            raise
        logger.warning("claiming the next item after a saved label failed", exc_info=True)
        messages.warning(
            request, f"The next item could not be fetched just now; press {START[Queue(queue)]} to continue."
        )
        return redirect("labelapp:project", slug=project.slug)
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
    """An assignment that is no longer open sends the user on, saying why, instead of showing a
    dead form (the browser's Back button after a submit lands here: task pages are not cached)."""
    if assignment.status == Assignment.Status.ACTIVE and assignment.expires_at > timezone.now():
        return None
    if assignment.status == Assignment.Status.SUBMITTED:
        messages.info(
            request,
            f"You already submitted this item at {assignment.finished_at:%H:%M} UTC; this is what you sent. "
            "Change it here while no training run has used it.",
        )
        return redirect("labelapp:label", slug=project.slug, assignment_id=assignment.pk)
    if assignment.status in (Assignment.Status.ACTIVE, Assignment.Status.EXPIRED):
        messages.warning(request, "Your lease on that item expired; it went back to the queue.")
    else:
        messages.info(request, f"You {assignment.get_status_display().lower()} that item; it went back to the queue.")
    return redirect("labelapp:project", slug=project.slug)


def _closed(request: HttpRequest, project: Project, assignment: Assignment) -> HttpResponse | None:
    """A POST to an item no longer leased (a resent form, Back then submit) is not taken as a new
    label: the user is shown what they sent before."""
    if assignment.status in (Assignment.Status.ACTIVE, Assignment.Status.EXPIRED):
        return None  # an expired lease is refused by the service, which keeps the typed answer on the page
    return _finished_redirect(request, project, assignment)


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def write(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, Queue.WRITE)
    errors: list[str] = []
    if request.method == "POST" and (gone := _closed(request, project, assignment)) is not None:
        return gone
    if request.method == "POST":
        try:
            _submit(lambda: demonstration_submit(
                assignment_id=assignment.pk,
                user=request.user,
                text=request.POST.get("text", ""),
                time_spent_ms=request.POST.get("time_spent_ms") or 0,
                paste_log=request.POST.get("paste_log", ""),
            ))
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Demonstration saved.")
            return _go_to_next(request, project, Queue.WRITE, saved=True)
    elif (gone := _finished_redirect(request, project, assignment)) is not None:
        return gone
    context = {
        "project": project,
        "assignment": assignment,
        "progress": selectors.queue_progress(project=project, user=request.user, queue=Queue.WRITE),
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


def _rank_rows(completions, letters: dict[int, str], form: dict) -> list[dict]:
    return [
        {
            "completion": c,
            "letter": letters[c.pk],
            "rank": form["ranks"].get(c.pk, ""),
            "score": form["scores"].get(c.pk, ""),
            "flags": form["flags"].get(c.pk, []),
            "flag_labels": [Flag(f).label for f in form["flags"].get(c.pk, []) if f in Flag.values],
        }
        for c in completions
    ]


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def rank(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, Queue.RANK)
    completions = selectors.completions_for_annotator(task_id=assignment.ranking_task_id, user=request.user)
    letters = {c.pk: chr(ord("A") + i) for i, c in enumerate(completions)}
    errors: list[str] = []
    form = {"ranks": {}, "scores": {}, "flags": {}, "none_acceptable": False}
    if request.method == "POST" and (gone := _closed(request, project, assignment)) is not None:
        return gone
    if request.method == "POST":
        form = _rank_form(request, completions)
        try:
            order = None
            if form["ranks"] or not form["none_acceptable"]:
                order = order_from_ranks(form["ranks"], completion_ids=[c.pk for c in completions], names=letters)
            _submit(lambda: ranking_submit(
                assignment_id=assignment.pk,
                user=request.user,
                order=order,
                none_acceptable=form["none_acceptable"],
                flags=form["flags"],
                scores=form["scores"],
                time_spent_ms=request.POST.get("time_spent_ms") or 0,
            ))
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Ranking saved.")
            return _go_to_next(request, project, Queue.RANK, saved=True)
    elif (gone := _finished_redirect(request, project, assignment)) is not None:
        return gone
    rows = _rank_rows(completions, letters, form)
    suggestion = None
    if project.ai_suggestions:  # off by default: a suggestion anchors people
        from labelapp.selectors.quality import ai_suggestion

        suggestion = ai_suggestion(task_id=assignment.ranking_task_id, letters=letters)
    context = {
        "project": project,
        "assignment": assignment,
        "progress": selectors.queue_progress(project=project, user=request.user, queue=Queue.RANK),
        "prompt": assignment.ranking_task.prompt,
        "suggestion": suggestion,
        "rows": rows,
        "k": len(rows),
        "flag_choices": Flag.choices,
        "none_acceptable": form["none_acceptable"],
        "errors": errors,
    }
    return _render(request, "labelapp/rank.html", "rank", context, status=400 if errors else 200)


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def compare(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    assignment = _assignment(request, project, assignment_id, Queue.COMPARE)
    task = assignment.evaluation_task
    a_left, sides = selectors.comparison_sides(task=task, user=request.user)
    errors: list[str] = []
    if request.method == "POST" and (gone := _closed(request, project, assignment)) is not None:
        return gone
    if request.method == "POST":
        try:
            _submit(lambda: comparison_submit(
                assignment_id=assignment.pk,
                user=request.user,
                preferred=request.POST.get("preferred", ""),
                a_shown_left=a_left,
                time_spent_ms=request.POST.get("time_spent_ms") or 0,
            ))
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Comparison saved.")
            return _go_to_next(request, project, Queue.COMPARE, saved=True)
    elif (gone := _finished_redirect(request, project, assignment)) is not None:
        return gone
    context = {
        "project": project, "assignment": assignment, "prompt": task.prompt, "sides": sides, "errors": errors,
        "progress": selectors.queue_progress(project=project, user=request.user, queue=Queue.COMPARE),
    }
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
        _submit(lambda: assignment_skip(assignment_id=assignment.pk, user=request.user, reason=reason))
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("labelapp:project", slug=project.slug)
    messages.info(request, "Skipped.")
    return _go_to_next(request, project, queue, saved=True)


@login_required
@require_http_methods(["GET", "POST"])
def review(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug, role=Role.REVIEWER)
    errors: list[str] = []
    if request.method == "POST":
        decision = request.POST.get("decision")
        raw_id = request.POST.get("demonstration_id", "")
        # only this project's demonstrations: another project's id is a 404 that names nothing
        if not raw_id.isdigit() or not Demonstration.objects.filter(pk=int(raw_id), prompt__project=project).exists():
            raise Http404("No such demonstration in this project.")
        if decision not in ("approve", "reject"):
            errors = ["Choose approve or reject."]
        else:
            try:
                demonstration_review(
                    demonstration_id=int(raw_id),
                    reviewer=request.user,
                    approve=decision == "approve",
                    comment=request.POST.get("comment", ""),
                    seen_sha256=request.POST.get("text_sha256") or None,  # the page's form always sends it
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
    remaining = pending.count()
    context = {
        "project": project,
        "demonstration": current,
        "remaining": remaining,
        "progress": selectors.QueueProgress(
            selectors.labels_today(project=project, user=request.user), max(0, remaining - 1)
        ),
        "errors": errors,
        "comment": request.POST.get("comment", ""),
        "text_sha256": text_sha256(current.text) if current else "",
    }
    return _render(request, "labelapp/review.html", "review", context, status=400 if errors else 200)


MINE_PAGE_SIZE = 50


@login_required
def mine(request: HttpRequest, slug: str) -> HttpResponse:
    """Every item the user finished in the project: labels, skips and withdrawals, newest first,
    each linking to its own page."""
    project = _project(request, slug)
    pages = Paginator(selectors.my_label_assignments(project=project, user=request.user), MINE_PAGE_SIZE)
    current = pages.get_page(request.GET.get("page"))
    rows = selectors.my_labels(project=project, user=request.user, assignments=current.object_list)
    return _render(request, "labelapp/mine.html", "mine", {"project": project, "rows": rows, "pages": current})


def _label_row(request: HttpRequest, project: Project, assignment_id: int) -> selectors.LabelRow:
    assignment = selectors.my_label_assignments(project=project, user=request.user).filter(pk=assignment_id).first()
    if assignment is None:
        raise Http404("No such label of yours.")
    return selectors.my_labels(project=project, user=request.user, assignments=[assignment])[0]


def _ranked_rows(request: HttpRequest, row: selectors.LabelRow) -> tuple[list, dict]:
    """The task's completions as this annotator saw them (same letters), with what they gave each."""
    completions = selectors.completions_for_annotator(task_id=row.assignment.ranking_task_id, user=request.user)
    letters = {c.pk: chr(ord("A") + i) for i, c in enumerate(completions)}
    ranking = row.label
    form = {"ranks": {}, "scores": {}, "flags": {}, "none_acceptable": False}
    if ranking is not None:
        form = {
            "ranks": {cid: str(i + 1) for i, group in enumerate(ranking.order) for cid in group},
            "scores": {int(cid): str(v) for cid, v in (ranking.scores or {}).items()},
            "flags": {int(cid): v for cid, v in (ranking.flags or {}).items()},
            "none_acceptable": ranking.none_acceptable,
        }
    return _rank_rows(completions, letters, form), form


@login_required
def label(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    """One finished item as the user left it, with Edit and Withdraw while it may still change."""
    project = _project(request, slug)
    row = _label_row(request, project, assignment_id)
    context = {"project": project, "row": row}
    if row.assignment.queue == Queue.RANK:
        context["rows"], form = _ranked_rows(request, row)
        context["none_acceptable"] = form["none_acceptable"]
    elif row.assignment.queue == Queue.COMPARE:
        context["a_left"], context["sides"] = selectors.comparison_sides(task=row.assignment.evaluation_task, user=request.user)
    return _render(request, "labelapp/label.html", "label", context)


@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def label_edit(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    """The item's page again, filled with what the user sent; saving replaces the label."""
    project = _project(request, slug)
    row = _label_row(request, project, assignment_id)
    if not row.editable:
        messages.error(request, f"This label can no longer change: {row.frozen}" if row.frozen else "There is no label to change.")
        return redirect("labelapp:label", slug=project.slug, assignment_id=assignment_id)
    errors: list[str] = []
    base = {"project": project, "label_row": row, "editing": True, "assignment": row.assignment}
    if row.kind == "demonstration":
        text = row.label.text
        if request.method == "POST":
            text = request.POST.get("text", "")
            try:
                demonstration_edit(demonstration_id=row.label.pk, user=request.user, text=text)
            except ValidationError as exc:
                errors = _errors(exc)
            else:
                messages.success(request, "Your demonstration is changed.")
                return redirect("labelapp:label", slug=project.slug, assignment_id=assignment_id)
        context = {**base, "prompt": row.prompt, "text": text, "errors": errors}
        return _render(request, "labelapp/write.html", "write", context, status=400 if errors else 200)
    rows, form = _ranked_rows(request, row)
    completions = [r["completion"] for r in rows]
    if request.method == "POST":
        form = _rank_form(request, completions)
        letters = {r["completion"].pk: r["letter"] for r in rows}
        try:
            order = None
            if form["ranks"] or not form["none_acceptable"]:
                order = order_from_ranks(form["ranks"], completion_ids=[c.pk for c in completions], names=letters)
            ranking_edit(ranking_id=row.label.pk, user=request.user, order=order, none_acceptable=form["none_acceptable"],
                         flags=form["flags"], scores=form["scores"])
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, "Your ranking is changed.")
            return redirect("labelapp:label", slug=project.slug, assignment_id=assignment_id)
        rows = _rank_rows(completions, letters, form)
    context = {**base, "prompt": row.prompt, "rows": rows, "k": len(rows), "flag_choices": Flag.choices,
               "none_acceptable": form["none_acceptable"], "errors": errors}
    return _render(request, "labelapp/rank.html", "rank", context, status=400 if errors else 200)


@login_required
@require_POST
def label_withdraw(request: HttpRequest, slug: str, assignment_id: int) -> HttpResponse:
    project = _project(request, slug)
    row = _label_row(request, project, assignment_id)
    try:
        if row.kind == "demonstration" and row.label is not None:
            demonstration_withdraw(demonstration_id=row.label.pk, user=request.user)
        elif row.kind == "ranking" and row.label is not None:
            ranking_withdraw(ranking_id=row.label.pk, user=request.user)
        else:
            raise ValidationError("There is no label to withdraw here.")
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("labelapp:label", slug=project.slug, assignment_id=assignment_id)
    messages.success(request, "Withdrawn: the item went back to the queue for others.")
    return redirect("labelapp:mine", slug=project.slug)
