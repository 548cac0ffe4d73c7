"""Label imports: every format on the real sample files, re-imports, round trips, bad input."""
import gzip
import io
import json
import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from labelapp.formats import exports
from labelapp.formats.labels import copeland_order
from labelapp.models import Assignment, Completion, Demonstration, Membership, Prompt, Queue, Ranking, RankingTask
from labelapp.services.label_imports import labels_import
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.quality import ranking_task_adjudicate
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db

DATA = Path(os.environ.get("SHARED_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
HH = DATA / "hh_rlhf_test_splits"
OASST = DATA / "oasst2_animal_topic_subset" / "oasst2_filtered.jsonl.gz"
FINEGRAINED = DATA / "qa_feedback_finegrained" / "dev_feedback.json.gz"


def head(path: Path, lines: int) -> bytes:
    """The first lines of a gzipped JSONL file, gzipped again (the importer unpacks it)."""
    with gzip.open(path, "rb") as f:
        return gzip.compress(b"".join(f.readline() for _ in range(lines)))


def jsonl(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


def counts() -> dict:
    models = (Prompt, Completion, RankingTask, Ranking, Demonstration, Membership, get_user_model())
    return {m.__name__: m.objects.count() for m in models}


def orders_as_texts(lines: list[bytes]) -> list[tuple]:
    """An export of rankings with the ids replaced by texts (ids differ between projects)."""
    out = []
    for raw in lines:
        row = json.loads(raw)
        text = {c["id"]: c["text"] for c in row["completions"]}
        out.append((
            json.dumps(row["prompt"]),
            tuple(tuple(sorted(text[i] for i in g)) for g in row["order"]),
            tuple(sorted((text[int(k)], tuple(v)) for k, v in row["flags"].items())),
            tuple(sorted((text[int(k)], v) for k, v in row["scores"].items())),
            row["none_acceptable"],
        ))
    return sorted(out)


# ---- real files ---------------------------------------------------------------------------


def test_hh_real_file_refuses_its_broken_lines_and_imports_with_skip_invalid(project):
    data = head(HH / "helpful-base.test.jsonl.gz", 200)
    before = counts()
    with pytest.raises(ValidationError) as info:
        labels_import(project=project, data=data, fmt="hh")
    assert info.value.messages == [
        "line 121, field 'rejected': empty completion",
        "line 169, field 'rejected': chosen and rejected do not share the same prompt (the turns before the last Assistant turn)",
    ]
    assert counts() == before

    result = labels_import(project=project, data=data, fmt="hh", skip_invalid=True)
    assert result.rows == 198 and result.created["rankings"] == 198
    assert [n.split(",")[0] for n in result.notes] == ["line 121 skipped", "line 169 skipped"]
    assert result.created["completions"] == 2 * 198 and RankingTask.objects.filter(ranking_count=1).count() == 198
    crowd = get_user_model().objects.get(username="ext-hh-crowdworker")
    assert not crowd.is_active and not crowd.has_usable_password()
    assert Membership.objects.get(project=project, user=crowd).role == "annotator"
    second = json.loads(gzip.decompress(data).splitlines()[1])  # a multi-turn conversation
    ranking = Ranking.objects.get(task__prompt__messages__0__content="How can I find out what types of butterflies are in my area?")
    chosen = Completion.objects.get(pk=ranking.order[0][0])
    assert second["chosen"].endswith(chosen.text) and len(ranking.order) == 2
    assert ranking.task.prompt.messages[-1]["role"] == "user" and ranking.task.prompt.text == ""

    again = labels_import(project=project, data=data, fmt="hh", skip_invalid=True)
    assert not any(again.created.values()) and again.duplicates["rankings"] == 198


def test_hh_clean_slice_imports_strictly(project):
    result = labels_import(project=project, data=head(HH / "harmless-base.test.jsonl.gz", 80), fmt="hh")
    assert result.created["rankings"] == 80 and not result.notes


def _ranked_groups(message) -> int:
    replies = [r for r in message.get("replies") or [] if not r.get("deleted")]
    ranked = [r for r in replies if r["role"] == "assistant" and r.get("rank") is not None]
    own = int(message["role"] == "prompter" and len(ranked) >= 2)
    return own + sum(_ranked_groups(r) for r in replies)


def test_oasst_real_file_one_ranking_per_parent(project):
    data = head(OASST, 200)
    expected = sum(_ranked_groups(json.loads(line)["prompt"]) for line in gzip.decompress(data).splitlines()
                   if not json.loads(line)["prompt"].get("deleted"))
    assert expected > 50
    result = labels_import(project=project, data=data, fmt="oasst")
    assert result.rows == expected  # the sample repeats 3 trees: those count as duplicates
    assert (result.created["rankings"], result.duplicates["rankings"]) == (expected - 3, 3)
    for ranking in Ranking.objects.select_related("task__prompt"):
        ids = set(ranking.task.completions.values_list("id", flat=True))
        assert 2 <= len(ids) <= 9 and sorted(i for g in ranking.order for i in g) == sorted(ids)
        assert ranking.task.prompt.turns[-1]["role"] == "user"
    assert {u.username for u in get_user_model().objects.filter(is_active=False)} == {"ext-oasst-consensus"}
    assert not any(labels_import(project=project, data=data, fmt="oasst").created.values())


def test_oasst_more_than_nine_ranked_replies_keeps_the_best_nine(project):
    replies = [{"role": "assistant", "text": f"reply {i}", "rank": 11 - i, "replies": []} for i in range(12)]
    tree = {"message_tree_id": "t", "prompt": {"message_id": "root", "role": "prompter", "text": "Name a bird.", "replies": replies}}
    result = labels_import(project=project, data=jsonl(tree), fmt="oasst")
    assert result.notes == ["line 1: message root has 12 ranked replies; kept the best 9"]
    ranking = Ranking.objects.get()
    texts = [Completion.objects.get(pk=g[0]).text for g in ranking.order]
    assert texts == [f"reply {i}" for i in range(11, 2, -1)]


def test_finegrained_real_file(project):
    records = json.loads(gzip.decompress(FINEGRAINED.read_bytes()))[:40]
    data = json.dumps(records, indent=2).encode()  # the upstream layout: one JSON array
    result = labels_import(project=project, data=data, fmt="finegrained")
    corrected = sum(1 for r in records if r["feedback"].get("corrected-prediction", "").strip())
    assert result.created["rankings"] == 40 and result.created["demonstrations"] == corrected
    first = Ranking.objects.get(task__prompt__text__contains=f"Question: {records[0]['question']}\n")
    texts = {c.pk: c.text for c in first.task.completions.all()}
    predictions = [records[0][f"prediction {i}"] for i in range(1, 5)]
    assert [[predictions.index(texts[c]) for c in g] for g in first.order] == copeland_order(records[0]["preference"])
    assert first.task.prompt.reference == records[0]["gold"]  # as given
    assert not any(labels_import(project=project, data=data, fmt="finegrained").created.values())


def test_copeland_order():
    assert copeland_order([0, 1, 2, 1, 0, 2]) == [[3], [1], [0], [2]]
    assert copeland_order([0] * 6) == [[0, 1, 2, 3]]


# ---- round trips through the exports --------------------------------------------------------


@pytest.fixture
def labelled(project):
    """A project with studio-made rankings (ties, flags, scores, none acceptable) and demonstrations."""
    project.k = 3
    ann = add_member(project, role="annotator")
    for i in range(3):
        make_task(project, prompt=make_prompt(project, text=f"Say something about owls, take {i}."), k=3)
    chat = make_prompt(project, messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                          {"role": "user", "content": "An owl fact?"}])
    make_task(project, prompt=chat, texts=[" Owls hoot.\n", "Owls fly silently.", "No idea."])
    for n in range(4):
        lease = task_claim(project=project, user=ann, queue=Queue.RANK)
        ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
        if n == 3:
            ranking_submit(assignment_id=lease.pk, user=ann, order=None, none_acceptable=True)
        else:
            ranking_submit(assignment_id=lease.pk, user=ann, order=[[ids[n % 3]], [i for i in ids if i != ids[n % 3]]],
                           flags={ids[2]: ["harmful"]}, scores={ids[0]: 6, ids[1]: 2})
        write = task_claim(project=project, user=ann, queue=Queue.WRITE)
        demonstration_submit(assignment_id=write.pk, user=ann, text=f"Owls are birds of prey ({n}).")
    return project


def test_rankings_round_trip(labelled):
    first = list(exports.export_rankings(exports.ExportFilter(project=labelled)))
    assert len(first) == 4
    before = counts()
    own = labels_import(project=labelled, data=b"".join(first), fmt="studio-rankings")
    assert not any(own.created.values()) and counts() == before  # the pseudonyms map back to the members
    other = make_project(name="Copy")
    result = labels_import(project=other, data=b"".join(first), fmt="studio-rankings")
    assert result.created["rankings"] == 4 and result.created["annotators"] == 1
    again = list(exports.export_rankings(exports.ExportFilter(project=other)))
    assert orders_as_texts(again) == orders_as_texts(first)


def test_another_annotator_of_the_same_completions_shares_the_task(labelled):
    rows = [json.loads(line) for line in exports.export_rankings(exports.ExportFilter(project=labelled))]
    data = jsonl(*({**row, "annotator": "vendor-7"} for row in rows))
    result = labels_import(project=labelled, data=data, fmt="studio-rankings")
    assert (result.created["rankings"], result.created["ranking_tasks"], result.duplicates["ranking_tasks"]) == (4, 0, 4)
    assert set(RankingTask.objects.values_list("ranking_count", flat=True)) == {2}
    assert Ranking.objects.filter(annotator__username="ext-studio-vendor-7").count() == 4


def test_a_reviewers_decision_in_an_export_is_not_imported_as_a_ranking():
    project = make_project(k=2, overlap=2)
    a, b, reviewer = add_member(project), add_member(project), add_member(project, role="reviewer")
    make_task(project)  # agreed on
    disputed = make_task(project)
    for user in (a, b):
        for _ in range(2):
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
            ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
            flip = user == b and lease.ranking_task_id == disputed.pk
            ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in (ids[::-1] if flip else ids)])
    ids = sorted(disputed.completions.values_list("id", flat=True))
    ranking_task_adjudicate(task_id=disputed.pk, reviewer=reviewer, order=[[ids[1]], [ids[0]]])
    data = b"".join(exports.export_rankings(exports.ExportFilter(project=project)))
    assert [json.loads(line)["adjudication_id"] is not None for line in data.splitlines()] == [False, False, True]
    before = counts()
    own = labels_import(project=project, data=data, fmt="studio-rankings")
    assert not any(own.created.values()) and counts() == before
    assert (own.rows, own.duplicates["rankings"]) == (2, 2)
    assert own.notes == ["line 3 skipped: a reviewer's decision (adjudication_id), not an annotator's ranking"]
    assert not Ranking.objects.filter(annotator=reviewer).exists()
    assert RankingTask.objects.get(pk=disputed.pk).ranking_count == 2
    other = labels_import(project=make_project(name="Copy", k=2), data=data, fmt="studio-rankings")
    assert other.created["rankings"] == 2 and other.created["ranking_tasks"] == 1 and len(other.notes) == 1


