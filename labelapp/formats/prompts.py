"""Parsing prompt files (JSONL and CSV) into validated rows, before anything is written.

Every problem is collected with its line number and field, so one run of an import tells the
user everything that is wrong with the file; the service writes nothing unless the whole file
is clean.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings

from labelapp.models import Category, Prompt

CATEGORY_ALIASES = {  # other spellings of InstructGPT's categories, used when the project has that category
    **{c.label.lower(): c.value for c in Category},
    "openqa": Category.OPEN_QA,
    "open-qa": Category.OPEN_QA,
    "closedqa": Category.CLOSED_QA,
    "closed-qa": Category.CLOSED_QA,
    "extraction": Category.EXTRACT,
    "brainstorm": Category.BRAINSTORMING,
    "summarize": Category.SUMMARIZATION,
    "summarisation": Category.SUMMARIZATION,
}
ROLES = {"system", "user", "assistant"}
MAX_REPORTED_ERRORS = 50
MAX_METADATA_DEPTH = 20
FIELDS = {"text", "prompt", "messages", "category", "split", "source", "reference", "metadata"}


@dataclass
class PromptRow:
    line: int
    text: str = ""
    messages: list[dict] | None = None
    category: str = Category.OTHER
    split: str = Prompt.Split.TRAIN
    source: str = Prompt.Source.IMPORTED
    reference: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return prompt_hash(text=self.text, messages=self.messages)


@dataclass
class ParseReport:
    """Rows and errors of a file. At most MAX_REPORTED_ERRORS errors are kept; the rest are only
    counted, and `messages` ends with how many were not shown."""

    rows: list[PromptRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    hidden_errors: int = 0

    def error(self, line: int, field_name: str | None, reason: str) -> None:
        if len(self.errors) >= MAX_REPORTED_ERRORS:
            self.hidden_errors += 1
            return
        where = f"line {line}" + (f", field '{field_name}'" if field_name else "")
        self.errors.append(f"{where}: {reason}")

    @property
    def messages(self) -> list[str]:
        more = [f"{self.hidden_errors:,} more errors not shown; fix these and import again"] if self.hidden_errors else []
        return self.errors + more


def normalise_line_endings(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def prompt_hash(*, text: str = "", messages: list[dict] | None = None) -> str:
    """Content hash used to skip prompts that are already in the project. Only line endings are
    normalised (CRLF and CR count as LF): spaces, indentation and blank lines are part of a prompt,
    so two prompts that differ only there are two prompts. A chat of one user turn is the same
    prompt as its text (label imports store it as text, prompt imports as given): both hash as the
    text, whichever way a file or a form gives it."""
    if messages and len(messages) == 1 and isinstance(messages[0], dict) and messages[0].get("role") == "user":
        text, messages = messages[0]["content"], None
    if messages:
        canonical = json.dumps([[m["role"], normalise_line_endings(m["content"])] for m in messages], ensure_ascii=False)
    else:
        canonical = normalise_line_endings(text)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def json_line(raw: str):
    """One JSON value, or a ValueError with a reason a person can act on."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"broken JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def category_for(raw, categories: list[str], default: str) -> str | None:
    """The project's spelling of a category given in a file (exact, then ignoring case, then an
    alias of InstructGPT's names), `default` when none is given, None when unknown."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return default
    if not isinstance(raw, str):
        return None
    name = raw.strip()
    if name in categories:
        return name
    lowered = {c.lower(): c for c in categories}
    key = name.lower()
    for candidate in (key, key.replace("_", " "), key.replace(" ", "_")):
        if candidate in lowered:
            return lowered[candidate]
        alias = CATEGORY_ALIASES.get(candidate)
        if alias in categories:
            return alias
    return None


def category_error(raw, categories: list[str]) -> str:
    shown = ", ".join(categories[:20]) + (f" … ({len(categories)} in all)" if len(categories) > 20 else "")
    return f"unknown category {raw!r}; this project's categories are {shown}"


def metadata_error(value) -> str | None:
    """Why `value` cannot be a prompt's metadata, or None."""
    if not isinstance(value, dict):
        return "must be a JSON object"
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_METADATA_DEPTH:
            return f"is nested more than {MAX_METADATA_DEPTH} levels deep"
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
    if len(json.dumps(value, ensure_ascii=False)) > settings.LABEL_MAX_TEXT_CHARS:
        return f"is longer than {settings.LABEL_MAX_TEXT_CHARS:,} characters as JSON"
    return None


def detect_format(filename: str) -> str:
    name = filename.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    raise ValueError(f"cannot tell the format of {filename!r}: name it .jsonl or .csv, or pass the format")


class TooLarge(Exception):
    """The file, or what it unpacks to, is over IMPORT_MAX_BYTES."""


