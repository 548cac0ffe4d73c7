"""Output shapes of the API. Annotators are shown as pseudonyms, never as user names.

Blind labelling: where a field says which model produced something (a completion's model
version, decoding settings and source; a project's base model and sampling settings), only
reviewers and admins of that project get it; for annotators the field is left out, so an A/B
evaluation cannot be unblinded through the API (REVIEWER_ONLY_FIELDS, also in the schema)."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from labelapp.formats.exports import pseudonym
from labelapp.models import (
    ApiToken,
    Completion,
    Demonstration,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    RankingTask,
    Role,
)
from labelapp.selectors import labels as selectors

# schema component → fields only reviewers and admins receive (see config.settings' schema hook)
REVIEWER_ONLY_FIELDS = {
    "Project": ("base_model", "sampling"),
    "Completion": ("model_version", "decoding", "source"),
    "RankingTask": ("ranking_count",),  # every annotator ranks a gold task: a count above overlap gives it away
}


def reviewer_projects(request) -> set[int]:
    """Ids of the projects where the request's user is a reviewer or admin (once per request)."""
    if request is None:
        return set()
    cached = getattr(request, "_reviewer_projects", None)
    if cached is None:
        cached = set(selectors.project_ids(request.user, min_role=Role.REVIEWER).values_list("id", flat=True))
        request._reviewer_projects = cached
    return cached


class ReviewerFieldsMixin:
    """Leaves the component's REVIEWER_ONLY_FIELDS out for users below reviewer in the object's project."""

    component: str = ""

    def project_id_of(self, obj) -> int:
        raise NotImplementedError

    def to_representation(self, obj):
        data = super().to_representation(obj)
        if self.project_id_of(obj) not in reviewer_projects(self.context.get("request")):
            for name in REVIEWER_ONLY_FIELDS[self.component]:
                data.pop(name, None)
        return data


class ProjectSerializer(ReviewerFieldsMixin, serializers.ModelSerializer):
    component = "Project"

    class Meta:
        model = Project
        fields = ["id", "name", "slug", "guidelines", "base_model", "k", "overlap", "demonstrations_per_prompt",
                  "categories", "sampling", "created_at"]

    def project_id_of(self, obj) -> int:
        return obj.pk


class PromptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "project", "text", "messages", "category", "source", "split", "reference", "metadata",
                  "demonstration_count", "created_at"]


class CompletionSerializer(ReviewerFieldsMixin, serializers.ModelSerializer):
    component = "Completion"

    class Meta:
        model = Completion
        fields = ["id", "prompt", "text", "source", "model_version", "decoding", "created_at"]

    def project_id_of(self, obj) -> int:
        return obj.prompt.project_id


class RankingTaskSerializer(ReviewerFieldsMixin, serializers.ModelSerializer):
    component = "RankingTask"
    completions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = RankingTask
        fields = ["id", "project", "prompt", "completions", "ranking_count", "created_at"]

    def project_id_of(self, obj) -> int:
        return obj.project_id


@extend_schema_field(OpenApiTypes.STR)
class AnnotatorField(serializers.Field):
    """An annotator's stable pseudonym ("ann_…")."""

    def to_representation(self, value: int) -> str:
        return pseudonym(value)


class DemonstrationSerializer(serializers.ModelSerializer):
    author = AnnotatorField(source="author_id", read_only=True)

    class Meta:
        model = Demonstration
        fields = ["id", "prompt", "author", "text", "time_spent_ms", "review_status", "review_comment",
                  "reviewed_at", "created_at"]


class RankingSerializer(serializers.ModelSerializer):
    annotator = AnnotatorField(source="annotator_id", read_only=True)

    class Meta:
        model = Ranking
        fields = ["id", "task", "annotator", "order", "none_acceptable", "flags", "scores", "time_spent_ms",
                  "created_at"]


class ModelVersionSerializer(serializers.ModelSerializer):
    length_diagnostics = serializers.SerializerMethodField(
        help_text="Reward models: held-out accuracy overall and where the chosen answer is longer / shorter, "
                  "share preferring the longer answer, the 'longer wins' baseline, reward-length correlation "
                  "(lengths in characters); null for policies.")

    class Meta:
        model = ModelVersion
        fields = ["id", "project", "name", "kind", "parent", "artifact_path", "training_data", "metrics",
                  "length_diagnostics", "created_at"]

    def get_length_diagnostics(self, obj) -> dict | None:
        from labelapp.selectors.length_watch import length_diagnostics

        return length_diagnostics(obj.metrics)


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]


class ApiTokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    key = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "key"]


class ImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()


class CategoryRowSerializer(serializers.Serializer):
    category = serializers.CharField(help_text="The category name ('' for prompts without one).")
    listed = serializers.BooleanField(help_text="Whether the project still lists it among its categories.")
    prompts = serializers.IntegerField()
    prompts_share = serializers.FloatField(allow_null=True, help_text="% of the project's prompts.")
    demonstrations = serializers.IntegerField(help_text="Demonstrations that review has not rejected.")
    demonstrations_share = serializers.FloatField(allow_null=True)
    rankings = serializers.IntegerField(help_text="People's rankings of tasks that are not gold.")
    rankings_share = serializers.FloatField(allow_null=True)
    instructgpt_share = serializers.FloatField(
        allow_null=True, help_text="% of InstructGPT's API prompts in this use case (Ouyang et al. 2022, table 1); "
                                   "null for a category it did not have.")


class CategoryMixSerializer(serializers.Serializer):
    categories = CategoryRowSerializer(many=True)
    totals = serializers.DictField(child=serializers.IntegerField())


class AgreementSerializer(serializers.Serializer):
    items_with_overlap = serializers.IntegerField()
    pairwise_agreement = serializers.FloatField(allow_null=True)
    pairwise_comparisons = serializers.IntegerField()
    pairwise_agreement_without_ties = serializers.FloatField(allow_null=True)
    pairwise_comparisons_without_ties = serializers.IntegerField()
    krippendorff_alpha_pairwise_nominal = serializers.FloatField(allow_null=True)
    krippendorff_alpha_pairwise_ordinal = serializers.FloatField(allow_null=True)
    krippendorff_alpha_ordinal = serializers.FloatField(
        allow_null=True, help_text="Rank-position alpha: ordinal alpha over each response's rank (docs/API.md)."
    )
    annotators = serializers.DictField(child=serializers.DictField())


class AnnotatorQualitySerializer(serializers.Serializer):
    user_id = serializers.IntegerField()
    username = serializers.CharField()
    rankings = serializers.IntegerField()
    gold_items = serializers.IntegerField()
    gold_accuracy = serializers.FloatField(allow_null=True)
    agreement_with_others = serializers.FloatField(allow_null=True)
    agreement_with_others_n = serializers.IntegerField()
    agreement_with_consensus = serializers.FloatField(allow_null=True)
    agreement_with_consensus_n = serializers.IntegerField()
    reliability = serializers.FloatField(allow_null=True)
    reliability_low = serializers.FloatField(allow_null=True)
    reliability_high = serializers.FloatField(allow_null=True)
    tie_rate = serializers.FloatField(allow_null=True)
    labels_per_hour = serializers.FloatField(allow_null=True, help_text="Timed rankings per hour of their time on task.")
    median_time_ms = serializers.FloatField(allow_null=True, help_text="Median time on task of the timed rankings.")
    timed_rankings = serializers.IntegerField(help_text="Rankings sent with a time on task (time_spent_ms > 0).")
    untimed_share = serializers.FloatField(allow_null=True, help_text="Share of the rankings sent without a time on "
                                                                      "task; pace and the 'too fast' flag ignore them.")
    flags = serializers.ListField(child=serializers.CharField())


class ReliabilityFitSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    pairs = serializers.IntegerField()
    gold_pairs = serializers.IntegerField()
    iterations = serializers.IntegerField()
    converged = serializers.BooleanField()
    seconds = serializers.FloatField()


class AnnotatorReportSerializer(serializers.Serializer):
    fit = ReliabilityFitSerializer(allow_null=True)
    project_median_time_ms = serializers.FloatField(allow_null=True)
    annotators = AnnotatorQualitySerializer(many=True)


class GoldItemSerializer(serializers.Serializer):
    ranking_task = serializers.IntegerField(required=False)
    evaluation_task = serializers.IntegerField(required=False)
    expected = serializers.JSONField(allow_null=True, help_text="Ranking tasks: tie groups of completion ids, best "
                                     "first; evaluation tasks: a, b or tie; null makes the item ordinary again.")


class GoldImportSerializer(serializers.Serializer):
    items = GoldItemSerializer(many=True)
