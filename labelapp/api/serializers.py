"""Output shapes of the API. Annotators are shown as pseudonyms, never as user names."""
from __future__ import annotations

from rest_framework import serializers

from labelapp.exports import pseudonym
from labelapp.models import ApiToken, Completion, Demonstration, ModelVersion, Project, Prompt, Ranking, RankingTask


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["id", "name", "slug", "guidelines", "base_model", "k", "overlap", "demonstrations_per_prompt",
                  "sampling", "created_at"]


class PromptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "project", "text", "messages", "category", "source", "split", "reference",
                  "demonstration_count", "created_at"]


class CompletionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Completion
        fields = ["id", "prompt", "text", "source", "model_version", "decoding", "created_at"]


class RankingTaskSerializer(serializers.ModelSerializer):
    completions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = RankingTask
        fields = ["id", "project", "prompt", "completions", "ranking_count", "created_at"]


class AnnotatorField(serializers.Field):
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
    class Meta:
        model = ModelVersion
        fields = ["id", "project", "name", "kind", "parent", "artifact_path", "training_data", "metrics", "created_at"]


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


class AgreementSerializer(serializers.Serializer):
    items_with_overlap = serializers.IntegerField()
    pairwise_agreement = serializers.FloatField(allow_null=True)
    pairwise_comparisons = serializers.IntegerField()
    krippendorff_alpha_ordinal = serializers.FloatField(allow_null=True)
    annotators = serializers.DictField(child=serializers.DictField())
