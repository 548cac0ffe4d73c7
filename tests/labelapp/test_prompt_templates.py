"""Prompt templates as a feature: the model and its services (create, edit bumps the version,
preview), the structured import (all or nothing, errors name row, line and field), metadata kept
through the prompts export, and the manage.py command. Runs on PostgreSQL (DATABASE_URL)."""
from __future__ import annotations

import gzip
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from labelapp.formats import exports
from labelapp.formats.templating import TemplateError
from labelapp.models import Prompt, PromptTemplate
from labelapp.services.projects import ImportRejected
from labelapp.services.templates import (
    prompt_template_create,
    prompt_template_delete,
    prompt_template_update,
    template_preview,
    templated_import,
)
from tests.conftest import make_project

pytestmark = pytest.mark.django_db

NLI = "{premise} Based on the paragraph above, can we conclude that {hypothesis}?"
ROWS = [{"premise": f"Premise {i}.", "hypothesis": f"hypothesis {i}", "target": "yes" if i % 2 else "no"}
        for i in range(1, 11)]


def jsonl(rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def make_template(project, name="nli", text=NLI, **fields):
    return prompt_template_create(project=project, name=name, text=text, **fields)


def test_create_and_edit_bumps_the_version_only_when_the_rendering_changes(project):
    template = make_template(project, few_shot=2, seed=5)
    assert template.version == 1
    assert template.as_template().placeholders == ("premise", "hypothesis")
    renamed = prompt_template_update(project=project, template_id=template.pk, name="nli-1")
    assert renamed.version == 1
    same = prompt_template_update(project=project, template_id=template.pk, text=NLI)
    assert same.version == 1
    edited = prompt_template_update(project=project, template_id=template.pk, cot_cue="Let's think step by step.")
    assert edited.version == 2
    assert PromptTemplate.objects.get(pk=template.pk).version == 2


@pytest.mark.parametrize("fields, field, message", [
    ({"text": "no placeholder"}, "text", "has no {placeholder}"),
    ({"text": "{a} and {target}"}, "text", "is the answer"),
    ({"text": "{a} {"}, "text", "literal braces"),
    ({"few_shot": 17}, "few_shot", "between 0 and 16"),
    ({"mode": "poem"}, "mode", "mode must be one of"),
    ({"name": "  "}, "name", "needs a name"),
])
def test_bad_templates_are_refused_naming_the_field_and_nothing_is_saved(project, fields, field, message):
    values = {"name": "t", "text": "{a}", **fields}
    with pytest.raises(ValidationError) as caught:
        prompt_template_create(project=project, **values)
    assert message in " ".join(caught.value.message_dict[field])
    assert not PromptTemplate.objects.exists()


def test_a_bad_edit_changes_nothing_and_names_are_unique_per_project(project):
    template = make_template(project)
    make_template(project, name="other", text="{x}")
    with pytest.raises(ValidationError, match="no {placeholder}"):
        prompt_template_update(project=project, template_id=template.pk, text="plain")
    with pytest.raises(ValidationError, match="already has a template named 'other'"):
        prompt_template_update(project=project, template_id=template.pk, name="other")
    with pytest.raises(ValidationError, match="already has a template named 'nli'"):
        make_template(project)
    fresh = PromptTemplate.objects.get(pk=template.pk)
    assert (fresh.name, fresh.text, fresh.version) == ("nli", NLI, 1)
    other_project = make_project()
    make_template(other_project)  # the same name in another project is fine
    with pytest.raises(PromptTemplate.DoesNotExist):
        prompt_template_update(project=other_project, template_id=template.pk, text="{x}")
    with pytest.raises(PromptTemplate.DoesNotExist):
        prompt_template_delete(project=other_project, template_id=template.pk)


def test_preview_draws_reproducible_examples_from_the_other_rows(project):
    template = make_template(project, few_shot=3, seed=7, system_prompt="Be brief.", cot_cue="Think first.")
    one = template_preview(template=template.as_template(), rows=ROWS, index=4)
    two = template_preview(template=template.as_template(), rows=ROWS, index=4)
    assert one.messages == two.messages and one.examples == two.examples
    assert len(one.examples) == 3 and 5 not in one.examples
    assert one.messages[0] == {"role": "system", "content": "Be brief."}
    assert one.messages[-1]["content"].endswith("hypothesis 5?\nThink first.")
    assert [t["role"] for t in one.messages[1:]] == ["user", "assistant"] * 3 + ["user"]
    with pytest.raises(TemplateError, match="row 2: field 'hypothesis' is missing"):
        template_preview(template=template.as_template(), rows=[ROWS[0], {"premise": "p"}], index=1)


def test_import_renders_every_row_keeps_metadata_and_the_target_as_reference(project):
    template = make_template(project, few_shot=3, seed=1)
    result = templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=[template.pk],
                              category="closed_qa")
    assert (result.created, result.duplicates) == (10, 0)
    prompts = list(Prompt.objects.filter(project=project).order_by("id"))
    first = prompts[0]
    assert first.reference == "yes" and first.category == "closed_qa" and first.source == "imported"
    assert first.messages[-1]["content"] == "Premise 1. Based on the paragraph above, can we conclude that hypothesis 1?"
    assert first.metadata["template"] == {"id": template.pk, "name": "nli", "version": 1, "few_shot": 3,
                                          "examples": first.metadata["template"]["examples"]}
    assert 1 not in first.metadata["template"]["examples"]
    assert first.metadata["fields"] == ROWS[0]
    # an edit bumps the version; prompts rendered after it say so
    prompt_template_update(project=project, template_id=template.pk, cot_cue="Think.")
    again = templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=["nli"])
    assert again.created == 10
    assert Prompt.objects.filter(metadata__template__version=2).count() == 10
    # the metadata survives the prompts export (the prompt import's format)
    flt = exports.ExportFilter(project=project)
    exported = [json.loads(line) for chunk in exports.export_prompts(flt) for line in chunk.splitlines() if line]
    assert exported[0]["metadata"]["template"]["id"] == template.pk
    assert exported[0]["metadata"]["fields"]["premise"] == "Premise 1." and exported[0]["reference"] == "yes"