def test_a_ranking_imported_for_a_member_is_not_served_to_them_again():
    project = make_project(k=2, overlap=2)
    member, holder = add_member(project), add_member(project)
    row = {**RANKING, "prompt": "Name a bird.", "completions": [{"id": 1, "text": "Owl."}, {"id": 2, "text": "Oak."}]}
    labels_import(project=project, data=jsonl({**row, "annotator": exports.pseudonym(member.pk)}), fmt="studio-rankings")
    ranking = Ranking.objects.get(annotator=member)
    assert ranking.assignment.status == Assignment.Status.SUBMITTED and ranking.assignment.finished_at is not None
    assert ranking.assignment.ranking_task_id == ranking.task_id and ranking.assignment.queue == Queue.RANK
    assert task_claim(project=project, user=member, queue=Queue.RANK) is None  # ranked already: not served again

    lease = task_claim(project=project, user=holder, queue=Queue.RANK)  # leased, then their ranking arrives by import
    assert lease.ranking_task_id == ranking.task_id
    result = labels_import(project=project, data=jsonl({**row, "annotator": exports.pseudonym(holder.pk)}), fmt="studio-rankings")
    assert result.created["rankings"] == 1 and Assignment.objects.count() == 2
    imported = Ranking.objects.get(annotator=holder)
    assert imported.assignment_id == lease.pk and Assignment.objects.get(pk=lease.pk).status == Assignment.Status.SUBMITTED
    ids = sorted(imported.task.completions.values_list("id", flat=True))
    assert ranking_submit(assignment_id=lease.pk, user=holder, order=[[ids[1]], [ids[0]]]) == imported  # no second ranking
    assert RankingTask.objects.get(pk=ranking.task_id).ranking_count == 2