class _Limited(io.RawIOBase):
    """A readable stream that refuses to give more than `limit` bytes."""

    def __init__(self, source, limit: int, unpacked: bool):
        self.source, self.limit, self.unpacked, self.seen = source, limit, unpacked, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.source.read(min(len(buffer), self.limit + 1 - self.seen) or 1)
        self.seen += len(chunk)
        if self.seen > self.limit:
            what = "unpacks to" if self.unpacked else "is"
            raise TooLarge(f"the file {what} more than {self.limit:,} bytes, the limit")
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _size(raw) -> int | None:
    size = getattr(raw, "size", None)
    if isinstance(size, int):
        return size
    try:
        here = raw.tell()
        end = raw.seek(0, io.SEEK_END)
        raw.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return None


def open_upload(data, report) -> io.BufferedReader | None:
    """An import file (bytes, or a binary file object such as an upload) as a buffered binary stream,
    gunzipped on the fly when it is gzip, that never reads more than IMPORT_MAX_BYTES: the size is
    checked before anything is read when the file knows it, and counted while reading otherwise
    (and for what a gzip file unpacks to). Problems go to `report.error`."""
    limit = settings.IMPORT_MAX_BYTES
    raw = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    size = _size(raw)
    if size is not None and size > limit:
        report.error(1, None, f"the file is {size:,} bytes; the limit is {limit:,} bytes")
        return None
    outer = io.BufferedReader(_Limited(raw, limit, unpacked=False))
    try:
        magic = outer.peek(2)[:2]
    except TooLarge as exc:
        report.error(1, None, str(exc))
        return None
    if magic == b"\x1f\x8b":
        return io.BufferedReader(_Limited(gzip.GzipFile(fileobj=outer, mode="rb"), limit, unpacked=True))
    return outer


def read_errors(report, line: int, call):
    """Run a read of the stream; a file that is too large or a damaged gzip becomes an error."""
    try:
        return call()
    except TooLarge as exc:
        report.error(line, None, str(exc))
    except (OSError, EOFError, zlib.error) as exc:
        report.error(line, None, f"the gzip file is damaged or truncated ({exc})")
    return None


