import gzip
import json

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from labelapp.models import Prompt
from labelapp.services.projects import prompts_import

pytestmark = pytest.mark.django_db


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def test_jsonl_import_with_text_messages_categories_and_dedup(project):
    data = jsonl(
        {"text": "Write a haiku about rain.", "category": "generation"},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Tell me a joke."}], "category": "chat", "split": "validation"},
        {"prompt": "What is the boiling point of water?", "category": "Open QA"},
        {"text": "Write  a haiku about rain.", "category": "generation"},  # another prompt: spaces are content
        {"text": "Two lines:\r\nfirst\r\nsecond"},
        {"text": "Two lines:\nfirst\nsecond"},  # the same but for its line endings: a duplicate
    )
    result = prompts_import(project=project, data=data, fmt="jsonl")
    assert (result.created, result.duplicates) == (5, 1)
    again = prompts_import(project=project, data=data, fmt="jsonl")
    assert (again.created, again.duplicates) == (0, 6)
    chat = Prompt.objects.get(category="chat")
    assert chat.split == "validation" and chat.text == "" and chat.messages[-1]["content"] == "Tell me a joke."
    assert Prompt.objects.filter(category="open_qa").count() == 1


def test_csv_import(project):
    data = b"text,category,split\n\"Summarise this, please: ...\",summarization,train\nName three fruits,brainstorming,\n"
    result = prompts_import(project=project, data=data, fmt="csv")
    assert result.created == 2
    assert set(Prompt.objects.values_list("category", flat=True)) == {"summarization", "brainstorming"}


@pytest.mark.parametrize(
    "data, fmt, expected",
    [
        (jsonl({"text": "ok"}, '{"text": "broken', {"text": "fine"}), "jsonl", "line 2: broken JSON"),
        (jsonl({"text": "ok"}, {"text": "  "}), "jsonl", "line 2, field 'text': empty prompt"),
        (jsonl({"text": "ok", "category": "poetry"}), "jsonl", "line 1, field 'category': unknown category 'poetry'"),
        (jsonl({"text": "ok", "split": "test"}), "jsonl", "line 1, field 'split'"),
        (jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}), "jsonl",
         "the last turn must be the user's"),
        (jsonl(["a list"]), "jsonl", "line 1: each line must be a JSON object"),
        (b"text,category\nfine,generation\nbad,nonsense\n", "csv", "line 3, field 'category'"),
        (b"prompt_text,category\nx,other\n", "csv", "header must have a 'text' column"),
        (b"text\n\xff\xfe broken bytes\n", "csv", "line 2: not valid UTF-8"),
        (gzip.compress(jsonl({"text": "ok"}))[:-10], "jsonl", "gzip file is damaged or truncated"),
        (b"", "jsonl", "holds no prompts"),
        (jsonl({"text": "ok"}), "xml", "unknown format"),
    ],
)
def test_bad_files_are_refused_whole_with_line_and_reason(project, data, fmt, expected):
    with pytest.raises(ValidationError) as info:
        prompts_import(project=project, data=data, fmt=fmt)
    assert any(expected in m for m in info.value.messages), info.value.messages
    assert not Prompt.objects.exists()


def test_size_limits(settings, project):
    settings.LABEL_MAX_TEXT_CHARS = 10
    with pytest.raises(ValidationError, match="line 1, field 'text': 11 characters"):
        prompts_import(project=project, data=jsonl({"text": "x" * 11}), fmt="jsonl")
    settings.IMPORT_MAX_BYTES = 20
    with pytest.raises(ValidationError, match="the limit is 20 bytes"):
        prompts_import(project=project, data=b"x" * 21, fmt="jsonl")
    assert not Prompt.objects.exists()


def test_gzipped_jsonl(project):
    assert prompts_import(project=project, data=gzip.compress(jsonl({"text": "zipped"})), fmt="jsonl").created == 1


def test_command_imports_and_reports_errors(project, tmp_path, capsys):
    good = tmp_path / "p.jsonl"
    good.write_bytes(jsonl({"text": "one"}, {"text": "two"}))
    call_command("prompts_import", project.slug, str(good))
    assert "Imported 2 prompts" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,category\nthree,other\nfour,??\n")
    with pytest.raises(CommandError, match="(?s)nothing was written.*line 3, field 'category'"):
        call_command("prompts_import", project.slug, str(bad))
    assert Prompt.objects.count() == 2
    with pytest.raises(CommandError, match="No project"):
        call_command("prompts_import", "nope", str(good))


def test_project_create_command(capsys):
    call_command("project_create", "Support bot", "--k", "3", "--overlap", "2")
    assert "slug support-bot" in capsys.readouterr().out
    with pytest.raises(CommandError, match="already exists"):
        call_command("project_create", "Support bot")
    with pytest.raises(CommandError, match="k: Ensure this value is less than or equal to 9"):
        call_command("project_create", "Too many", "--k", "12")


def test_nul_characters_are_refused_with_their_line(project):
    data = b'{"text": "fine"}\n{"text": "bad \\u0000 here"}\n'
    with pytest.raises(ValidationError, match="line 2: contains a NUL character"):
        prompts_import(project=project, data=data, fmt="jsonl")
    assert not Prompt.objects.exists()


def test_model_output_with_nul_is_stored_visibly(project):
    from labelapp.services.projects import completion_create

    prompt = Prompt.objects.create(project=project, text="q", content_hash="h")
    assert completion_create(prompt=prompt, text="a\x00b", source="imported").text == "a\ufffdb"
