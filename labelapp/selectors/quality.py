"""Label-quality reads for admins: per-annotator reliability, gold accuracy, agreement and pace
(the studio's annotators page and `GET /api/v1/projects/{id}/statistics/annotators/`)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import median

from django.contrib.auth import get_user_model
from django.db.models import Avg, Count, Q, Sum

from labelapp.analysis.agreement import annotator_consensus_agreement, annotator_pairwise_agreement
from labelapp.analysis.reliability import AnnotatorFit, FlagRules, flags_for
from labelapp.models import AILabel, Comparison, Project, Prompt, Ranking, RankingTask, ReliabilityFit
from labelapp.selectors.stats import project_rankings


def latest_fit(*, project: Project) -> ReliabilityFit | None:
    return ReliabilityFit.objects.filter(project=project).first()


def _median_times(project: Project) -> dict[int, float]:
    """Each annotator's median time on a ranking, over their timed rankings only (0: no time was sent)."""
    times: dict[int, list[int]] = defaultdict(list)
    rows = Ranking.objects.filter(task__project=project, time_spent_ms__gt=0).values_list("annotator_id", "time_spent_ms")
    for annotator, ms in rows.iterator(chunk_size=5000):
        times[annotator].append(ms)
    return {a: median(v) for a, v in times.items()}


def annotator_report(*, project: Project, rules: FlagRules = FlagRules()) -> dict:  # noqa: B008 (frozen)
    """One row per annotator who ranked anything in the project, best reliability first."""
    fit = latest_fit(project=project)
    rankings = project_rankings(project=project)
    with_others = annotator_pairwise_agreement(rankings)
    with_consensus = annotator_consensus_agreement(rankings)
    medians = _median_times(project)
    project_median = median(medians.values()) if medians else None
    counts = {
        row["annotator"]: row
        for row in Ranking.objects.filter(task__project=project).order_by().values("annotator").annotate(
            rankings=Count("id"), ms=Sum("time_spent_ms"), timed=Count("id", filter=Q(time_spent_ms__gt=0)),
            gold=Count("id", filter=Q(gold_score__isnull=False)), gold_score=Avg("gold_score"),
        )
    }
    compare_gold = {
        row["annotator"]: row
        for row in Comparison.objects.filter(task__project=project, gold_correct__isnull=False).order_by()
        .values("annotator").annotate(n=Count("id"), right=Count("id", filter=Q(gold_correct=True)))
    }
    names = dict(get_user_model().objects.filter(pk__in=counts).values_list("pk", "username"))
    rows = []
    for uid, c in counts.items():
        fitted = (fit.annotators if fit else {}).get(str(uid))
        annotator_fit = AnnotatorFit(**fitted) if fitted else None
        gold_n = c["gold"] + compare_gold.get(uid, {}).get("n", 0)
        gold_right = (c["gold_score"] or 0) * c["gold"] + compare_gold.get(uid, {}).get("right", 0)
        hours = (c["ms"] or 0) / 3_600_000  # the time of the timed rankings: labels per hour counts only those
        untimed_share = (c["rankings"] - c["timed"]) / c["rankings"] if c["rankings"] else None
        others, consensus = with_others.get(uid), with_consensus.get(uid)
        rows.append({
            "user_id": uid,
            "username": names.get(uid, f"user {uid}"),
            "rankings": c["rankings"],
            "gold_items": gold_n,
            "gold_accuracy": gold_right / gold_n if gold_n else None,
            "agreement_with_others": others.rate if others else None,
            "agreement_with_others_n": others.n if others else 0,
            "agreement_with_consensus": consensus.rate if consensus else None,
            "agreement_with_consensus_n": consensus.n if consensus else 0,
            "reliability": annotator_fit.reliability if annotator_fit else None,
            "reliability_low": annotator_fit.low if annotator_fit else None,
            "reliability_high": annotator_fit.high if annotator_fit else None,
            "tie_rate": annotator_fit.tie_rate if annotator_fit else None,
            "labels_per_hour": c["timed"] / hours if hours > 0 else None,
            "timed_rankings": c["timed"],
            "untimed_share": untimed_share,
            "median_time_ms": medians.get(uid),
            "median_time_s": medians[uid] / 1000 if uid in medians else None,
            "flags": flags_for(annotator_fit, median_ms=medians.get(uid), project_median_ms=project_median, rules=rules,
                               untimed_share=untimed_share),
        })
    rows.sort(key=lambda r: (r["reliability"] is None, -(r["reliability"] or 0), r["username"]))
    return {
        "fit": None if fit is None else {
            "id": fit.pk, "created_at": fit.created_at, "pairs": fit.units, "gold_pairs": fit.gold_units,
            "iterations": fit.iterations, "converged": fit.converged, "seconds": fit.seconds,
        },
        "project_median_time_ms": project_median,
        "annotators": rows,
    }


