"""Prompt templates: create, edit (version bumped), delete, preview, and the structured import
that renders rows of fields through templates into prompts (labelapp.formats.templating does the
rendering; this module reads files and writes rows).

The structured import is all or nothing. A file of rows (JSONL objects, or CSV with a header) is
read first; every row is then rendered, inside one transaction that holds the project's lock and
the chosen templates' row locks (an edit cannot slip in between rendering and writing); the first
bad row or field refuses the whole file with ImportRejected naming the row, its line and the field.

Each row's fields are the template's placeholders, `target` (the prompt's reference answer), the
fields named in `extra_fields` (kept as metadata only), and two control fields that are not
rendered: `category` and `split` (the prompt's, defaulting to the import's). The prompt's metadata
is `{"template": {"id", "name", "version", "few_shot", "examples"}, "fields": {...the row...}}`.
"""
from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Mapping, Sequence

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from labelapp.formats.prompts import (
    ParseReport,
    category_error,
    category_for,
    jsonl_objects,
    metadata_error,
    open_upload,
    prompt_hash,
    upload_lines,
)
from labelapp.formats.templating import (
    CHOICES,
    TARGET,
    Rendered,
    Template,
    TemplateError,
    check_row,
    render_one,
    render_rows,
)
from labelapp.models import Project, Prompt, PromptTemplate
from labelapp.models.templates import RENDERED_FIELDS, template_error_field
from labelapp.services.projects import ImportRejected, ImportResult, lock_project
from labelapp.services.text import refuse_nul

CONTROL_FIELDS = ("category", "split")  # fields of a row that set the prompt's category and split, not rendered
EDITABLE = ("name", *RENDERED_FIELDS)


def _refuse_nul(values: Mapping) -> None:
    for key, value in values.items():
        refuse_nul(value, what=f"template's {key}")


def _clean(template: PromptTemplate) -> None:
    try:
        template.full_clean(exclude=["project"])
    except ValidationError as exc:
        raise ValidationError({k: v for k, v in exc.message_dict.items()}) from None


@transaction.atomic
def prompt_template_create(*, project: Project, name: str, text: str, **fields) -> PromptTemplate:
    """A template of `project`; `fields` are any of system_prompt, cot_cue, few_shot, seed, mode,
    separator, answer_prefix. Refused (ValidationError naming the field) when it could never render."""
    unknown = sorted(set(fields) - set(EDITABLE))
    if unknown:
        raise ValidationError(f"Unknown template field(s): {', '.join(unknown)}.")
    name = (name or "").strip()
    _refuse_nul({"name": name, "text": text, **fields})
    lock_project(project)
    if PromptTemplate.objects.filter(project=project, name=name).exists():
        raise ValidationError({"name": f"The project already has a template named {name!r}."})
    template = PromptTemplate(project=project, name=name, text=text, **fields)
    _clean(template)
    template.save()
    return template


@transaction.atomic
def prompt_template_update(*, project: Project, template_id: int, **changes) -> PromptTemplate:
    """Edit a template of `project`; its version goes up by one when what it renders changes (a
    rename alone keeps the version). The template's row is locked while it changes."""
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise ValidationError(f"Unknown template field(s): {', '.join(unknown)}.")
    _refuse_nul(changes)
    template = PromptTemplate.objects.select_for_update().filter(project=project, pk=template_id).first()
    if template is None:
        raise PromptTemplate.DoesNotExist("No such template in this project.")
    if "name" in changes:
        changes["name"] = (changes["name"] or "").strip()
        if PromptTemplate.objects.filter(project=project, name=changes["name"]).exclude(pk=template.pk).exists():
            raise ValidationError({"name": f"The project already has a template named {changes['name']!r}."})
    changed = [k for k, v in changes.items() if getattr(template, k) != v]
    for key, value in changes.items():
        setattr(template, key, value)
    if any(k in RENDERED_FIELDS for k in changed):
        template.version += 1  # under the row lock
    _clean(template)
    template.save()
    return template


@transaction.atomic
def prompt_template_delete(*, project: Project, template_id: int) -> None:
    """Delete a template; prompts rendered from it keep its id, name and version in their metadata."""
    deleted, _ = PromptTemplate.objects.filter(project=project, pk=template_id).delete()
    if not deleted:
        raise PromptTemplate.DoesNotExist("No such template in this project.")