def test_round_robin_random_and_all_templates(project):
    a = make_template(project, name="a")
    b = make_template(project, name="b", text="Read: {premise} Does it follow that {hypothesis}?", mode="text")
    templated_import(project=project, data=jsonl(ROWS[:4]), fmt="jsonl", template_ids=[a.pk, b.pk])
    names = [p.metadata["template"]["name"] for p in Prompt.objects.order_by("id")]
    assert names == ["a", "b", "a", "b"]
    Prompt.objects.all().delete()
    result = templated_import(project=project, data=jsonl(ROWS[:4]), fmt="jsonl", template_ids=[a.pk, b.pk],
                              choice="all")
    assert result.created == 8
    text_prompt = Prompt.objects.filter(metadata__template__name="b").first()
    assert text_prompt.text.startswith("Read: Premise") and text_prompt.text.endswith("Answer:")
    Prompt.objects.all().delete()
    templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=[a.pk, b.pk], choice="random", seed=3)
    first = [p.metadata["template"]["name"] for p in Prompt.objects.order_by("id")]
    Prompt.objects.all().delete()
    templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=[a.pk, b.pk], choice="random", seed=3)
    assert [p.metadata["template"]["name"] for p in Prompt.objects.order_by("id")] == first
    assert set(first) == {"a", "b"}


def test_csv_rows_with_category_and_split_columns(project):
    template = make_template(project)
    data = (b"premise,hypothesis,target,category,split\n"
            b"\"A cat, asleep.\",the cat sleeps,yes,classification,validation\n"
            b"A dog barks.,the dog is quiet,no,,\n")
    result = templated_import(project=project, data=gzip.compress(data), fmt="csv", template_ids=[template.pk])
    assert result.created == 2
    cat, dog = Prompt.objects.order_by("id")
    assert (cat.category, cat.split, cat.reference) == ("classification", "validation", "yes")
    assert (dog.category, dog.split) == ("other", "train")
    assert cat.metadata["fields"] == {"premise": "A cat, asleep.", "hypothesis": "the cat sleeps", "target": "yes"}


@pytest.mark.parametrize("rows, message", [
    ([*ROWS[:3], {"premise": "p"}], "row 4 (line 4): field 'hypothesis' is missing or empty"),
    ([*ROWS[:2], {**ROWS[2], "hypothesys": "typo"}], "row 3 (line 3): field 'hypothesys' is not a placeholder"),
    ([ROWS[0], {**ROWS[1], "premise": {"nested": 1}}], "row 2 (line 2): field 'premise' must be text or a number"),
    ([ROWS[0], "[1, 2]"], "line 2: each line must be a JSON object"),
    ([ROWS[0], "{broken"], "line 2: broken JSON"),
    ([ROWS[0], {**ROWS[1], "category": "poetry"}], "row 2 (line 2): field 'category': unknown category 'poetry'"),
    ([ROWS[0], {**ROWS[1], "split": "test"}], "row 2 (line 2): field 'split': unknown split 'test'"),
])
def test_bad_rows_refuse_the_whole_file_naming_row_and_field(project, rows, message):
    template = make_template(project)
    with pytest.raises(ImportRejected) as caught:
        templated_import(project=project, data=jsonl(rows), fmt="jsonl", template_ids=[template.pk])
    assert any(message in m for m in caught.value.messages), caught.value.messages
    assert not Prompt.objects.exists()


