"""Label quality: the annotator-reliability fits (labelapp.analysis.reliability) kept per project."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from labelapp.models.labels import ModelVersion, Project, RankingTask


class ReliabilityFit(models.Model):
    """One fit of the reliability model over a project's labels.

    `annotators` maps user id (as a string) to the fit for that annotator (reliability, interval,
    tie rate, judgments, gold accuracy …); `posterior` maps "task:x:y" (completion ids x < y) to
    the probability that x is better than y. `labels_hash` identifies the labels it was fitted on,
    so a refit with nothing new is skipped and a training run can record which fit weighted it.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="reliability_fits")
    labels_hash = models.CharField(max_length=64)
    annotators = models.JSONField(default=dict)
    posterior = models.JSONField(default=dict)
    units = models.PositiveIntegerField(default=0)
    gold_units = models.PositiveIntegerField(default=0)
    iterations = models.PositiveIntegerField(default=0)
    converged = models.BooleanField(default=False)
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"], name="reliabilityfit_latest")]

    def __str__(self) -> str:
        return f"Reliability fit {self.pk} of {self.project} ({self.units} pairs)"


class Adjudication(models.Model):
    """A reviewer's decision on a disputed ranking task: the order that replaces its annotators'
    rankings in training and exports, and counts as gold for the reliability model."""

    task = models.OneToOneField(RankingTask, on_delete=models.CASCADE, related_name="adjudication")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="adjudications")
    order = models.JSONField(help_text="Tie groups of completion ids, best first.")
    comment = models.TextField(blank=True)
    confidence_before = models.FloatField(null=True, blank=True,
                                          help_text="The item's consensus confidence when it was adjudicated.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task_id"]

    def __str__(self) -> str:
        return f"Adjudication of task {self.task_id} by {self.reviewer}"


class AILabel(models.Model):
    """A model's ranking of a task's completions: the reward model's scores, or a judge model's pairwise
    verdicts (both orders asked, to cancel position bias). Kept apart from people's rankings: never
    counted as a human label, in agreement, overlap or reliability; shown to annotators only when the
    project turns suggestions on; mixed into training only with the project's `ai_label_weight`."""

    class Source(models.TextChoices):
        REWARD_MODEL = "reward_model", "Reward model"
        JUDGE = "judge", "Judge prompt"

    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="ai_labels")
    source = models.CharField(max_length=16, choices=Source.choices)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="ai_labels")
    order = models.JSONField(help_text="Tie groups of completion ids, best first.")
    scores = models.JSONField(default=dict, help_text="Per completion id: the reward, or the judge's win share.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task_id", "id"]
        constraints = [models.UniqueConstraint(fields=["task", "source", "model_version"], name="ailabel_once")]

    def __str__(self) -> str:
        return f"{self.get_source_display()} label of task {self.task_id}"