@pytest.mark.parametrize("fmt, row, label", [
    ("hh", {"chosen": "\n\nHuman: Pick a colour.\n\nAssistant: Blue.", "rejected": "\n\nHuman: Pick a colour.\n\nAssistant: Red."},
     "ext-hh-crowdworker"),
    ("trl-pairs", {"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "Red."}, "ext-trl-pairs"),
])
def test_disagreeing_rows_without_annotators_are_all_kept(project, fmt, row, label):
    flipped = {**row, "chosen": row["rejected"], "rejected": row["chosen"]}
    data = jsonl(row, flipped, row, flipped)
    result = labels_import(project=project, data=data, fmt=fmt)
    assert (result.created["rankings"], result.duplicates["rankings"], result.created["ranking_tasks"]) == (2, 2, 1)
    task = RankingTask.objects.get()
    assert task.ranking_count == 2
    texts = {c.pk: c.text for c in task.completions.all()}
    assert sorted((r.annotator.username, texts[r.order[0][0]]) for r in task.rankings.all()) == [
        (label, "Blue."), (f"{label}-2", "Red.")]
    again = labels_import(project=project, data=data, fmt=fmt)
    assert not any(again.created.values()) and again.duplicates["rankings"] == 4


def test_a_named_annotators_second_ranking_of_a_task_stays_a_duplicate(project):
    labels_import(project=project, data=jsonl(RANKING), fmt="studio-rankings")
    result = labels_import(project=project, data=jsonl({**RANKING, "order": [[2], [1]]}), fmt="studio-rankings")
    assert (result.created["rankings"], result.duplicates["rankings"]) == (0, 1)  # one ranking per person and task


def test_demonstrations_round_trip(labelled):
    first = list(exports.export_demonstrations(exports.ExportFilter(project=labelled)))
    other = make_project(name="Copy")
    result = labels_import(project=other, data=b"".join(first), fmt="studio-demonstrations")
    assert result.created["demonstrations"] == 4
    assert Prompt.objects.filter(project=other, demonstration_count=1).count() == 4
    again = list(exports.export_demonstrations(exports.ExportFilter(project=other)))
    assert sorted(again) == sorted(first)
    assert not any(labels_import(project=other, data=b"".join(first), fmt="studio-demonstrations").created.values())


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_pairs_from_a_real_export(project, conversational):
    labels_import(project=project, data=head(HH / "harmless-base.test.jsonl.gz", 30), fmt="hh")
    pairs = b"".join(exports.export_pairs(exports.ExportFilter(project=project), conversational=conversational))
    other = make_project(name="Pairs")
    result = labels_import(project=other, data=pairs, fmt="trl-pairs")
    assert result.created["rankings"] == 30
    assert sorted(exports.export_pairs(exports.ExportFilter(project=other), conversational=conversational)) == sorted(
        pairs.splitlines(keepends=True))
    assert not any(labels_import(project=other, data=pairs, fmt="trl-pairs").created.values())


def test_trl_implicit_prompt_and_completions(project):
    turns = [{"role": "user", "content": "2+2?"}]
    row = {"chosen": turns + [{"role": "assistant", "content": "4"}], "rejected": turns + [{"role": "assistant", "content": "5"}]}
    assert labels_import(project=project, data=jsonl(row), fmt="trl-pairs").created["rankings"] == 1
    assert Prompt.objects.get().text == "2+2?"  # one user turn is stored as text: the hash matches plain rows
    result = labels_import(project=project, data=jsonl(
        {"prompt": "2+2?", "completion": "four", "model": "smollm2", "decoding": {"temperature": 0.7}},
        {"prompt": turns, "completion": "4"}), fmt="completions")
    assert (result.created["completions"], result.duplicates["completions"], result.created["prompts"]) == (1, 1, 0)
    assert Completion.objects.get(text="four").decoding == {"temperature": 0.7, "model": "smollm2"}
    assert Completion.objects.get(text="four").source == "imported"


# ---- bad input: refused whole, with the line, nothing written ----------------------------------

RANKING = {"prompt": [{"role": "user", "content": "Q?"}], "completions": [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}],
           "order": [[1], [2]], "none_acceptable": False, "flags": {}, "scores": {}, "annotator": "ann_x"}


@pytest.mark.parametrize(
    "data, fmt, expected",
    [
        (b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: \xe9b"}\n', "hh",
         "line 1: not valid UTF-8"),
        (jsonl(RANKING, RANKING) + b"\n\xff\n", "studio-rankings", "line 3: not valid UTF-8"),
        (gzip.compress(jsonl(RANKING) * 20)[:-12], "studio-rankings", "line 1: the gzip file is damaged or truncated"),
        (jsonl(RANKING, '{"prompt": "x", ', RANKING), "studio-rankings", "line 2: broken JSON"),
        (jsonl(RANKING), "xml", "line 1: unknown format 'xml'"),
        (jsonl(RANKING, {**RANKING, "order": [[1], [99]]}), "studio-rankings",
         "line 2, field 'order': completion 99 is not among this row's completions [1, 2]"),
        (jsonl(RANKING, {**RANKING, "scores": {"7": 3}}), "studio-rankings", "line 2, field 'scores': completion '7' is not"),
        (jsonl({"prompt": "Q", "chosen": "same", "rejected": "same"}), "trl-pairs", "line 1, field 'rejected': two completions have the same text"),
        (jsonl({"prompt": "Q", "chosen": "a"}), "trl-pairs", "line 1, field 'rejected': the completion must be a string"),
        (b"[\n" + json.dumps({"question": "q"}).encode() + b",\n{broken\n]", "finegrained", "line 3: broken JSON"),
        (b"", "hh", "line 1: the file holds no hh rows"),
        (jsonl(RANKING, {**RANKING, "prompt": "Q\u0000?"}), "studio-rankings", "line 2: contains a NUL character"),
        (jsonl({**RANKING, "time_spent_ms": 2**40}), "studio-rankings", "line 1, field 'time_spent_ms'"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "oasst", "line 1: the JSON is nested too deeply"),
        (jsonl({**RANKING, "flags": {"1": [["harmful"]]}}), "studio-rankings",
         "line 1, field 'flags': flags of completion 1 must be a list of"),
        (jsonl({**RANKING, "flags": {"1": [{"harmful": 1}]}}), "studio-rankings", "line 1, field 'flags': flags of completion 1"),
        (jsonl({**RANKING, "order": [[float("inf")], [2]]}), "studio-rankings",
         "line 1, field 'order': completion inf is not among this row's completions [1, 2]"),
        (jsonl(json.dumps(RANKING).replace('[[1], [2]]', '[[1e400], [2]]')), "studio-rankings",
         "line 1, field 'order': completion inf is not among"),
        (b'[\n{"question": "q"},\n{"question": ' + b"7" * 5000 + b"}\n]", "finegrained",
         "line 3: broken JSON: a number has more than"),
        (jsonl({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}], "category": "poetry"}),
         "studio-demonstrations", "line 1, field 'category': unknown category 'poetry'"),
        (jsonl({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}], "split": "test"}),
         "studio-demonstrations", "line 1, field 'split': unknown split 'test'"),
    ],
)
def test_bad_files_are_refused_whole(project, data, fmt, expected):
    labels_import(project=project, data=jsonl({"prompt": "Keep me", "completion": "kept"}), fmt="completions")
    before = counts()
    with pytest.raises(ValidationError) as info:
        labels_import(project=project, data=data, fmt=fmt, skip_invalid=fmt == "finegrained")
    assert any(m.startswith(expected) for m in info.value.messages), info.value.messages
    assert counts() == before