class PairWeights:
    """Per-pair training weights from the project's latest reliability fit (training on consensus).

    * `weight(annotator)`: how much that annotator's stated preferences count, max(0, 2q − 1) for a
      reliability q — 1 for a perfect annotator, 0 for one no better than a coin flip (and for one
      who reverses the scale, whose labels the posterior already reads the right way round); 1 for
      an annotator the fit knows nothing about (no shared items, no gold).
    * `confidence(task, chosen, rejected)`: the posterior probability that `chosen` is truly better
      than `rejected` given every label on the item; None when the fit has no such pair (an item one
      annotator ranked and no gold covers still has one, from that annotator's reliability).
    """

    def __init__(self, fit: ReliabilityFit | None):
        self.fit = fit
        self._q = {int(k): v["reliability"] for k, v in (fit.annotators if fit else {}).items()}

    @property
    def fit_id(self) -> int | None:
        return self.fit.pk if self.fit else None

    def weight(self, annotator_id: int) -> float:
        q = self._q.get(annotator_id)
        return 1.0 if q is None else round(max(0.0, 2 * q - 1), 6)

    def confidence(self, task_id: int, chosen: int, rejected: int) -> float | None:
        if self.fit is None:
            return None
        low, high = sorted((chosen, rejected))
        p = self.fit.posterior.get(f"{task_id}:{low}:{high}")
        if p is None:
            return None
        return round(p if chosen == low else 1 - p, 6)


def pair_weights(*, project: Project) -> PairWeights:
    return PairWeights(latest_fit(project=project))


# ------------------------------------------------------------------------------------- adjudication


def item_confidences(fit: ReliabilityFit | None) -> dict[int, float]:
    """Each ranking task's consensus confidence under a fit: the mean over its response pairs of the
    posterior probability of the more likely order, max(p, 1 − p) (0.5 = a coin flip, 1 = certain)."""
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
    for key, p in (fit.posterior if fit else {}).items():
        task = int(key.split(":", 1)[0])
        entry = sums[task]
        entry[0] += max(p, 1 - p)
        entry[1] += 1
    return {task: total / n for task, (total, n) in sums.items()}


def consensus_confidence(task: RankingTask, confidences: dict[int, float]) -> float | None:
    """A task's consensus confidence: from the fit (`item_confidences`), else its annotators' pairwise
    agreement; None when neither says anything."""
    value = confidences.get(task.pk)
    if value is None:
        from labelapp.analysis.agreement import pairwise_agreement

        orders = {r.annotator_id: r.order for r in task.rankings.all() if r.order}
        value = pairwise_agreement({task.pk: orders}).rate
    return value


def disputed_tasks(*, project: Project, reviewer=None) -> list[tuple[RankingTask, float]]:
    """Ranking tasks with two or more rankings whose consensus confidence is below the project's
    `adjudication_below`, least certain first, not yet adjudicated, not gold, and (given a reviewer)
    not ranked by that reviewer. Without a reliability fit the confidence of a task is its
    annotators' pairwise agreement (InstructGPT's measure), a cruder reading of the same thing."""
    if project.adjudication_below <= 0:
        return []
    candidates = RankingTask.objects.filter(project=project, ranking_count__gte=2, gold_order__isnull=True,
                                            adjudication__isnull=True)
    if reviewer is not None:
        candidates = candidates.exclude(rankings__annotator=reviewer)
    confidence = item_confidences(latest_fit(project=project))
    out = []
    for task in candidates.select_related("prompt").order_by("id"):
        value = consensus_confidence(task, confidence)
        if value is not None and value < project.adjudication_below:
            out.append((task, value))
    return sorted(out, key=lambda item: (item[1], item[0].pk))


