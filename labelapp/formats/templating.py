"""Prompt templates: structured rows rendered into prompts, FLAN-style. Pure Python (no database),
so the studio's live preview, the import service and the tests share one renderer.

A template's `text` names fields in braces: "{premise} Based on the paragraph above, can we
conclude that {hypothesis}? {options}". Literal braces are doubled ("{{" and "}}"). Only plain
names are placeholders: no positional "{}", no attribute or index access, no conversions or
format specs (they would let a template reach into Python objects).

Rendering a row:

* every placeholder must be a field of the row, with a value (missing -> error naming the
  row and the field);
* every field of the row must be a placeholder of the template, the `target`, or listed in
  `extra_fields` (fields kept as metadata only); anything else is an error naming the row and
  the field — a misspelt column would otherwise vanish silently;
* `target` becomes the prompt's reference answer;
* few-shot: `k` examples are drawn from the *other* rows of the same data that have a target,
  with a generator seeded by (seed, row number), so the draw is reproducible and never
  includes the row itself; each example is the template rendered with that row's fields, and
  its target as the answer;
* chat mode (default): an optional system turn, then each example as a user turn and an
  assistant turn, then the row as the last user turn; text mode: the examples and the row
  joined by `separator`, each example followed by `answer_prefix` and its target, the row
  followed by `answer_prefix` alone;
* an optional chain-of-thought cue ("Let's think step by step.") is appended to the row's
  turn (not to the examples, whose answers are given).
"""
from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TARGET = "target"
MODES = ("chat", "text")
CHOICES = ("round-robin", "random", "all")


class TemplateError(ValueError):
    """A template or a row that cannot be rendered; the message names the row and the field."""