def test_size_limit(project, settings):
    settings.IMPORT_MAX_BYTES = 100
    with pytest.raises(ValidationError, match="line 1: the file is 101 bytes; the limit is 100 bytes"):
        labels_import(project=project, data=b"x" * 101, fmt="hh")
    with pytest.raises(ValidationError, match="unpacks to more than 100 bytes"):
        labels_import(project=project, data=gzip.compress(b" " * 1000), fmt="hh")
    settings.LABEL_MAX_TEXT_CHARS = 5
    with pytest.raises(ValidationError, match="line 1, field 'completion': the completion has 6 characters"):
        labels_import(project=project, data=jsonl({"prompt": "Q", "completion": "x" * 6}), fmt="completions")
    assert not Prompt.objects.exists()


def test_errors_are_capped(project):
    with pytest.raises(ValidationError) as info:
        labels_import(project=project, data=jsonl(*[{"prompt": "Q"}] * 80), fmt="completions")
    assert len(info.value.messages) == 51 and info.value.messages[-1] == "30 more errors not shown; fix these and import again"


# ---- API and command --------------------------------------------------------------------------


def upload(name: str, data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data)


def test_api(project, reviewer, annotator, settings):
    url = f"/api/v1/projects/{project.pk}/imports/labels/"
    api = APIClient()
    data = head(HH / "harmless-base.test.jsonl.gz", 10)
    api.force_authenticate(annotator)
    assert api.post(url, {"file": upload("hh.jsonl.gz", data), "format": "hh"}).status_code == 403
    api.force_authenticate(reviewer)
    created = api.post(url, {"file": upload("hh.jsonl.gz", data), "format": "hh"})
    assert created.status_code == 201, created.json()
    assert created.json()["created"]["rankings"] == 10 and created.json()["created"]["annotators"] == 1
    assert api.post(url, {"file": upload("hh.jsonl.gz", data), "format": "hh"}).json()["duplicates"]["rankings"] == 10
    before = counts()
    bad = api.post(url, {"file": upload("r.jsonl", jsonl(RANKING, {**RANKING, "order": [[3], [1, 2]]})), "format": "studio-rankings"})
    assert bad.status_code == 400
    assert bad.json() == {"errors": {"file": ["line 2, field 'order': completion 3 is not among this row's completions [1, 2]"]},
                          "detail": "import refused, nothing was written"}
    unknown = api.post(url, {"file": upload("r.jsonl", jsonl(RANKING)), "format": "xml"})
    assert unknown.status_code == 400 and unknown.json()["errors"]["file"][0].startswith("line 1: unknown format 'xml'")
    assert api.post(url, {"format": "hh"}).status_code == 400
    settings.IMPORT_MAX_BYTES = 10
    too_big = api.post(url, {"file": upload("hh.jsonl.gz", data), "format": "hh"})
    assert too_big.status_code == 413 and "the limit is 10 bytes" in too_big.json()["detail"]
    assert counts() == before


