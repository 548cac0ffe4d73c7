"""Annotation clients over REST: claim the next item of a queue, read it, submit or skip it, and
review demonstrations. Every write calls the services the pages call (labelapp/services/queue.py
and labels.py), so leases, overlap, idempotency and validation are the same; nothing here
re-implements them.

A service's refusal (an expired lease, a full item, an invalid ranking) is a Django ValidationError
that the API's exception handler (labelapp/api/errors.py) turns into a 400 with its message.
Assignments are looked up among the caller's own (another user's assignment is a 404), and a
ranking client sees the completions in the same per-annotator shuffled order, with the same
letters, as the page; a comparison client sees "left" and "right" as the page shows them, never
which model wrote which.
"""
from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from labelapp.api.views import project_for
from labelapp.formats.exports import pseudonym
from labelapp.models import Assignment, Demonstration, Flag, Queue, Role
from labelapp.selectors import labels as selectors
from labelapp.services.labels import comparison_submit, demonstration_review, demonstration_submit, ranking_submit
from labelapp.services.queue import assignment_skip, task_claim

CLAIM_QUEUES = [*Queue.values, "review"]


def _prompt(prompt) -> dict:
    return {"id": prompt.pk, "category": prompt.category, "turns": prompt.turns}


def _completion(completion, letter: str | None = None) -> dict:
    out = {"id": completion.pk, "text": completion.text, "cut_off_at": completion.cut_off_at}
    if letter is not None:
        out = {"letter": letter, **out}
    return out


def _label(assignment: Assignment) -> dict | None:
    """The label stored for a submitted assignment, in the terms the client sent it."""
    if assignment.status != Assignment.Status.SUBMITTED:
        return None
    if assignment.queue == Queue.WRITE:
        demo = Demonstration.objects.filter(assignment=assignment).first()
        return demo and {"id": demo.pk, "text": demo.text, "review_status": demo.review_status}
    if assignment.queue == Queue.RANK:
        ranking = getattr(assignment, "ranking", None)
        return ranking and {"id": ranking.pk, "order": ranking.order, "none_acceptable": ranking.none_acceptable,
                            "flags": ranking.flags, "scores": ranking.scores}
    comparison = getattr(assignment, "comparison", None)
    if comparison is None:
        return None
    if comparison.winner == "tie":
        preferred = "tie"
    else:
        preferred = "left" if (comparison.winner == "a") == comparison.a_shown_left else "right"
    return {"id": comparison.pk, "preferred": preferred}


def assignment_item(assignment: Assignment, user) -> dict:
    """What a client needs to label one leased item (the page's content, as data)."""
    out = {
        "queue": assignment.queue,
        "assignment": assignment.pk,
        "project": assignment.project_id,
        "status": assignment.status,
        "expires_at": assignment.expires_at,
        "submit": f"/api/v1/assignments/{assignment.pk}/submit/",
        "skip": f"/api/v1/assignments/{assignment.pk}/skip/",
    }
    if assignment.queue == Queue.WRITE:
        out["prompt"] = _prompt(assignment.prompt)
    elif assignment.queue == Queue.RANK:
        task = assignment.ranking_task
        out["prompt"] = _prompt(task.prompt)
        completions = selectors.completions_for_annotator(task_id=task.pk, user=user)
        out["completions"] = [_completion(c, chr(ord("A") + i)) for i, c in enumerate(completions)]
    else:
        task = assignment.evaluation_task
        out["prompt"] = _prompt(task.prompt)
        _, (left, right) = selectors.comparison_sides(task=task, user=user)
        out["sides"] = {"left": _completion(left), "right": _completion(right)}
    out["label"] = _label(assignment)
    return out


def review_item(demonstration: Demonstration) -> dict:
    return {
        "queue": "review",
        "assignment": None,
        "project": demonstration.prompt.project_id,
        "prompt": _prompt(demonstration.prompt),
        "demonstration": {"id": demonstration.pk, "text": demonstration.text,
                          "author": pseudonym(demonstration.author_id)},
        "submit": f"/api/v1/demonstrations/{demonstration.pk}/review/",
    }


ITEM = inline_serializer("AnnotationItem", fields={
    "queue": serializers.ChoiceField(CLAIM_QUEUES),
    "assignment": serializers.IntegerField(allow_null=True, help_text="null for review (reviews are not leased)"),
    "project": serializers.IntegerField(),
    "status": serializers.CharField(required=False),
    "expires_at": serializers.DateTimeField(required=False, help_text="the lease's end"),
    "prompt": serializers.DictField(help_text='{"id", "category", "turns": [{"role", "content"}]}'),
    "completions": serializers.ListField(child=serializers.DictField(), required=False,
                                         help_text='rank: [{"letter", "id", "text", "cut_off_at"}] in the order to show'),
    "sides": serializers.DictField(required=False, help_text='compare: {"left": {...}, "right": {...}}'),
    "demonstration": serializers.DictField(required=False, help_text='review: {"id", "text", "author"}'),
    "label": serializers.DictField(required=False, allow_null=True, help_text="what was stored, once submitted"),
    "submit": serializers.CharField(help_text="where to POST the label"),
    "skip": serializers.CharField(required=False),
})


class ClaimView(APIView):
    """Claim the next item of a queue: `write`, `rank`, `compare` (leased, as on the pages: a
    second claim returns the same live lease) or `review` (the next demonstration to review)."""

    @extend_schema(request=None, responses={200: ITEM, 204: OpenApiResponse(description="nothing is waiting")})
    def post(self, request, project_id: int, queue: str):
        if queue not in CLAIM_QUEUES:
            raise NotFound(f"Unknown queue {queue!r}: use one of {', '.join(CLAIM_QUEUES)}.")
        if queue == "review":
            project = project_for(request, project_id, Role.REVIEWER)
            demonstration = selectors.reviewable(project=project, reviewer=request.user).first()
            if demonstration is None:
                return Response(status=status.HTTP_204_NO_CONTENT)
            return Response(review_item(demonstration))
        project = project_for(request, project_id, Role.ANNOTATOR)
        assignment = task_claim(project=project, user=request.user, queue=queue)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(assignment_item(_own(request, assignment.pk), request.user))


