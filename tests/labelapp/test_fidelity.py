"""Real data imported faithfully: U+2028 inside JSON strings, whitespace and indentation kept,
custom categories and free-form metadata, capped error lists that say so, exports that import
back byte for byte, and what min_agreement does on single-annotator data."""
import json

import pytest
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from labelapp.models import Demonstration, Prompt, Queue
from labelapp.services.label_imports import labels_import
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.projects import prompts_import
from labelapp.services.queue import assignment_skip, task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db

LS, PS = "\u2028", "\u2029"
CODE = [  # three prompts that differ only in indentation and surrounding whitespace
    "Fix this function:\n\ndef area(r):\n    return 3.14 * r * r\n",
    "Fix this function:\n\ndef area(r):\n  return 3.14 * r * r\n",
    "  Fix this function:\n\ndef area(r):\n\treturn 3.14 * r * r\n\n",
]


def jsonl(*rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def export(project, kind: str, **params) -> bytes:
    client = APIClient()
    client.force_authenticate(add_member(project, role="reviewer"))
    response = client.get(f"/api/v1/projects/{project.pk}/exports/{kind}/", params)
    assert response.status_code == 200, response.content
    return b"".join(response.streaming_content)


def test_a_raw_u2028_inside_a_json_string_is_not_a_line_break(project):
    text = f"A sentence{LS}with a line separator{PS}and a paragraph separator."
    data = jsonl({"text": text}, {"text": "fine"}) + b'{"text": "broken\n' + jsonl({"text": "after"})
    with pytest.raises(ValidationError) as info:
        prompts_import(project=project, data=data, fmt="jsonl")
    assert info.value.messages == ["line 3: broken JSON: Unterminated string starting at (column 10)"]  # not 1, not 4
    result = prompts_import(project=project, data=jsonl({"text": text}, {"text": "fine"}), fmt="jsonl")
    assert result.created == 2 and Prompt.objects.get(text__startswith="A sentence").text == text


def test_label_import_keeps_u2028_and_exports_escape_it(project):
    completion = f"Line one{LS}line two"
    labels_import(project=project, data=jsonl({"prompt": f"Q{PS}uestion", "chosen": completion, "rejected": "No."}),
                  fmt="trl-pairs")
    out = export(project, "pairs", style="conversational") + export(project, "rankings")
    assert LS.encode() not in out and PS.encode() not in out and b"\\u2028" in out and b"\\u2029" in out
    lines = out.decode().splitlines()  # str.splitlines would break at a raw U+2028: no such line now
    assert len(lines) == 2 and json.loads(lines[0])["chosen"][0]["content"] == completion


def test_indented_code_prompts_are_three_prompts_stored_exactly(project):
    result = prompts_import(project=project, data=jsonl(*({"text": t, "category": "rewrite"} for t in CODE)), fmt="jsonl")
    assert (result.created, result.duplicates) == (3, 0)
    assert sorted(Prompt.objects.values_list("text", flat=True)) == sorted(CODE)
    crlf = CODE[0].replace("\n", "\r\n")  # only line endings are normalised for the hash
    assert prompts_import(project=project, data=jsonl({"text": crlf}), fmt="jsonl").duplicates == 1


def test_custom_categories_and_metadata_through_import_api_and_export():
    project = make_project(name="Custom", categories=["coding", "math", "Trivia"])
    rows = [
        {"text": "Sum 1..10", "category": "Math", "metadata": {"uid": "p-1", "cluster": [3, 7]}},
        {"text": "Capital of Peru?", "category": "trivia", "uid": "p-2", "topic_cluster": 12},  # unknown fields kept
        {"text": "Reverse a list in Python", "category": "coding"},
        {"text": "No category here"},
    ]
    assert prompts_import(project=project, data=jsonl(*rows), fmt="jsonl").created == 4
    stored = {p.text: p for p in Prompt.objects.filter(project=project)}
    assert stored["Sum 1..10"].category == "math" and stored["Sum 1..10"].metadata == {"uid": "p-1", "cluster": [3, 7]}
    assert stored["Capital of Peru?"].category == "Trivia"
    assert stored["Capital of Peru?"].metadata == {"uid": "p-2", "topic_cluster": 12}
    assert stored["No category here"].category == ""  # the project has no "other": none
    assert stored["Sum 1..10"].get_category_display() == "math"

    with pytest.raises(ValidationError, match="line 1, field 'category': unknown category 'generation'; this "
                                              "project's categories are coding, math, Trivia"):
        prompts_import(project=project, data=jsonl({"text": "Write a poem", "category": "generation"}), fmt="jsonl")
    csv = b"text,category,uid,metadata\nHow many primes below 10?,math,p-9,\"{\"\"level\"\": 2}\"\n"
    prompts_import(project=project, data=csv, fmt="csv")
    assert Prompt.objects.get(text__startswith="How many").metadata == {"level": 2, "uid": "p-9"}

    client = APIClient()
    client.force_authenticate(add_member(project, role="annotator"))
    assert client.get(f"/api/v1/projects/{project.pk}/").json()["categories"] == ["coding", "math", "Trivia"]
    listed = client.get("/api/v1/prompts/", {"project": project.pk, "category": "math"}).json()["results"]
    assert {p["text"]: p["metadata"] for p in listed} == {"Sum 1..10": {"uid": "p-1", "cluster": [3, 7]},
                                                          "How many primes below 10?": {"level": 2, "uid": "p-9"}}
    assert client.get("/api/v1/prompts/", {"category": "poetry"}).status_code == 400

    make_task(project, prompt=stored["Sum 1..10"], texts=["55", "45"])
    annotator = add_member(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    ranking_submit(assignment_id=lease.pk, user=annotator, order=[[c] for c in sorted(
        lease.ranking_task.completions.values_list("id", flat=True))])
    row = json.loads(export(project, "rankings"))
    assert row["category"] == "math" and row["metadata"] == {"uid": "p-1", "cluster": [3, 7]}
    # and it imports into a project with the same categories, metadata and all
    other = make_project(name="Other", categories=["math"])
    labels_import(project=other, data=export(project, "rankings"), fmt="studio-rankings")
    assert Prompt.objects.get(project=other).metadata == {"uid": "p-1", "cluster": [3, 7]}


def test_categories_are_validated_on_the_project():
    with pytest.raises(ValidationError, match="listed twice"):
        make_project(name="Dup", categories=["math", "Math"])
    with pytest.raises(ValidationError, match="non-empty list"):
        make_project(name="Empty", categories=[])
    with pytest.raises(ValidationError, match="without surrounding spaces"):
        make_project(name="Spaces", categories=[" math"])
    assert make_project(name="Default").categories[:3] == ["generation", "open_qa", "brainstorming"]


def test_prompt_import_error_list_says_how_many_were_not_shown(project):
    data = jsonl(*({"text": f"prompt {i}", "split": "test"} for i in range(80)))
    with pytest.raises(ValidationError) as info:
        prompts_import(project=project, data=data, fmt="jsonl")
    messages = info.value.messages
    assert len(messages) == 51 and messages[49].startswith("line 50, field 'split'")
    assert messages[-1] == "30 more errors not shown; fix these and import again"


def test_prompts_export_imports_back_byte_for_byte():
    source = make_project(name="Source", categories=["coding", "chat", "math"])
    rows = [
        *({"text": t, "category": "coding", "metadata": {"uid": f"c{i}"}} for i, t in enumerate(CODE)),
        {"text": f"Two separators{LS}here{PS}", "category": "math", "split": "validation", "reference": " 42\n"},
        {"messages": [{"role": "system", "content": "Be terse.  "}, {"role": "user", "content": "Hi\r\nthere"}],
         "category": "chat", "source": "customer", "metadata": {"nested": {"a": [1, {"b": None}]}}},
        {"text": "Tabs\tand trailing spaces   ", "category": "math"},
    ]
    prompts_import(project=source, data=jsonl(*rows), fmt="jsonl")
    first = export(source, "prompts")
    copy = make_project(name="Copy", categories=["coding", "chat", "math"])
    assert prompts_import(project=copy, data=first, fmt="jsonl").created == len(rows)
    assert export(copy, "prompts") == first  # byte-identical
    assert [json.loads(x) for x in first.decode().split("\n") if x] == [
        {**({"text": r["text"]} if "text" in r else {"messages": r["messages"]}), "category": r["category"],
         "split": r.get("split", "train"), "source": r.get("source", "imported"), "reference": r.get("reference", ""),
         "metadata": r.get("metadata", {})} for r in rows]  # exactly what was given
    assert prompts_import(project=copy, data=first, fmt="jsonl").duplicates == len(rows)


def test_demonstrations_export_imports_back_byte_for_byte(project):
    writer = add_member(project)
    for text in CODE:
        make_prompt(project, text=text)
    for answer in (f"Use{LS}math.pi", "    return math.pi * r ** 2\n", "Indent with four spaces."):
        lease = task_claim(project=project, user=writer, queue=Queue.WRITE)
        demonstration_submit(assignment_id=lease.pk, user=writer, text=answer)
    first = export(project, "demonstrations")
    copy = make_project(name="Demo copy")
    labels_import(project=copy, data=first, fmt="studio-demonstrations")
    assert Demonstration.objects.filter(prompt__project=copy).count() == 3
    assert export(copy, "demonstrations") == first


def test_min_agreement_leaves_out_items_with_a_single_annotator():
    """Agreement needs two annotators: an item ranked by one has none, so any min_agreement (even 0)
    leaves it out; without min_agreement every ranking is exported (documented in docs/API.md)."""
    project = make_project(k=2, overlap=2)
    single, double = make_task(project, texts=["a", "b"]), make_task(project, texts=["c", "d"])
    one, two = add_member(project), add_member(project)
    for user, task in ((one, single), (one, double), (two, double)):
        while (lease := task_claim(project=project, user=user, queue=Queue.RANK)).ranking_task_id != task.pk:
            assignment_skip(assignment_id=lease.pk, user=user, reason="not this one")
        ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
        ranking_submit(assignment_id=lease.pk, user=user, order=[[ids[0]], [ids[1]]])
    all_pairs = [json.loads(x) for x in export(project, "pairs").splitlines()]
    assert sorted(p["chosen"] for p in all_pairs) == ["a", "c", "c"]
    for threshold in ("0", "0.5", "1"):
        kept = [json.loads(x) for x in export(project, "pairs", min_agreement=threshold).splitlines()]
        assert sorted(p["chosen"] for p in kept) == ["c", "c"], threshold  # the single-annotator item is left out
