"""Streaming exports in the trainers' formats, one JSON object per line.

Every export walks the database in keyset pages (rankings) or with a server-side cursor
(`QuerySet.iterator(chunk_size=…)`, demonstrations) and yields lines as it goes: memory stays flat
however many rows there are, and the first line leaves as soon as the first page is read. Annotators appear only
as stable pseudonyms (an HMAC of their id under the SECRET_KEY).

Formats (TRL's dataset formats, https://huggingface.co/docs/trl/dataset_formats):
- pairs, plain:          {"prompt": str, "chosen": str, "rejected": str[, "margin": float]}
- pairs, conversational: {"prompt": [turns], "chosen": [assistant turn], "rejected": [assistant turn][, "margin"]}
- rankings:              the whole ranking with ties, flags, scores, the completions' texts and the
                         prompt's category and metadata
- demonstrations:        {"messages": [prompt turns…, {"role": "assistant", "content": demonstration}],
                         "category": the prompt's category, "split": train | validation}
- kto (unpaired):        {"prompt": [turns], "completion": [assistant turn], "label": bool}
- prompts:               the prompt import's own JSONL ({"text"} or {"messages"}, category, split,
                         source, reference, metadata), so a project's prompts import back unchanged

A plain-style pair of a chat prompt (several turns) writes the conversation as an HH-RLHF style
transcript that ends with the assistant's cue — "Human: …\\n\\nAssistant: …\\n\\nHuman: …\\n\\nAssistant:"
— and each reply with the one leading space of that format (" Certainly!"), so TRL, which joins
prompt and reply as they are, trains on "…\\n\\nAssistant: Certainly!". A single-turn prompt stays its
text. For a model with a chat template, prefer style=conversational: TRL applies the template.

Every line is JSON with U+2028 and U+2029 escaped (\\u2028, \\u2029): they are legal raw inside JSON
strings, but tools that split lines with str.splitlines() (or JavaScript) would break a line there.
Texts are written exactly as they are stored.
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

from labelapp.analysis.agreement import pairwise_agreement
from labelapp.models import Demonstration, Project, Ranking, RankingTask
from labelapp.selectors.labels import ranking_pairs

CHUNK = 2000
FIRST_CHUNK = 50
FORMATS = ("pairs", "rankings", "demonstrations", "kto", "prompts")
ASSISTANT_CUE = "\n\nAssistant:"  # ends a plain chat prompt; the reply follows after one space


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


def buffered(chunks: Iterable[bytes], size: int = 1 << 16) -> Iterator[bytes]:
    """Join small pieces into ~64 KB writes; the first piece goes out at once (first byte)."""
    buffer: list[bytes] = []
    filled = 0
    first = True
    for chunk in chunks:
        if first:
            yield chunk
            first = False
            continue
        buffer.append(chunk)
        filled += len(chunk)
        if filled >= size:
            yield b"".join(buffer)
            buffer, filled = [], 0
    if buffer:
        yield b"".join(buffer)


def _safe(text: str) -> str:
    """JSON text with the line and paragraph separators escaped (only inside strings can they occur)."""
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _line(obj: dict) -> bytes:
    return (_safe(json.dumps(obj, ensure_ascii=False)) + "\n").encode("utf-8")


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@dataclass(frozen=True)
class RankingRow:
    """One ranking with what its exports need, read without building model instances."""

    id: int
    task_id: int
    annotator_id: int
    order: list
    none_acceptable: bool
    flags: dict
    scores: dict
    time_spent_ms: int
    created_at: datetime
    prompt_id: int
    prompt_text: str
    prompt_messages: list | None
    category: str
    split: str
    prompt_metadata: dict
    completions: dict  # completion id → (text, model_version_id), in id order
    adjudicated: bool = False  # a reviewer's decision (id: the Adjudication's; annotator: the reviewer)

    @property
    def turns(self) -> list[dict]:
        return list(self.prompt_messages) if self.prompt_messages else [{"role": "user", "content": self.prompt_text}]

    @property
    def is_chat(self) -> bool:
        return bool(self.prompt_messages)

    @property
    def plain_prompt(self) -> str:
        """The prompt as one string: its text, or a chat as a transcript ending with the assistant's cue."""
        if not self.prompt_messages:
            return self.prompt_text
        names = {"user": "Human", "assistant": "Assistant", "system": "System"}
        turns = "".join(f"\n\n{names[t['role']]}: {t['content']}" for t in self.prompt_messages)
        return turns[2:] + ASSISTANT_CUE


