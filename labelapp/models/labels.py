"""Data model of the studio: what is labelled (prompts, completions, ranking tasks), the
labels (demonstrations, rankings), who may label (memberships) and who holds what (assignments).

Reward-model pairs are never stored: they are derived from Ranking.order (see labelapp.pairs).
Counters on items (Prompt.demonstration_count, RankingTask.ranking_count) are only changed
with F() expressions inside the services that hold the item's row lock.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class Category(models.TextChoices):
    """InstructGPT's use-case categories (Ouyang et al. 2022, table 1)."""

    GENERATION = "generation", "Generation"
    OPEN_QA = "open_qa", "Open QA"
    BRAINSTORMING = "brainstorming", "Brainstorming"
    CHAT = "chat", "Chat"
    REWRITE = "rewrite", "Rewrite"
    SUMMARIZATION = "summarization", "Summarization"
    CLASSIFICATION = "classification", "Classification"
    CLOSED_QA = "closed_qa", "Closed QA"
    EXTRACT = "extract", "Extract"
    OTHER = "other", "Other"


MAX_CATEGORIES = 200
CATEGORY_MAX_CHARS = 64


def default_categories() -> list[str]:
    """A new project's categories: InstructGPT's ten."""
    return list(Category.values)


def validate_categories(value) -> None:
    """A project's categories: 1–200 distinct names (case-insensitively) of 1–64 characters."""
    if not isinstance(value, list) or not value:
        raise ValidationError("List the project's prompt categories: a non-empty list of names.")
    if len(value) > MAX_CATEGORIES:
        raise ValidationError(f"A project has at most {MAX_CATEGORIES} categories; got {len(value)}.")
    seen = set()
    for name in value:
        if not isinstance(name, str) or not name.strip() or name != name.strip() or len(name) > CATEGORY_MAX_CHARS:
            raise ValidationError(
                f"Category {name!r} is not a name of 1 to {CATEGORY_MAX_CHARS} characters without surrounding spaces."
            )
        if any(ord(ch) < 32 for ch in name):
            raise ValidationError(f"Category {name!r} contains a control character.")
        if name.lower() in seen:
            raise ValidationError(f"Category {name!r} is listed twice.")
        seen.add(name.lower())


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    REVIEWER = "reviewer", "Reviewer"
    ADMIN = "admin", "Admin"


class Queue(models.TextChoices):
    WRITE = "write", "Write demonstrations"
    RANK = "rank", "Rank completions"
    COMPARE = "compare", "Compare two answers (blind evaluation)"


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    guidelines = models.TextField(blank=True, help_text="Shown to annotators on the project page and one key away on task pages (markdown).")
    base_model = models.CharField(
        max_length=300, default="smollm2-135m-instruct", help_text="Model reference the first policy starts from."
    )
    k = models.PositiveSmallIntegerField(
        default=4,
        validators=[MinValueValidator(2), MaxValueValidator(9)],
        help_text="Completions per ranking task (2–9).",
    )
    overlap = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="Annotators who rank each task; the task leaves every queue after this many rankings.",
    )
    demonstrations_per_prompt = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="Demonstrations wanted per prompt (rejected ones do not count).",
    )
    sampling = models.JSONField(default=dict, blank=True, help_text="Default decoding settings for new samples.")
    gold_rate = models.FloatField(
        default=0.05,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="Share of claims in the rank and compare queues that serve a gold item (0 turns gold off).",
    )
    adjudication_below = models.FloatField(
        default=0.7,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Ranking tasks whose consensus confidence is below this go to reviewers to decide (0: never).",
    )
    ai_suggestions = models.BooleanField(
        default=False,
        help_text="Show annotators the AI annotator's ranking as a suggestion (off by default: it anchors people).",
    )
    ai_label_weight = models.FloatField(
        default=0.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Weight of AI labels' pairs when a reward-model or DPO run mixes them in (RLAIF; 0 keeps them out).",
    )
    active_learning = models.BooleanField(
        default=False,
        help_text="Serve the ranking tasks the current reward model is least sure of first, and sample next "
                  "rounds from the prompts it is least sure of (scores refreshed after each reward-model run).",
    )
    categories = models.JSONField(
        default=default_categories,
        blank=True,  # checked by clean(), which says what an empty list lacks
        help_text="The prompt categories of this project, e.g. [\"coding\", \"math\"] (default: InstructGPT's ten).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(k__gte=2) & Q(k__lte=9), name="project_k_2_to_9"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        try:
            validate_categories(self.categories)
        except ValidationError as exc:
            raise ValidationError({"categories": exc.messages}) from None

    @property
    def default_category(self) -> str:
        """The category of a prompt that names none: "other" when the project has it, else none ("")."""
        return Category.OTHER if Category.OTHER in self.categories else ""


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.ANNOTATOR)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} – {self.role} in {self.project}"


