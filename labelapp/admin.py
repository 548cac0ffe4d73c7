from django.contrib import admin

from labelapp import models


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
    list_display = ("name", "kind", "project", "parent", "created_at")
    list_filter = ("kind", "project")
    raw_id_fields = ("parent",)


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


@admin.register(models.RankingTask)
class RankingTaskAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "project", "ranking_count", "created_at")
    list_filter = ("project",)
    raw_id_fields = ("prompt", "completions")
    readonly_fields = ("ranking_count",)
    inlines = [RankingInline]


@admin.register(models.Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "queue", "prompt", "ranking_task", "status", "leased_at", "expires_at")
    list_filter = ("queue", "status", "project")
    raw_id_fields = ("user", "prompt", "ranking_task")


@admin.register(models.Demonstration)
class DemonstrationAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "author", "review_status", "reviewer", "created_at")
    list_filter = ("review_status", "prompt__project")
    search_fields = ("text",)
    raw_id_fields = ("prompt", "author", "reviewer", "assignment")


@admin.register(models.Ranking)
class RankingAdmin(admin.ModelAdmin):
    list_display = ("id", "task", "annotator", "none_acceptable", "time_spent_ms", "created_at")
    list_filter = ("none_acceptable", "task__project")
    raw_id_fields = ("task", "annotator", "assignment")


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
