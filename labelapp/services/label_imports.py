"""Importing labels (rankings, preference pairs, completions, demonstrations) into a project.

All or nothing: the file is parsed and validated first (labelapp.formats.labels); any error
refuses it whole with ImportRejected. Then, in one transaction, with bulk queries:

- prompts are matched by Prompt.content_hash (labelapp.formats.prompts.prompt_hash: a chat of one
  user turn is its text), else created;
- completions are matched per prompt by their exact text and, when the row names one, their model,
  else created (source "imported"): the same text from two models stays two completions (_Run.completions);
- a ranking task is matched by the exact completions a studio-rankings row names (ids of this
  project), else by its prompt and its completions' texts (and models), else created, so every
  ranking of the same completions — imported or made in the studio — shares one task (_Tasks);
- a ranking is a duplicate when its annotator already ranked that task (the database allows one
  ranking per task and annotator), so re-importing a file adds nothing. Formats that name no
  annotator (HH, OASST, FineGrainedRLHF, TRL pairs without `annotator`) give every row the same
  label: there a ranking is a duplicate only when it equals that label's ranking of the task (order,
  ties, flags, scores, none acceptable); a differing one goes to `<label>-2`, `-3`, … (like
  demonstrations below), so two rows that disagree are both kept;
- a demonstration is a duplicate when its prompt already has a demonstration with the same text.

External annotators: each annotator label of a file becomes an inactive user with an unusable
password named `ext-<source>-<label>` (e.g. `ext-hh-crowdworker`, `ext-oasst-consensus`; a label
that is not letters, digits and `_.-` only gets a hash of itself: external_username), with an
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

import hashlib
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
        # (prompt id, text) → [(completion id, the models it is known by)], oldest first, the new ones last
        self.same_text: dict[tuple[int, str], list[tuple[int, frozenset[str]]]] = defaultdict(list)
        self.completion_info: dict[int, tuple[int, str, frozenset[str]]] = {}  # id → (prompt id, text, models)
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
        """A completion is its prompt, its text and the model that wrote it. A row that names a model
        matches a completion of the same prompt and text by that model (an imported one with that
        `model`, or one sampled from a model version of that name), else is a new completion, so the
        same text from two models stays two completions; a row that names none matches any of the
        same prompt and text (the oldest). Rows naming a model are resolved first, so within one file
        the outcome does not depend on the order of the lines, and a re-import matches itself."""
        wanted: dict[tuple[int, str, str], dict] = {}  # (prompt id, text, model) → decoding
        for c in (*self.report.completions, *(c for r in self.report.rankings for c in r.completions)):
            decoding = {**c.decoding, "model": c.model} if c.model else c.decoding
            wanted.setdefault((self.prompt_ids[c.prompt.content_hash], c.text, c.model_label), decoding)
        prompt_ids = sorted({pid for pid, _, _ in wanted})
        for chunk in _chunks(prompt_ids):
            for cid, pid, text, decoding, version in Completion.objects.filter(prompt_id__in=chunk).order_by("id").values_list(
                "id", "prompt_id", "text", "decoding", "model_version__name"
            ):
                self.completion_info[cid] = (pid, text, _models(decoding, version))
                self.same_text[(pid, text)].append((cid, self.completion_info[cid][2]))
        new = []
        for (pid, text, model), decoding in sorted(wanted.items(), key=lambda item: not item[0][2]):  # named first
            if self.completion_for(pid, text, model) is None:
                completion = Completion(prompt_id=pid, text=text, source=Completion.Source.IMPORTED, decoding=decoding)
                new.append(completion)
                self.same_text[(pid, text)].append((completion, frozenset({model} - {""})))
        _insert(Completion, new, ids=True)
        for pid, text in {(c.prompt_id, c.text) for c in new}:  # the new ones' ids, now that they have them
            self.same_text[(pid, text)] = [(c if isinstance(c, int) else c.pk, m) for c, m in self.same_text[(pid, text)]]
        self.completion_info.update((c.pk, (c.prompt_id, c.text, _models(c.decoding, None))) for c in new)
        self.count("completions", len(new), len(wanted) - len(new))

    def completion_for(self, pid: int, text: str, model: str):
        """The oldest completion of a prompt with this text that `model` ("" for any) may be."""
        return next((cid for cid, models in self.same_text.get((pid, text), ()) if not model or model in models), None)

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
        through = RankingTask.completions.through
        members: dict[int, set[int]] = defaultdict(set)
        prompt_of: dict[int, int] = {}
        for chunk in _chunks(sorted({self.prompt_ids[r.prompt.content_hash] for r in rows})):
            for tid, cid, pid in through.objects.filter(rankingtask__prompt_id__in=chunk).values_list(
                "rankingtask_id", "completion_id", "rankingtask__prompt_id"
            ):
                members[tid].add(cid)
                prompt_of[tid] = pid
        tasks = _Tasks(self)
        for tid in sorted(members):
            tasks.add(tid, prompt_of[tid], members[tid])
        keyed = [(r, *tasks.resolve(self.prompt_ids[r.prompt.content_hash], r.completions)) for r in rows]
        created = tasks.insert()
        task_of = {key: tasks.pk(key) for *_, key in keyed}
        self.count("ranking_tasks", len(created), len(task_of) - len(created))

        task_ids = sorted({task_of[k] for *_, k in keyed})
        done: dict[tuple[int, int], tuple] = {}  # (task, annotator) → what they ranked
        for chunk in _chunks(task_ids):
            for tid, uid, *content in Ranking.objects.filter(task_id__in=chunk).values_list(
                "task_id", "annotator_id", "order", "none_acceptable", "flags", "scores"
            ):
                done[(tid, uid)] = _content(*content)
        new = []
        for r, ids, key in keyed:
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


class _Tasks:
    """The ranking tasks of the file's prompts, those in the database (oldest first) and those this
    import creates (after them, in the file's order), so a re-import finds what the first one made.
    A row's task is, in this order: the task of exactly the completions it names (studio-rankings
    rows carry their ids: a round trip into the same project keeps each ranking on its own task
    even when two completions of the prompt share a text); the oldest task of the prompt whose
    completions have the row's texts and may be the row's (the same models, when the row names
    them), wherever they came from; else a new task of the completions `_Run.completion_for` gives."""

    def __init__(self, run: _Run):
        self.run = run
        self.by_ids: dict[tuple[int, frozenset[int]], int | RankingTask] = {}
        self.by_texts: dict[tuple[int, frozenset[str]], list[dict[str, tuple[int, frozenset[str]]]]] = defaultdict(list)
        self.new: list[tuple[RankingTask, frozenset[int]]] = []

    def add(self, task: int | RankingTask, pid: int, cids) -> None:
        self.by_ids.setdefault((pid, frozenset(cids)), task)
        info = [self.run.completion_info.get(cid) for cid in cids]
        if not all(i is not None and i[0] == pid for i in info):
            return
        by_text = {text: (cid, models) for cid, (_, text, models) in zip(cids, info)}
        if len(by_text) == len(info):  # a task with two equal texts is no row's
            self.by_texts[(pid, frozenset(by_text))].append(by_text)

    def resolve(self, pid: int, completions: list) -> tuple[list[int], tuple[int, frozenset[int]]]:
        """The ids of a row's completions (in its order) and the key of its task."""
        texts = [c.text for c in completions]
        refs = [c.ref for c in completions]
        exact = refs if all(
            isinstance(ref, int) and self.run.completion_info.get(ref, (None, None))[:2] == (pid, text)
            for ref, text in zip(refs, texts)
        ) else None
        if exact and (pid, frozenset(exact)) in self.by_ids:
            return exact, (pid, frozenset(exact))
        for by_text in self.by_texts.get((pid, frozenset(texts)), ()):
            if all(not c.model_label or c.model_label in by_text[c.text][1] for c in completions):
                ids = [by_text[t][0] for t in texts]
                return ids, (pid, frozenset(ids))
        ids = exact or [self.run.completion_for(pid, c.text, c.model_label) for c in completions]
        key = (pid, frozenset(ids))
        if key not in self.by_ids:
            task = RankingTask(project=self.run.project, prompt_id=pid)
            self.new.append((task, key[1]))
            self.add(task, pid, ids)
        return ids, key

    def insert(self) -> list[RankingTask]:
        tasks = [task for task, _ in self.new]
        _insert(RankingTask, tasks, ids=True)
        through = RankingTask.completions.through
        _insert(through, [through(rankingtask_id=t.pk, completion_id=cid) for t, cids in self.new for cid in sorted(cids)])
        return tasks

    def pk(self, key: tuple[int, frozenset[int]]) -> int:
        task = self.by_ids[key]
        return task if isinstance(task, int) else task.pk


def _models(decoding, version: str | None) -> frozenset[str]:
    """The model names a stored completion is known by: its model version's, an import's `model`."""
    named = decoding.get("model") if isinstance(decoding, dict) else None
    return frozenset(m.strip() for m in (named, version) if isinstance(m, str) and m.strip())


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


USERNAME_MAX = 150  # django.contrib.auth's User.username


def external_username(source: str, label: str) -> str:
    """The user name of an external annotator label: `ext-<source>-<label>` when the label is
    letters, digits and `_.-` only and fits (the names of earlier imports stay as they were); else
    the label with every other character as `_`, shortened to fit, then `+` and a hash of the label
    as given. A kept label never holds a `+`, so two different labels never share a name ("a b" and
    "a_b", "a/b" and "a?b", two long labels that start alike), and a label always gets the same one."""
    prefix = f"ext-{source}-"
    safe = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in label)
    if safe == label and len(prefix) + len(label) <= USERNAME_MAX:
        return prefix + label
    digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:12]
    return f"{prefix}{safe[: USERNAME_MAX - len(prefix) - len(digest) - 1]}+{digest}"