def adjudication_view(*, task: RankingTask) -> list[dict]:
    """Every annotator's label on the task, pseudonymised per task ("Annotator 1" …), with each
    completion's rank (1 = best; ties share a rank), flags and score — what a reviewer decides from."""
    rows = []
    for n, ranking in enumerate(task.rankings.order_by("id"), 1):
        ranks = {}
        better = 0
        for group in ranking.order:
            for cid in group:
                ranks[cid] = better + 1
            better += len(group)
        rows.append({"name": f"Annotator {n}", "ranks": ranks, "none_acceptable": ranking.none_acceptable,
                     "flags": {int(k): v for k, v in ranking.flags.items()},
                     "scores": {int(k): v for k, v in ranking.scores.items()}})
    return rows


# ------------------------------------------------------------------------------------------ AI feedback


def _relations(order) -> dict[tuple[int, int], int]:
    ranks = {}
    better = 0
    for group in order:
        for cid in group:
            ranks[cid] = better
        better += len(group)
    return {(x, y): (ranks[x] < ranks[y]) - (ranks[x] > ranks[y]) for x in ranks for y in ranks if x < y}


def ai_human_agreement(*, project: Project) -> list[dict]:
    """Per AI annotator (source and model version): InstructGPT's pairwise agreement between its ranking
    and each person's ranking of the same task, over every response pair both ordered; and the same
    without ties. The AI is never counted among the people in any other statistic."""
    humans: dict[int, list[list]] = defaultdict(list)
    labelled = AILabel.objects.filter(task__project=project)
    for task_id, order in (Ranking.objects.filter(task__in=labelled.values("task")).exclude(order=[])
                           .values_list("task_id", "order")):
        humans[task_id].append(order)
    out: dict[tuple, dict] = {}
    for label in labelled.select_related("model_version"):
        key = (label.source, label.model_version_id)
        entry = out.setdefault(key, {"source": label.source, "model_version": label.model_version.name,
                                     "tasks": 0, "agree": 0, "n": 0, "agree_strict": 0, "n_strict": 0})
        entry["tasks"] += 1
        ai = _relations(label.order)
        for order in humans.get(label.task_id, []):
            for pair, relation in _relations(order).items():
                if pair not in ai:
                    continue
                entry["n"] += 1
                entry["agree"] += relation == ai[pair]
                if relation and ai[pair]:
                    entry["n_strict"] += 1
                    entry["agree_strict"] += relation == ai[pair]
    return [{**e, "agreement": e["agree"] / e["n"] if e["n"] else None,
             "agreement_without_ties": e["agree_strict"] / e["n_strict"] if e["n_strict"] else None}
            for e in out.values()]


def ai_suggestion(*, task_id: int, letters: dict[int, str]) -> tuple[str, str] | None:
    """The AI annotator's ranking of a task as the page shows it ("A > C = B > D", in the annotator's
    letters) and where it comes from, or None; the reward model's label is preferred, then the newest.
    None on a gold task (one marked gold after the model labelled it too): it would give the answer away."""
    label = (AILabel.objects.filter(task_id=task_id, task__gold_order__isnull=True).select_related("model_version")
             .order_by("-source", "-created_at").first())  # "reward_model" sorts after "judge"
    if label is None:
        return None
    text = " > ".join(" = ".join(letters[c] for c in sorted(group, key=lambda c: letters[c])) for group in label.order)
    return text, label.get_source_display().lower()


# ------------------------------------------------------------------------------ training on consensus


@dataclass(frozen=True)
class TrainingPair:
    """One preference pair as a reward-model or DPO run reads it (workers turn it into rlhf's
    PreferencePair): the prompt's turns, the two texts, the 1-7 score margin, and what the run's
    `label_weights` may use — the pair's weight and the posterior confidence in its order."""

    prompt: list
    chosen: str
    rejected: str
    margin: float | None
    weight: float = 1.0
    confidence: float | None = None
    source: str = "human"  # human | adjudication | ai


