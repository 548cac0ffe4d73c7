"""Parsing prompt files (JSONL and CSV) into validated rows, before anything is written.

Every problem is collected with its line number and field, so one run of an import tells the
user everything that is wrong with the file; the service writes nothing unless the whole file
is clean.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import zlib
import io
import json
from dataclasses import dataclass, field

from django.conf import settings

from labelapp.models import Category, Prompt

CATEGORY_ALIASES = {
    **{c.value: c.value for c in Category},
    **{c.label.lower(): c.value for c in Category},
    "openqa": Category.OPEN_QA,
    "open-qa": Category.OPEN_QA,
    "closedqa": Category.CLOSED_QA,
    "closed-qa": Category.CLOSED_QA,
    "extraction": Category.EXTRACT,
    "brainstorm": Category.BRAINSTORMING,
    "summarize": Category.SUMMARIZATION,
    "summarisation": Category.SUMMARIZATION,
    "": Category.OTHER,
}
ROLES = {"system", "user", "assistant"}
MAX_REPORTED_ERRORS = 50


@dataclass
class PromptRow:
    line: int
    text: str = ""
    messages: list[dict] | None = None
    category: str = Category.OTHER
    split: str = Prompt.Split.TRAIN
    source: str = Prompt.Source.IMPORTED
    reference: str = ""

    @property
    def content_hash(self) -> str:
        return prompt_hash(text=self.text, messages=self.messages)


@dataclass
class ParseReport:
    rows: list[PromptRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def error(self, line: int, field_name: str | None, reason: str) -> None:
        where = f"line {line}" + (f", field '{field_name}'" if field_name else "")
        self.errors.append(f"{where}: {reason}")


def prompt_hash(*, text: str = "", messages: list[dict] | None = None) -> str:
    """Content hash used to skip prompts that are already in the project."""
    if messages:
        canonical = json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)
    else:
        canonical = " ".join(text.split())
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def detect_format(filename: str) -> str:
    name = filename.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    raise ValueError(f"cannot tell the format of {filename!r}: name it .jsonl or .csv, or pass the format")


def read_upload(data: bytes, report) -> str | None:
    """The text of an uploaded file after the checks every import shares: the size limit, gzip,
    UTF-8 and NUL characters (PostgreSQL cannot store them). Problems go to `report.error`."""
    limit = settings.IMPORT_MAX_BYTES
    if len(data) > limit:
        report.error(1, None, f"the file is {len(data):,} bytes; the limit is {limit:,} bytes")
        return None
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gunzip(data, limit)
        except (OSError, EOFError, zlib.error) as exc:
            report.error(1, None, f"the gzip file is damaged or truncated ({exc})")
            return None
        except ValueError as exc:
            report.error(1, None, str(exc))
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


def parse_prompts(data: bytes, *, fmt: str) -> ParseReport:
    report = ParseReport()
    text = read_upload(data, report)
    if text is None:
        return report
    if fmt == "jsonl":
        _parse_jsonl(text, report)
    elif fmt == "csv":
        _parse_csv(text, report)
    else:
        report.error(1, None, f"unknown format {fmt!r}: use jsonl or csv")
    if not report.rows and not report.errors:
        report.error(1, None, "the file holds no prompts")
    return report


def _gunzip(data: bytes, limit: int) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
        out = stream.read(limit + 1)
    if len(out) > limit:
        raise ValueError(f"the file unpacks to more than {limit:,} bytes, the limit")
    return out


def _parse_jsonl(text: str, report: ParseReport) -> None:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            report.error(number, None, f"broken JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            report.error(number, None, "each line must be a JSON object")
            continue
        _validate(obj, number, report)
        if len(report.errors) >= MAX_REPORTED_ERRORS:
            return


def _parse_csv(text: str, report: ParseReport) -> None:
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",\t;")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if not reader.fieldnames or "text" not in [f.strip() for f in reader.fieldnames]:
        report.error(1, "text", "the CSV header must have a 'text' column")
        return
    try:
        for obj in reader:
            number = reader.line_num
            if None in obj:
                report.error(number, None, "this row has more cells than the header")
                continue
            _validate({k.strip(): v for k, v in obj.items() if k}, number, report)
            if len(report.errors) >= MAX_REPORTED_ERRORS:
                return
    except csv.Error as exc:
        report.error(reader.line_num, None, f"broken CSV: {exc}")


def _validate(obj: dict, number: int, report: ParseReport) -> None:
    before = len(report.errors)
    limit = settings.LABEL_MAX_TEXT_CHARS
    text = obj.get("text") or obj.get("prompt") or ""
    messages = obj.get("messages")
    if not isinstance(text, str):
        report.error(number, "text", "must be a string")
        text = ""
    text = text.strip()
    if messages not in (None, ""):
        if text:
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
        messages = [{"role": m["role"], "content": m["content"]} for m in messages] if len(report.errors) == before else None
    else:
        messages = None
        if not text:
            report.error(number, "text", "empty prompt")
        elif len(text) > limit:
            report.error(number, "text", f"{len(text):,} characters; the limit is {limit:,}")
    raw_category = str(obj.get("category") or "").strip().lower()
    category = CATEGORY_ALIASES.get(raw_category) or CATEGORY_ALIASES.get(raw_category.replace("_", " "))
    if category is None:
        report.error(number, "category", f"unknown category {obj.get('category')!r}; use one of {', '.join(Category.values)}")
    split = str(obj.get("split") or Prompt.Split.TRAIN).strip().lower()
    if split not in Prompt.Split.values:
        report.error(number, "split", f"unknown split {split!r}; use train or validation")
    source = str(obj.get("source") or Prompt.Source.IMPORTED).strip().lower()
    if source not in Prompt.Source.values:
        report.error(number, "source", f"unknown source {source!r}; use {', '.join(Prompt.Source.values)}")
    reference = obj.get("reference") or ""
    if not isinstance(reference, str) or len(reference) > limit:
        report.error(number, "reference", f"must be a string of at most {limit:,} characters")
    if len(report.errors) == before:
        report.rows.append(
            PromptRow(number, text if not messages else "", messages, category, split, source, reference.strip())
        )
