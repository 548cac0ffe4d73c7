"""Submitting and reviewing labels.

Submissions are idempotent per assignment: the assignment row is locked first, and a repeat of
an already submitted assignment (a double click, a resubmitted form, a retried request) returns
the label stored the first time instead of storing a second one.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from labelapp.models import (
    Assignment,
    Comparison,
    Demonstration,
    EvaluationTask,
    Flag,
    Prompt,
    Queue,
    Ranking,
    RankingTask,
    Role,
)
from labelapp.services.access import require_role
from labelapp.services.queue import lease_for_submit
from labelapp.services.text import refuse_nul

MAX_TIME_SPENT_MS = 24 * 3600 * 1000


def clean_text(value: str | None, *, what: str) -> str:
    """Strip a human-written text, normalise line ends (browsers send CRLF) and enforce the
    size limit; empty text, and a NUL character, are errors."""
    refuse_nul(value or "", what=what)
    text = (value or "").replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise ValidationError(f"The {what} is empty: write something before submitting.")
    limit = settings.LABEL_MAX_TEXT_CHARS
    if len(text) > limit:
        raise ValidationError(f"The {what} has {len(text):,} characters; the limit is {limit:,}.")
    return text


def clamp_time_spent(value) -> int:
    try:
        ms = int(value or 0)
    except (TypeError, ValueError):
        raise ValidationError("time spent must be a whole number of milliseconds") from None
    return max(0, min(ms, MAX_TIME_SPENT_MS))


PASTE_SHARE = 0.5  # flag an answer when at least this share of it was pasted
TYPING_CHARS_PER_S = 15  # flag an answer typed faster than this (people type 3-8 characters a second)
MAX_PASTE_EVENTS = 500


def clean_paste_log(value) -> list[dict]:
    """The write page's paste events, [{"at_ms": ms into the task, "chars": characters pasted}], as a
    list or its JSON text; anything else is a clear error."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValidationError("The paste log is not valid JSON.") from None
    if not isinstance(value, list) or len(value) > MAX_PASTE_EVENTS:
        raise ValidationError(f"The paste log must be a list of at most {MAX_PASTE_EVENTS} events.")
    events = []
    for event in value:
        if not isinstance(event, dict) or set(event) != {"at_ms", "chars"} or not all(
                isinstance(event[k], int) and not isinstance(event[k], bool) and event[k] >= 0 for k in event):
            raise ValidationError('Each paste event is {"at_ms": whole milliseconds, "chars": whole characters}.')
        events.append({"at_ms": min(event["at_ms"], MAX_TIME_SPENT_MS), "chars": event["chars"]})
    return events


def writing_flags(text: str, paste_log: list[dict], time_spent_ms: int) -> tuple[int, list[dict]]:
    """(characters pasted, flags) for a demonstration: "pasted" when PASTE_SHARE or more of it came
    from the clipboard, "too fast" when the typed part came faster than TYPING_CHARS_PER_S."""
    pasted = min(sum(e["chars"] for e in paste_log), len(text))
    flags = []
    if text and pasted / len(text) >= PASTE_SHARE:
        first = min(e["at_ms"] for e in paste_log) / 1000
        flags.append({"kind": "pasted", "detail": f"{pasted / len(text):.0%} of the answer was pasted "
                                                  f"({len(paste_log)} paste{'s' if len(paste_log) != 1 else ''}, "
                                                  f"the first {first:.0f} s into the task)"})
    typed = len(text) - pasted
    if time_spent_ms > 0 and typed / (time_spent_ms / 1000) > TYPING_CHARS_PER_S:
        flags.append({"kind": "too fast", "detail": f"{typed} characters typed in {time_spent_ms / 1000:.0f} s "
                                                    f"({typed / (time_spent_ms / 1000):.0f} a second)"})
    return pasted, flags


