"""Parsing label files (rankings, preference pairs, completions, demonstrations) into validated
rows, before anything is written. Pure: no database access.

Formats (`fmt`):
- `studio-rankings`        the lines labelapp.exports.export_rankings writes; `order`, `flags` and
                           `scores` name completion ids listed in the same row's `completions`
- `studio-demonstrations`  the `{"messages": [..., assistant turn]}` lines export_demonstrations writes
- `completions`            `{"prompt": str | turns, "completion": str | [assistant turn], "model": str?,
                           "decoding": {…}?}`
- `trl-pairs`              TRL preference rows `{"prompt", "chosen", "rejected"}`, plain strings or
                           conversational turns (also the implicit-prompt form without "prompt");
                           each pair is a 2-completion ranking, chosen first
- `hh`                     HH-RLHF `{"chosen": transcript, "rejected": transcript}`, split at the last
                           "\\n\\nAssistant:"; both must share the earlier turns (the prompt)
- `oasst`                  OASST message trees, one per line: the ranked assistant replies of one
                           prompter message become one ranking (K > 9: the best 9 are kept, noted)
- `finegrained`            FineGrainedRLHF qa-feedback (a JSON array or JSONL): the 4 predictions
                           ranked by Copeland score over the 6 pairwise preferences; the human
                           "corrected-prediction" becomes a demonstration

Prompts are normalised the same way whatever the format: one user turn is stored as text, longer
conversations as chat messages, so the content hash matches across formats. Every problem is
reported as "line N, field 'x': reason". With `skip_invalid` a line that cannot be used is left out
and named in the notes instead; file-level problems (size, gzip, encoding, unknown format, broken
JSON) always refuse.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations

from django.conf import settings

from labelapp.importing import MAX_REPORTED_ERRORS, ROLES, ParseReport, prompt_hash, read_upload
from labelapp.models import Category, Flag, Prompt
from labelapp.services.labels import MAX_TIME_SPENT_MS

MAX_K = 9
HH_TURN = re.compile(r"\n\n(Human|Assistant):")


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


@dataclass
class ImportedDemonstration:
    line: int
    prompt: ImportedPrompt
    text: str
    annotator: str


@dataclass
class LabelReport(ParseReport):
    source: str = ""
    completions: list[ImportedCompletion] = field(default_factory=list)
    rankings: list[ImportedRanking] = field(default_factory=list)
    demonstrations: list[ImportedDemonstration] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
    """One user turn → a text prompt; anything longer → chat messages ending with the user."""
    if not turns or turns[-1][0] != "user":
        raise RowError(field_name, "the last turn of the prompt must be the user's")
    if not turns[-1][1].strip():
        raise RowError(field_name, "the user's last turn is empty")
    if len(turns) == 1:
        return ImportedPrompt(text=_text(turns[0][1], field_name, what="prompt").strip(), **extra)
    return ImportedPrompt(messages=tuple(turns), **extra)


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


def _meta(obj: dict) -> dict:
    category = obj.get("category") or Category.OTHER
    split = obj.get("split") or Prompt.Split.TRAIN
    if category not in Category.values:
        raise RowError("category", f"unknown category {category!r}; use one of {', '.join(Category.values)}")
    if split not in Prompt.Split.values:
        raise RowError("split", f"unknown split {split!r}; use train or validation")
    return {"category": category, "split": split}


def _annotator(obj: dict, default: str) -> str:
    label = obj.get("annotator", default)
    if not isinstance(label, str) or not label.strip():
        raise RowError("annotator", "must be a non-empty string")
    return label.strip()


# ---- one function per format: (object, line number, report) → rows ---------------------------


def _studio_rankings(obj: dict, line: int, report: LabelReport) -> Iterator:
    prompt = _prompt(obj.get("prompt"), **_meta(obj))
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
        except (KeyError, TypeError, ValueError):
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
        if not isinstance(values, list) or set(values) - set(Flag.values):
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
    yield ImportedRanking(
        line, prompt, [ImportedCompletion(line, prompt, t) for t in texts],
        groups, _annotator(obj, "unknown"), none_acceptable, clean_flags, clean_scores, time_spent,
    )


def _studio_demonstrations(obj: dict, line: int, report: LabelReport) -> Iterator:
    turns = _turns(obj.get("messages"), "messages")
    if len(turns) < 2 or turns[-1][0] != "assistant":
        raise RowError("messages", "the last turn must be the assistant's demonstration, after the prompt")
    prompt = make_prompt(turns[:-1], "messages", **_meta(obj))
    yield ImportedDemonstration(line, prompt, _text(turns[-1][1], "messages", what="demonstration"),
                                _annotator(obj, "writer"))


def _completions(obj: dict, line: int, report: LabelReport) -> Iterator:
    prompt = _prompt(obj.get("prompt"), **_meta(obj))
    model, decoding = obj.get("model") or "", obj.get("decoding") or {}
    if not isinstance(model, str):
        raise RowError("model", "must be a string")
    if not isinstance(decoding, dict):
        raise RowError("decoding", "must be an object of decoding settings")
    yield ImportedCompletion(line, prompt, _reply(obj.get("completion"), "completion"), model.strip(), decoding)


def _pair(line: int, prompt: ImportedPrompt, chosen: str, rejected: str, annotator: str) -> ImportedRanking:
    _distinct([chosen, rejected], "rejected")
    return ImportedRanking(
        line, prompt, [ImportedCompletion(line, prompt, chosen), ImportedCompletion(line, prompt, rejected)],
        [[0], [1]], annotator,
    )


def _trl_pairs(obj: dict, line: int, report: LabelReport) -> Iterator:
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if "prompt" in obj:
        prompt = _prompt(obj["prompt"], **_meta(obj))
    elif isinstance(chosen, list) and isinstance(rejected, list):  # implicit prompt: shared earlier turns
        c, r = _turns(chosen, "chosen"), _turns(rejected, "rejected")
        if c[:-1] != r[:-1]:
            raise RowError("rejected", "without a 'prompt', chosen and rejected must share every turn but the last")
        prompt, chosen, rejected = make_prompt(c[:-1], "chosen", **_meta(obj)), chosen[-1:], rejected[-1:]
    else:
        raise RowError("prompt", "missing; give 'prompt', or conversational chosen/rejected that share the prompt turns")
    yield _pair(line, prompt, _reply(chosen, "chosen"), _reply(rejected, "rejected"), _annotator(obj, "pairs"))


def _hh_split(transcript, field_name: str) -> tuple[list[tuple[str, str]], str]:
    if not isinstance(transcript, str):
        raise RowError(field_name, "must be a transcript string")
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        raise RowError(field_name, "has no '\\n\\nAssistant:' turn")
    parts = HH_TURN.split(transcript[:cut])
    if parts[0].strip() or len(parts) < 3:
        raise RowError(field_name, "must start with '\\n\\nHuman:'")
    roles = {"Human": "user", "Assistant": "assistant"}
    turns = [(roles[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    return turns, transcript[cut + len("\n\nAssistant:"):]


def _hh(obj: dict, line: int, report: LabelReport) -> Iterator:
    chosen_turns, chosen = _hh_split(obj.get("chosen"), "chosen")
    rejected_turns, rejected = _hh_split(obj.get("rejected"), "rejected")
    if chosen_turns != rejected_turns:
        raise RowError("rejected", "chosen and rejected do not share the same prompt (the turns before the last Assistant turn)")
    prompt = make_prompt(chosen_turns, "chosen", category=Category.CHAT)
    # the space after "Assistant:" belongs to the transcript's syntax, not to the reply
    yield _pair(line, prompt, _text(chosen.strip(), "chosen", what="completion"),
                _text(rejected.strip(), "rejected", what="completion"), "crowdworker")


def _oasst(obj: dict, line: int, report: LabelReport) -> Iterator:
    root = obj.get("prompt")
    if not isinstance(root, dict):
        raise RowError("prompt", "must be the tree's root message")
    found = []

    def walk(message: dict, path: list[tuple[str, str]], where: str) -> None:
        if not isinstance(message, dict) or message.get("role") not in ("prompter", "assistant"):
            raise RowError(where, "each message needs role 'prompter' or 'assistant'")
        if message.get("deleted"):
            return
        text = message.get("text")
        if not isinstance(text, str):
            raise RowError(f"{where}.text", "must be a string")
        path = path + [("user" if message["role"] == "prompter" else "assistant", text)]
        replies = message.get("replies") or []
        ranked = [r for r in replies if isinstance(r, dict) and r.get("role") == "assistant"
                  and r.get("rank") is not None and not r.get("deleted")]
        if message["role"] == "prompter" and len(ranked) >= 2:
            found.append((path, ranked, message.get("message_id")))
        for i, reply in enumerate(replies):
            walk(reply, path, f"{where}.replies[{i}]")

    walk(root, [], "prompt")
    for path, ranked, message_id in found:
        if not all(isinstance(r["rank"], int) for r in ranked):
            raise RowError("rank", f"ranks under message {message_id} must be whole numbers")
        ranked.sort(key=lambda r: r["rank"])
        if len(ranked) > MAX_K:
            report.notes.append(f"line {line}: message {message_id} has {len(ranked)} ranked replies; kept the best {MAX_K}")
            ranked = ranked[:MAX_K]
        prompt = make_prompt(path, "prompt", category=Category.CHAT)
        texts = [_text(r.get("text"), "replies.text", what="completion") for r in ranked]
        _distinct(texts, "replies")
        ranks = [r["rank"] for r in ranked]
        order = [[i for i, x in enumerate(ranks) if x == rank] for rank in sorted(set(ranks))]
        completions = [ImportedCompletion(line, prompt, t, str(r.get("model_name") or "")) for t, r in zip(texts, ranked)]
        yield ImportedRanking(line, prompt, completions, order, "consensus")


def copeland_order(preference: list[int], k: int = 4) -> list[list[int]]:
    """Tie groups (best first) from pairwise judgements over (0v1, 0v2, …): 1 = first wins,
    2 = second wins, 0 = no preference. Each item scores wins minus losses."""
    score = [0] * k
    for (a, b), p in zip(combinations(range(k), 2), preference):
        if p:
            winner, loser = (a, b) if p == 1 else (b, a)
            score[winner] += 1
            score[loser] -= 1
    return [[i for i in range(k) if score[i] == s] for s in sorted(set(score), reverse=True)]


def _finegrained(obj: dict, line: int, report: LabelReport) -> Iterator:
    question = _text(obj.get("question"), "question", what="question")
    passages = obj.get("passages") or []
    if not isinstance(passages, list) or not all(isinstance(p, list) and p and all(isinstance(s, str) for s in p) for p in passages):
        raise RowError("passages", "must be a list of [title, sentence, …] lists")
    context = "\n\n".join(f"{p[0]}: {' '.join(s.strip() for s in p[1:])}" for p in passages)
    text = f"{question}\n\n{context}" if context else question
    gold = obj.get("gold") or ""
    prompt = ImportedPrompt(text=_text(text, "passages", what="prompt").strip(), category=Category.CLOSED_QA,
                            reference=gold.strip() if isinstance(gold, str) else "")
    texts = [_text(obj.get(f"prediction {i}"), f"prediction {i}", what="prediction") for i in range(1, 5)]
    _distinct(texts, "prediction 4")
    preference = obj.get("preference")
    if not isinstance(preference, list) or len(preference) != 6 or any(p not in (0, 1, 2) for p in preference):
        raise RowError("preference", "must be 6 judgements (1v2, 1v3, 1v4, 2v3, 2v4, 3v4), each 0, 1 or 2")
    order = copeland_order(preference)
    yield ImportedRanking(line, prompt, [ImportedCompletion(line, prompt, t, "T5 policy (FineGrainedRLHF)") for t in texts],
                          order, "annotator")
    corrected = (obj.get("feedback") or {}).get("corrected-prediction") if isinstance(obj.get("feedback"), dict) else None
    if isinstance(corrected, str) and corrected.strip():
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


def _objects(text: str) -> Iterator[tuple[int, object | json.JSONDecodeError]]:
    """(line, object) for JSON Lines, or for the elements of one JSON array (line = where each starts)."""
    stripped = text.lstrip()
    if not stripped.startswith("["):
        for number, raw in enumerate(text.splitlines(), start=1):
            if raw.strip():
                try:
                    yield number, json.loads(raw)
                except json.JSONDecodeError as exc:
                    yield number, exc
                except RecursionError:
                    yield number, json.JSONDecodeError("nested too deeply", raw, 0)
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
            yield exc.lineno, exc
            return
        except RecursionError:
            yield line, json.JSONDecodeError("nested too deeply", text, pos)
            return
        yield line, obj
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            yield text.count("\n", 0, pos) + 1, json.JSONDecodeError("expected ',' or ']'", text, pos)
            return


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def parse_labels(data: bytes, *, fmt: str, skip_invalid: bool = False) -> LabelReport:
    report = LabelReport()
    if fmt not in FORMATS:
        report.error(1, None, f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return report
    report.source, parse = FORMATS[fmt]
    text = read_upload(data, report)
    if text is None:
        return report
    skipped = 0
    for line, obj in _objects(text):
        try:
            if isinstance(obj, json.JSONDecodeError):
                raise RowError(None, f"broken JSON ({obj.msg} at column {obj.colno})")
            if not isinstance(obj, dict):
                raise RowError(None, "each line must be a JSON object")
            try:
                rows = list(parse(obj, line, report))
            except RecursionError:
                raise RowError(None, "nested too deeply") from None
        except RowError as exc:
            if skip_invalid and not isinstance(obj, json.JSONDecodeError):
                skipped += 1
                if skipped <= MAX_REPORTED_ERRORS:
                    report.notes.append(f"line {line} skipped" + (f", field '{exc.field_name}'" if exc.field_name else "") + f": {exc.reason}")
                continue
            report.error(line, exc.field_name, exc.reason)
            if len(report.errors) >= MAX_REPORTED_ERRORS:
                report.errors.append(f"stopped after {MAX_REPORTED_ERRORS} errors; fix these and import again")
                return report
            continue
        for row in rows:
            report.add(row)
    if skipped > MAX_REPORTED_ERRORS:
        report.notes.append(f"{skipped - MAX_REPORTED_ERRORS} more lines skipped")
    if not report.row_count and not report.errors:
        report.error(1, None, f"the file holds no {fmt} rows")
    return report