class Prompt(models.Model):
    class Source(models.TextChoices):
        ANNOTATOR = "annotator", "Annotator"
        CUSTOMER = "customer", "Customer"
        IMPORTED = "imported", "Imported"

    class Split(models.TextChoices):
        TRAIN = "train", "Train"
        VALIDATION = "validation", "Validation"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    text = models.TextField(blank=True, help_text="A single-turn prompt; empty when messages are given.")
    messages = models.JSONField(
        null=True, blank=True, help_text='Chat prompt: [{"role": "user"|"assistant"|"system", "content": "..."}].'
    )
    category = models.CharField(
        max_length=CATEGORY_MAX_CHARS, blank=True, default=Category.OTHER,
        help_text="One of the project's categories (Project.categories); empty: none.",
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.IMPORTED)
    split = models.CharField(max_length=16, choices=Split.choices, default=Split.TRAIN)
    reference = models.TextField(blank=True, help_text="Optional reference answer (used by simulated annotators).")
    metadata = models.JSONField(
        default=dict, blank=True, help_text="Free-form JSON object from the prompt's source (ids, topics…), kept as given."
    )
    content_hash = models.CharField(
        max_length=64, help_text="sha256 of the content with only line endings normalised: re-imports dedupe."
    )
    demonstration_count = models.PositiveIntegerField(default=0, help_text="Non-rejected demonstrations.")
    uncertainty = models.FloatField(
        null=True, blank=True,
        help_text="Active learning: the highest uncertainty of this prompt's ranking tasks under the latest scoring "
                  "reward model (admins only; never shown to annotators).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_hash"], name="prompt_unique_content"),
            models.CheckConstraint(
                condition=(Q(messages__isnull=True) & ~Q(text="")) | (Q(messages__isnull=False) & Q(text="")),
                name="prompt_text_xor_messages",
            ),
        ]
        indexes = [models.Index(fields=["project", "demonstration_count", "created_at", "id"], name="prompt_queue")]

    def __str__(self) -> str:
        return self.preview

    @property
    def preview(self) -> str:
        body = self.text if not self.messages else self.messages[-1].get("content", "")
        return body[:80] + ("…" if len(body) > 80 else "")

    def get_category_display(self) -> str:
        """InstructGPT's label for its ten categories ("Open QA"); a custom category as it is named."""
        try:
            return Category(self.category).label
        except ValueError:
            return self.category

    @property
    def turns(self) -> list[dict]:
        """The prompt as chat turns, whichever way it was stored."""
        return list(self.messages) if self.messages else [{"role": "user", "content": self.text}]


class ModelVersion(models.Model):
    class Kind(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD = "reward", "Reward model"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="model_versions", null=True, blank=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POLICY)
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
    artifact_path = models.CharField(max_length=500, blank=True)
    training_data = models.JSONField(default=dict, blank=True, help_text="The label snapshot: ids, counts, hash.")
    metrics = models.JSONField(default=dict, blank=True)
    is_current = models.BooleanField(default=False, help_text="The project's current policy / reward model.")
    run = models.ForeignKey(
        "labelapp.TrainingRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="registered_models",
        help_text="The training run that registered it (at most one model per run).",
    )
    disk_bytes = models.BigIntegerField(
        null=True, blank=True,
        help_text="Bytes its artifact takes in DATA_DIR (a LoRA adapter: the adapter alone); measured when its run "
                  "finished or by `manage.py disk_usage`.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "kind"], condition=Q(is_current=True), name="modelversion_one_current_per_kind"
            ),
            models.UniqueConstraint(fields=["run"], condition=Q(run__isnull=False), name="modelversion_once_per_run"),
        ]

    def __str__(self) -> str:
        return self.name