@transaction.atomic
def demonstration_submit(
    *, assignment_id: int, user, text: str, time_spent_ms: int = 0, paste_log=None, now: datetime | None = None
) -> Demonstration:
    """Store the demonstration written for a leased prompt, with its paste events and the quality
    flags they and its pace raise (a flagged demonstration is reviewed first, with the reasons shown)."""
    assignment, now = lease_for_submit(assignment_id=assignment_id, user=user, queue=Queue.WRITE, now=now)
    if assignment.status == Assignment.Status.SUBMITTED:
        return Demonstration.objects.get(assignment=assignment)
    text = clean_text(text, what="demonstration")
    time_spent_ms = clamp_time_spent(time_spent_ms)
    paste_log = clean_paste_log(paste_log)
    pasted, flags = writing_flags(text, paste_log, time_spent_ms)
    demonstration = Demonstration(
        prompt_id=assignment.prompt_id,
        author=user,
        assignment=assignment,
        text=text,
        time_spent_ms=time_spent_ms,
        paste_log=paste_log,
        pasted_chars=pasted,
        quality_flags=flags,
        flagged=bool(flags),
    )
    demonstration.full_clean(validate_unique=False, validate_constraints=False)  # the DB enforces those
    demonstration.save()
    Prompt.objects.filter(pk=assignment.prompt_id).update(demonstration_count=F("demonstration_count") + 1)
    _finish(assignment, now)
    return demonstration


def _named(names: list[str]) -> str:
    """"A", "A and C", "A, C and D"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def order_from_ranks(
    ranks: Mapping[int, object], *, completion_ids: Iterable[int], names: Mapping[int, str] | None = None
) -> list[list[int]]:
    """Turn {completion id: rank} (1 = best, equal ranks tie) into tie groups, best first.

    `names` maps completion ids to what the annotator sees (the letters A, B, …), so an error
    names the responses as the page shows them; without it the ids are named."""
    ids = list(dict.fromkeys(completion_ids))
    k = len(ids)
    names = names or {cid: f"response {cid}" for cid in ids}
    missing = [names[cid] for cid in ids if cid not in ranks]
    if missing:
        have = "has" if len(missing) == 1 else "have"
        raise ValidationError(f"Give every response a rank from 1 to {k}: {_named(missing)} {have} none yet.")
    ids = set(ids)
    by_rank: dict[int, list[int]] = {}
    for cid, raw in ranks.items():
        if cid not in ids:
            raise ValidationError(f"Response {cid} is not part of this task.")
        try:
            rank = int(str(raw).strip())
        except ValueError:
            raise ValidationError(f"Rank {raw!r} is not a number from 1 to {k}.") from None
        if not 1 <= rank <= k:
            raise ValidationError(f"Rank {rank} is out of range: use 1 (best) to {k} (worst).")
        by_rank.setdefault(rank, []).append(cid)
    return [sorted(by_rank[r]) for r in sorted(by_rank)]


def validate_order(order, *, completion_ids: Iterable[int]) -> list[list[int]]:
    """Check that `order` is tie groups covering exactly the task's completions, each once."""
    ids = set(completion_ids)
    if not isinstance(order, list) or not all(isinstance(g, list) and g for g in order):
        raise ValidationError("The ranking must be a list of non-empty groups of response ids, best first.")
    seen: list[int] = [cid for group in order for cid in group]
    if not all(isinstance(cid, int) and not isinstance(cid, bool) for cid in seen):
        raise ValidationError("The ranking may only contain response ids (integers).")
    if len(seen) != len(set(seen)):
        raise ValidationError("The ranking names a response more than once.")
    unknown = sorted(set(seen) - ids)
    if unknown:
        raise ValidationError(f"The ranking names responses that are not in this task: {unknown}.")
    missing = sorted(ids - set(seen))
    if missing:
        raise ValidationError(f"The ranking leaves out {len(missing)} of this task's responses: rank all {len(ids)}.")
    return [sorted(group) for group in order]


def _known_id(key, ids: set[int], what: str) -> int:
    try:
        cid = int(key)
    except (TypeError, ValueError):
        cid = None
    if cid not in ids:
        raise ValidationError(f"A {what} names response {key!r}, which is not in this task.")
    return cid


def _clean_flags(flags: Mapping | None, ids: set[int]) -> dict[str, list[str]]:
    cleaned: dict[str, list[str]] = {}
    for key, values in (flags or {}).items():
        cid = _known_id(key, ids, "flag")
        bad = sorted(set(values) - set(Flag.values))
        if bad:
            raise ValidationError(f"Unknown flag(s) {bad}: use {', '.join(Flag.values)}.")
        if values:
            cleaned[str(cid)] = sorted(set(values))
    return cleaned


