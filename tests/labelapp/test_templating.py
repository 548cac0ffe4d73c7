"""Prompt templates (labelapp.formats.templating): pure rendering, no database."""
from __future__ import annotations

import pytest

from labelapp.formats.templating import Template, TemplateError, placeholders, render_rows

NLI = Template(name="nli", text="{premise} Based on the paragraph above, can we conclude that {hypothesis}? {options}")
ROWS = [
    {"premise": f"Premise {i}.", "hypothesis": f"hypothesis {i}", "options": "yes / no", "target": "yes" if i % 2 else "no"}
    for i in range(1, 9)
]


def test_placeholders_in_first_use_order_and_escaped_braces():
    assert placeholders("{b} and {a} and {b} {{literal}}") == ("b", "a")
    assert NLI.placeholders == ("premise", "hypothesis", "options")


@pytest.mark.parametrize("text, message", [
    ("no fields here", "has no {placeholder}"),
    ("{} twice", "has no name"),
    ("{0} positional", "not a plain field name"),
    ("{a.b}", "not a plain field name"),
    ("{a[0]}", "not a plain field name"),
    ("{a!r}", "format spec or conversion"),
    ("{a:>10}", "format spec or conversion"),
    ("{a} unbalanced {", "literal braces"),
    ("{target} leaks", "is the answer"),
])
def test_bad_templates_are_refused_with_the_reason(text, message):
    with pytest.raises(TemplateError, match=message):
        Template(name="t", text=text).check()


def test_zero_shot_renders_text_with_reference_and_metadata():
    [first] = render_rows([NLI], ROWS[:1])
    assert first.text == "Premise 1. Based on the paragraph above, can we conclude that hypothesis 1? yes / no"
    assert first.messages is None and first.reference == "yes"
    assert first.metadata == {
        "template": {"id": None, "name": "nli", "version": 1, "few_shot": 0, "examples": []},
        "fields": ROWS[0],
    }


def test_few_shot_chat_examples_are_seeded_exclude_the_row_and_carry_targets():
    template = Template(name="nli3", text=NLI.text, few_shot=3, system_prompt="Answer yes or no.")
    out = render_rows([template], ROWS, seed=7)
    again = render_rows([template], ROWS, seed=7)
    other = render_rows([template], ROWS, seed=8)
    assert [r.examples for r in out] == [r.examples for r in again]
    assert [r.examples for r in out] != [r.examples for r in other]
    for r in out:
        assert r.row not in r.examples and len(set(r.examples)) == 3
        turns = r.messages
        assert turns[0] == {"role": "system", "content": "Answer yes or no."}
        assert [t["role"] for t in turns[1:]] == ["user", "assistant"] * 3 + ["user"]
        for n, (asked, answered) in zip(r.examples, zip(turns[1:-1:2], turns[2:-1:2])):
            assert asked["content"].startswith(f"Premise {n}.") and answered["content"] == ROWS[n - 1]["target"]
        assert turns[-1]["content"].startswith(f"Premise {r.row}.")


def test_text_mode_and_chain_of_thought_cue():
    template = Template(name="t", text="Q: {premise}", few_shot=1, mode="text", cot_cue="Let's think step by step.")
    [r] = render_rows([template], [{"premise": "a", "target": "A"}, {"premise": "b", "target": "B"}][:2])[:1]
    assert r.text == "Q: b\nAnswer: B\n\nQ: a\nLet's think step by step.\nAnswer:"


def test_round_robin_random_and_all():
    other = Template(name="nli-b", text="Read: {premise} Can {hypothesis} be inferred? {options}")
    assert [r.template.name for r in render_rows([NLI, other], ROWS[:4])] == ["nli", "nli-b", "nli", "nli-b"]
    drawn = [r.template.name for r in render_rows([NLI, other], ROWS, choice="random", seed=3)]
    assert drawn == [r.template.name for r in render_rows([NLI, other], ROWS, choice="random", seed=3)]
    assert set(drawn) == {"nli", "nli-b"}
    every = render_rows([NLI, other], ROWS[:3], choice="all")
    assert [(r.row, r.template.name) for r in every] == [(1, "nli"), (1, "nli-b"), (2, "nli"), (2, "nli-b"), (3, "nli"), (3, "nli-b")]


@pytest.mark.parametrize("row, message", [
    ({"premise": "p", "hypothesis": "h"}, "row 2: field 'options' is missing or empty"),
    ({"premise": "p", "hypothesis": "  ", "options": "o"}, "row 2: field 'hypothesis' is missing or empty"),
    ({"premise": "p", "hypothesis": "h", "options": "o", "premis": "typo"}, "row 2: field 'premis' is not a placeholder"),
    ({"premise": {"nested": 1}, "hypothesis": "h", "options": "o"}, "row 2: field 'premise' must be text"),
    (["not", "an", "object"], "row 2: expected an object"),
])
def test_bad_rows_name_the_row_and_field_and_nothing_is_returned(row, message):
    with pytest.raises(TemplateError, match=message):
        render_rows([NLI], [ROWS[0], row, ROWS[2]])


def test_extra_fields_are_kept_as_metadata_when_listed():
    row = dict(ROWS[0], uid="x-1")
    [r] = render_rows([NLI], [row], extra_fields=["uid"])
    assert r.metadata["fields"]["uid"] == "x-1"


def test_too_few_examples_is_an_error():
    with pytest.raises(TemplateError, match="asks for 3 few-shot examples but only 1 other rows"):
        render_rows([Template(name="t", text="{premise}", few_shot=3)], [{"premise": "a", "target": "x"}, {"premise": "b", "target": "y"}])
