"""Demonstration checks: paste share and pace at submit, near duplicates from the worker; flagged
demonstrations are reviewed first with the reasons shown."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from labelapp.models import Demonstration, Queue
from labelapp.selectors import labels as selectors
from labelapp.services.labels import clean_paste_log, demonstration_submit, writing_flags
from labelapp.services.projects import completion_create
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt

pytestmark = pytest.mark.django_db

ANSWER = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts."


def test_writing_flags_hand_computed():
    text = "x" * 200
    assert writing_flags(text, [], 60_000) == (0, [])
    pasted, flags = writing_flags(text, [{"at_ms": 3_000, "chars": 150}, {"at_ms": 9_000, "chars": 20}], 60_000)
    assert pasted == 170 and flags == [{"kind": "pasted", "detail": "85% of the answer was pasted (2 pastes, the first 3 s into the task)"}]
    assert writing_flags(text, [], 10_000) == (0, [{"kind": "too fast", "detail": "200 characters typed in 10 s (20 a second)"}])
    assert writing_flags("short", [{"at_ms": 1, "chars": 999}], 0)[0] == 5  # never more than the answer


@pytest.mark.parametrize("value, message", [("{not json", "not valid JSON"), ({"at_ms": 1}, "list of at most"),
                                            ([{"at_ms": -1, "chars": 3}], "whole milliseconds"),
                                            ([{"at_ms": 1, "chars": 3, "text": "secret"}], "whole milliseconds")])
def test_bad_paste_logs_are_refused(value, message):
    with pytest.raises(ValidationError, match=message):
        clean_paste_log(value)


def write(project, user, text, **kw):
    lease = task_claim(project=project, user=user, queue=Queue.WRITE)
    return demonstration_submit(assignment_id=lease.pk, user=user, text=text, **kw)


def test_a_pasted_answer_is_flagged_and_reviewed_first():
    project = make_project()
    for _ in range(3):
        make_prompt(project)
    a, b = add_member(project), add_member(project)
    reviewer = add_member(project, role="reviewer")
    typed = write(project, a, ANSWER, time_spent_ms=60_000)
    pasted = write(project, b, ANSWER + " (copied)", time_spent_ms=8_000,
                   paste_log='[{"at_ms": 2000, "chars": 100}]')
    assert not typed.flagged and pasted.flagged and pasted.pasted_chars == 100
    assert [f["kind"] for f in pasted.quality_flags] == ["pasted"]
    assert list(selectors.reviewable(project=project, reviewer=reviewer)) == [pasted, typed]
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/p/{project.slug}/review/").content.decode()
    assert 'id="quality-flags"' in page and "of the answer was pasted" in page
    with pytest.raises(ValidationError, match="paste event"):
        write(project, add_member(project), ANSWER, paste_log=[{"at_ms": "soon", "chars": 1}])
    assert Demonstration.objects.count() == 2


def test_the_worker_flags_near_duplicates_of_others_and_of_model_samples():
    from labelapp.models import ModelVersion
    from workers.checks import check_demonstrations

    project = make_project()
    first, second, third = (make_prompt(project, text=f"Explain photosynthesis ({i}).") for i in range(3))
    make_prompt(project)
    version = ModelVersion.objects.create(project=project, name="sft")
    completion_create(prompt=third, text="The capital of France is Paris, on the river Seine.", model_version=version)
    a, b, c = add_member(project), add_member(project), add_member(project)
    original = write(project, a, ANSWER, time_spent_ms=60_000)
    copy = write(project, b, ANSWER.replace("inside", "in"), time_spent_ms=60_000)
    sample_copy = write(project, c, "The capital of France is Paris, on the river Seine.", time_spent_ms=60_000)
    assert check_demonstrations() == 3
    for demo in (original, copy, sample_copy):
        demo.refresh_from_db()
        assert demo.checked_at is not None and len(demo.embedding) == 384
    assert original.quality_flags == []  # the first of the two: nothing earlier to copy
    assert copy.flagged and copy.quality_flags[0]["detail"].startswith(f"of demonstration {original.pk} by {a.username}")
    assert sample_copy.flagged and "of a model sample" in sample_copy.quality_flags[0]["detail"]
    assert check_demonstrations() == 0  # nothing new


def test_an_answer_edited_while_it_is_checked_is_checked_again_with_its_new_text():
    """The worker embeds for seconds without a lock; an edit meanwhile clears the check. Recording the old
    text's result would mark the new text checked (never compared); it is left for the next pass instead."""
    from labelapp.services.label_changes import demonstration_edit
    from workers.checks import check_demonstrations
    from workers.simulate import EmbeddingOracle

    project = make_project()
    for i in range(2):
        make_prompt(project, text=f"Explain photosynthesis ({i}).")
    a, b = add_member(project), add_member(project)
    original = write(project, a, ANSWER, time_spent_ms=60_000)
    edited = write(project, b, "Plants make their food from sunlight.", time_spent_ms=60_000)
    oracle = EmbeddingOracle()

    class EditedMeanwhile:
        def embed(self, texts):
            demonstration_edit(demonstration_id=edited.pk, user=b, text=ANSWER.replace("inside", "in"))
            return oracle.embed(texts)

    assert check_demonstrations(oracle=EditedMeanwhile()) == 1  # the original's check only
    edited.refresh_from_db()
    assert edited.checked_at is None and edited.embedding is None and not edited.flagged
    assert check_demonstrations(oracle=oracle) == 1  # the new text, now compared with the original
    edited.refresh_from_db()
    assert edited.checked_at is not None and edited.flagged
    assert edited.quality_flags[0]["detail"].startswith(f"of demonstration {original.pk}")
