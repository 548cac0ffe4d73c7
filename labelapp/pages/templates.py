"""The studio's prompt templates page (admins only): write and edit templates with a live preview
rendered exactly as annotators will see the prompt, and import a file of rows through them.

The preview is server-rendered: static/labelapp/templates.js posts the form to `template_preview`
while the admin types and puts the returned fragment in place; without script the "Preview"
button posts the whole form and the page comes back with the same fragment.
"""
from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.views.decorators.http import require_http_methods, require_POST

from labelapp.formats.prompts import detect_format
from labelapp.formats.templating import CHOICES, MODES, Template, TemplateError
from labelapp.models import Prompt, PromptTemplate
from labelapp.pages.annotate import _render
from labelapp.pages.studio import _project
from labelapp.services.templates import (
    prompt_template_create,
    prompt_template_update,
    template_preview,
    templated_import,
)

TEXT_FIELDS = ("name", "text", "system_prompt", "cot_cue", "mode")
NUMBER_FIELDS = ("few_shot", "seed")


def _form(post) -> tuple[dict, dict, list[str]]:
    """(the form as typed, the template's fields, errors) of a POSTed editor form."""
    form = {key: post.get(key, "") for key in (*TEXT_FIELDS, *NUMBER_FIELDS, "sample", "row")}
    fields: dict = {key: form[key] for key in TEXT_FIELDS}
    errors: list[str] = []
    for key, label in (("few_shot", "Few-shot examples"), ("seed", "Seed")):
        try:
            fields[key] = int(form[key].strip() or 0)
        except ValueError:
            errors.append(f"{label} must be a whole number (got {form[key]!r}).")
    return form, fields, errors


def _sample_rows(raw: str) -> tuple[list[dict], list[str]]:
    rows, errors = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            errors.append(f"Sample line {number} is not valid JSON.")
            continue
        if not isinstance(row, dict):
            errors.append(f"Sample line {number} must be a JSON object of fields.")
            continue
        rows.append(row)
    return rows, errors


def _preview(project, fields: dict, form: dict) -> dict:
    """What the preview fragment shows: the prompt as annotators see it, or why there is none."""
    rows, errors = _sample_rows(form.get("sample", ""))
    if errors:
        return {"error": errors[0]}
    if not rows:
        return {"error": "Paste a few sample rows (one JSON object per line) to see the preview."}
    try:
        index = max(int(form.get("row") or 1), 1) - 1
    except ValueError:
        index = 0
    try:
        values = {k: fields[k] for k in (*TEXT_FIELDS, *NUMBER_FIELDS) if k in fields}
        values["name"] = (values.get("name") or "").strip() or "new template"  # the preview needs no name yet
        template = Template(**values)
        rendered = template_preview(template=template, rows=rows, index=min(index, len(rows) - 1))
    except (TemplateError, TypeError) as exc:
        return {"error": str(exc)}
    prompt = Prompt(project=project, text=rendered.text, messages=rendered.messages, category=project.default_category)
    return {"prompt": prompt, "reference": rendered.reference, "examples": rendered.examples, "row": rendered.row}


def _page(request, project, *, template=None, form=None, preview=None, errors=None, status=200) -> HttpResponse:
    if form is None:
        form = {key: str(getattr(template, key)) if template else "" for key in (*TEXT_FIELDS, *NUMBER_FIELDS)}
        form.update(sample="", row="1")
        if template is None:
            form.update(mode="chat", few_shot="0", seed="0")
    context = {
        "project": project, "studio": True, "templates": PromptTemplate.objects.filter(project=project),
        "template": template, "form": form, "modes": MODES, "choices": CHOICES, "preview": preview,
        "errors": errors or [], "categories": project.categories, "splits": Prompt.Split.choices,
    }
    return _render(request, "labelapp/studio/templates.html", "studio-templates", context, status=status)


def _template(project, template_id: int) -> PromptTemplate:
    template = PromptTemplate.objects.filter(project=project, pk=template_id).first()
    if template is None:
        raise Http404("No such template.")
    return template


def _save(request, project, template) -> HttpResponse:
    form, fields, errors = _form(request.POST)
    if request.POST.get("action") == "preview":
        return _page(request, project, template=template, form=form, preview=_preview(project, fields, form),
                     errors=errors, status=400 if errors else 200)
    if not errors:
        try:
            if template is None:
                saved = prompt_template_create(project=project, **fields)
            else:
                saved = prompt_template_update(project=project, template_id=template.pk, **fields)
        except ValidationError as exc:
            errors = [f"{k}: {m}" if k != "__all__" else m for k, ms in exc.message_dict.items() for m in ms] \
                if hasattr(exc, "error_dict") else list(exc.messages)
        else:
            messages.success(request, f"Template {saved.name!r} saved (version {saved.version}).")
            return redirect("studio:template", slug=project.slug, template_id=saved.pk)
    return _page(request, project, template=template, form=form, preview=_preview(project, fields, form),
                 errors=errors, status=400)


@login_required
@require_http_methods(["GET", "POST"])
def templates_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    if request.method == "POST":
        return _save(request, project, None)
    return _page(request, project)


@login_required
@require_http_methods(["GET", "POST"])
def template_page(request: HttpRequest, slug: str, template_id: int) -> HttpResponse:
    project = _project(request, slug)
    template = _template(project, template_id)
    if request.method == "POST":
        return _save(request, project, template)
    return _page(request, project, template=template)


@login_required
@require_POST
def template_preview_fragment(request: HttpRequest, slug: str) -> HttpResponse:
    """The preview fragment for the form as it stands (nothing is saved)."""
    project = _project(request, slug)
    form, fields, errors = _form(request.POST)
    preview = {"error": errors[0]} if errors else _preview(project, fields, form)
    html = render_to_string("labelapp/studio/_template_preview.html", {"preview": preview}, request=request)
    return HttpResponse(html)


@login_required
@require_POST
def template_import(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project(request, slug)
    upload = request.FILES.get("file")
    chosen = request.POST.getlist("templates")
    errors: list[str] = []
    if upload is None:
        errors.append("Choose a file of rows (JSONL or CSV).")
    try:
        seed = int(request.POST.get("seed") or 0)
    except ValueError:
        errors.append("Seed must be a whole number.")
        seed = 0
    if not errors:
        try:
            fmt = detect_format(upload.name)
            result = templated_import(project=project, data=upload, fmt=fmt, template_ids=chosen,
                                      choice=request.POST.get("choice") or "round-robin", seed=seed,
                                      category=request.POST.get("category") or None,
                                      split=request.POST.get("split") or Prompt.Split.TRAIN)
        except ValueError as exc:  # the file's name tells no format
            errors.append(str(exc))
        except ValidationError as exc:
            errors.extend(exc.messages)
        else:
            messages.success(request, f"Imported {result.created} prompts ({result.duplicates} duplicates skipped).")
            return redirect("studio:templates", slug=project.slug)
    for error in errors:
        messages.error(request, f"Import refused, nothing was written: {error}")
    return redirect("studio:templates", slug=project.slug)
