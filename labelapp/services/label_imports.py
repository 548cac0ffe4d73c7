"""Importing labels (rankings, preference pairs, completions, demonstrations) into a project.

All or nothing: the file is parsed and validated first (labelapp.formats.labels); any error
refuses it whole with ImportRejected. Then, in one transaction, with bulk queries:

- prompts are matched by Prompt.content_hash (labelapp.formats.prompts.prompt_hash), else created;
- completions are matched per prompt by their exact text, else created (source "imported");
- a ranking task is matched by its prompt and its exact set of completions, else created, so
  every ranking of the same completions — imported or made in the studio — shares one task;
- a ranking is a duplicate when its annotator already ranked that task (the database allows one
  ranking per task and annotator), so re-importing a file adds nothing. Formats that name no
  annotator (HH, OASST, FineGrainedRLHF, TRL pairs without `annotator`) give every row the same
  label: there a ranking is a duplicate only when it equals that label's ranking of the task (order,
  ties, flags, scores, none acceptable); a differing one goes to `<label>-2`, `-3`, … (like
  demonstrations below), so two rows that disagree are both kept;
- a demonstration is a duplicate when its prompt already has a demonstration with the same text.

External annotators: each annotator label of a file becomes an inactive user with an unusable
password named `ext-<source>-<label>` (e.g. `ext-hh-crowdworker`, `ext-oasst-consensus`), with an
annotator membership in the project, so exports and agreement treat them like people. A
`studio-rankings` pseudonym that belongs to a member of this project maps back to that member;
a member's imported ranking also gets a submitted assignment of the task (their live lease on it,
if any, becomes that one), as a submit leaves it, so the queue never serves them the task again.
Demonstrations arrive pending review; a prompt holds one demonstration per author, so the n-th
distinct imported demonstration of a prompt by the same label goes to `ext-<source>-<label>-<n>`.
Imported prompts join the write queue like any imported prompt; a ranking task whose imported
rankings reach the project's overlap leaves the rank queue.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from operator import attrgetter

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import F, JSONField
from django.utils import timezone

from labelapp.formats.exports import pseudonym
from labelapp.formats.labels import ImportedPrompt, LabelReport, parse_labels
from labelapp.models import (
    Assignment,
    Completion,
    Demonstration,
    Membership,
    Project,
    Prompt,
    Queue,
    Ranking,
    RankingTask,
    Role,
)
from labelapp.services.projects import ImportRejected, lock_project

BATCH = 1000
KINDS = ("prompts", "completions", "ranking_tasks", "rankings", "demonstrations", "annotators")


@dataclass
class LabelImportResult:
    format: str
    rows: int
    created: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    duplicates: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    notes: list[str] = field(default_factory=list)


def labels_import(*, project: Project, data: bytes, fmt: str, skip_invalid: bool = False) -> LabelImportResult:
    """Add the labels of a file in one of labelapp.formats.labels.FORMATS to a project: all of
    them, or none (ImportRejected lists every line, field and reason). With `skip_invalid`,
    lines that cannot be used are left out and named in the result's notes instead.

    Writes in one transaction holding the project's row lock (FOR NO KEY UPDATE: annotators keep
    claiming and labelling meanwhile), so two imports into one project run one after the other."""
    report = parse_labels(data, fmt=fmt, skip_invalid=skip_invalid, categories=project.categories,
                          default_category=project.default_category)
    if report.errors:
        raise ImportRejected(report.messages)
    try:
        return _write(project=project, report=report, fmt=fmt)
    except IntegrityError:  # a prompt import or a labeller got there first: nothing was written
        raise ImportRejected(["line 1: the project changed during the import (the same prompts or labels were "
                              "added at the same time); nothing was written, import the file again"]) from None


@transaction.atomic
def _write(*, project: Project, report: LabelReport, fmt: str) -> LabelImportResult:
    lock_project(project)
    result = LabelImportResult(format=fmt, rows=report.row_count, notes=list(report.notes))
    run = _Run(project, report, result)
    run.prompts()
    run.completions()
    run.annotators()
    run.rankings()
    run.demonstrations()
    return result


def _chunks(items: list, size: int = 5000):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Run:
    def __init__(self, project: Project, report: LabelReport, result: LabelImportResult):
        self.project, self.report, self.result = project, report, result
        self.prompt_ids: dict[str, int] = {}  # content hash → id
        self.completion_ids: dict[tuple[int, str], int] = {}  # (prompt id, text) → id
        self.users: dict[str, int] = {}  # annotator label → user id
        self.members: set[int] = set()  # users of studio pseudonyms: people of this project

    def count(self, kind: str, created: int, duplicates: int) -> None:
        self.result.created[kind] += created
        self.result.duplicates[kind] += duplicates

    def prompts(self) -> None:
        wanted: dict[str, ImportedPrompt] = {}
        for row in (*self.report.rankings, *self.report.completions, *self.report.demonstrations):
            wanted.setdefault(row.prompt.content_hash, row.prompt)
        for chunk in _chunks(list(wanted)):
            self.prompt_ids.update(
                Prompt.objects.filter(project=self.project, content_hash__in=chunk).values_list("content_hash", "id")
            )
        new = [
            Prompt(project=self.project, text=p.text, messages=p.turns, category=p.category, split=p.split,
                   reference=p.reference, metadata=p.metadata, source=Prompt.Source.IMPORTED, content_hash=digest)
            for digest, p in wanted.items() if digest not in self.prompt_ids
        ]
        _insert(Prompt, new, ids=True)
        self.prompt_ids.update((p.content_hash, p.pk) for p in new)
        self.count("prompts", len(new), len(wanted) - len(new))

    def completions(self) -> None:
        wanted: dict[tuple[int, str], dict] = {}  # (prompt id, text) → decoding
        for c in (*self.report.completions, *(c for r in self.report.rankings for c in r.completions)):
            decoding = {**c.decoding, "model": c.model} if c.model else c.decoding
            wanted.setdefault((self.prompt_ids[c.prompt.content_hash], c.text), decoding)
        prompt_ids = sorted({pid for pid, _ in wanted})
        for chunk in _chunks(prompt_ids):
            for cid, pid, text in Completion.objects.filter(prompt_id__in=chunk).values_list("id", "prompt_id", "text"):
                self.completion_ids.setdefault((pid, text), cid)
        new = [
            Completion(prompt_id=pid, text=text, source=Completion.Source.IMPORTED, decoding=decoding)
            for (pid, text), decoding in wanted.items() if (pid, text) not in self.completion_ids
        ]
        _insert(Completion, new, ids=True)
        self.completion_ids.update(((c.prompt_id, c.text), c.pk) for c in new)
        self.count("completions", len(new), len(wanted) - len(new))

    def annotators(self) -> None:
        """One inactive user per external label; studio pseudonyms of members map to the member."""
        labels = {r.annotator for r in self.report.rankings} | {d.annotator for d in self.report.demonstrations}
        if not labels:
            return
        members = Membership.objects.filter(project=self.project).values_list("user_id", flat=True)
        if self.report.source == "studio":
            self.users.update({pseudonym(uid): uid for uid in members if pseudonym(uid) in labels})
            self.members = set(self.users.values())
        names = {label: external_username(self.report.source, label) for label in labels - set(self.users)}
        self.users.update(self._external_users(names))

    def _external_users(self, names: dict[str, str]) -> dict[str, int]:
        User = get_user_model()
        existing = dict(User.objects.filter(username__in=names.values()).values_list("username", "id"))
        new = [User(username=n, is_active=False) for n in set(names.values()) - set(existing)]
        for user in new:
            user.set_unusable_password()
        User.objects.bulk_create(new, batch_size=BATCH, ignore_conflicts=True)  # another project's import may race
        existing.update(User.objects.filter(username__in=[u.username for u in new]).values_list("username", "id"))
        ids = {label: existing[name] for label, name in names.items()}
        Membership.objects.bulk_create(
            [Membership(project=self.project, user_id=uid, role=Role.ANNOTATOR) for uid in set(ids.values())],
            ignore_conflicts=True,  # a member keeps the role they have
        )
        self.count("annotators", len(new), len(existing) - len(new))
        return ids

    def _user(self, label: str) -> int:
        if label not in self.users:
            self.users.update(self._external_users({label: external_username(self.report.source, label)}))
        return self.users[label]

    def rankings(self) -> None:
        rows = self.report.rankings
        if not rows:
            return
        task_of: dict[tuple[int, frozenset[int]], int] = {}
        through = RankingTask.completions.through
        members: dict[int, set[int]] = defaultdict(set)
        prompt_of: dict[int, int] = {}
        for chunk in _chunks(sorted({self.prompt_ids[r.prompt.content_hash] for r in rows})):
            for tid, cid, pid in through.objects.filter(rankingtask__prompt_id__in=chunk).values_list(
                "rankingtask_id", "completion_id", "rankingtask__prompt_id"
            ):
                members[tid].add(cid)
                prompt_of[tid] = pid
        for tid in sorted(members):
            task_of.setdefault((prompt_of[tid], frozenset(members[tid])), tid)
        keyed = []
        for r in rows:
            pid = self.prompt_ids[r.prompt.content_hash]
            ids = [self.completion_ids[(pid, c.text)] for c in r.completions]
            keyed.append((r, pid, ids, (pid, frozenset(ids))))
        new_keys = list(dict.fromkeys(key for *_, key in keyed if key not in task_of))
        tasks = [RankingTask(project=self.project, prompt_id=pid) for pid, _ in new_keys]
        _insert(RankingTask, tasks, ids=True)
        _insert(through, [through(rankingtask_id=t.pk, completion_id=cid) for t, (_, cids) in zip(tasks, new_keys) for cid in sorted(cids)])
        task_of.update((key, t.pk) for key, t in zip(new_keys, tasks))
        self.count("ranking_tasks", len(tasks), len({k for *_, k in keyed}) - len(tasks))

        task_ids = sorted({task_of[k] for *_, k in keyed})
        done: dict[tuple[int, int], tuple] = {}  # (task, annotator) → what they ranked
        for chunk in _chunks(task_ids):
            for tid, uid, *content in Ranking.objects.filter(task_id__in=chunk).values_list(
                "task_id", "annotator_id", "order", "none_acceptable", "flags", "scores"
            ):
                done[(tid, uid)] = _content(*content)
        new = []
        for r, _pid, ids, key in keyed:
            ranking = Ranking(
                task_id=task_of[key], order=[sorted(ids[i] for i in g) for g in r.order],
                none_acceptable=r.none_acceptable, flags={str(ids[i]): v for i, v in r.flags.items()},
                scores={str(ids[i]): v for i, v in r.scores.items()}, time_spent_ms=r.time_spent_ms,
            )
            content = _content(ranking.order, ranking.none_acceptable, ranking.flags, ranking.scores)
            uid, n = self._user(r.annotator), 1
            while r.synthetic and done.get((ranking.task_id, uid), content) != content:  # then "<label>-2", "-3", …
                n += 1
                uid = self._user(f"{r.annotator}-{n}")
            if (ranking.task_id, uid) in done:
                continue
            done[(ranking.task_id, uid)] = content
            ranking.annotator_id = uid
            new.append(ranking)
        self._assign([r for r in new if r.annotator_id in self.members])
        _insert(Ranking, new)
        _bump(RankingTask, "ranking_count", Counter(r.task_id for r in new))
        self.count("rankings", len(new), len(rows) - len(new))

    def _assign(self, rankings: list[Ranking]) -> None:
        """Members' rankings finish their assignment of the task, as ranking_submit does: a new
        submitted one, or theirs on it (a live or expired lease, a skip) marked submitted."""
        if not rankings:
            return
        now = timezone.now()
        wanted = {(r.annotator_id, r.task_id): r for r in rankings}
        held: dict[tuple[int, int], int] = {}  # (user, task) → assignment id
        for chunk in _chunks(sorted({tid for _, tid in wanted})):
            for pk, uid, tid in Assignment.objects.filter(
                ranking_task_id__in=chunk, user_id__in=sorted({uid for uid, _ in wanted})
            ).values_list("id", "user_id", "ranking_task_id"):
                if (uid, tid) in wanted:
                    held[(uid, tid)] = pk
        for chunk in _chunks(sorted(held.values())):
            Assignment.objects.filter(pk__in=chunk).update(status=Assignment.Status.SUBMITTED, finished_at=now, skip_reason="")
        new = [
            Assignment(project=self.project, user_id=uid, queue=Queue.RANK, ranking_task_id=tid,
                       status=Assignment.Status.SUBMITTED, leased_at=now, expires_at=now, finished_at=now)
            for uid, tid in wanted if (uid, tid) not in held
        ]
        _insert(Assignment, new, ids=True)
        held.update(((a.user_id, a.ranking_task_id), a.pk) for a in new)
        for key, ranking in wanted.items():
            ranking.assignment_id = held[key]

    def demonstrations(self) -> None:
        rows = self.report.demonstrations
        if not rows:
            return
        texts: dict[int, set[str]] = defaultdict(set)
        authors: dict[int, set[int]] = defaultdict(set)
        pids = sorted({self.prompt_ids[d.prompt.content_hash] for d in rows})
        for chunk in _chunks(pids):
            for pid, uid, text in Demonstration.objects.filter(prompt_id__in=chunk).values_list("prompt_id", "author_id", "text"):
                texts[pid].add(text)
                authors[pid].add(uid)
        new = []
        for d in rows:
            pid = self.prompt_ids[d.prompt.content_hash]
            if d.text in texts[pid]:
                continue
            texts[pid].add(d.text)
            n, slot = 1, d.annotator  # one demonstration per author and prompt: then "<label>-2", "-3", …
            while (uid := self._user(slot)) in authors[pid]:
                n += 1
                slot = f"{d.annotator}-{n}"
            authors[pid].add(uid)
            new.append(Demonstration(prompt_id=pid, author_id=uid, text=d.text))
        _insert(Demonstration, new)
        _bump(Prompt, "demonstration_count", Counter(d.prompt_id for d in new))
        self.count("demonstrations", len(new), len(rows) - len(new))


def _insert(model, objs: list, *, ids: bool = False) -> None:
    """Bulk insert. On PostgreSQL with COPY, several times faster than INSERT with client-side
    quoting of every value; with `ids`, the ids are drawn from the table's sequence first and set
    on the objects. Elsewhere bulk_create (which sets ids where the backend returns them)."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create(objs, batch_size=BATCH)
        return
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    table, pk = model._meta.db_table, model._meta.pk
    with connection.cursor() as cursor:
        if ids:
            cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                           [table, pk.column, len(objs)])
            for obj, (value,) in zip(objs, cursor.fetchall()):
                obj.pk = value
            fields.insert(0, pk)
        columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
        values = [_getter(f, timezone.now()) for f in fields]
        with cursor.cursor.copy(f"COPY {connection.ops.quote_name(table)} ({columns}) FROM STDIN") as copy:
            for obj in objs:
                copy.write_row([value(obj) for value in values])