def _clean_scores(scores: Mapping | None, ids: set[int]) -> dict[str, int]:
    cleaned: dict[str, int] = {}
    for key, raw in (scores or {}).items():
        if raw in (None, ""):
            continue
        cid = _known_id(key, ids, "score")
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValidationError(f"Score {raw!r} is not a whole number from 1 to 7.") from None
        if not 1 <= value <= 7:
            raise ValidationError(f"Score {value} is out of range: use 1 (worst) to 7 (best).")
        cleaned[str(cid)] = value
    return cleaned


def ranking_fields(*, task_id: int, order, none_acceptable: bool, flags: Mapping | None, scores: Mapping | None) -> dict:
    """The validated order, none_acceptable, flags and scores of a ranking of task `task_id`
    (what a submission and an edit both store). With `none_acceptable` the order may be empty."""
    ids = set(RankingTask.completions.through.objects.filter(rankingtask_id=task_id).values_list("completion_id", flat=True))
    if none_acceptable and not order:
        order = []
    else:
        order = validate_order(order, completion_ids=ids)
    return {
        "order": order,
        "none_acceptable": bool(none_acceptable),
        "flags": _clean_flags(flags, ids),
        "scores": _clean_scores(scores, ids),
    }


@transaction.atomic
def ranking_submit(
    *,
    assignment_id: int,
    user,
    order: list[list[int]] | None,
    none_acceptable: bool = False,
    flags: Mapping | None = None,
    scores: Mapping | None = None,
    time_spent_ms: int = 0,
    now: datetime | None = None,
) -> Ranking:
    """Store a ranking of a leased task. With `none_acceptable` the order may be left empty."""
    assignment, now = lease_for_submit(assignment_id=assignment_id, user=user, queue=Queue.RANK, now=now)
    if assignment.status == Assignment.Status.SUBMITTED:
        return Ranking.objects.get(assignment=assignment)
    fields = ranking_fields(
        task_id=assignment.ranking_task_id, order=order, none_acceptable=none_acceptable, flags=flags, scores=scores,
    )
    gold_order = RankingTask.objects.filter(pk=assignment.ranking_task_id).values_list("gold_order", flat=True).first()
    ai_agreement = None
    if assignment.project.ai_suggestions:  # the page showed the AI's ranking: did the person follow it?
        ai_agreement = ai_agreement_with(task_id=assignment.ranking_task_id, order=fields["order"])
    ranking = Ranking(
        task_id=assignment.ranking_task_id,
        annotator=user,
        assignment=assignment,
        **fields,
        gold_score=gold_score(fields["order"], gold_order),
        ai_agreement=ai_agreement,
        time_spent_ms=clamp_time_spent(time_spent_ms),
    )
    ranking.full_clean(validate_unique=False, validate_constraints=False)  # the DB enforces those
    ranking.save()
    RankingTask.objects.filter(pk=assignment.ranking_task_id).update(ranking_count=F("ranking_count") + 1)
    _finish(assignment, now)
    return ranking


@transaction.atomic
def comparison_submit(
    *, assignment_id: int, user, preferred: str, a_shown_left: bool, time_spent_ms: int = 0,
    now: datetime | None = None,
) -> Comparison:
    """Store a blind A/B judgement. `preferred` is "left", "right" or "tie" as the annotator saw
    it; `a_shown_left` says which side the candidate was on (the page knows, the person not)."""
    assignment, now = lease_for_submit(assignment_id=assignment_id, user=user, queue=Queue.COMPARE, now=now)
    if assignment.status == Assignment.Status.SUBMITTED:
        return Comparison.objects.get(assignment=assignment)
    if preferred not in ("left", "right", "tie"):
        raise ValidationError("Choose the left answer, the right answer, or a tie.")
    if preferred == "tie":
        winner = Comparison.Winner.TIE
    else:
        winner = Comparison.Winner.A if (preferred == "left") == bool(a_shown_left) else Comparison.Winner.B
    gold_winner = EvaluationTask.objects.filter(pk=assignment.evaluation_task_id).values_list("gold_winner", flat=True).first()
    comparison = Comparison(
        task_id=assignment.evaluation_task_id, annotator=user, assignment=assignment, winner=winner,
        a_shown_left=bool(a_shown_left), time_spent_ms=clamp_time_spent(time_spent_ms),
        gold_correct=(winner == gold_winner) if gold_winner else None,
    )
    comparison.full_clean(validate_unique=False, validate_constraints=False)
    comparison.save()
    EvaluationTask.objects.filter(pk=assignment.evaluation_task_id).update(comparison_count=F("comparison_count") + 1)
    _finish(assignment, now)
    return comparison


