from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from labelapp import models


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written only by services (runs, rounds, labels, evaluation, quality): shown, not edited. Their
    counters, state machines and label snapshots are kept by labelapp.services; an edit or a delete here
    would bypass them (use the studio or the API to act)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "k", "overlap", "demonstrations_per_prompt", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug")


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "project", "role")
    list_filter = ("role", "project")
    search_fields = ("user__username",)
    raw_id_fields = ("user",)


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "preview", "project", "category", "split", "source", "demonstration_count", "created_at")
    list_filter = ("project", "category", "split", "source")
    search_fields = ("text", "content_hash")
    readonly_fields = ("content_hash", "demonstration_count")


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "project", "parent", "is_current", "disk_bytes", "created_at")
    list_filter = ("kind", "is_current", "project")
    search_fields = ("name", "artifact_path")
    raw_id_fields = ("parent",)
    readonly_fields = ("disk_bytes",)


@admin.register(models.Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "source", "model_version", "created_at")
    list_filter = ("source", "model_version")
    search_fields = ("text",)
    raw_id_fields = ("prompt", "model_version")


class RankingInline(admin.TabularInline):
    model = models.Ranking
    extra = 0
    fields = ("annotator", "order", "none_acceptable", "time_spent_ms", "created_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class _DryRun(Exception):
    pass


class RankingTaskGoldForm(forms.ModelForm):
    """The one thing the admin edits on a ranking task: its gold answer, through the same service as the
    studio (labelapp.services.quality.ranking_task_set_gold: the order checked, the task's rankings scored,
    a decided task refused, the project's admin role required). The form runs the service once and rolls
    it back, so every refusal shows on the field and nothing is saved; save_model runs it for real."""

    class Meta:
        model = models.RankingTask
        fields = ("gold_order",)

    user = None  # set by RankingTaskAdmin.get_form

    def clean(self):
        from labelapp.services.quality import ranking_task_set_gold

        data = super().clean()
        if self.instance.pk and "gold_order" in self.changed_data and not self.errors:
            try:
                with transaction.atomic():
                    ranking_task_set_gold(task_id=self.instance.pk, user=self.user, order=data.get("gold_order"))
                    raise _DryRun
            except _DryRun:
                pass
            except ValidationError as exc:
                self.add_error("gold_order", exc)
            except PermissionDenied as exc:
                self.add_error(None, str(exc))
        return data


@admin.register(models.RankingTask)
class RankingTaskAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "project", "ranking_count", "created_at")
    list_filter = ("project",)
    form = RankingTaskGoldForm
    fields = ("project", "prompt", "completions", "ranking_count", "gold_order", "priority", "uncertainty", "round",
              "created_at")
    readonly_fields = ("project", "prompt", "completions", "ranking_count", "priority", "uncertainty", "round",
                       "created_at")
    inlines = [RankingInline]

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # tasks come from sampling, imports and the API

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # would take its rankings with it, past the label freeze and the lineage

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        form.user = request.user
        return form

    def save_model(self, request, obj, form, change):
        from labelapp.services.quality import ranking_task_set_gold

        if change and "gold_order" in form.changed_data:
            ranking_task_set_gold(task_id=obj.pk, user=request.user, order=form.cleaned_data.get("gold_order"))


@admin.register(models.Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "queue", "prompt", "ranking_task", "status", "leased_at", "expires_at")
    list_filter = ("queue", "status", "project")
    raw_id_fields = ("user", "prompt", "ranking_task")


@admin.register(models.Demonstration)
class DemonstrationAdmin(ReadOnlyAdmin):
    list_display = ("id", "prompt", "author", "review_status", "reviewer", "created_at")
    list_filter = ("review_status", "prompt__project")
    search_fields = ("text",)
    raw_id_fields = ("prompt", "author", "reviewer", "assignment")


