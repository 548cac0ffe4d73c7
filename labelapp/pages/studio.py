"""The admin studio: start and watch rounds, runs and model versions.

Pages render server-side; static/labelapp/studio.js polls the JSON views while something is
running and updates progress bars, ETAs and charts in place. Every button is a POST to a view
that calls one service and redirects back with a message. Only project admins get here; to
everyone else the studio does not exist (404), as in labelapp.pages.annotate.
"""
from __future__ import annotations

import json

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from labelapp import round_settings
from labelapp.models import Project, Role, Round, TrainingRun
from labelapp.pages.annotate import _render
from labelapp.selectors import studio
from labelapp.services.access import has_role
from labelapp.services.rounds import round_advance, round_cancel, round_discard, round_promote, round_start
from labelapp.services.runs import model_version_make_current, run_cancel, run_retry
from labelapp.services.text import NUL_REASON, has_nul

SCALAR_FIELDS = ("prompts", "min_rankings")  # own inputs on the form; the rest is the JSON box


def _project(request: HttpRequest, slug: str) -> Project:
    project = get_object_or_404(Project, slug=slug)
    if not has_role(project=project, user=request.user, role=Role.ADMIN):
        raise Http404("No such project.")
    return project


def _default_form(project: Project) -> dict:
    """The start form shows the settings that will run: every default (labelapp.round_settings), with the
    last round's settings over them, so the next round starts from those."""
    last = Round.objects.filter(project=project).order_by("-number").first()
    method = last.method if last else Round.Method.PPO
    params = round_settings.effective_defaults(method, project)
    for key, value in (last.params if last else {}).items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = {**params[key], **value}
        elif key in params:
            params[key] = value
    advanced = {k: v for k, v in params.items() if k not in SCALAR_FIELDS}
    return {
        "method": method,
        "prompts": str(params["prompts"]),
        "min_rankings": str(params["min_rankings"]),
        "settings": json.dumps(advanced, indent=2),
    }


def _policy_defaults() -> str:
    """Each method's policy defaults, for the form to swap in when the method changes."""
    return json.dumps({method: round_settings.section_defaults("policy", method) for method in Round.Method.values})


def _overview(request: HttpRequest, project: Project, form: dict | None = None, errors: list[str] | None = None,
              status: int = 200) -> HttpResponse:
    context = {
        "project": project,
        "studio": True,
        "form": form or _default_form(project),
        "methods": Round.Method.choices,
        "errors": errors or [],
        "rounds": studio.rounds_timeline(project=project),
        "runs": studio.recent_runs(project=project),
        "versions": studio.model_versions(project=project),
        "queues": studio.queue_depths(project=project),
        "throughput": studio.annotator_throughput(project=project),
        "status": _with_urls(project, studio.studio_status(project=project)),
        "poll_idle_max_ms": settings.STUDIO_POLL_IDLE_MAX_MS,
        "policy_defaults": _policy_defaults(),
        "demonstration_warning": studio.demonstration_warning(project=project),
        "metric_legend": list(studio.METRIC_HELP.items()),
    }
    return _render(request, "labelapp/studio/overview.html", "studio", context, status=status)


def _with_urls(project: Project, payload: dict) -> dict:
    """Links and form actions for each run, so the page can add rows for runs born while it polls."""
    for run in payload["runs"]:
        run["urls"] = _run_urls(project, run["id"])
    for rnd in payload["rounds"]:
        for run in rnd["runs"]:
            run["url"] = reverse("studio:run", args=[project.slug, run["id"]])
        rnd["urls"] = {name: reverse(f"studio:round_{name}", args=[project.slug, rnd["id"]])
                       for name in ("advance", "cancel", "promote", "discard")}
    for version in payload.get("models", []):
        version["make_current_url"] = reverse("studio:make_current", args=[project.slug, version["id"]])
    return payload


def _run_urls(project: Project, run_id: int) -> dict[str, str]:
    return {name: reverse(f"studio:{name}", args=[project.slug, run_id]) for name in ("run", "run_cancel", "run_retry")}


@login_required
@require_GET
def overview(request: HttpRequest, slug: str) -> HttpResponse:
    return _overview(request, _project(request, slug))


def _whole_number(raw: str, label: str, errors: list[str]) -> int | None:
    try:
        return int(raw.strip())
    except (TypeError, ValueError):
        errors.append(f"{label} must be a whole number (got {raw!r}).")
        return None


def _round_params(form: dict) -> tuple[dict, list[str]]:
    """Read the start form: two numbers and the advanced settings as a JSON object."""
    errors: list[str] = []
    params: dict = {}
    try:
        advanced = json.loads(form["settings"] or "{}")
    except json.JSONDecodeError as exc:
        errors.append(f"Advanced settings are not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).")
    except RecursionError:
        errors.append("Advanced settings are nested too deeply to read.")
    else:
        if has_nul(advanced):
            errors.append(f"Advanced settings {NUL_REASON}.")
        elif isinstance(advanced, dict):
            params.update(advanced)
        else:
            errors.append("Advanced settings must be a JSON object, like {\"sft\": {\"max_steps\": 100}}.")
    params["prompts"] = _whole_number(form["prompts"], "Prompts per round", errors)
    params["min_rankings"] = _whole_number(form["min_rankings"], "Rankings needed", errors)
    return params, errors