@dataclass
class TrainingPairs:
    pairs: list[TrainingPair]
    mode: str  # the label_weights the run should use (AI labels need "weight")
    rankings: list[int] = field(default_factory=list)
    adjudications: list[int] = field(default_factory=list)
    ai_labels: list[int] = field(default_factory=list)
    fit_id: int | None = None
    ai_label_weight: float = 0.0
    ai_left_out: str = ""

    def lineage(self) -> dict:
        """What the model's training_data records beside the label sets (ids live in the label sets)."""
        counts = defaultdict(int)
        for p in self.pairs:
            counts[p.source] += 1
        out = {"pair_sources": dict(sorted(counts.items())), "reliability_fit": self.fit_id}
        if self.ai_label_weight:
            out["ai_label_weight"] = self.ai_label_weight
        if self.ai_left_out:
            out["ai_labels_left_out"] = self.ai_left_out
        return out


class _Order:
    """A stored order read as a ranking (AI labels carry no 1-7 scores: no margin)."""

    def __init__(self, order):
        self.order, self.scores = order, {}


def training_pairs(*, project: Project, min_gap: int = 1, mode: str = "none",
                   min_confidence: float = 0.0) -> TrainingPairs:
    """The preference pairs a reward-model or DPO run of `project` trains on, for its `label_weights`
    `mode` (and its `min_confidence`: above 0, pairs carry their confidence whatever the mode, so the
    trainer's filter drops the same pairs the export's does; their weights stay 1 in mode "none"):

    * the training split's tasks only (validation prompts stay held out for the evaluation and the promotion
      gate, as for SFT and PPO);
    * people's rankings, gold tasks left out, a disputed task's rankings replaced by its adjudication
      (the export's rows, labelapp.formats.exports); with `mode` "weight" or "soft" each pair carries its
      annotator's reliability weight and the posterior confidence of its order from the latest fit
      (PairWeights); an adjudication counts as known: weight 1, confidence 1;
    * with the project's `ai_label_weight` above 0, each non-gold task's latest AI label (rlhf's reward
      order or a judge's), every pair weighted `ai_label_weight`. That weight only reaches the loss as a
      weighted mean, so a run with `label_weights` "none" trains in "weight" mode with people's pairs
      at weight 1; with "soft" (soft labels carry no weight) AI labels are left out, and the lineage
      says so.
    """
    from labelapp.formats import exports
    from labelapp.selectors.labels import ranking_pairs

    reliability = pair_weights(project=project) if mode != "none" or min_confidence > 0 else None
    weighted = reliability is not None and mode != "none"
    out = TrainingPairs(pairs=[], mode=mode, fit_id=reliability.fit_id if reliability else None)
    for row in exports._ranking_rows(exports.ExportFilter(project=project, split=Prompt.Split.TRAIN)):
        (out.adjudications if row.adjudicated else out.rankings).append(row.id)
        texts = {cid: text for cid, (text, _) in row.completions.items()}
        for chosen, rejected, margin in ranking_pairs(row, min_gap):
            weight, confidence = 1.0, None
            if row.adjudicated:
                confidence = 1.0 if reliability else None
            elif reliability:
                weight = reliability.weight(row.annotator_id) if weighted else 1.0
                confidence = reliability.confidence(row.task_id, chosen, rejected)
            out.pairs.append(TrainingPair(row.turns, texts[chosen], texts[rejected], margin, weight, confidence,
                                          "adjudication" if row.adjudicated else "human"))
    ai_weight = float(project.ai_label_weight or 0.0)
    if ai_weight <= 0:
        return out
    if mode == "soft":
        out.ai_left_out = "label_weights 'soft' carries no per-pair weight; use 'weight' to mix AI labels"
        return out
    latest: dict[int, AILabel] = {}
    for label in AILabel.objects.filter(task__project=project, task__gold_order__isnull=True,
                                        task__prompt__split=Prompt.Split.TRAIN).select_related(
            "task__prompt").order_by("task_id", "id"):
        latest[label.task_id] = label  # the newest of each task wins
    if not latest:
        return out
    texts = exports._completion_texts(project, set(latest))
    out.mode, out.ai_label_weight = "weight", ai_weight
    for task_id, label in latest.items():
        prompt = label.task.prompt
        turns = list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.text}]
        by_id = {cid: text for cid, (text, _) in texts.get(task_id, {}).items()}
        pairs = [(c, r) for c, r, _ in ranking_pairs(_Order(label.order), min_gap) if c in by_id and r in by_id]
        if pairs:
            out.ai_labels.append(label.pk)
        out.pairs.extend(TrainingPair(turns, by_id[c], by_id[r], None, ai_weight, None, "ai") for c, r in pairs)
    return out