def _as_row_fields(row: Mapping) -> tuple[dict, dict]:
    """(fields to render, control fields) of a row."""
    return ({k: v for k, v in row.items() if k not in CONTROL_FIELDS},
            {k: row[k] for k in CONTROL_FIELDS if k in row})


def template_preview(*, template: Template, rows: Sequence[Mapping], index: int = 0,
                     extra_fields: Sequence[str] = ()) -> Rendered:
    """Row `index` of `rows` rendered through `template` (few-shot examples drawn from the other
    rows), exactly as the import would render it; TemplateError naming the row and field otherwise."""
    template.check()
    if not rows:
        raise TemplateError("Give at least one sample row to preview.")
    if not 0 <= index < len(rows):
        raise TemplateError(f"There is no row {index + 1}: the sample has {len(rows)} rows.")
    fields = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise TemplateError(f"row {number}: expected an object of fields, got {type(row).__name__}.")
        fields.append(_as_row_fields(row)[0])
    check_row(template, index + 1, fields[index], extra_fields=extra_fields)
    return render_one(template, fields, index, seed=template.seed or 0)


# ---- reading a file of rows ------------------------------------------------------------------

def parse_field_rows(data, *, fmt: str) -> tuple[list[dict], list[int], ParseReport]:
    """Rows of fields of a JSONL or CSV file (bytes or a binary stream, gzip allowed), the line
    each row starts on, and the report of what is wrong with the file (errors name the line)."""
    report = ParseReport()
    rows: list[dict] = []
    lines: list[int] = []
    if fmt not in ("jsonl", "csv"):
        report.error(1, None, f"unknown format {fmt!r}: use jsonl or csv")
        return rows, lines, report
    stream = open_upload(data, report)
    if stream is None:
        return rows, lines, report
    if fmt == "jsonl":
        for number, obj in jsonl_objects(stream, report, not_object="each line must be a JSON object of fields"):
            rows.append(obj)
            lines.append(number)
    else:
        source = (line for _, line in upload_lines(stream, report, keep_bad=True))
        head = list(itertools.islice(source, 20))
        try:
            dialect = csv.Sniffer().sniff("".join(head)[:4096], delimiters=",\t;")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(itertools.chain(head, source), dialect=dialect)
        try:
            if not reader.fieldnames:
                report.error(1, None, "the CSV needs a header naming the fields")
            else:
                start = reader.line_num + 1
                for obj in reader:
                    if None in obj:
                        report.error(reader.line_num, None, "this row has more cells than the header")
                    else:  # an empty cell is a missing value
                        rows.append({k.strip(): v for k, v in obj.items() if k and k.strip() and v not in (None, "")})
                        lines.append(start)
                    start = reader.line_num + 1
        except csv.Error as exc:
            report.error(reader.line_num, None, f"broken CSV: {exc}")
    if not rows and not report.errors:
        report.error(1, None, "the file holds no rows")
    return rows, lines, report


ROW_MESSAGE = re.compile(r"^row (\d+):")


def _with_line(message: str, lines: Sequence[int]) -> str:
    """'row 3: …' -> 'row 3 (line 4): …' so the user can find it in the file."""
    match = ROW_MESSAGE.match(message)
    if not match or not 1 <= int(match.group(1)) <= len(lines):
        return message
    number = int(match.group(1))
    return f"row {number} (line {lines[number - 1]}):" + message[match.end():]


# ---- the import ----------------------------------------------------------------------------