def test_management_command(project, tmp_path):
    path = tmp_path / "oasst.jsonl.gz"
    path.write_bytes(head(OASST, 30))
    out = io.StringIO()
    call_command("labels_import", project.slug, str(path), "--format", "oasst", stdout=out)
    assert "rankings" in out.getvalue() and Ranking.objects.exists()
    path.write_bytes(b'{"prompt": \n')
    with pytest.raises(CommandError, match="line 1: broken JSON"):
        call_command("labels_import", project.slug, str(path), "--format", "oasst")


# ---- identity: prompts, completions, external annotators ----------------------------------------


def test_a_one_user_turn_chat_and_its_text_are_one_prompt(project):
    from labelapp.formats.prompts import prompt_hash
    from labelapp.services.projects import prompts_import

    assert prompt_hash(messages=[{"role": "user", "content": "Q?\r\n"}]) == prompt_hash(text="Q?\n")
    assert prompt_hash(messages=[{"role": "system", "content": "Q?"}]) != prompt_hash(text="Q?")
    result = prompts_import(project=project, data=jsonl({"messages": [{"role": "user", "content": "Name a bird."}]},
                                                        {"text": "Name a bird."}), fmt="jsonl")
    assert (result.created, result.duplicates) == (1, 1)
    member = add_member(project)
    chat = Prompt.objects.get()
    assert chat.messages == [{"role": "user", "content": "Name a bird."}]  # stored as given
    make_task(project, prompt=chat, texts=["Owl.", "Oak."])
    lease = task_claim(project=project, user=member, queue=Queue.RANK)
    ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
    ranking_submit(assignment_id=lease.pk, user=member, order=[[ids[0]], [ids[1]]])
    before = counts()
    exported = b"".join(exports.export_rankings(exports.ExportFilter(project=project)))
    assert not any(labels_import(project=project, data=exported, fmt="studio-rankings").created.values())
    pairs = labels_import(project=project, data=jsonl({"prompt": "Name a bird.", "chosen": "Owl.", "rejected": "Oak."},
                                                      {"prompt": [{"role": "user", "content": "Name a bird."}],
                                                       "chosen": "Owl.", "rejected": "Oak.", "annotator": "v"}),
                          fmt="trl-pairs")
    assert (pairs.created["prompts"], pairs.duplicates["prompts"], pairs.created["ranking_tasks"]) == (0, 1, 0)
    assert Prompt.objects.count() == before["Prompt"] == 1


