"""Editing and withdrawing a submitted label until training has used it (PostgreSQL)."""
import pytest
from django.core.exceptions import ValidationError

from labelapp.models import Assignment, Demonstration, ModelVersion, Prompt, Queue, Ranking, RankingTask, TrainingRun
from labelapp.selectors import labels as selectors
from labelapp.services.label_changes import demonstration_edit, demonstration_withdraw, ranking_edit, ranking_withdraw
from labelapp.services.labels import demonstration_review, demonstration_submit, ranking_submit
from labelapp.services.queue import assignment_skip, task_claim
from labelapp.services.runs import model_version_register
from tests.conftest import add_member, make_prompt, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def demonstration(project, annotator):
    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    return demonstration_submit(assignment_id=lease.pk, user=annotator, text="First answer.")


@pytest.fixture
def ranking(project, annotator):
    task = make_task(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    ids = sorted(task.completions.values_list("id", flat=True))
    return ranking_submit(assignment_id=lease.pk, user=annotator, order=[[i] for i in ids])


def train_on(project, **label_sets) -> ModelVersion:
    """Register a model whose label set holds these ids, as the executors record it."""
    data = {kind: selectors.label_set(ids) for kind, ids in label_sets.items()}
    return model_version_register(project=project, name="model-1", kind="policy", artifact_path="/x", training_data=data)


def test_an_unused_demonstration_can_be_edited_and_an_approved_one_goes_back_to_review(project, demonstration, annotator):
    reviewer = add_member(project, role="reviewer")
    demonstration_review(demonstration_id=demonstration.pk, reviewer=reviewer, approve=True, comment="good")
    edited = demonstration_edit(demonstration_id=demonstration.pk, user=annotator, text="  Better answer.\r\n ")
    edited.refresh_from_db()
    assert edited.text == "Better answer."
    assert edited.review_status == Demonstration.Review.PENDING and edited.reviewer is None and edited.review_comment == ""
    assert Demonstration.objects.count() == 1


def test_withdrawing_a_demonstration_gives_the_prompt_back_to_others_only(project, demonstration, annotator):
    demonstration_withdraw(demonstration_id=demonstration.pk, user=annotator)
    assert not Demonstration.objects.exists()
    prompt = Prompt.objects.get()
    assert prompt.demonstration_count == 0
    assignment = Assignment.objects.get()
    assert assignment.status == Assignment.Status.WITHDRAWN
    assert task_claim(project=project, user=annotator, queue=Queue.WRITE) is None  # not back to its annotator
    other = add_member(project)
    assert task_claim(project=project, user=other, queue=Queue.WRITE).prompt_id == prompt.pk
    with pytest.raises(ValidationError, match="withdrawn this item"):  # a resent form is not a new label
        demonstration_submit(assignment_id=assignment.pk, user=annotator, text="again")
    row = selectors.my_labels(project=project, user=annotator)[0]
    assert row.kind == "withdrawn" and row.summary == "Withdrawn by you" and not row.editable


def test_a_demonstration_a_model_was_trained_on_is_frozen(project, demonstration, annotator):
    version = train_on(project, demonstrations=[demonstration.pk])
    for change in (lambda: demonstration_edit(demonstration_id=demonstration.pk, user=annotator, text="changed"),
                   lambda: demonstration_withdraw(demonstration_id=demonstration.pk, user=annotator)):
        with pytest.raises(ValidationError, match=f"model {version.name} was trained on it"):
            change()
    demonstration.refresh_from_db()
    assert demonstration.text == "First answer." and Prompt.objects.get().demonstration_count == 1
    # the model's label set is still exact: every id it names exists with the content trained on
    ids = version.training_data["demonstrations"]["ids"]
    assert list(Demonstration.objects.filter(pk__in=ids).values_list("text", flat=True)) == ["First answer."]
    row = selectors.my_labels(project=project, user=annotator)[0]
    assert not row.editable and "model-1" in row.frozen


def test_labels_are_frozen_while_a_run_that_reads_them_is_running(project, demonstration, ranking, annotator):
    run = TrainingRun.objects.create(project=project, kind="sft", status=TrainingRun.Status.RUNNING)
    with pytest.raises(ValidationError, match=rf"SFT run \(#{run.pk}\) is training on this project's demonstrations"):
        demonstration_edit(demonstration_id=demonstration.pk, user=annotator, text="changed")
    ranking_withdraw(ranking_id=ranking.pk, user=annotator)  # an SFT run does not read rankings
    assert not Ranking.objects.exists()
    run.status = TrainingRun.Status.SUCCEEDED
    run.save()
    assert demonstration_edit(demonstration_id=demonstration.pk, user=annotator, text="changed").text == "changed"


def test_a_rejected_demonstration_cannot_be_edited_but_can_be_withdrawn_once(project, demonstration, annotator):
    reviewer = add_member(project, role="reviewer")
    demonstration_review(demonstration_id=demonstration.pk, reviewer=reviewer, approve=False, comment="off topic")
    assert Prompt.objects.get().demonstration_count == 0
    with pytest.raises(ValidationError, match="rejected in review"):
        demonstration_edit(demonstration_id=demonstration.pk, user=annotator, text="fixed")
    demonstration_withdraw(demonstration_id=demonstration.pk, user=annotator)
    assert Prompt.objects.get().demonstration_count == 0  # not taken back twice
    with pytest.raises(ValidationError, match="not one of yours"):
        demonstration_withdraw(demonstration_id=demonstration.pk, user=annotator)


def test_someone_elses_label_cannot_be_changed(project, demonstration, ranking):
    intruder = add_member(project, role="admin")
    with pytest.raises(ValidationError, match="not one of yours"):
        demonstration_edit(demonstration_id=demonstration.pk, user=intruder, text="mine")
    with pytest.raises(ValidationError, match="not one of yours"):
        ranking_withdraw(ranking_id=ranking.pk, user=intruder)
    assert Demonstration.objects.get().text == "First answer." and Ranking.objects.exists()


def test_a_ranking_edit_is_validated_like_a_submission(project, ranking, annotator):
    a, b, c, d = sorted(ranking.task.completions.values_list("id", flat=True))
    with pytest.raises(ValidationError, match="leaves out 1"):
        ranking_edit(ranking_id=ranking.pk, user=annotator, order=[[a], [b], [c]])
    with pytest.raises(ValidationError, match="Unknown flag"):
        ranking_edit(ranking_id=ranking.pk, user=annotator, order=[[d], [c], [b], [a]], flags={a: ["rude"]})
    ranking.refresh_from_db()
    assert ranking.order == [[a], [b], [c], [d]] and ranking.flags == {}
    edited = ranking_edit(ranking_id=ranking.pk, user=annotator, order=[[d], [b, c], [a]], flags={a: ["harmful"]},
                          scores={d: 7})
    edited.refresh_from_db()
    assert edited.order == [[d], [b, c], [a]] and edited.flags == {str(a): ["harmful"]} and edited.scores == {str(d): 7}
    assert selectors.my_labels(project=project, user=annotator)[0].summary == "Ranked 4 responses, 2 of them tied; flagged 1"


def test_withdrawing_a_ranking_reopens_the_task_and_a_used_one_is_frozen(project, ranking, annotator):
    other = add_member(project)
    assert task_claim(project=project, user=other, queue=Queue.RANK) is None  # overlap 1: full
    ranking_withdraw(ranking_id=ranking.pk, user=annotator)
    assert RankingTask.objects.get().ranking_count == 0
    lease = task_claim(project=project, user=other, queue=Queue.RANK)
    ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
    second = ranking_submit(assignment_id=lease.pk, user=other, order=[ids])
    version = train_on(project, rankings=[second.pk])
    with pytest.raises(ValidationError, match="model-1 was trained on it"):
        ranking_edit(ranking_id=second.pk, user=other, order=[[i] for i in ids])
    with pytest.raises(ValidationError, match="model-1 was trained on it"):
        ranking_withdraw(ranking_id=second.pk, user=other)
    assert Ranking.objects.get().order == [ids] and version.training_data["rankings"]["ids"] == [second.pk]


def test_my_labels_lists_skips_and_every_kind(project, annotator, demonstration, ranking):
    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    assignment_skip(assignment_id=lease.pk, user=annotator, reason="needs a doctor")
    rows = selectors.my_labels(project=project, user=annotator)
    assert [r.kind for r in rows] == ["skip", "ranking", "demonstration"]
    assert rows[0].summary == "Skipped: needs a doctor" and rows[0].prompt.pk == lease.prompt_id
    assert rows[1].editable and rows[2].editable and rows[2].label.pk == demonstration.pk