class Completion(models.Model):
    class Source(models.TextChoices):
        MODEL = "model", "Sampled from a model version"
        IMPORTED = "imported", "Imported"
        HANDWRITTEN = "handwritten", "Hand-written"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="completions")
    text = models.TextField()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.MODEL)
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="completions"
    )
    decoding = models.JSONField(default=dict, blank=True, help_text="Decoding settings, seed and token counts.")
    run = models.ForeignKey(
        "labelapp.TrainingRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="completions",
        help_text="The sampling or evaluation run that wrote it.",
    )
    sample_index = models.PositiveSmallIntegerField(
        default=0, help_text="Which of the run's samples for this prompt and model version (0 … k-1)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(source="model") | Q(model_version__isnull=False), name="completion_model_has_version"
            ),
            # a run writes each of its samples once, even when it is retried after dying mid-write
            models.UniqueConstraint(
                fields=["run", "prompt", "model_version", "sample_index"], condition=Q(run__isnull=False),
                name="completion_once_per_run_item",
            ),
        ]

    def __str__(self) -> str:
        return self.text[:60]

    @property
    def cut_off_at(self) -> int | None:
        """The number of tokens at which the token limit stopped this completion, or None when
        it ended on its own (EOS) or its finish reason is not known (imported, hand-written)."""
        decoding = self.decoding or {}
        if decoding.get("finish_reason") != "length":
            return None
        return decoding.get("completion_tokens") or decoding.get("max_new_tokens")


class RankingTask(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="ranking_tasks")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="ranking_tasks")
    completions = models.ManyToManyField(Completion, related_name="ranking_tasks")
    ranking_count = models.PositiveIntegerField(default=0, help_text="Submitted rankings.")
    gold_order = models.JSONField(
        null=True, blank=True,
        help_text="Gold items only: the expected ranking (tie groups of completion ids, best first). Gold tasks are "
                  "served to every annotator once, scored, and never used for training or counted in agreement.",
    )
    uncertainty = models.FloatField(
        null=True, blank=True,
        help_text="Active learning: the reward model's uncertainty about this task's order, the mean binary entropy "
                  "(nats, 0 to ln 2) of its Bradley-Terry probabilities over the task's pairs. Admins only.",
    )
    uncertainty_model = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The reward model that scored `uncertainty`.",
    )
    run = models.ForeignKey(
        "labelapp.TrainingRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="ranking_tasks",
        help_text="The sampling run that wrote it (one task per prompt per run).",
    )
    round = models.ForeignKey(
        "labelapp.Round", on_delete=models.SET_NULL, null=True, blank=True, related_name="ranking_tasks",
        help_text="The round whose sampling created this task (none for imported or hand-made tasks).",
    )
    priority = models.IntegerField(
        default=0,
        help_text="The rank queue serves higher priorities first, then fewest rankings, then oldest. A round's "
                  "own tasks get the round's `priority` setting while the round runs and drop back to 0 when it ends.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["project", "-priority", "ranking_count", "created_at", "id"],
                                name="rankingtask_queue_priority")]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "prompt"], condition=Q(run__isnull=False), name="rankingtask_once_per_run_prompt"
            ),
        ]

    @property
    def is_gold(self) -> bool:
        return self.gold_order is not None

    def __str__(self) -> str:
        return f"Task {self.pk}: {self.prompt.preview}"