def test_the_migration_rehashes_one_user_turn_chats_unless_the_text_is_there(project):
    import hashlib
    import importlib

    from django.apps import apps

    from labelapp.formats.prompts import prompt_hash

    migration = importlib.import_module("labelapp.migrations.0019_prompt_hash_one_user_turn")

    def legacy(content):  # the hash a one user turn chat had before
        return hashlib.sha256(json.dumps([["user", content]], ensure_ascii=False).encode()).hexdigest()

    alone = make_prompt(project, messages=[{"role": "user", "content": "Alone"}])
    twin = make_prompt(project, messages=[{"role": "user", "content": "Twin"}])
    for prompt in (alone, twin):
        Prompt.objects.filter(pk=prompt.pk).update(content_hash=legacy(prompt.messages[0]["content"]))
    text = make_prompt(project, text="Twin")  # the duplicate the old hash let in
    migration.rehash_one_user_turn(apps, None)
    hashes = dict(Prompt.objects.values_list("pk", "content_hash"))
    assert hashes[alone.pk] == prompt_hash(text="Alone") and hashes[text.pk] == prompt_hash(text="Twin")
    assert hashes[twin.pk] == legacy("Twin")  # the text prompt holds the hash; nothing merged


def test_the_same_text_from_two_models_stays_two_completions(project):
    rows = [{"prompt": "Name a bird.", "completion": "Owl.", "model": "model-a", "decoding": {"temperature": 0.7}},
            {"prompt": "Name a bird.", "completion": "Owl.", "model": "model-b", "decoding": {"temperature": 1.0}},
            {"prompt": "Name a bird.", "completion": "Owl."},  # names no model: one of them
            {"prompt": "Name a tree.", "completion": "Owl.", "model": "model-a"}]  # another prompt: its own
    result = labels_import(project=project, data=jsonl(*rows), fmt="completions")
    assert (result.created["completions"], result.duplicates["completions"]) == (3, 1)
    owls = {(c.prompt.text, c.decoding["model"]): c.decoding for c in Completion.objects.select_related("prompt")}
    assert owls[("Name a bird.", "model-a")] == {"temperature": 0.7, "model": "model-a"}
    assert owls[("Name a bird.", "model-b")] == {"temperature": 1.0, "model": "model-b"}
    assert ("Name a tree.", "model-a") in owls
    again = labels_import(project=project, data=jsonl(*reversed(rows)), fmt="completions")
    assert not any(again.created.values()) and again.duplicates["completions"] == 4


