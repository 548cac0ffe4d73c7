"""Blind evaluation: annotators compare two answers to the same held-out prompt from two model
versions (the new policy and its parent), not knowing which is which."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from labelapp.models.labels import Completion, ModelVersion, Project, Prompt
from labelapp.models.runs import Round


class EvaluationTask(models.Model):
    """`completion_a` comes from `model_a` (the candidate), `completion_b` from `model_b` (the
    baseline). Annotators never see these names; the page shows the two in an order shuffled
    per annotator."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="evaluation_tasks")
    round = models.ForeignKey(Round, on_delete=models.SET_NULL, null=True, blank=True, related_name="evaluation_tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="evaluation_tasks")
    model_a = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    model_b = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    completion_a = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+")
    completion_b = models.ForeignKey(Completion, on_delete=models.CASCADE, related_name="+")
    reward_a = models.FloatField(null=True, blank=True, help_text="Score of A under the reward model (automatic).")
    reward_b = models.FloatField(null=True, blank=True)
    comparison_count = models.PositiveIntegerField(default=0)
    gold_winner = models.CharField(
        max_length=4, blank=True, choices=[("a", "Candidate (A)"), ("b", "Baseline (B)"), ("tie", "Tie")],
        help_text="Gold items only: the expected judgement. Gold evaluation tasks are scored and left out of win-rates.",
    )
    run = models.ForeignKey(
        "labelapp.TrainingRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="evaluation_tasks",
        help_text="The evaluation run that wrote it (one task per prompt per run).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["project", "comparison_count", "created_at", "id"], name="evaluationtask_queue")
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "prompt"], condition=Q(run__isnull=False), name="evaluationtask_once_per_run_prompt"
            ),
        ]

    def __str__(self) -> str:
        return f"Evaluation {self.pk}: {self.model_a} vs {self.model_b}"


class Comparison(models.Model):
    class Winner(models.TextChoices):
        A = "a", "Candidate (A)"
        B = "b", "Baseline (B)"
        TIE = "tie", "Tie"

    task = models.ForeignKey(EvaluationTask, on_delete=models.CASCADE, related_name="comparisons")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="comparisons")
    assignment = models.OneToOneField(
        "labelapp.Assignment", on_delete=models.SET_NULL, null=True, blank=True, related_name="comparison"
    )
    winner = models.CharField(max_length=4, choices=Winner.choices)
    a_shown_left = models.BooleanField(help_text="Where the candidate was shown, for position-bias checks.")
    time_spent_ms = models.PositiveIntegerField(default=0)
    gold_correct = models.BooleanField(null=True, blank=True, help_text="On a gold task: the judgement was the expected one.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="comparison_once_per_annotator"),
            models.CheckConstraint(condition=Q(winner__in=["a", "b", "tie"]), name="comparison_winner_valid"),
        ]
