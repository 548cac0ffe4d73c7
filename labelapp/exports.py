"""Streaming exports in the trainers' formats, one JSON object per line.

Every export walks the database with a server-side cursor (`QuerySet.iterator(chunk_size=…)`;
on PostgreSQL a named cursor) and yields lines as it goes: memory stays flat however many rows
there are, and the first line leaves as soon as the first chunk is read. Annotators appear only
as stable pseudonyms (an HMAC of their id under the SECRET_KEY).

Formats (TRL's dataset formats, https://huggingface.co/docs/trl/dataset_formats):
- pairs, plain:          {"prompt": str, "chosen": str, "rejected": str[, "margin": float]}
- pairs, conversational: {"prompt": [turns], "chosen": [assistant turn], "rejected": [assistant turn][, "margin"]}
- rankings:              the whole ranking with ties, flags, scores and the completions' texts
- demonstrations:        {"messages": [prompt turns…, {"role": "assistant", "content": demonstration}]}
- kto (unpaired):        {"prompt": [turns], "completion": [assistant turn], "label": bool}
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from django.conf import settings

from labelapp.agreement import pairwise_agreement
from labelapp.models import Demonstration, Project, Prompt, Ranking
from labelapp.selectors import ranking_pairs

CHUNK = 1000
FORMATS = ("pairs", "rankings", "demonstrations", "kto")


def pseudonym(user_id: int) -> str:
    mac = hmac.new(settings.SECRET_KEY.encode(), f"annotator:{user_id}".encode(), hashlib.sha256)
    return "ann_" + mac.hexdigest()[:12]


@dataclass(frozen=True)
class ExportFilter:
    project: Project
    split: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_agreement: float | None = None


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def _plain_prompt(prompt: Prompt) -> str:
    if not prompt.messages:
        return prompt.text
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{names[t['role']]}: {t['content']}" for t in prompt.messages).lstrip("\n")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _rankings(f: ExportFilter) -> Iterator[Ranking]:
    qs = Ranking.objects.filter(task__project=f.project)
    if f.split:
        qs = qs.filter(task__prompt__split=f.split)
    if f.since:
        qs = qs.filter(created_at__gte=f.since)
    if f.until:
        qs = qs.filter(created_at__lt=f.until)
    qs = qs.select_related("task__prompt").prefetch_related("task__completions").order_by("task_id", "id")
    rankings = qs.iterator(chunk_size=CHUNK)
    if f.min_agreement is None:
        yield from rankings
        return
    # Items qualify on the agreement of their own annotators (InstructGPT's pairwise measure).
    for _, group in groupby(rankings, key=lambda r: r.task_id):
        group = list(group)
        result = pairwise_agreement({0: {r.annotator_id: r.order for r in group}})
        if result.rate is not None and result.rate >= f.min_agreement:
            yield from group


def export_pairs(f: ExportFilter, *, conversational: bool = False, margin: bool = False, meta: bool = False) -> Iterator[bytes]:
    for ranking in _rankings(f):
        texts = {c.pk: c.text for c in ranking.task.completions.all()}
        prompt = ranking.task.prompt.turns if conversational else _plain_prompt(ranking.task.prompt)
        for chosen, rejected, diff in ranking_pairs(ranking):
            row = {
                "prompt": prompt,
                "chosen": _assistant(texts[chosen]) if conversational else texts[chosen],
                "rejected": _assistant(texts[rejected]) if conversational else texts[rejected],
            }
            if margin:
                row["margin"] = diff if diff is not None else 0.0
            if meta:
                row.update(ranking_id=ranking.pk, annotator=pseudonym(ranking.annotator_id))
            yield _line(row)


def export_rankings(f: ExportFilter) -> Iterator[bytes]:
    for r in _rankings(f):
        prompt = r.task.prompt
        yield _line(
            {
                "ranking_id": r.pk,
                "task_id": r.task_id,
                "prompt_id": prompt.pk,
                "prompt": prompt.turns,
                "category": prompt.category,
                "split": prompt.split,
                "completions": [
                    {"id": c.pk, "text": c.text, "model_version_id": c.model_version_id} for c in r.task.completions.all()
                ],
                "order": r.order,
                "none_acceptable": r.none_acceptable,
                "flags": r.flags,
                "scores": r.scores,
                "time_spent_ms": r.time_spent_ms,
                "annotator": pseudonym(r.annotator_id),
                "created_at": r.created_at.isoformat(),
            }
        )


def export_kto(f: ExportFilter) -> Iterator[bytes]:
    """Unpaired rows: the best tie group of a ranking is desirable, the worst undesirable (the
    middle is left out as ambiguous); with "none acceptable" every response is undesirable."""
    for r in _rankings(f):
        texts = {c.pk: c.text for c in r.task.completions.all()}
        prompt = r.task.prompt.turns
        labelled: Iterable[tuple[int, bool]]
        if r.none_acceptable:
            labelled = [(cid, False) for cid in texts]
        elif len(r.order) >= 2:
            labelled = [(cid, True) for cid in r.order[0]] + [(cid, False) for cid in r.order[-1]]
        else:
            labelled = []
        for cid, label in labelled:
            yield _line({"prompt": prompt, "completion": _assistant(texts[cid]), "label": label})


def export_demonstrations(f: ExportFilter, *, statuses: Iterable[str] = ("approved", "pending")) -> Iterator[bytes]:
    qs = Demonstration.objects.filter(prompt__project=f.project, review_status__in=list(statuses))
    if f.split:
        qs = qs.filter(prompt__split=f.split)
    if f.since:
        qs = qs.filter(created_at__gte=f.since)
    if f.until:
        qs = qs.filter(created_at__lt=f.until)
    for d in qs.select_related("prompt").order_by("id").iterator(chunk_size=CHUNK):
        yield _line({"messages": d.prompt.turns + _assistant(d.text)})