def test_bad_imports_write_nothing(project):
    template = make_template(project, few_shot=3)
    cases = [
        (dict(data=jsonl(ROWS[:3])), "asks for 3 few-shot examples but only 2 other rows"),
        (dict(data=jsonl(ROWS), template_ids=[template.pk, 999999]), "template '999999': no such template"),
        (dict(data=jsonl(ROWS), template_ids=["missing"]), "template 'missing': no such template"),
        (dict(data=jsonl(ROWS), choice="every"), "choice must be one of"),
        (dict(data=jsonl(ROWS), category="poetry"), "unknown category 'poetry'"),
        (dict(data=b"", fmt="jsonl"), "the file holds no rows"),
        (dict(data=b"premise,hypothesis\nA,B,C\n", fmt="csv"), "more cells than the header"),
    ]
    for kwargs, message in cases:
        kwargs = {"project": project, "fmt": "jsonl", "template_ids": [template.pk], **kwargs}
        with pytest.raises(ImportRejected) as caught:
            templated_import(**kwargs)
        assert any(message in m for m in caught.value.messages), (message, caught.value.messages)
    assert not Prompt.objects.exists()
    other = make_project()
    foreign = make_template(other, name="foreign")
    with pytest.raises(ImportRejected, match="no such template"):  # another project's template is not usable
        templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=[foreign.pk])
    assert not Prompt.objects.exists()


def test_reimport_counts_duplicates(project):
    template = make_template(project)
    templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=[template.pk])
    again = templated_import(project=project, data=jsonl(ROWS), fmt="jsonl", template_ids=[template.pk])
    assert (again.created, again.duplicates) == (0, 10)


def test_manage_py_creates_edits_previews_and_imports(project, tmp_path, capsys):
    spec = tmp_path / "nli.json"
    spec.write_text(json.dumps({"name": "nli", "text": NLI, "few_shot": 2, "seed": 3}))
    call_command("prompt_templates", "save", project.slug, str(spec))
    template = PromptTemplate.objects.get(project=project, name="nli")
    assert template.few_shot == 2 and template.version == 1
    spec.write_text(json.dumps({"name": "nli", "text": NLI, "few_shot": 2, "seed": 3, "cot_cue": "Think."}))
    call_command("prompt_templates", "save", project.slug, str(spec))
    assert PromptTemplate.objects.get(pk=template.pk).version == 2
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(jsonl(ROWS))
    call_command("prompt_templates", "preview", project.slug, "nli", str(rows), "--row", "3")
    out = capsys.readouterr().out
    assert "hypothesis 3?\nThink." in out
    call_command("prompt_templates", "import", project.slug, str(rows), "--template", "nli", "--category", "closed_qa")
    assert "Imported 10 prompts" in capsys.readouterr().out
    assert Prompt.objects.filter(project=project, metadata__template__version=2).count() == 10
    call_command("prompt_templates", "list", project.slug)
    assert "nli" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([ROWS[0], {"premise": "only"}]))
    with pytest.raises(CommandError, match="row 2 \\(line 2\\): field 'hypothesis'"):
        call_command("prompt_templates", "import", project.slug, str(bad), "--template", "nli")
    spec.write_text(json.dumps({"name": "broken", "text": "no fields"}))
    with pytest.raises(CommandError, match="no {placeholder}"):
        call_command("prompt_templates", "save", project.slug, str(spec))
    assert Prompt.objects.count() == 10 and not PromptTemplate.objects.filter(name="broken").exists()