@admin.register(models.Ranking)
class RankingAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "annotator", "none_acceptable", "time_spent_ms", "created_at")
    list_filter = ("none_acceptable", "task__project")
    raw_id_fields = ("task", "annotator", "assignment")


# --- more rows written only by services: shown, not edited (ReadOnlyAdmin above) --------------------


@admin.register(models.Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ("id", "project", "number", "method", "stage", "new_policy", "created_by", "created_at", "finished_at")
    list_filter = ("stage", "method", "project")
    search_fields = ("project__slug", "project__name", "error")
    date_hierarchy = "created_at"


@admin.register(models.TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "status", "project", "round", "step", "total", "attempts", "output_model", "disk", "created_at", "finished_at")
    list_filter = ("status", "kind", "project")
    search_fields = ("id", "celery_task_id", "error", "project__slug")
    date_hierarchy = "created_at"
    actions = ["cancel_runs"]

    @admin.display(description="disk (MB)")
    def disk(self, obj):
        value = (obj.result or {}).get("disk_bytes")
        return "" if value is None else f"{value / 1e6:.1f}"

    @admin.action(description="Cancel selected runs (queued: at once; running: at the next step)")
    def cancel_runs(self, request, queryset):
        from django.contrib import messages
        from django.core.exceptions import PermissionDenied, ValidationError

        from labelapp.services.runs import run_cancel

        done = 0
        for run in queryset:
            try:
                run_cancel(run_id=run.pk, user=request.user)
                done += 1
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(request, f"Run {run.pk}: {'; '.join(getattr(exc, 'messages', [str(exc)]))}", messages.WARNING)
        self.message_user(request, f"Cancel requested for {done} run(s).")


@admin.register(models.EvaluationTask)
class EvaluationTaskAdmin(ReadOnlyAdmin):
    list_display = ("id", "project", "round", "model_a", "model_b", "comparison_count", "reward_a", "reward_b", "gold_winner", "created_at")
    list_filter = ("project", "gold_winner")
    search_fields = ("prompt__text",)


@admin.register(models.Comparison)
class ComparisonAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "annotator", "winner", "a_shown_left", "gold_correct", "time_spent_ms", "created_at")
    list_filter = ("winner", "a_shown_left", "task__project")
    search_fields = ("annotator__username",)


@admin.register(models.ReliabilityFit)
class ReliabilityFitAdmin(ReadOnlyAdmin):
    list_display = ("id", "project", "units", "gold_units", "iterations", "converged", "seconds", "created_at")
    list_filter = ("converged", "project")


@admin.register(models.Adjudication)
class AdjudicationAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "reviewer", "confidence_before", "created_at")
    list_filter = ("task__project",)
    search_fields = ("reviewer__username", "comment")


@admin.register(models.AILabel)
class AILabelAdmin(ReadOnlyAdmin):
    list_display = ("id", "task", "source", "model_version", "created_at")
    list_filter = ("source", "task__project")


@admin.register(models.ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Keys are created with `manage.py api_token_create` or the API (the key is shown once there);
    here a token can be renamed or revoked. The digest is never editable and only its start is shown."""

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    fields = ("user", "name", "prefix", "digest_start", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("user", "prefix", "digest_start", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    @admin.display(description="digest (SHA-256, start)")
    def digest_start(self, obj):
        return f"{obj.digest[:8]}…" if obj and obj.digest else ""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        from django.utils import timezone

        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {n} token(s).")


# ---- prompt templates (issue 19) ----
@admin.register(models.PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "version", "mode", "few_shot", "updated_at")
    list_filter = ("project", "mode")
    search_fields = ("name", "text")
    readonly_fields = ("version",)  # edits through the studio or the API bump it

    def save_model(self, request, obj, form, change):
        from labelapp.models.templates import RENDERED_FIELDS

        if change and set(form.changed_data) & set(RENDERED_FIELDS):
            obj.version += 1
        super().save_model(request, obj, form, change)
