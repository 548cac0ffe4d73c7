"""Projects, members, prompts, completions and ranking tasks."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from labelapp.formats.prompts import category_error, category_for, metadata_error, parse_prompts, prompt_hash
from labelapp.models import Completion, Membership, ModelVersion, Project, Prompt, RankingTask
from labelapp.services.text import refuse_nul


@transaction.atomic
def project_create(
    *,
    name: str,
    slug: str = "",
    guidelines: str = "",
    k: int = 4,
    overlap: int = 1,
    demonstrations_per_prompt: int = 1,
    base_model: str = "smollm2-135m-instruct",
    categories: list[str] | None = None,
) -> Project:
    """A project; `categories` lists its prompt categories (default: InstructGPT's ten)."""
    name = (name or "").strip()
    if not name:
        raise ValidationError("A project needs a name.")
    for value, what in ((name, "name"), (slug, "slug"), (guidelines, "guidelines"), (base_model, "base model"),
                        (categories, "categories")):
        refuse_nul(value, what=f"project's {what}")
    slug = slugify(slug or name)[:80]
    if not slug or slug.isdigit():
        raise ValidationError(f"The slug {slug!r} needs a letter: the API tells slugs from ids by that.")
    if Project.objects.filter(slug=slug).exists():
        raise ValidationError(f"A project with the slug {slug!r} already exists.")
    project = Project(
        name=name,
        slug=slug,
        guidelines=guidelines,
        k=k,
        overlap=overlap,
        demonstrations_per_prompt=demonstrations_per_prompt,
        base_model=base_model,
    )
    if categories is not None:
        project.categories = list(categories)
    try:
        project.full_clean()
    except ValidationError as exc:
        raise ValidationError([f"{field}: {m}" for field, ms in exc.message_dict.items() for m in ms]) from None
    project.save()
    return project


@transaction.atomic
def membership_set(*, project: Project, user, role: str) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    membership.full_clean()
    return membership


@dataclass(frozen=True)
class ImportResult:
    created: int
    duplicates: int


class ImportRejected(ValidationError):
    """The whole file was refused; `.messages` names each line, field and reason."""


def prompts_import(*, project: Project, data: bytes, fmt: str) -> ImportResult:
    """Add the prompts of a JSONL or CSV file to a project: all of them, or none.

    Prompts whose content is already in the project (or earlier in the same file) are counted
    as duplicates and skipped, so importing the same file twice adds nothing. Categories are
    checked against the project's. Imports into one project run one after the other (the
    project's row lock), so two imports of the same prompts at once dedupe like two in a row.
    """
    report = parse_prompts(data, fmt=fmt, categories=project.categories, default_category=project.default_category)
    if report.errors:
        raise ImportRejected(report.messages)
    try:
        return _write_prompts(project=project, rows=report.rows)
    except IntegrityError:  # another writer added one of these prompts without the project lock
        raise ImportRejected(["line 1: the same prompts were added to the project at the same time; nothing was "
                              "written, import the file again"]) from None


@transaction.atomic
def _write_prompts(*, project: Project, rows: list) -> ImportResult:
    lock_project(project)
    existing = set(Prompt.objects.filter(project=project).values_list("content_hash", flat=True))
    new: list[Prompt] = []
    for row in rows:
        digest = row.content_hash
        if digest in existing:
            continue
        existing.add(digest)
        new.append(
            Prompt(
                project=project,
                text=row.text,
                messages=row.messages,
                category=row.category,
                split=row.split,
                source=row.source,
                reference=row.reference,
                metadata=row.metadata,
                content_hash=digest,
            )
        )
    Prompt.objects.bulk_create(new, batch_size=1000)
    return ImportResult(created=len(new), duplicates=len(rows) - len(new))


def lock_project(project: Project) -> None:
    """Serialise writers of a project's prompts (imports, prompt_create). FOR NO KEY UPDATE: rows
    that reference the project (claims, labels) can still be inserted meanwhile."""
    Project.objects.select_for_update(no_key=True).filter(pk=project.pk).values_list("pk").first()


@transaction.atomic
def prompt_create(
    *,
    project: Project,
    text: str = "",
    messages: list[dict] | None = None,
    category: str | None = None,
    split: str = Prompt.Split.TRAIN,
    source: str = Prompt.Source.ANNOTATOR,
    reference: str = "",
    metadata: dict | None = None,
) -> Prompt:
    """One prompt, its text kept exactly as given. `category` must be one of the project's
    (default: "other" when the project has it, else none)."""
    text = text or ""
    for value, what in ((text, "prompt"), (messages, "prompt"), (reference, "reference answer"), (metadata, "metadata")):
        refuse_nul(value, what=what)
    if not messages and not text.strip():
        raise ValidationError("The prompt is empty.")
    if len(text) > settings.LABEL_MAX_TEXT_CHARS:
        raise ValidationError(f"The prompt is longer than {settings.LABEL_MAX_TEXT_CHARS:,} characters.")
    resolved = category_for(category, project.categories, project.default_category)
    if resolved is None:
        message = category_error(category, project.categories)
        raise ValidationError(message[0].upper() + message[1:] + ".")
    if metadata is not None and (problem := metadata_error(metadata)) is not None:
        raise ValidationError(f"The prompt's metadata {problem}.")
    lock_project(project)
    digest = prompt_hash(text=text, messages=messages)
    if Prompt.objects.filter(project=project, content_hash=digest).exists():
        raise ValidationError("This prompt is already in the project.")
    prompt = Prompt(
        project=project,
        text="" if messages else text,
        messages=messages or None,
        category=resolved,
        split=split,
        source=source,
        reference=reference,
        metadata=metadata or {},
        content_hash=digest,
    )
    prompt.full_clean()
    prompt.save()
    return prompt


@transaction.atomic
def completion_create(
    *,
    prompt: Prompt,
    text: str,
    source: str = Completion.Source.MODEL,
    model_version: ModelVersion | None = None,
    decoding: dict | None = None,
    run=None,
    sample_index: int = 0,
) -> Completion:
    """`run` and `sample_index` key a run's outputs: (run, prompt, model version, sample index) is unique."""
    # Model outputs are untrusted: a NUL cannot be stored in PostgreSQL text; show it as U+FFFD.
    text = (text or "").replace("\x00", "\ufffd")
    if not text.strip():
        raise ValidationError("A completion cannot be empty.")
    if len(text) > settings.LABEL_MAX_TEXT_CHARS:
        raise ValidationError(f"The completion is longer than {settings.LABEL_MAX_TEXT_CHARS:,} characters.")
    completion = Completion(
        prompt=prompt, text=text, source=source, model_version=model_version, decoding=decoding or {}, run=run,
        sample_index=sample_index,
    )
    completion.full_clean()
    completion.save()
    return completion


@transaction.atomic
def ranking_task_create(*, project: Project, prompt: Prompt, completions: Sequence[Completion], run=None, round=None,
                        priority: int = 0) -> RankingTask:
    """A task asking annotators to rank 2–9 distinct completions of one prompt (one per prompt per `run`);
    `round` is the round whose sampling made it, `priority` its place in the rank queue (higher first)."""
    ids = {c.pk for c in completions}
    if not 2 <= len(ids) <= 9 or len(ids) != len(completions):
        raise ValidationError(f"A ranking task needs 2 to 9 distinct completions; got {len(completions)}.")
    if prompt.project_id != project.pk:
        raise ValidationError("The prompt belongs to another project.")
    if any(c.prompt_id != prompt.pk for c in completions):
        raise ValidationError("Every completion of a ranking task must answer the task's prompt.")
    if round is not None and round.project_id != project.pk:
        raise ValidationError("The round belongs to another project.")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValidationError(f"A task's priority is a whole number; got {priority!r}.")
    task = RankingTask.objects.create(project=project, prompt=prompt, run=run, round=round, priority=priority)
    task.completions.set(completions)
    return task


@transaction.atomic
def evaluation_task_create(
    *, project: Project, prompt: Prompt, model_a: ModelVersion, model_b: ModelVersion, text_a: str, text_b: str,
    round=None, reward_a: float | None = None, reward_b: float | None = None, decoding: dict | None = None,
    decoding_a: dict | None = None, decoding_b: dict | None = None, run=None,
):
    """A blind A/B task: the candidate's (A) and the baseline's (B) answers to one prompt.
    `decoding` is what both answers were sampled with; `decoding_a`/`decoding_b`, when given,
    are each answer's own (with its finish reason and token count) and take its place. A `run` writes one
    task per prompt (enforced by the database)."""
    from labelapp.models import EvaluationTask

    if model_a.pk == model_b.pk:
        raise ValidationError("An evaluation compares two different model versions.")
    if prompt.project_id != project.pk:
        raise ValidationError("The prompt belongs to another project.")
    # Created in a random order, so the completions' ids do not tell candidate from baseline.
    sides = [("a", text_a, model_a, decoding_a), ("b", text_b, model_b, decoding_b)]
    random.SystemRandom().shuffle(sides)
    made = {
        side: completion_create(prompt=prompt, text=text or "(empty response)", model_version=model,
                                decoding=own or decoding, run=run)
        for side, text, model, own in sides
    }
    a, b = made["a"], made["b"]
    return EvaluationTask.objects.create(
        project=project, round=round, prompt=prompt, model_a=model_a, model_b=model_b, completion_a=a, completion_b=b,
        reward_a=reward_a, reward_b=reward_b, run=run,
    )