def _own(request, assignment_id: int) -> Assignment:
    assignment = (
        Assignment.objects.select_related("prompt", "ranking_task__prompt", "evaluation_task__prompt",
                                          "evaluation_task__completion_a", "evaluation_task__completion_b")
        .filter(pk=assignment_id, user=request.user, project_id__in=selectors.project_ids(request.user))
        .first()
    )
    if assignment is None:
        raise NotFound("No such assignment of yours.")
    return assignment


class AssignmentView(APIView):
    """One of your assignments, with its item and, once submitted, the label stored."""

    @extend_schema(responses={200: ITEM})
    def get(self, request, assignment_id: int):
        return Response(assignment_item(_own(request, assignment_id), request.user))


class SubmitInput(serializers.Serializer):
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                 help_text="write: the demonstration")
    order = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField()), required=False,
                                  allow_null=True, help_text="rank: tie groups of completion ids, best first")
    none_acceptable = serializers.BooleanField(required=False, default=False, help_text="rank")
    flags = serializers.DictField(child=serializers.ListField(child=serializers.ChoiceField(Flag.values)),
                                  required=False, help_text="rank: {completion id: [flag, …]}")
    scores = serializers.DictField(child=serializers.IntegerField(), required=False,
                                   help_text="rank: {completion id: 1–7}")
    preferred = serializers.CharField(required=False, help_text="compare: left, right or tie (as the item's sides)")
    paste_log = serializers.ListField(child=serializers.DictField(child=serializers.IntegerField(min_value=0)),
                                      required=False, max_length=500,
                                      help_text='write: paste events [{"at_ms": ms into the task, "chars": n}] — '
                                                "a mostly pasted answer is flagged for review (docs/QUALITY.md)")
    time_spent_ms = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1)


class SubmitView(APIView):
    """Submit the label of one of your leased items. The first submission answers 201; the same
    assignment submitted again answers 200 with the label stored the first time (nothing new is
    written). Refusals (expired lease, item full, invalid ranking, …) are 400 with the reason."""

    @extend_schema(request=SubmitInput, responses={201: ITEM, 200: ITEM})
    def post(self, request, assignment_id: int):
        assignment = _own(request, assignment_id)
        body = SubmitInput(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        repeat = assignment.status == Assignment.Status.SUBMITTED
        common = {"assignment_id": assignment.pk, "user": request.user, "time_spent_ms": data["time_spent_ms"]}
        if assignment.queue == Queue.WRITE:
            demonstration_submit(text=data.get("text", ""), paste_log=data.get("paste_log"), **common)
        elif assignment.queue == Queue.RANK:
            ranking_submit(order=data.get("order"), none_acceptable=data["none_acceptable"],
                           flags=data.get("flags"), scores=data.get("scores"), **common)
        else:
            a_left, _ = selectors.comparison_sides(task=assignment.evaluation_task, user=request.user)
            comparison_submit(preferred=data.get("preferred", ""), a_shown_left=a_left, **common)
        item = assignment_item(_own(request, assignment_id), request.user)
        return Response(item, status=status.HTTP_200_OK if repeat else status.HTTP_201_CREATED)


class SkipInput(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=500,
                                   help_text="required for write (as on the page)")


class SkipView(APIView):
    """Give an item back: it returns to the queue for others and never comes back to you."""

    @extend_schema(request=SkipInput, responses={200: ITEM})
    def post(self, request, assignment_id: int):
        assignment = _own(request, assignment_id)
        body = SkipInput(data=request.data)
        body.is_valid(raise_exception=True)
        assignment_skip(assignment_id=assignment.pk, user=request.user, reason=body.validated_data["reason"])
        return Response(assignment_item(_own(request, assignment_id), request.user))


class ReviewInput(serializers.Serializer):
    decision = serializers.ChoiceField(["approve", "reject"])
    comment = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False,
                                    help_text="required to reject")
    text_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", required=False,
                                         help_text="SHA-256 (hex) of the demonstration text you read: if the "
                                                   "author edited it since, the decision is refused (400)")


class ReviewView(APIView):
    """Approve or reject a pending demonstration (reviewers). Sending the decision already stored
    by you again answers 200 with it; any other change of a reviewed one is refused."""

    @extend_schema(request=ReviewInput, responses={200: inline_serializer("Reviewed", fields={
        "id": serializers.IntegerField(), "review_status": serializers.CharField(),
        "review_comment": serializers.CharField()})})
    def post(self, request, demonstration_id: int):
        demonstration = selectors.visible_demonstrations(request.user).filter(pk=demonstration_id).first()
        if demonstration is None:
            raise NotFound("No such demonstration.")
        body = ReviewInput(data=request.data)
        body.is_valid(raise_exception=True)
        decision = body.validated_data["decision"]
        wanted = Demonstration.Review.APPROVED if decision == "approve" else Demonstration.Review.REJECTED
        if not (demonstration.reviewer_id == request.user.pk and demonstration.review_status == wanted):
            demonstration = demonstration_review(demonstration_id=demonstration.pk, reviewer=request.user,
                                                 approve=decision == "approve", comment=body.validated_data["comment"],
                                                 seen_sha256=body.validated_data.get("text_sha256"))
        return Response({"id": demonstration.pk, "review_status": demonstration.review_status,
                         "review_comment": demonstration.review_comment})
