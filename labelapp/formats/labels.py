"""Parsing label files (rankings, preference pairs, completions, demonstrations) into validated
rows, before anything is written. Pure: no database access.

Formats (`fmt`):
- `studio-rankings`        the lines labelapp.formats.exports.export_rankings writes; `order`, `flags` and
                           `scores` name completion ids listed in the same row's `completions`; a row
                           with an `adjudication_id` (a reviewer's decision, not a ranking) is checked,
                           then left out and named in the notes
- `studio-demonstrations`  the `{"messages": [..., assistant turn], "category", "split"}` lines
                           export_demonstrations writes (category and split optional)
- `completions`            `{"prompt": str | turns, "completion": str | [assistant turn], "model": str?,
                           "decoding": {…}?}`
- `trl-pairs`              TRL preference rows `{"prompt", "chosen", "rejected"}`, plain strings or
                           conversational turns (also the implicit-prompt form without "prompt");
                           each pair is a 2-completion ranking, chosen first
- `hh`                     HH-RLHF `{"chosen": transcript, "rejected": transcript}`
- `oasst`                  OASST message trees, one per line: the ranked assistant replies of one
                           prompter message become one ranking (K > 9: the best 9 are kept, noted)
- `finegrained`            FineGrainedRLHF qa-feedback (a JSON array or JSONL): the 4 predictions
                           ranked by Copeland score over the 6 pairwise preferences; the human
                           "corrected-prediction" becomes a demonstration

HH-RLHF, OASST and FineGrainedRLHF records are read by `rlhf.data` (`hh_record_to_pair`,
`oasst_tree_rankings`, `finegrained_to_ranking`), the one owner of those formats: this module adds
the studio's checks on top (text sizes, K ≤ 9, the project's categories), so a model trained in the
studio and one trained from the CLI (`python -m rlhf … --format hh_rlhf`) see the same prompts and
answers for the same file.

Prompts are stored as given and normalised the same way whatever the format: one user turn is
stored as text, longer conversations as chat messages, so the content hash matches across formats.
Every problem is reported as "line N, field 'x': reason". With `skip_invalid` a line that cannot be
used is left out and named in the notes instead; file-level problems (size, gzip, encoding, unknown
format, broken JSON) always refuse.
"""
from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from django.conf import settings

from labelapp.formats.prompts import (
    MAX_REPORTED_ERRORS,
    ROLES,
    ParseReport,
    category_error,
    category_for,
    json_line,
    metadata_error,
    open_upload,
    prompt_hash,
    read_errors,
    upload_lines,
    upload_text,
)
from labelapp.models import Category, Flag, Prompt
from labelapp.services.labels import MAX_TIME_SPENT_MS
from rlhf import data as formats

MAX_K = 9


class RowError(Exception):
    def __init__(self, field_name: str | None, reason: str):
        super().__init__(reason)
        self.field_name, self.reason = field_name, reason


@dataclass(frozen=True)
class ImportedPrompt:
    text: str = ""
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) pairs; hashable
    category: str = Category.OTHER
    split: str = Prompt.Split.TRAIN
    reference: str = ""
    metadata: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def turns(self) -> list[dict] | None:
        return [{"role": r, "content": c} for r, c in self.messages] if self.messages else None

    @cached_property
    def content_hash(self) -> str:
        return prompt_hash(text=self.text, messages=self.turns)


@dataclass
class ImportedCompletion:
    line: int
    prompt: ImportedPrompt
    text: str
    model: str = ""
    decoding: dict = field(default_factory=dict)
    ref: int | None = None  # studio-rankings: the completion's id in the exporting project

    @property
    def model_label(self) -> str:
        """The model the file says produced it ("" when it names none), as the import stores it."""
        named = self.decoding.get("model")
        return self.model or (named.strip() if isinstance(named, str) else "")


@dataclass
class ImportedRanking:
    line: int
    prompt: ImportedPrompt
    completions: list[ImportedCompletion]
    order: list[list[int]]  # tie groups of indexes into `completions`, best first
    annotator: str
    none_acceptable: bool = False
    flags: dict[int, list[str]] = field(default_factory=dict)
    scores: dict[int, int] = field(default_factory=dict)
    time_spent_ms: int = 0
    synthetic: bool = False  # the file names no annotator: `annotator` is the format's own label for everyone


@dataclass
class ImportedDemonstration:
    line: int
    prompt: ImportedPrompt
    text: str
    annotator: str