def _getter(f, now):
    """How COPY reads a field from an object: psycopg adapts plain values itself."""
    from psycopg.types.json import Jsonb

    if getattr(f, "auto_now_add", False) or getattr(f, "auto_now", False):
        return lambda obj: now
    if isinstance(f, JSONField):
        return lambda obj: None if (v := getattr(obj, f.attname)) is None else Jsonb(v)  # SQL NULL, not JSON null
    return attrgetter(f.attname)


def _bump(model, counter: str, increments: Counter) -> None:
    """counter += n with F(), one UPDATE per distinct n."""
    by_n: dict[int, list[int]] = defaultdict(list)
    for pk, n in increments.items():
        by_n[n].append(pk)
    for n, pks in by_n.items():
        for chunk in _chunks(pks):
            model.objects.filter(pk__in=chunk).update(**{counter: F(counter) + n})


def _content(order: list, none_acceptable: bool, flags: dict, scores: dict) -> tuple:
    """What a ranking says, comparable between a stored one and an imported one."""
    return (
        tuple(tuple(sorted(g)) for g in order or []), bool(none_acceptable),
        sorted((str(k), tuple(sorted(v))) for k, v in (flags or {}).items() if v),
        sorted((str(k), v) for k, v in (scores or {}).items()),
    )


def external_username(source: str, label: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in label)
    return f"ext-{source}-{safe}"[:150]
