"""Prompt templates over the API (labelapp.services.templates):

    GET/POST         /api/v1/projects/{id}/templates/                 list (reviewers) / create (admins)
    GET/PATCH/DELETE /api/v1/projects/{id}/templates/{template_id}/   one template; PATCH bumps its version
    POST             /api/v1/projects/{id}/templates/preview/         render a row as the annotator will see it
    POST             /api/v1/projects/{id}/imports/templated/         rows file -> prompts, all or nothing

A template is looked up inside the project named in the URL, which is itself looked up among
the caller's projects: another project's template is a 404, whatever the caller's role elsewhere.
"""
from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from labelapp.api.errors import NON_FIELD, Invalid
from labelapp.api.uploads import LimitedUploadMixin
from labelapp.api.views import REFUSED, Cursor, project_for
from labelapp.formats.prompts import detect_format
from labelapp.formats.templating import CHOICES, MODES, Template, TemplateError
from labelapp.models import Prompt, PromptTemplate, Role
from labelapp.models.templates import template_error_field
from labelapp.services.templates import (
    prompt_template_create,
    prompt_template_delete,
    prompt_template_update,
    template_preview,
    templated_import,
)

FIELDS = ["name", "text", "system_prompt", "cot_cue", "few_shot", "seed", "mode", "separator", "answer_prefix"]


class TemplateSerializer(serializers.ModelSerializer):
    placeholders = serializers.SerializerMethodField()

    class Meta:
        model = PromptTemplate
        fields = ["id", "project", *FIELDS, "version", "placeholders", "created_at", "updated_at"]

    def get_placeholders(self, obj) -> list[str]:
        try:
            return list(obj.as_template().placeholders)
        except TemplateError:
            return []


class TemplateInputSerializer(serializers.Serializer):
    """Types only; what a template may say is the service's to judge (one place for the rules)."""

    name = serializers.CharField(max_length=120, allow_blank=True)
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)
    system_prompt = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    cot_cue = serializers.CharField(required=False, allow_blank=True, max_length=500, trim_whitespace=False)
    few_shot = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False, min_value=-(2**31), max_value=2**31 - 1)
    mode = serializers.ChoiceField(required=False, choices=MODES)
    separator = serializers.CharField(required=False, allow_blank=True, max_length=20, trim_whitespace=False)
    answer_prefix = serializers.CharField(required=False, allow_blank=True, max_length=60, trim_whitespace=False)


def _template_or_404(project, template_id) -> PromptTemplate:
    template = PromptTemplate.objects.filter(project=project, pk=template_id).first()
    if template is None:
        raise NotFound("No such template.")
    return template


class TemplateListView(GenericAPIView):
    serializer_class = TemplateSerializer
    pagination_class = Cursor
    queryset = PromptTemplate.objects.none()

    @extend_schema(operation_id="projects_templates_list")
    def get(self, request, project_id: str):
        project = project_for(request, project_id, Role.REVIEWER)
        page = self.paginate_queryset(PromptTemplate.objects.filter(project=project))
        return self.get_paginated_response(TemplateSerializer(page, many=True).data)

    @extend_schema(request=TemplateInputSerializer, responses={201: TemplateSerializer})
    def post(self, request, project_id: str):
        project = project_for(request, project_id, Role.ADMIN)
        body = TemplateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        template = prompt_template_create(project=project, **body.validated_data)  # ValidationError -> 400
        return Response(TemplateSerializer(template).data, status=status.HTTP_201_CREATED)


class TemplateDetailView(APIView):
    @extend_schema(responses=TemplateSerializer)
    def get(self, request, project_id: str, template_id: int):
        project = project_for(request, project_id, Role.REVIEWER)
        return Response(TemplateSerializer(_template_or_404(project, template_id)).data)

    @extend_schema(request=TemplateInputSerializer, responses=TemplateSerializer)
    def patch(self, request, project_id: str, template_id: int):
        project = project_for(request, project_id, Role.ADMIN)
        template = _template_or_404(project, template_id)
        body = TemplateInputSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        template = prompt_template_update(project=project, template_id=template.pk, **body.validated_data)
        return Response(TemplateSerializer(template).data)

    @extend_schema(responses={204: None})
    def delete(self, request, project_id: str, template_id: int):
        project = project_for(request, project_id, Role.ADMIN)
        prompt_template_delete(project=project, template_id=_template_or_404(project, template_id).pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


class PreviewInputSerializer(TemplateInputSerializer):
    template = serializers.IntegerField(required=False, help_text="a stored template's id (else give its fields)")
    name = serializers.CharField(max_length=120, required=False, default="preview")
    text = serializers.CharField(required=False, trim_whitespace=False)
    rows = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=200,
                                 help_text="sample rows of fields; few-shot examples are drawn from the others")
    row = serializers.IntegerField(min_value=1, default=1, help_text="which row to render (1-based)")
    extra_fields = serializers.ListField(child=serializers.CharField(), required=False, default=list)