def upload_lines(stream, report, *, keep_bad: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, line with its "\\n") of a stream, split on "\\n" only and decoded one line at a
    time, so memory holds one line, never the file. A line longer than IMPORT_MAX_LINE_BYTES, not
    UTF-8, or holding a NUL (raw, or escaped as \\u0000) is an error and left out (with `keep_bad`
    an empty line stands in for it, so that a CSV reader's line count stays right)."""
    longest, number = settings.IMPORT_MAX_LINE_BYTES, 0
    while True:
        raw = read_errors(report, number + 1, lambda: stream.readline(longest + 1))
        if not raw:
            return
        number += 1
        problem = None
        if len(raw) > longest and not raw.endswith(b"\n"):
            problem = f"the line is longer than {longest:,} bytes (IMPORT_MAX_LINE_BYTES)"
            while (rest := read_errors(report, number, lambda: stream.readline(1 << 16))) and not rest.endswith(b"\n"):
                pass  # skip the rest of it without keeping it
        else:
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8"
            else:
                if "\x00" in line or "\\u0000" in line:
                    problem = "contains a NUL character, which cannot be stored"
        if problem is None:
            yield number, line
            continue
        report.error(number, None, problem)
        if keep_bad:
            yield number, "\n"


def upload_text(stream, report) -> str | None:
    """The whole text of a stream (for formats that are one JSON document), with the same checks."""
    data = read_errors(report, 1, stream.read)
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        report.error(line, None, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8")
        return None
    at = min((i for i in (text.find("\x00"), text.find("\\u0000")) if i >= 0), default=-1)
    if at >= 0:
        report.error(text[:at].count("\n") + 1, None, "contains a NUL character, which cannot be stored")
        return None
    return text


def parse_prompts(data, *, fmt: str, categories: list[str] | None = None, default_category: str | None = None) -> ParseReport:
    """Rows of a prompt file (bytes or a binary file object, read as a stream), validated against the
    project's `categories` (InstructGPT's ten when not given); a row without a category gets
    `default_category` ("other" by default)."""
    report = ParseReport()
    categories = list(categories) if categories is not None else list(Category.values)
    default = default_category if default_category is not None else Category.OTHER
    if fmt not in ("jsonl", "csv"):
        report.error(1, None, f"unknown format {fmt!r}: use jsonl or csv")
        return report
    stream = open_upload(data, report)
    if stream is None:
        return report
    if fmt == "jsonl":
        _parse_jsonl(stream, report, categories, default)
    else:
        _parse_csv(stream, report, categories, default)
    if not report.rows and not report.errors:
        report.error(1, None, "the file holds no prompts")
    return report


def jsonl_objects(stream, report, *, not_object: str = "each line must be a JSON object") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank JSON line of an upload; bad JSON and non-objects are
    reported on their line (`not_object` says what a line must be) and skipped."""
    for number, raw in upload_lines(stream, report):
        if not raw.strip():
            continue
        try:
            obj = json_line(raw.rstrip("\n"))
        except ValueError as exc:
            report.error(number, None, str(exc))
            continue
        if not isinstance(obj, dict):
            report.error(number, None, not_object)
            continue
        yield number, obj


def _parse_jsonl(stream, report: ParseReport, categories: list[str], default: str) -> None:
    for number, obj in jsonl_objects(stream, report):
        _validate(obj, number, report, categories, default)


def _parse_csv(stream, report: ParseReport, categories: list[str], default: str) -> None:
    lines = (line for _, line in upload_lines(stream, report, keep_bad=True))
    head: list[str] = []
    for line in lines:  # a sample for the dialect, put back in front of the rest
        head.append(line)
        if sum(map(len, head)) >= 4096:
            break
    try:
        dialect = csv.Sniffer().sniff("".join(head)[:4096], delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(itertools.chain(head, lines), dialect=dialect)
    if not reader.fieldnames or "text" not in [f.strip() for f in reader.fieldnames]:
        report.error(1, "text", "the CSV header must have a 'text' column")
        return
    try:
        for obj in reader:
            number = reader.line_num
            if None in obj:
                report.error(number, None, "this row has more cells than the header")
                continue
            row = {k.strip(): v for k, v in obj.items() if k}
            if row.get("metadata"):  # a JSON object in a cell
                try:
                    row["metadata"] = json_line(row["metadata"])
                except ValueError as exc:
                    report.error(number, "metadata", str(exc))
                    continue
            _validate(row, number, report, categories, default)
    except csv.Error as exc:
        report.error(reader.line_num, None, f"broken CSV: {exc}")


def _validate(obj: dict, number: int, report: ParseReport, categories: list[str], default: str) -> None:
    """One row. Texts are kept exactly as given (only an all-blank text is refused); fields the
    studio does not know are kept in the prompt's metadata."""
    before = len(report.errors) + report.hidden_errors
    limit = settings.LABEL_MAX_TEXT_CHARS
    text = obj.get("text") or obj.get("prompt") or ""
    messages = obj.get("messages")
    if not isinstance(text, str):
        report.error(number, "text", "must be a string")
        text = ""
    if messages not in (None, ""):
        if text.strip():
            report.error(number, "messages", "give either 'text' or 'messages', not both")
        elif not isinstance(messages, list) or not messages:
            report.error(number, "messages", "must be a non-empty list of {role, content} objects")
        else:
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                    report.error(number, "messages", f"turn {i + 1} needs a role ({'/'.join(sorted(ROLES))}) and text content")
                    break
                if len(m["content"]) > limit:
                    report.error(number, "messages", f"turn {i + 1} is longer than {limit:,} characters")
                    break
            else:
                if messages[-1]["role"] != "user":
                    report.error(number, "messages", "the last turn must be the user's")
                elif not messages[-1]["content"].strip():
                    report.error(number, "messages", "the user's last turn is empty")
        ok = len(report.errors) + report.hidden_errors == before
        messages = [{"role": m["role"], "content": m["content"]} for m in messages] if ok else None
    else:
        messages = None
        if not text.strip():
            report.error(number, "text", "empty prompt")
        elif len(text) > limit:
            report.error(number, "text", f"{len(text):,} characters; the limit is {limit:,}")
    category = category_for(obj.get("category"), categories, default)
    if category is None:
        report.error(number, "category", category_error(obj.get("category"), categories))
    split = str(obj.get("split") or Prompt.Split.TRAIN).strip().lower()
    if split not in Prompt.Split.values:
        report.error(number, "split", f"unknown split {split!r}; use train or validation")
    source = str(obj.get("source") or Prompt.Source.IMPORTED).strip().lower()
    if source not in Prompt.Source.values:
        report.error(number, "source", f"unknown source {source!r}; use {', '.join(Prompt.Source.values)}")
    reference = obj.get("reference") or ""
    if not isinstance(reference, str) or len(reference) > limit:
        report.error(number, "reference", f"must be a string of at most {limit:,} characters")
    metadata = obj.get("metadata")
    metadata = {} if metadata in (None, "") else metadata
    if (problem := metadata_error(metadata)) is not None:
        report.error(number, "metadata", problem)
    else:
        extra = {k: v for k, v in obj.items() if k not in FIELDS}
        both = sorted(set(extra) & set(metadata))
        if both:
            report.error(number, "metadata", f"{both} given both as fields and inside 'metadata'")
        metadata = {**metadata, **extra}
        if extra and (problem := metadata_error(metadata)) is not None:
            report.error(number, "metadata", problem)
    if len(report.errors) + report.hidden_errors == before:
        report.rows.append(
            PromptRow(number, text if not messages else "", messages, category, split, source, reference, metadata)
        )
