"""The training loop's state: runs and rounds are rows, not just queue messages.

A TrainingRun moves queued → running → succeeded / failed / cancelled. Its `execution` token
names the one worker allowed to report on it; `heartbeat_at` is refreshed while it works, so a
run whose worker died is found by the reconciler (labelapp.services.runs.runs_reconcile) and
either re-queued to resume from its last checkpoint or failed after `max_attempts`.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models

from labelapp.models.labels import ModelVersion, Project


class Round(models.Model):
    """One turn of the loop: SFT (when demonstrations changed) → samples to rank → reward model
    → PPO, DPO, RLOO or GRPO → new samples and a blind evaluation → the promotion gate (done, or held for
    review)."""

    class Method(models.TextChoices):
        PPO = "ppo", "PPO"
        DPO = "dpo", "DPO"
        RLOO = "rloo", "RLOO"
        GRPO = "grpo", "GRPO"

    class Stage(models.TextChoices):
        SFT = "sft", "Supervised fine-tuning"
        SAMPLING = "sampling", "Sampling completions to rank"
        RANKING = "ranking", "Waiting for rankings"
        REWARD = "reward", "Training the reward model"
        POLICY = "policy", "Training the policy"
        RESAMPLING = "resampling", "Sampling from the new policy"
        EVALUATION = "evaluation", "Blind evaluation"
        DONE = "done", "Done"
        HELD = "held", "Held for review"  # the promotion gate failed: an admin promotes or discards
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.PPO)
    stage = models.CharField(max_length=16, choices=Stage.choices, default=Stage.SFT)
    params = models.JSONField(default=dict, blank=True)
    base_policy = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    sft_policy = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    reward_model = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    new_policy = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    error = models.TextField(blank=True)
    gate = models.JSONField(
        default=dict, blank=True,
        help_text="The promotion gate's verdict: state (waiting / passed / held), checks, text, and an admin's "
                  "decision on a held round (promoted / discarded, by whom, when).",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    ENDED = ("done", "held", "failed", "cancelled")  # stages after which nothing runs

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="round_number_unique")]

    def __str__(self) -> str:
        return f"Round {self.number} of {self.project}"

    @property
    def finished(self) -> bool:
        return self.stage in self.ENDED


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        SFT = "sft", "SFT"
        REWARD = "reward", "Reward model"
        PPO = "ppo", "PPO"
        DPO = "dpo", "DPO"
        RLOO = "rloo", "RLOO"
        GRPO = "grpo", "GRPO"
        SAMPLE = "sample", "Sampling"
        EVALUATE = "evaluate", "Evaluation"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    round = models.ForeignKey(Round, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    params = models.JSONField(default=dict, blank=True, help_text="Hyper-parameters, as given to rlhf.")
    input_model = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    output_model = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="produced_by"
    )
    step = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    metrics = models.JSONField(default=list, blank=True, help_text="History: [{step, …metrics}] (capped).")
    result = models.JSONField(default=dict, blank=True, help_text="Final metrics and counts.")
    logs_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    execution = models.CharField(max_length=32, blank=True, help_text="Token of the worker executing it.")
    celery_task_id = models.CharField(max_length=64, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When its message was last sent.")
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    cancel_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    retry_of = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} run {self.pk} ({self.status})"

    @property
    def output_dir(self) -> str:
        return str(settings.DATA_DIR / "runs" / str(self.pk))

    @property
    def eta_seconds(self) -> float | None:
        if self.status != self.Status.RUNNING or not self.started_at or not self.step or not self.total:
            return None
        elapsed = ((self.heartbeat_at or self.started_at) - self.started_at).total_seconds()
        return max(0.0, elapsed / self.step * (self.total - self.step))