class PreviewOutputSerializer(serializers.Serializer):
    text = serializers.CharField()
    messages = serializers.ListField(child=serializers.DictField(), allow_null=True)
    reference = serializers.CharField()
    examples = serializers.ListField(child=serializers.IntegerField())
    metadata = serializers.DictField()


class TemplatePreviewView(APIView):
    """The row rendered as it would be imported: a stored template (`template`) or unsaved fields."""

    @extend_schema(request=PreviewInputSerializer, responses=PreviewOutputSerializer)
    def post(self, request, project_id: str):
        project = project_for(request, project_id, Role.REVIEWER)
        body = PreviewInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        rows, row, extra = data.pop("rows"), data.pop("row"), data.pop("extra_fields")
        if "template" in data:
            template = _template_or_404(project, data.pop("template")).as_template()
        elif "text" not in data:
            raise Invalid({"text": "give a stored template's id as 'template', or the template's text"})
        else:
            template = Template(**{k: v for k, v in data.items() if k in FIELDS})
        try:
            rendered = template_preview(template=template, rows=rows, index=row - 1, extra_fields=extra)
        except TemplateError as exc:
            field = template_error_field(str(exc)) if str(exc).startswith("template") else "rows"
            raise Invalid({field: str(exc)}) from None
        return Response(PreviewOutputSerializer({
            "text": rendered.text, "messages": rendered.messages, "reference": rendered.reference,
            "examples": rendered.examples, "metadata": rendered.metadata,
        }).data)


class TemplatedImportInput(serializers.Serializer):
    file = serializers.FileField()
    templates = serializers.CharField(help_text="template ids or names, comma-separated")
    choice = serializers.ChoiceField(choices=CHOICES, default="round-robin")
    seed = serializers.IntegerField(default=0)
    category = serializers.CharField(required=False, allow_blank=True)
    split = serializers.ChoiceField(choices=Prompt.Split.values, default=Prompt.Split.TRAIN)
    extra_fields = serializers.CharField(required=False, allow_blank=True, default="",
                                         help_text="fields kept as metadata only, comma-separated")
    format = serializers.ChoiceField(choices=["jsonl", "csv"], required=False)


class TemplatedImportOutput(serializers.Serializer):
    created = serializers.IntegerField()
    duplicates = serializers.IntegerField()


class TemplatedImportView(LimitedUploadMixin, APIView):
    """Render each row of a JSONL/CSV file of fields through templates into prompts: all or nothing."""

    parser_classes = [MultiPartParser]

    @extend_schema(request={"multipart/form-data": TemplatedImportInput}, responses={201: TemplatedImportOutput})
    def post(self, request, project_id: str):
        project = project_for(request, project_id, Role.REVIEWER)
        self.upload_or_none(request)  # 413 when the limit stopped the upload
        body = TemplatedImportInput(data=request.data)
        body.is_valid(raise_exception=True)
        v = body.validated_data
        upload = v["file"]
        try:
            fmt = v.get("format") or detect_format(upload.name)
        except ValueError as exc:
            raise Invalid({"format": str(exc)}) from None
        if upload.size > settings.IMPORT_MAX_BYTES:
            raise Invalid({"file": f"the file is {upload.size:,} bytes; the limit is {settings.IMPORT_MAX_BYTES:,} bytes"},
                          summary=REFUSED)
        refs = [r.strip() for r in v["templates"].split(",") if r.strip()]
        try:
            result = templated_import(
                project=project, data=upload, fmt=fmt, template_ids=refs, choice=v["choice"], seed=v["seed"],
                category=v.get("category") or None, split=v["split"],
                extra_fields=[f.strip() for f in v["extra_fields"].split(",") if f.strip()],
            )
        except DjangoValidationError as exc:
            raise Invalid({"file": exc.messages}, summary=REFUSED) from None
        return Response(TemplatedImportOutput(result).data, status=status.HTTP_201_CREATED)


__all__ = ["NON_FIELD", "TemplateDetailView", "TemplateListView", "TemplatePreviewView", "TemplatedImportView"]