def templated_import(
    *, project: Project, data, fmt: str, template_ids: Sequence[int | str], choice: str = "round-robin",
    seed: int = 0, category: str | None = None, split: str = Prompt.Split.TRAIN, extra_fields: Sequence[str] = (),
) -> ImportResult:
    """Render every row of a JSONL/CSV file through the project's templates `template_ids` (ids or
    names): one template per row (choice "round-robin", or "random" seeded by `seed`) or every
    template ("all"), and add the prompts. All or nothing; prompts already in the project are
    counted as duplicates. Raises ImportRejected whose messages name the row, line and field."""
    if choice not in CHOICES:
        raise ImportRejected([f"choice must be one of {', '.join(CHOICES)}, not {choice!r}"])
    if split not in Prompt.Split.values:
        raise ImportRejected([f"unknown split {split!r}; use train or validation"])
    default_category = category_for(category, project.categories, project.default_category)
    if default_category is None:
        raise ImportRejected([category_error(category, project.categories)])
    if not template_ids:
        raise ImportRejected(["choose at least one template"])
    rows, lines, report = parse_field_rows(data, fmt=fmt)
    if report.errors:
        raise ImportRejected(report.messages)
    try:
        return _render_and_write(project=project, rows=rows, lines=lines, template_ids=template_ids, choice=choice,
                                 seed=seed, default_category=default_category, split=split,
                                 extra_fields=list(extra_fields))
    except IntegrityError:  # another writer added one of these prompts without the project lock
        raise ImportRejected(["the same prompts were added to the project at the same time; nothing was written, "
                              "import the file again"]) from None


def _templates(project: Project, refs: Sequence[int | str]) -> list[PromptTemplate]:
    """The project's templates named by id or name, in the order given, locked for the import."""
    found = []
    for ref in refs:
        ref = str(ref).strip()
        qs = PromptTemplate.objects.select_for_update().filter(project=project)
        template = qs.filter(pk=int(ref)).first() if ref.isdigit() else qs.filter(name=ref).first()
        if template is None:
            raise ImportRejected([f"template {ref!r}: no such template in this project"])
        if template not in found:
            found.append(template)
    return found


@transaction.atomic
def _render_and_write(*, project: Project, rows: list[dict], lines: list[int], template_ids, choice: str, seed: int,
                      default_category: str, split: str, extra_fields: list[str]) -> ImportResult:
    lock_project(project)
    templates = _templates(project, template_ids)
    controls: list[dict] = []
    fields: list[dict] = []
    errors: list[str] = []
    for number, row in enumerate(rows, start=1):
        kept, control = _as_row_fields(row)
        fields.append(kept)
        where = f"row {number} (line {lines[number - 1]})"
        cat = category_for(control.get("category"), project.categories, default_category)
        if cat is None:
            errors.append(f"{where}: field 'category': {category_error(control.get('category'), project.categories)}")
        row_split = str(control.get("split") or split).strip().lower()
        if row_split not in Prompt.Split.values:
            errors.append(f"{where}: field 'split': unknown split {row_split!r}; use train or validation")
        controls.append({"category": cat, "split": row_split})
        if (problem := metadata_error(kept)) is not None:
            errors.append(f"{where}: the row's fields {problem}")
    if errors:
        raise ImportRejected(errors[:50])
    try:
        rendered = render_rows([t.as_template() for t in templates], fields, choice=choice, seed=seed,
                               extra_fields=extra_fields)
    except TemplateError as exc:
        raise ImportRejected([_with_line(str(exc), lines)]) from None
    limit = settings.LABEL_MAX_TEXT_CHARS
    existing = set(Prompt.objects.filter(project=project).values_list("content_hash", flat=True))
    new: list[Prompt] = []
    for item in rendered:
        where = f"row {item.row} (line {lines[item.row - 1]})"
        body = item.text or "".join(turn["content"] for turn in item.messages or [])
        longest = max([len(item.text)] + [len(t["content"]) for t in item.messages or []])
        if longest > limit:
            raise ImportRejected([f"{where}: template {item.template.name!r} renders {longest:,} characters; "
                                  f"the limit is {limit:,}"])
        if len(item.reference) > limit:
            raise ImportRejected([f"{where}: field {TARGET!r} is longer than {limit:,} characters"])
        refuse_nul(body, what=f"prompt rendered from {where}")
        digest = prompt_hash(text=item.text, messages=item.messages)
        if digest in existing:
            continue
        existing.add(digest)
        control = controls[item.row - 1]
        new.append(Prompt(project=project, text="" if item.messages else item.text, messages=item.messages,
                          category=control["category"], split=control["split"], source=Prompt.Source.IMPORTED,
                          reference=item.reference, metadata=item.metadata, content_hash=digest))
    Prompt.objects.bulk_create(new, batch_size=1000)
    return ImportResult(created=len(new), duplicates=len(rendered) - len(new))


__all__ = [
    "parse_field_rows",
    "prompt_template_create",
    "prompt_template_delete",
    "prompt_template_update",
    "template_error_field",
    "template_preview",
    "templated_import",
]