RANKING_FIELDS = (
    "id", "task_id", "annotator_id", "order", "none_acceptable", "flags", "scores", "time_spent_ms", "created_at",
    "task__prompt_id", "task__prompt__text", "task__prompt__messages", "task__prompt__category", "task__prompt__split",
    "task__prompt__metadata",
)


def _completion_texts(project: Project, task_ids: set[int]) -> dict[int, dict[int, tuple[str, int | None]]]:
    # The batch is ordered by task id, so a range (plus the project) finds its tasks without a
    # 2,000-item IN list; tasks in the range that the filters left out are simply not looked up.
    through = RankingTask.completions.through.objects.filter(
        rankingtask__project=project, rankingtask_id__gte=min(task_ids), rankingtask_id__lte=max(task_ids)
    ).order_by("completion_id")
    texts: dict[int, dict[int, tuple[str, int | None]]] = {}
    for task_id, cid, text, version in through.values_list(
        "rankingtask_id", "completion_id", "completion__text", "completion__model_version_id"
    ):
        texts.setdefault(task_id, {})[cid] = (text, version)
    return texts


def _ranking_rows(f: ExportFilter) -> Iterator[RankingRow]:
    """Rankings in (task, id) order, read in keyset pages: each page is a short index walk
    (index ranking_task_then_id), so the first rows come at once and memory stays flat."""
    # Gold never trains; an adjudicated task's rankings give way to its adjudication (yielded last).
    qs = Ranking.objects.filter(task__project=f.project, task__gold_order__isnull=True, task__adjudication__isnull=True)
    qs = _filtered(qs, f).order_by("task_id", "id").values_list(*RANKING_FIELDS)
    size, after = FIRST_CHUNK, 0
    while True:
        batch = list(qs.filter(task_id__gt=after)[:size])
        if len(batch) == size:  # the last task may continue on the next page: leave it for then
            last_task = batch[-1][1]
            whole = [row for row in batch if row[1] != last_task]
            # one task fills the page (many annotators, a former gold item): the rest of it now, by id,
            # since the next page starts after this task
            batch = whole or batch + list(qs.filter(task_id=last_task, id__gt=batch[-1][0]))
        if not batch:
            break
        texts = _completion_texts(f.project, {row[1] for row in batch})
        for row in batch:
            yield RankingRow(*row, completions=texts.get(row[1], {}))
        after, size = batch[-1][1], CHUNK
    yield from _adjudication_rows(f)


def _filtered(qs, f: ExportFilter):
    if f.split:
        qs = qs.filter(task__prompt__split=f.split)
    if f.since:
        qs = qs.filter(created_at__gte=f.since)
    if f.until:
        qs = qs.filter(created_at__lt=f.until)
    return qs


def _adjudication_rows(f: ExportFilter) -> Iterator[RankingRow]:
    """Reviewers' decisions on disputed tasks, one row per task, in task order, in pages."""
    from labelapp.models import Adjudication

    qs = _filtered(Adjudication.objects.filter(task__project=f.project, task__gold_order__isnull=True), f)
    qs = qs.order_by("task_id").values_list("id", "task_id", "reviewer_id", "order", "created_at",
                                            *RANKING_FIELDS[9:])  # the prompt's fields
    after = 0
    while batch := list(qs.filter(task_id__gt=after)[:CHUNK]):
        texts = _completion_texts(f.project, {row[1] for row in batch})
        for pk, task_id, reviewer_id, order, created_at, *prompt in batch:
            yield RankingRow(pk, task_id, reviewer_id, order, False, {}, {}, 0, created_at, *prompt,
                             completions=texts.get(task_id, {}), adjudicated=True)
        after = batch[-1][1]


def _rankings(f: ExportFilter) -> Iterator[RankingRow]:
    rankings = _ranking_rows(f)
    if f.min_agreement is None:
        yield from rankings
        return
    # Items qualify on the agreement of their own annotators (InstructGPT's pairwise measure); a
    # reviewer's decision on a disputed item qualifies as it is.
    for _, group in groupby(rankings, key=lambda r: r.task_id):
        group = list(group)
        if group[0].adjudicated:
            yield from group
            continue
        result = pairwise_agreement({0: {r.annotator_id: r.order for r in group}})
        if result.rate is not None and result.rate >= f.min_agreement:
            yield from group