def ai_agreement_with(*, task_id: int, order: list[list[int]]) -> float | None:
    """`Ranking.ai_agreement` of `order`: the share of the AI suggestion's strict pairs it orders the same way,
    against the suggestion the rank page shows (labelapp.selectors.quality.ai_suggestion: the reward model's label
    first, then the newest; none on a gold task); None when there is none. Used on submit and on every edit."""
    from labelapp.models import AILabel

    shown = (AILabel.objects.filter(task_id=task_id, task__gold_order__isnull=True).order_by("-source", "-created_at")
             .values_list("order", flat=True).first())
    return gold_score(order, shown) if shown else None


def gold_score(order: list[list[int]], gold_order: list[list[int]] | None) -> float | None:
    """Share of the gold order's strictly ordered pairs that `order` puts the same way round (a
    tie where gold has an order counts as wrong); None when the task is not gold or gold orders
    nothing strictly. "None acceptable" (an empty order) scores 0 against a gold order."""
    if gold_order is None:
        return None
    expected = {cid: rank for rank, group in enumerate(gold_order) for cid in group}
    given = {cid: rank for rank, group in enumerate(order or []) for cid in group}
    pairs = [(x, y) for x in expected for y in expected if expected[x] < expected[y]]
    if not pairs:
        return None
    right = sum(1 for x, y in pairs if x in given and y in given and given[x] < given[y])
    return right / len(pairs)


def _finish(assignment: Assignment, now: datetime) -> None:
    assignment.status = Assignment.Status.SUBMITTED
    assignment.finished_at = now
    assignment.save(update_fields=["status", "finished_at"])


def text_sha256(text: str) -> str:
    """The hash a reviewer's decision names the text it was made on by (demonstration_review)."""
    return hashlib.sha256(text.encode()).hexdigest()


@transaction.atomic
def demonstration_review(
    *, demonstration_id: int, reviewer, approve: bool, comment: str = "", now: datetime | None = None,
    seen_sha256: str | None = None,
) -> Demonstration:
    """Approve or reject a pending demonstration. A rejection needs a comment and sends the
    prompt back to the write queue (rejected demonstrations do not count towards it).
    `seen_sha256`: the text_sha256 of the text the reviewer read (the review page always sends it); if
    the author edited the answer since, the decision is refused, so nobody approves a text unread."""
    now = now or timezone.now()
    demonstration = (
        Demonstration.objects.select_for_update(of=("self",))
        .select_related("prompt__project")
        .filter(pk=demonstration_id)
        .first()
    )
    if demonstration is None:
        raise ValidationError("That demonstration does not exist.")
    require_role(project=demonstration.prompt.project, user=reviewer, role=Role.REVIEWER)
    if demonstration.author_id == reviewer.pk:
        raise ValidationError("You cannot review your own demonstration.")
    if demonstration.review_status != Demonstration.Review.PENDING:
        raise ValidationError(
            f"This demonstration was already {demonstration.get_review_status_display().lower()} "
            f"by {demonstration.reviewer}."
        )
    comment = (comment or "").strip()
    refuse_nul(comment, what="comment")
    if len(comment) > settings.LABEL_MAX_TEXT_CHARS:
        raise ValidationError(f"The comment is longer than {settings.LABEL_MAX_TEXT_CHARS:,} characters.")
    if not approve and not comment:
        raise ValidationError("Say why in the comment: a rejection needs a comment the author can act on.")
    if seen_sha256 is not None and seen_sha256 != text_sha256(demonstration.text):
        raise ValidationError("The author edited this answer after you opened it: read the new text and decide "
                              "again.")
    demonstration.review_status = Demonstration.Review.APPROVED if approve else Demonstration.Review.REJECTED
    demonstration.reviewer = reviewer
    demonstration.review_comment = comment
    demonstration.reviewed_at = now
    demonstration.full_clean()
    demonstration.save(update_fields=["review_status", "reviewer", "review_comment", "reviewed_at"])
    if not approve:
        Prompt.objects.filter(pk=demonstration.prompt_id).update(demonstration_count=F("demonstration_count") - 1)
    return demonstration