def test_rankings_stay_on_their_tasks_when_completions_of_a_prompt_share_a_text():
    project = make_project(k=2, overlap=1)
    member = add_member(project)
    prompt = make_prompt(project, text="Is it raining?")
    first = make_task(project, prompt=prompt, texts=["Yes.", "No."])
    second = make_task(project, prompt=prompt, texts=["Yes.", "Maybe."])  # another "Yes." (another sample, model)
    for _ in range(2):
        lease = task_claim(project=project, user=member, queue=Queue.RANK)
        ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
        ranking_submit(assignment_id=lease.pk, user=member, order=[[ids[1]], [ids[0]]])
    exported = b"".join(exports.export_rankings(exports.ExportFilter(project=project)))
    before = counts()
    own = labels_import(project=project, data=exported, fmt="studio-rankings")
    assert not any(own.created.values()) and counts() == before
    rows = [json.loads(line) for line in exported.splitlines()]
    vendor = labels_import(project=project, data=jsonl(*({**r, "annotator": "vendor"} for r in rows)), fmt="studio-rankings")
    assert (vendor.created["rankings"], vendor.created["ranking_tasks"]) == (2, 0)
    pairs = labels_import(project=project, data=jsonl({"prompt": "Is it raining?", "chosen": "Maybe.", "rejected": "Yes."}),
                          fmt="trl-pairs")
    assert (pairs.created["rankings"], pairs.created["ranking_tasks"], pairs.created["completions"]) == (1, 0, 0)
    assert [t.ranking_count for t in RankingTask.objects.filter(pk__in=[first.pk, second.pk]).order_by("pk")] == [2, 3]
    for ranking in Ranking.objects.all():  # every ranking names its own task's completions
        assert {i for g in ranking.order for i in g} == set(ranking.task.completions.values_list("id", flat=True))
    copy = make_project(name="Copy", k=2)
    other = labels_import(project=copy, data=exported, fmt="studio-rankings")
    assert (other.created["ranking_tasks"], other.created["completions"], other.created["rankings"]) == (2, 3, 2)
    assert not any(labels_import(project=copy, data=exported, fmt="studio-rankings").created.values())