def export_pairs(f: ExportFilter, *, conversational: bool = False, margin: bool = False, meta: bool = False,
                 weights: bool = False, min_confidence: float | None = None) -> Iterator[bytes]:
    """TRL preference pairs, C(K,2) per ranking minus ties. With `weights` each line also carries
    `weight` (its annotator's reliability weight) and `confidence` (the posterior that the pair's order
    is right) from the latest reliability fit (labelapp.selectors.quality.PairWeights); `min_confidence` leaves
    out pairs below it (pairs the fit has no posterior for are kept)."""
    dumps = json.dumps
    reliability = None
    if weights or min_confidence is not None:
        from labelapp.selectors.quality import pair_weights

        reliability = pair_weights(project=f.project)
    for ranking in _rankings(f):
        # Encode the prompt and each completion once; a ranking of K gives up to C(K,2) lines.
        prompt = dumps(ranking.turns if conversational else ranking.plain_prompt, ensure_ascii=False)
        lead = " " if ranking.is_chat and not conversational else ""  # after the plain transcript's cue
        encoded = {
            cid: dumps(_assistant(text) if conversational else lead + text, ensure_ascii=False)
            for cid, (text, _) in ranking.completions.items()
        }
        which = "adjudication_id" if ranking.adjudicated else "ranking_id"
        tail = f', "{which}": {ranking.id}, "annotator": "{pseudonym(ranking.annotator_id)}"' if meta else ""
        if ranking.none_acceptable:  # ordered, but the annotator found none of them acceptable: say so
            tail += ', "none_acceptable": true'

        lines = []
        for chosen, rejected, diff in ranking_pairs(ranking):
            extra = f', "margin": {diff if diff is not None else 0.0}' if margin else ""
            if reliability is not None:  # a reviewer's decision is known truth: weight 1, confidence 1
                confidence = 1.0 if ranking.adjudicated else reliability.confidence(ranking.task_id, chosen, rejected)
                if min_confidence is not None and confidence is not None and confidence < min_confidence:
                    continue
                if weights:
                    weight = 1.0 if ranking.adjudicated else reliability.weight(ranking.annotator_id)
                    extra += f', "weight": {weight}, "confidence": {dumps(confidence)}'
            lines.append(f'{{"prompt": {prompt}, "chosen": {encoded[chosen]}, "rejected": {encoded[rejected]}{extra}{tail}}}\n')
        if lines:
            yield _safe("".join(lines)).encode("utf-8")


def export_rankings(f: ExportFilter) -> Iterator[bytes]:
    for r in _rankings(f):
        yield _line(
            {
                "ranking_id": None if r.adjudicated else r.id,
                "adjudication_id": r.id if r.adjudicated else None,
                "task_id": r.task_id,
                "prompt_id": r.prompt_id,
                "prompt": r.turns,
                "category": r.category,
                "split": r.split,
                "metadata": r.prompt_metadata,
                "completions": [
                    {"id": cid, "text": text, "model_version_id": version} for cid, (text, version) in r.completions.items()
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
        texts = {cid: text for cid, (text, _) in r.completions.items()}
        prompt = r.turns
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
    rows = qs.order_by("id").values_list(
        "text", "prompt__text", "prompt__messages", "prompt__category", "prompt__split"
    ).iterator(chunk_size=CHUNK)
    for text, prompt_text, messages, category, split in rows:
        turns = list(messages) if messages else [{"role": "user", "content": prompt_text}]
        yield _line({"messages": turns + _assistant(text), "category": category, "split": split})


PROMPT_FIELDS = ("text", "messages", "category", "split", "source", "reference", "metadata")


def export_prompts(f: ExportFilter) -> Iterator[bytes]:
    """The project's prompts in the prompt import's format, oldest first: importing the file into
    another project and exporting it again gives the same bytes."""
    from labelapp.models import Prompt

    qs = Prompt.objects.filter(project=f.project)
    if f.split:
        qs = qs.filter(split=f.split)
    if f.since:
        qs = qs.filter(created_at__gte=f.since)
    if f.until:
        qs = qs.filter(created_at__lt=f.until)
    for text, messages, *rest in qs.order_by("id").values_list(*PROMPT_FIELDS).iterator(chunk_size=CHUNK):
        row = {"messages": messages} if messages else {"text": text}
        row.update(zip(PROMPT_FIELDS[2:], rest))
        yield _line(row)