class Assignment(models.Model):
    """One annotator's hold on one item (a prompt to write for, or a ranking task).

    `expires_at` is the lease: after it the item counts as free again and the holder's
    submission is refused. A (user, item) pair has at most one row, so an annotator can
    never label the same item twice. A user holds at most one `active` row per project and
    queue (a partial unique index): when they claim again after their lease ran out, that row
    becomes `expired` first (labelapp.services.queue.task_claim).
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Leased"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Lease expired"
        WITHDRAWN = "withdrawn", "Withdrawn"  # submitted, then taken back by its annotator

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    queue = models.CharField(max_length=8, choices=Queue.choices)
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, null=True, blank=True, related_name="assignments")
    ranking_task = models.ForeignKey(
        RankingTask, on_delete=models.CASCADE, null=True, blank=True, related_name="assignments"
    )
    evaluation_task = models.ForeignKey(
        "labelapp.EvaluationTask", on_delete=models.CASCADE, null=True, blank=True, related_name="assignments"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(queue="write") & Q(prompt__isnull=False) & Q(ranking_task__isnull=True)
                    & Q(evaluation_task__isnull=True)
                )
                | (
                    Q(queue="rank") & Q(ranking_task__isnull=False) & Q(prompt__isnull=True)
                    & Q(evaluation_task__isnull=True)
                )
                | (
                    Q(queue="compare") & Q(evaluation_task__isnull=False) & Q(prompt__isnull=True)
                    & Q(ranking_task__isnull=True)
                ),
                name="assignment_one_item_matching_queue",
            ),
            models.UniqueConstraint(
                fields=["user", "prompt"], condition=Q(prompt__isnull=False), name="assignment_once_per_prompt"
            ),
            models.UniqueConstraint(
                fields=["user", "ranking_task"],
                condition=Q(ranking_task__isnull=False),
                name="assignment_once_per_task",
            ),
            models.UniqueConstraint(
                fields=["user", "evaluation_task"],
                condition=Q(evaluation_task__isnull=False),
                name="assignment_once_per_evaluation",
            ),
            models.UniqueConstraint(
                fields=["user", "project", "queue"], condition=Q(status="active"), name="assignment_one_active_per_queue"
            ),
        ]
        indexes = [
            models.Index(fields=["ranking_task", "status", "expires_at"], name="assignment_task_lease"),
            models.Index(fields=["prompt", "status", "expires_at"], name="assignment_prompt_lease"),
            models.Index(fields=["evaluation_task", "status", "expires_at"], name="assignment_evaluation_lease"),
            models.Index(fields=["user", "project", "queue", "status"], name="assignment_user_queue"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.queue} {self.item_id} ({self.status})"

    @property
    def item_id(self) -> int | None:
        return {Queue.WRITE: self.prompt_id, Queue.RANK: self.ranking_task_id}.get(self.queue, self.evaluation_task_id)


class Demonstration(models.Model):
    class Review(models.TextChoices):
        PENDING = "pending", "Pending review"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="demonstrations")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="demonstrations")
    assignment = models.OneToOneField(
        Assignment, on_delete=models.SET_NULL, null=True, blank=True, related_name="demonstration"
    )
    text = models.TextField()
    time_spent_ms = models.PositiveIntegerField(default=0)
    review_status = models.CharField(max_length=16, choices=Review.choices, default=Review.PENDING)
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="reviews"
    )
    review_comment = models.TextField(blank=True)
    reviewed_at = models.DateTimeField(null=True, blank=True)
    paste_log = models.JSONField(default=list, blank=True,
                                 help_text="Paste events on the write page: [{at_ms, chars}], at_ms into the task.")
    pasted_chars = models.PositiveIntegerField(default=0, help_text="Characters pasted (at most the answer's length).")
    quality_flags = models.JSONField(default=list, blank=True,
                                     help_text='Why a reviewer should look closely: [{"kind": …, "detail": …}].')
    flagged = models.BooleanField(default=False, help_text="Has quality flags: reviewed first.")
    embedding = models.JSONField(null=True, blank=True, help_text="Sentence embedding, for near-duplicate checks.")
    checked_at = models.DateTimeField(null=True, blank=True, help_text="When the near-duplicate check ran.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "author"], name="demonstration_once_per_author"),
            models.CheckConstraint(condition=~Q(text=""), name="demonstration_not_empty"),
        ]

    def __str__(self) -> str:
        return f"Demonstration {self.pk} by {self.author}"


class Flag(models.TextChoices):
    HARMFUL = "harmful", "Harmful"
    UNTRUTHFUL = "untruthful", "Untruthful"
    IGNORES_INSTRUCTION = "ignores_instruction", "Ignores the instruction"


class Ranking(models.Model):
    """An annotator's ordering of a task's completions, best first.

    `order` is a list of tie groups of completion ids: [[7], [3, 9], [4]] means 7 is best,
    3 and 9 tie, 4 is worst. `flags` maps completion id → list of Flag values; `scores` maps
    completion id → 1..7 quality score (optional, per completion).
    """

    task = models.ForeignKey(RankingTask, on_delete=models.CASCADE, related_name="rankings")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rankings")
    assignment = models.OneToOneField(
        Assignment, on_delete=models.SET_NULL, null=True, blank=True, related_name="ranking"
    )
    order = models.JSONField(default=list, blank=True)
    none_acceptable = models.BooleanField(default=False)
    flags = models.JSONField(default=dict, blank=True)
    scores = models.JSONField(default=dict, blank=True)
    time_spent_ms = models.PositiveIntegerField(default=0)
    gold_score = models.FloatField(
        null=True, blank=True,
        help_text="On a gold task: share of the expected order's strict pairs this ranking orders the same way.",
    )
    ai_agreement = models.FloatField(
        null=True, blank=True,
        help_text="When an AI suggestion was shown: share of its strict pairs this ranking orders the same way.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["task", "annotator"], name="ranking_once_per_annotator")]
        indexes = [models.Index(fields=["task", "id"], name="ranking_task_then_id")]  # export keyset pages

    def __str__(self) -> str:
        return f"Ranking {self.pk} of task {self.task_id} by {self.annotator}"

    def clean(self) -> None:
        for cid, value in (self.scores or {}).items():
            if not isinstance(value, int) or not 1 <= value <= 7:
                raise ValidationError({"scores": f"score for completion {cid} must be an integer from 1 to 7"})


class ApiToken(models.Model):
    """A per-user API key. Only the SHA-256 of the key is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="First characters of the key, to recognise it.")
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