def test_studio_page_is_for_admins_and_previews_and_saves_without_script(project):
    from django.test import Client

    from tests.conftest import add_member

    annotator, admin = add_member(project, role="annotator"), add_member(project, role="admin")
    url = f"/studio/p/{project.slug}/templates/"
    client = Client()
    client.force_login(annotator)
    assert client.get(url).status_code == 404
    assert client.post(url + "preview/", {"text": "{a}"}).status_code == 404
    client.force_login(admin)
    assert client.get(url).status_code == 200
    sample = "\n".join(json.dumps(r) for r in ROWS[:4])
    form = {"name": "nli", "text": NLI, "few_shot": "2", "seed": "0", "mode": "chat", "sample": sample, "row": "1"}
    shown = client.post(url, {**form, "action": "preview"})
    assert shown.status_code == 200 and b"hypothesis 1?" in shown.content and not PromptTemplate.objects.exists()
    fragment = client.post(url + "preview/", form)
    assert b'data-testid="prompt"' in fragment.content and b"hypothesis 1?" in fragment.content
    unnamed = client.post(url + "preview/", {**form, "name": ""})  # previewing before naming it
    assert b"hypothesis 1?" in unnamed.content
    typo = client.post(url + "preview/", {**form, "text": "{premise} {hypothesys}"})
    assert b'id="preview-error"' in typo.content and b"field &#x27;hypothesis&#x27; is not a placeholder" in typo.content
    refused = client.post(url, {**form, "text": "nothing to fill", "action": "save"})
    assert refused.status_code == 400 and b"no {placeholder}" in refused.content
    assert not PromptTemplate.objects.exists()
    saved = client.post(url, {**form, "action": "save"})
    template = PromptTemplate.objects.get()
    assert saved.status_code == 302 and saved["Location"].endswith(f"/templates/{template.pk}/")
    other = make_project()
    foreign = make_template(other, name="foreign")
    assert client.get(f"/studio/p/{project.slug}/templates/{foreign.pk}/").status_code == 404


def test_per_template_win_rates_in_the_blind_evaluation_equal_a_hand_computation(project):
    """A template's prompts rendered zero-shot and three-shot (choice "all"), then a blind evaluation:
    the round's summary has a win-rate per template and few-shot count, equal to counting by hand."""
    from django.test import Client

    from labelapp.models import Comparison, EvaluationTask, ModelVersion, Round
    from labelapp.selectors.stats import evaluation_summary
    from labelapp.services.projects import evaluation_task_create
    from tests.conftest import add_member

    zero = make_template(project, name="nli")
    few = make_template(project, name="nli-fs", few_shot=3, seed=2)
    templated_import(project=project, data=jsonl(ROWS[:6]), fmt="jsonl", template_ids=[zero.pk, few.pk], choice="all")
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new = ModelVersion.objects.create(project=project, name="policy r1")
    old = ModelVersion.objects.create(project=project, name="sft r1")
    judges = [add_member(project, role="annotator") for _ in range(2)]
    # zero-shot prompts: the candidate wins 5 of 6 judgments on 3 prompts; few-shot: 1 win, 1 tie, 4 losses
    verdicts = {"nli": [("a", "a"), ("a", "tie"), ("a", "a")], "nli-fs": [("a", "tie"), ("b", "b"), ("b", "b")]}
    rewards = {"nli": [(1.0, 0.0), (1.0, 0.0), (0.0, 1.0)], "nli-fs": [(0.0, 1.0), (0.0, 1.0), (0.5, 0.5)]}
    for name in ("nli", "nli-fs"):
        prompts = Prompt.objects.filter(metadata__template__name=name).order_by("id")[:3]
        for prompt, pair, (ra, rb) in zip(prompts, verdicts[name], rewards[name], strict=True):
            task = evaluation_task_create(project=project, round=rnd, prompt=prompt, model_a=new, model_b=old,
                                          text_a="new answer", text_b="old answer", reward_a=ra, reward_b=rb)
            for judge, winner in zip(judges, pair, strict=True):
                Comparison.objects.create(task=task, annotator=judge, winner=winner, a_shown_left=True)
    assert EvaluationTask.objects.count() == 6
    templates = evaluation_summary(project=project, round_id=rnd.pk)["templates"]
    assert set(templates) == {"nli · 0-shot", "nli-fs · 3-shot"}
    zero_shot, three_shot = templates["nli · 0-shot"], templates["nli-fs · 3-shot"]
    assert zero_shot["human"]["win_rate"] == pytest.approx((1 + 1 + 1 + 0.5 + 1 + 1) / 6)
    assert three_shot["human"]["win_rate"] == pytest.approx((1 + 0.5 + 0 + 0 + 0 + 0) / 6)
    assert zero_shot["human"]["items"] == 3 and zero_shot["human"]["low"] <= zero_shot["human"]["win_rate"]
    assert zero_shot["reward_model"]["win_rate"] == pytest.approx(2 / 3)
    assert three_shot["reward_model"]["win_rate"] == pytest.approx((0 + 0 + 0.5) / 3)
    # the studio's round shows the same, per template
    admin = add_member(project, role="admin")
    client = Client()
    client.force_login(admin)
    page = client.get(f"/studio/p/{project.slug}/").content.decode()
    row = page.split('data-template="nli · 0-shot"', 1)[1].split("</tr>", 1)[0]
    assert "<td>3</td><td>91.7% [95% CI" in row