def test_a_ranking_naming_its_models_does_not_take_another_models_completions(project):
    tree = {"message_tree_id": "t", "prompt": {"message_id": "root", "role": "prompter", "text": "Name a bird.", "replies": [
        {"message_id": "r1", "role": "assistant", "text": "Owl.", "rank": 0, "model_name": "m1", "replies": []},
        {"message_id": "r2", "role": "assistant", "text": "Oak.", "rank": 1, "model_name": "m1", "replies": []}]}}
    labels_import(project=project, data=jsonl({"prompt": "Name a bird.", "completion": "Owl.", "model": "m2"}), fmt="completions")
    result = labels_import(project=project, data=jsonl(tree), fmt="oasst")
    assert (result.created["completions"], result.created["rankings"]) == (2, 1)
    models = {c.pk: c.decoding.get("model") for c in Completion.objects.all()}
    assert sorted(models.values()) == ["m1", "m1", "m2"]
    assert {models[i] for g in Ranking.objects.get().order for i in g} == {"m1"}
    assert not any(labels_import(project=project, data=jsonl(tree), fmt="oasst").created.values())


@pytest.mark.parametrize("a, b", [("a b", "a_b"), ("a/b", "a?b"), ("ann.1", "ann-1"), ("x" * 200 + "1", "x" * 200 + "2"),
                                  ("a+b", "a_b")])
def test_different_external_labels_never_share_a_user(project, a, b):
    from labelapp.services.label_imports import external_username

    assert external_username("trl", a) != external_username("trl", b)
    assert all(len(external_username("trl", x)) <= 150 for x in (a, b))
    row = {"prompt": "Pick a colour.", "chosen": "Blue.", "rejected": "Red."}
    data = jsonl({**row, "annotator": a}, {**row, "annotator": b})
    result = labels_import(project=project, data=data, fmt="trl-pairs")
    assert (result.created["rankings"], result.created["annotators"]) == (2, 2)
    assert not any(labels_import(project=project, data=data, fmt="trl-pairs").created.values())


def test_external_user_names_of_plain_labels_are_unchanged():
    from labelapp.services.label_imports import external_username

    assert external_username("hh", "crowdworker") == "ext-hh-crowdworker"
    assert external_username("studio", "ann_0123abcd-2") == "ext-studio-ann_0123abcd-2"
    assert external_username("trl", "a b") == external_username("trl", "a b")  # the same label, the same user
    assert external_username("trl", "a b").startswith("ext-trl-a_b+")


def test_demonstrations_export_carries_category_and_split(project):
    from labelapp.services.projects import prompt_create

    writer = add_member(project)
    prompt_create(project=project, text="List three owls.", category="brainstorming", split="validation")
    write = task_claim(project=project, user=writer, queue=Queue.WRITE)
    demonstration_submit(assignment_id=write.pk, user=writer, text="Barn, snowy, tawny.")
    lines = list(exports.export_demonstrations(exports.ExportFilter(project=project)))
    assert [json.loads(line) for line in lines] == [{
        "messages": [{"role": "user", "content": "List three owls."}, {"role": "assistant", "content": "Barn, snowy, tawny."}],
        "category": "brainstorming", "split": "validation"}]
    assert list(exports.export_demonstrations(exports.ExportFilter(project=project, split="train"))) == []
    other = make_project(name="Copy")
    assert labels_import(project=other, data=b"".join(lines), fmt="studio-demonstrations").created["demonstrations"] == 1
    copied = Prompt.objects.get(project=other)
    assert (copied.category, copied.split) == ("brainstorming", "validation")
    assert list(exports.export_demonstrations(exports.ExportFilter(project=other))) == lines