@login_required
@require_POST
def round_start_view(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    form = {key: request.POST.get(key, "") for key in ("method", "prompts", "min_rankings", "settings")}
    params, errors = _round_params(form)
    if not errors:
        try:
            rnd = round_start(project=project, user=request.user, method=form["method"], params=params)
        except ValidationError as exc:
            errors = list(exc.messages)
        except PermissionDenied as exc:
            errors = [str(exc)]
        else:
            first = rnd.runs.order_by("id").first()
            what = f"; {first.get_kind_display()} run {first.pk} is queued" if first else ""
            messages.success(request, f"Round {rnd.number} started ({rnd.get_stage_display().lower()}{what}).")
            return redirect("studio:overview", slug=project.slug)
    return _overview(request, project, form=form, errors=errors, status=400)


def _back(request: HttpRequest, project: Project) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(target)
    return redirect("studio:overview", slug=project.slug)


def _act(request: HttpRequest, project: Project, action, success: str | None) -> HttpResponse:
    """Call a service; its ValidationError or PermissionDenied becomes a message, not a 500."""
    try:
        action()
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    else:
        if success:
            messages.success(request, success)
    return _back(request, project)


def _round(project: Project, round_id: int) -> Round:
    return get_object_or_404(Round, project=project, pk=round_id)


def _run(project: Project, run_id: int) -> TrainingRun:
    run = studio.run_for(project=project, run_id=run_id)
    if run is None:
        raise Http404("No such run.")
    return run


@login_required
@require_POST
def round_cancel_view(request: HttpRequest, slug: str, round_id: int) -> HttpResponse:
    project = _project(request, slug)
    rnd = _round(project, round_id)
    return _act(request, project, lambda: round_cancel(round_id=rnd.pk, user=request.user),
                f"Round {rnd.number} cancelled; its running work stops at the next step.")


@login_required
@require_POST
def round_promote_view(request: HttpRequest, slug: str, round_id: int) -> HttpResponse:
    project = _project(request, slug)
    rnd = _round(project, round_id)
    return _act(request, project, lambda: round_promote(round_id=rnd.pk, user=request.user),
                f"Round {rnd.number}: the new policy is now current.")


@login_required
@require_POST
def round_discard_view(request: HttpRequest, slug: str, round_id: int) -> HttpResponse:
    project = _project(request, slug)
    rnd = _round(project, round_id)
    return _act(request, project, lambda: round_discard(round_id=rnd.pk, user=request.user),
                f"Round {rnd.number}: the new policy was discarded; the previous one stays current.")


@login_required
@require_POST
def round_advance_view(request: HttpRequest, slug: str, round_id: int) -> HttpResponse:
    project = _project(request, slug)  # round_advance takes no user: the admin check is this line
    rnd = _round(project, round_id)
    before = rnd.stage

    def advance() -> None:
        after = round_advance(round_id=rnd.pk)
        moved = "is now" if after.stage != before else "is still"
        messages.info(request, f"Round {rnd.number} {moved} {after.get_stage_display().lower()}.")

    return _act(request, project, advance, None)


@login_required
@require_POST
def run_cancel_view(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    project = _project(request, slug)
    run = _run(project, run_id)
    return _act(request, project, lambda: run_cancel(run_id=run.pk, user=request.user),
                f"Cancel requested for {run.get_kind_display()} run {run.pk}.")


@login_required
@require_POST
def run_retry_view(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    project = _project(request, slug)
    run = _run(project, run_id)
    retried: list[TrainingRun] = []
    response = _act(request, project, lambda: retried.append(run_retry(run_id=run.pk, user=request.user)),
                    f"{run.get_kind_display()} run {run.pk} queued again.")
    if retried:
        messages.info(request, f"The retry is run {retried[0].pk}.")
    return response


@login_required
@require_POST
def make_current_view(request: HttpRequest, slug: str, version_id: int) -> HttpResponse:
    project = _project(request, slug)
    version = studio.version_for(project=project, version_id=version_id)
    if version is None:
        raise Http404("No such model version.")
    return _act(request, project, lambda: model_version_make_current(version_id=version.pk, user=request.user),
                f"{version.name} is now the current {version.get_kind_display().lower()}.")


@login_required
@require_GET
def run_detail(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    project = _project(request, slug)
    run = _run(project, run_id)
    context = {
        "project": project,
        "studio": True,
        "run": run,
        "status": {**studio.run_status(run), "urls": _run_urls(project, run.pk)},
        "series": studio.metric_series(studio.capped_history(run.metrics or [])),
        "length": studio.run_length_watch(run),
        "params": json.dumps(run.params, indent=2, sort_keys=True),
        "result": json.dumps(run.result, indent=2, sort_keys=True) if run.result else "",
    }
    return _render(request, "labelapp/studio/run.html", "studio-run", context)


@never_cache
@login_required
@require_GET
def status_json(request: HttpRequest, slug: str) -> JsonResponse:
    project = _project(request, slug)
    return JsonResponse(_with_urls(project, studio.studio_status(project=project)))


@never_cache
@login_required
@require_GET
def run_json(request: HttpRequest, slug: str, run_id: int) -> JsonResponse:
    project = _project(request, slug)
    return JsonResponse(studio.run_status(_run(project, run_id), history=True))