@dataclass
class LabelReport(ParseReport):
    source: str = ""
    categories: list[str] = field(default_factory=lambda: list(Category.values))
    default_category: str = Category.OTHER
    completions: list[ImportedCompletion] = field(default_factory=list)
    rankings: list[ImportedRanking] = field(default_factory=list)
    demonstrations: list[ImportedDemonstration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    adjudications: int = 0  # studio-rankings rows of reviewers' decisions, left out

    def skip_adjudication(self, line: int) -> None:
        self.adjudications += 1
        if self.adjudications <= MAX_REPORTED_ERRORS:
            self.notes.append(f"line {line} skipped: a reviewer's decision (adjudication_id), not an annotator's ranking")

    def add(self, item) -> None:
        kind = {ImportedCompletion: self.completions, ImportedRanking: self.rankings}.get(type(item), self.demonstrations)
        kind.append(item)

    @property
    def row_count(self) -> int:
        return len(self.completions) + len(self.rankings) + len(self.demonstrations)


# ---- shared field parsers -------------------------------------------------------------------


def _text(value, field_name: str, *, what: str = "text") -> str:
    """A non-empty string within the size limit, kept as it is (an export imports back unchanged)."""
    if not isinstance(value, str):
        raise RowError(field_name, f"the {what} must be a string")
    if not value.strip():
        raise RowError(field_name, f"empty {what}")
    limit = settings.LABEL_MAX_TEXT_CHARS
    if len(value) > limit:
        raise RowError(field_name, f"the {what} has {len(value):,} characters; the limit is {limit:,}")
    return value


def _turns(value, field_name: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(field_name, "must be a string or a non-empty list of {role, content} turns")
    limit = settings.LABEL_MAX_TEXT_CHARS
    turns = []
    for i, t in enumerate(value, start=1):
        if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise RowError(field_name, f"turn {i} needs a role ({'/'.join(sorted(ROLES))}) and text content")
        if len(t["content"]) > limit:
            raise RowError(field_name, f"turn {i} is longer than {limit:,} characters")
        turns.append((t["role"], t["content"]))
    return turns


def make_prompt(turns: list[tuple[str, str]], field_name: str = "prompt", **extra) -> ImportedPrompt:
    """One user turn → a text prompt; anything longer → chat messages ending with the user. Texts
    are kept exactly as given."""
    if not turns or turns[-1][0] != "user":
        raise RowError(field_name, "the last turn of the prompt must be the user's")
    if not turns[-1][1].strip():
        raise RowError(field_name, "the user's last turn is empty")
    if len(turns) == 1:
        return ImportedPrompt(text=_text(turns[0][1], field_name, what="prompt"), **extra)
    return ImportedPrompt(messages=tuple(turns), **extra)


def _from_messages(messages: list[dict], field_name: str, **extra) -> ImportedPrompt:
    return make_prompt(_turns(messages, field_name), field_name, **extra)


def _prompt(value, field_name: str = "prompt", **extra) -> ImportedPrompt:
    if isinstance(value, str):
        return make_prompt([("user", _text(value, field_name, what="prompt"))], field_name, **extra)
    return make_prompt(_turns(value, field_name), field_name, **extra)


def _reply(value, field_name: str) -> str:
    """A completion: a string, or a list holding one assistant turn (TRL conversational)."""
    if isinstance(value, list):
        turns = _turns(value, field_name)
        if len(turns) != 1 or turns[0][0] != "assistant":
            raise RowError(field_name, "must be one assistant turn")
        value = turns[0][1]
    return _text(value, field_name, what="completion")


def _distinct(texts: list[str], field_name: str) -> None:
    if len(set(texts)) != len(texts):
        raise RowError(field_name, "two completions have the same text; a ranking needs distinct completions")
    if not 2 <= len(texts) <= MAX_K:
        raise RowError(field_name, f"a ranking needs 2 to {MAX_K} completions; got {len(texts)}")


def _meta(obj: dict, report: "LabelReport") -> dict:
    """Category (one of the project's), split and metadata of a row's prompt."""
    category = category_for(obj.get("category"), report.categories, report.default_category)
    split = obj.get("split") or Prompt.Split.TRAIN
    if category is None:
        raise RowError("category", category_error(obj.get("category"), report.categories))
    if split not in Prompt.Split.values:
        raise RowError("split", f"unknown split {split!r}; use train or validation")
    metadata = obj.get("metadata") or {}
    if (problem := metadata_error(metadata)) is not None:
        raise RowError("metadata", problem)
    return {"category": category, "split": split, "metadata": metadata}


def _implied(category: str, report: "LabelReport") -> str:
    """A format's own category (HH, OASST: chat) when the project has it, else the project's default."""
    return category if category in report.categories else report.default_category


def _annotator(obj: dict, default: str) -> str:
    label = obj.get("annotator", default)
    if not isinstance(label, str) or not label.strip():
        raise RowError("annotator", "must be a non-empty string")
    return label.strip()


# ---- one function per format: (object, line number, report) → rows ---------------------------


def _studio_rankings(obj: dict, line: int, report: LabelReport) -> Iterator:
    prompt = _prompt(obj.get("prompt"), **_meta(obj, report))
    raw = obj.get("completions")
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise RowError("completions", "must be a list of {id, text} objects")
    ids = [c.get("id") for c in raw]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        raise RowError("completions", "every completion needs a distinct integer id")
    texts = [_text(c.get("text"), "completions", what="completion") for c in raw]
    _distinct(texts, "completions")
    index = {cid: i for i, cid in enumerate(ids)}

    def known(key, field_name: str) -> int:
        try:
            return index[int(key)]
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: Infinity, 1e400
            raise RowError(field_name, f"completion {key!r} is not among this row's completions {ids}") from None

    none_acceptable = obj.get("none_acceptable", False)
    if not isinstance(none_acceptable, bool):
        raise RowError("none_acceptable", "must be true or false")
    order = obj.get("order")
    if not isinstance(order, list) or not all(isinstance(g, list) and g for g in order):
        raise RowError("order", "must be a list of non-empty groups of completion ids, best first")
    groups = [[known(cid, "order") for cid in g] for g in order]
    seen = [i for g in groups for i in g]
    if len(seen) != len(set(seen)):
        raise RowError("order", "names a completion more than once")
    if groups and len(seen) != len(ids):
        raise RowError("order", f"leaves out {len(ids) - len(seen)} of the row's {len(ids)} completions")
    if not groups and not none_acceptable:
        raise RowError("order", "is empty, and none_acceptable is not set")
    flags = obj.get("flags") or {}
    scores = obj.get("scores") or {}
    if not isinstance(flags, dict) or not isinstance(scores, dict):
        raise RowError("flags" if not isinstance(flags, dict) else "scores", "must be an object keyed by completion id")
    clean_flags = {}
    for key, values in flags.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values) or set(values) - set(Flag.values):
            raise RowError("flags", f"flags of completion {key} must be a list of {', '.join(Flag.values)}")
        clean_flags[known(key, "flags")] = sorted(set(values))
    clean_scores = {}
    for key, value in scores.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 7:
            raise RowError("scores", f"score of completion {key} must be a whole number from 1 to 7")
        clean_scores[known(key, "scores")] = value
    time_spent = obj.get("time_spent_ms", 0)
    if not isinstance(time_spent, int) or not 0 <= time_spent <= MAX_TIME_SPENT_MS:
        raise RowError("time_spent_ms", f"must be a whole number of milliseconds up to {MAX_TIME_SPENT_MS:,}")
    ranking = ImportedRanking(
        line, prompt, [ImportedCompletion(line, prompt, t, ref=i) for t, i in zip(texts, ids)],
        groups, _annotator(obj, "unknown"), none_acceptable, clean_flags, clean_scores, time_spent,
        synthetic="annotator" not in obj,
    )
    if obj.get("adjudication_id") is not None:  # export_rankings' row for a reviewer's decision on a disputed task
        report.skip_adjudication(line)
        return
    yield ranking


def _studio_demonstrations(obj: dict, line: int, report: LabelReport) -> Iterator:
    turns = _turns(obj.get("messages"), "messages")
    if len(turns) < 2 or turns[-1][0] != "assistant":
        raise RowError("messages", "the last turn must be the assistant's demonstration, after the prompt")
    prompt = make_prompt(turns[:-1], "messages", **_meta(obj, report))
    yield ImportedDemonstration(line, prompt, _text(turns[-1][1], "messages", what="demonstration"),
                                _annotator(obj, "writer"))


def _completions(obj: dict, line: int, report: LabelReport) -> Iterator:
    prompt = _prompt(obj.get("prompt"), **_meta(obj, report))
    model, decoding = obj.get("model") or "", obj.get("decoding") or {}
    if not isinstance(model, str):
        raise RowError("model", "must be a string")
    if not isinstance(decoding, dict):
        raise RowError("decoding", "must be an object of decoding settings")
    yield ImportedCompletion(line, prompt, _reply(obj.get("completion"), "completion"), model.strip(), decoding)


def _pair(line: int, prompt: ImportedPrompt, chosen: str, rejected: str, annotator: str,
          synthetic: bool = True) -> ImportedRanking:
    _distinct([chosen, rejected], "rejected")
    return ImportedRanking(
        line, prompt, [ImportedCompletion(line, prompt, chosen), ImportedCompletion(line, prompt, rejected)],
        [[0], [1]], annotator, synthetic=synthetic,
    )


def _trl_pairs(obj: dict, line: int, report: LabelReport) -> Iterator:
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if "prompt" in obj:
        prompt = _prompt(obj["prompt"], **_meta(obj, report))
    elif isinstance(chosen, list) and isinstance(rejected, list):  # implicit prompt: shared earlier turns
        c, r = _turns(chosen, "chosen"), _turns(rejected, "rejected")
        if c[:-1] != r[:-1]:
            raise RowError("rejected", "without a 'prompt', chosen and rejected must share every turn but the last")
        prompt, chosen, rejected = make_prompt(c[:-1], "chosen", **_meta(obj, report)), chosen[-1:], rejected[-1:]
    else:
        raise RowError("prompt", "missing; give 'prompt', or conversational chosen/rejected that share the prompt turns")
    yield _pair(line, prompt, _reply(chosen, "chosen"), _reply(rejected, "rejected"), _annotator(obj, "pairs"),
                synthetic="annotator" not in obj)


def _record(call, obj):
    """Run one of rlhf.data's record functions; its RecordError becomes this row's error."""
    try:
        return call(obj)
    except formats.RecordError as exc:
        raise RowError(exc.field, exc.reason) from None


def _hh(obj: dict, line: int, report: LabelReport) -> Iterator:
    pair = _record(formats.hh_record_to_pair, obj)
    prompt = _from_messages(pair.prompt, "chosen", category=_implied(Category.CHAT, report))
    yield _pair(line, prompt, _text(pair.chosen, "chosen", what="completion"),
                _text(pair.rejected, "rejected", what="completion"), "crowdworker")


def _oasst(obj: dict, line: int, report: LabelReport) -> Iterator:
    for ranking in _record(lambda tree: list(formats.oasst_tree_rankings(tree)), obj):
        best_first = sorted(range(len(ranking.completions)), key=lambda i: ranking.ranks[i])
        if len(best_first) > MAX_K:
            report.notes.append(f"line {line}: message {ranking.meta['parent_id']} has {len(best_first)} ranked replies; "
                                f"kept the best {MAX_K}")
            best_first = best_first[:MAX_K]
        prompt = _from_messages(ranking.prompt, "prompt", category=_implied(Category.CHAT, report))
        texts = [_text(ranking.completions[i], "replies.text", what="completion") for i in best_first]
        _distinct(texts, "replies")
        ranks = [ranking.ranks[i] for i in best_first]
        order = [[i for i, x in enumerate(ranks) if x == rank] for rank in sorted(set(ranks))]
        models = [ranking.meta["models"][i] for i in best_first]
        yield ImportedRanking(line, prompt, [ImportedCompletion(line, prompt, t, m) for t, m in zip(texts, models)],
                              order, "consensus", synthetic=True)


def copeland_order(preference: list[int], k: int = 4) -> list[list[int]]:
    """Tie groups (best first) of rlhf.data.copeland_ranks."""
    ranks = formats.copeland_ranks(preference, k)
    return [[i for i in range(k) if ranks[i] == r] for r in sorted(set(ranks))]


def _finegrained(obj: dict, line: int, report: LabelReport) -> Iterator:
    ranking = _record(formats.finegrained_to_ranking, obj)
    prompt = ImportedPrompt(text=_text(ranking.prompt[0]["content"], "passages", what="prompt"),
                            category=_implied(Category.CLOSED_QA, report), reference=formats.finegrained_reference(obj))
    texts = [_text(t, f"prediction {i}", what="prediction") for i, t in enumerate(ranking.completions, start=1)]
    order = [[i for i, r in enumerate(ranking.ranks) if r == rank] for rank in sorted(set(ranking.ranks))]
    yield ImportedRanking(line, prompt, [ImportedCompletion(line, prompt, t, "T5 policy (FineGrainedRLHF)") for t in texts],
                          order, "annotator", synthetic=True)
    corrected = formats.finegrained_correction(obj)
    if corrected is not None:
        yield ImportedDemonstration(line, prompt, _text(corrected, "feedback", what="corrected prediction"), "annotator")


Parser = Callable[[dict, int, LabelReport], Iterator]
FORMATS: dict[str, tuple[str, Parser]] = {  # fmt → (source, used in external annotators' names; parser)
    "studio-rankings": ("studio", _studio_rankings),
    "studio-demonstrations": ("studio", _studio_demonstrations),
    "completions": ("import", _completions),
    "trl-pairs": ("trl", _trl_pairs),
    "hh": ("hh", _hh),
    "oasst": ("oasst", _oasst),
    "finegrained": ("finegrained", _finegrained),
}


# ---- the file ----------------------------------------------------------------------------------


def _objects(stream, report: LabelReport) -> Iterator[tuple[int, object | ValueError]]:
    """(line, object) for JSON Lines, read one line at a time, or for the elements of one JSON array
    (read whole, within IMPORT_MAX_BYTES; line = where each starts)."""
    first = read_errors(report, 1, lambda: stream.peek(1 << 12)[:1 << 12])
    if first is None:
        return
    if not first.lstrip(codecs.BOM_UTF8).lstrip().startswith(b"["):
        for number, raw in upload_lines(stream, report):
            if raw.strip():
                try:
                    yield number, json_line(raw.rstrip("\n"))
                except ValueError as exc:
                    yield number, exc
        return
    text = upload_text(stream, report)
    if text is None:
        return
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    while True:
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield exc.lineno, ValueError(f"broken JSON: {exc.msg} (column {exc.colno})")
            return
        except RecursionError:
            yield line, ValueError("the JSON is nested too deeply")
            return
        except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
            yield line, ValueError(f"broken JSON: a number has more than {sys.get_int_max_str_digits():,} digits")
            return
        yield line, obj
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            at = text.count("\n", 0, pos) + 1
            yield at, ValueError(f"broken JSON: expected ',' or ']' (column {pos - text.rfind(chr(10), 0, pos)})")
            return


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def parse_labels(data, *, fmt: str, skip_invalid: bool = False, categories: list[str] | None = None,
                 default_category: str | None = None) -> LabelReport:
    """Rows of a label file; prompts' categories are checked against `categories` (the project's;
    InstructGPT's ten when not given). Errors past MAX_REPORTED_ERRORS are counted, not listed."""
    report = LabelReport()
    if categories is not None:
        report.categories = list(categories)
    if default_category is not None:
        report.default_category = default_category
    if fmt not in FORMATS:
        report.error(1, None, f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return report
    report.source, parse = FORMATS[fmt]
    stream = open_upload(data, report)
    if stream is None:
        return report
    skipped = 0
    for line, obj in _objects(stream, report):
        broken = isinstance(obj, ValueError)
        try:
            if broken:
                raise RowError(None, str(obj))
            if not isinstance(obj, dict):
                raise RowError(None, "each line must be a JSON object")
            try:
                rows = list(parse(obj, line, report))
            except RecursionError:
                raise RowError(None, "the JSON is nested too deeply") from None
        except RowError as exc:
            if skip_invalid and not broken:
                skipped += 1
                if skipped <= MAX_REPORTED_ERRORS:
                    report.notes.append(f"line {line} skipped" + (f", field '{exc.field_name}'" if exc.field_name else "") + f": {exc.reason}")
                continue
            report.error(line, exc.field_name, exc.reason)
            continue
        for row in rows:
            report.add(row)
    if skipped > MAX_REPORTED_ERRORS:
        report.notes.append(f"{skipped - MAX_REPORTED_ERRORS:,} more lines skipped")
    if report.adjudications > MAX_REPORTED_ERRORS:
        report.notes.append(f"{report.adjudications - MAX_REPORTED_ERRORS:,} more reviewers' decisions skipped")
    if not report.row_count and not report.errors and not report.adjudications:
        report.error(1, None, f"the file holds no {fmt} rows")
    return report