@dataclass(frozen=True)
class Template:
    name: str
    text: str
    system_prompt: str = ""
    cot_cue: str = ""
    few_shot: int = 0
    mode: str = "chat"
    separator: str = "\n\n"
    answer_prefix: str = "Answer: "
    ident: int | None = None  # database id, when stored
    version: int = 1
    seed: int | None = None  # the few-shot draws' seed; None: the seed render_rows is given

    @property
    def placeholders(self) -> tuple[str, ...]:
        return placeholders(self.text, where=f"template {self.name!r}")

    def check(self) -> None:
        """Refuse a template that could never render (raised as TemplateError)."""
        if not self.name.strip():
            raise TemplateError("A template needs a name.")
        if self.mode not in MODES:
            raise TemplateError(f"template {self.name!r}: mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if not 0 <= self.few_shot <= 16:
            raise TemplateError(f"template {self.name!r}: few_shot must be between 0 and 16, not {self.few_shot}.")
        if not self.placeholders:
            raise TemplateError(f"template {self.name!r} has no {{placeholder}}: every row would render the same prompt.")
        if TARGET in self.placeholders:
            raise TemplateError(f"template {self.name!r}: {{{TARGET}}} is the answer, not part of the prompt.")
        if "\x00" in self.text + self.system_prompt + self.cot_cue:
            raise TemplateError(f"template {self.name!r} contains a NUL character.")


def placeholders(text: str, *, where: str = "template") -> tuple[str, ...]:
    """The field names in `text`, in first-use order; TemplateError for anything but plain names."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # a single "{" or "}"
        raise TemplateError(f"{where}: {exc} (write literal braces as {{{{ and }}}}).") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name:
            raise TemplateError(f"{where}: '{{}}' has no name; name every placeholder, e.g. {{question}}.")
        if not name.isidentifier():
            raise TemplateError(f"{where}: {{{name}}} is not a plain field name (letters, digits and _ only).")
        if spec or conversion:
            raise TemplateError(f"{where}: {{{name}}} may not carry a format spec or conversion.")
        if name not in names:
            names.append(name)
    return tuple(names)


@dataclass
class Rendered:
    """One prompt: `messages` in chat mode or `text` in text mode, its reference, its metadata."""

    row: int  # 1-based row number in the data
    template: Template
    text: str = ""
    messages: list[dict] | None = None
    reference: str = ""
    examples: list[int] = field(default_factory=list)  # row numbers of the few-shot examples
    fields: dict = field(default_factory=dict)

    @property
    def metadata(self) -> dict:
        return {
            "template": {"id": self.template.ident, "name": self.template.name, "version": self.template.version,
                         "few_shot": len(self.examples), "examples": self.examples},
            "fields": self.fields,
        }


def _value(row_number: int, row: Mapping, name: str) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TemplateError(f"row {row_number}: field {name!r} is missing or empty (the template uses {{{name}}}).")
    if isinstance(value, (dict, list)):
        raise TemplateError(f"row {row_number}: field {name!r} must be text or a number, not {type(value).__name__}.")
    return str(value)


def _fill(template: Template, row_number: int, row: Mapping) -> str:
    return template.text.format_map({name: _value(row_number, row, name) for name in template.placeholders})


def check_row(template: Template, row_number: int, row: Mapping, *, extra_fields: Sequence[str] = ()) -> None:
    if not isinstance(row, Mapping):
        raise TemplateError(f"row {row_number}: expected an object of fields, got {type(row).__name__}.")
    allowed = set(template.placeholders) | {TARGET} | set(extra_fields)
    for name in row:
        if name not in allowed:
            raise TemplateError(
                f"row {row_number}: field {name!r} is not a placeholder of template {template.name!r} "
                f"(placeholders: {', '.join(template.placeholders)}); list it in extra_fields to keep it as metadata."
            )
    _fill(template, row_number, row)  # raises for a missing placeholder value


def render_rows(
    templates: Sequence[Template], rows: Sequence[Mapping], *, choice: str = "round-robin", seed: int = 0,
    extra_fields: Sequence[str] = (),
) -> list[Rendered]:
    """Render every row (through one template each, or through all of them with choice="all").
    Checks everything first and raises the first TemplateError; returns nothing half-done."""
    if not templates:
        raise TemplateError("Choose at least one template.")
    if choice not in CHOICES:
        raise TemplateError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}.")
    for template in templates:
        template.check()
    rng = random.Random(seed)
    plan: list[tuple[int, Template]] = []
    for index in range(len(rows)):
        if choice == "all":
            plan.extend((index, t) for t in templates)
        elif choice == "random":
            plan.append((index, templates[rng.randrange(len(templates))]))
        else:
            plan.append((index, templates[index % len(templates)]))
    for index, template in plan:
        check_row(template, index + 1, rows[index], extra_fields=extra_fields)
    with_target = [i for i, row in enumerate(rows) if str(row.get(TARGET) or "").strip()]
    return [render_one(template, rows, index, with_target=with_target, seed=seed if template.seed is None else template.seed)
            for index, template in plan]


def _usable_example(template: Template, row: Mapping) -> bool:
    """A row can serve as a few-shot example of `template`: it has a target and every placeholder."""
    try:
        _fill(template, 0, row)
    except TemplateError:
        return False
    return bool(str(row.get(TARGET) or "").strip())


def render_one(template: Template, rows: Sequence[Mapping], index: int, *, with_target: Sequence[int] | None = None,
               seed: int = 0) -> Rendered:
    """Render rows[index] through `template` (rows must already pass `check_row`)."""
    row = rows[index]
    number = index + 1
    examples: list[int] = []
    if template.few_shot:
        pool = [i for i in (with_target if with_target is not None else range(len(rows)))
                if i != index and _usable_example(template, rows[i])]
        if len(pool) < template.few_shot:
            raise TemplateError(
                f"row {number}: template {template.name!r} asks for {template.few_shot} few-shot examples but only "
                f"{len(pool)} other rows have a {TARGET!r} and every field it uses."
            )
        examples = random.Random(f"{seed}:{index}").sample(pool, template.few_shot)
    question = _fill(template, number, row)
    if template.cot_cue:
        question = f"{question}\n{template.cot_cue}"
    out = Rendered(row=number, template=template, reference=str(row.get(TARGET) or ""),
                   examples=[i + 1 for i in examples], fields=dict(row))
    shots = [(_fill(template, i + 1, rows[i]), str(rows[i][TARGET])) for i in examples]
    if template.mode == "chat":
        turns = [{"role": "system", "content": template.system_prompt}] if template.system_prompt else []
        for asked, answered in shots:
            turns += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
        turns.append({"role": "user", "content": question})
        if len(turns) == 1:
            out.text = question
        else:
            out.messages = turns
    else:
        parts = [template.system_prompt] if template.system_prompt else []
        parts += [f"{asked}\n{template.answer_prefix}{answered}" for asked, answered in shots]
        parts.append(f"{question}\n{template.answer_prefix}".rstrip() if template.answer_prefix else question)
        out.text = template.separator.join(parts)
    return out
