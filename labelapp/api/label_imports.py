"""POST /api/v1/projects/{id}/imports/labels/: rankings, preference pairs, completions and
demonstrations from a file (optionally gzipped), all or nothing. Reviewers and admins only."""
from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from labelapp.api.errors import Invalid
from labelapp.api.uploads import LimitedUploadMixin
from labelapp.api.views import REFUSED, project_for
from labelapp.formats.labels import FORMATS
from labelapp.models import Role
from labelapp.services.label_imports import KINDS, labels_import


def _counts():
    return serializers.DictField(child=serializers.IntegerField(), help_text=f"per kind: {', '.join(KINDS)}")


class LabelImportView(LimitedUploadMixin, APIView):
    """Import labels in one of the formats in labelapp.formats.labels.FORMATS."""

    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        format = serializers.CharField(help_text=f"one of {', '.join(FORMATS)}")  # the service names a bad one
        skip_invalid = serializers.BooleanField(default=False, help_text="leave out unusable lines, naming them in notes")

    class OutputSerializer(serializers.Serializer):
        format = serializers.CharField()
        rows = serializers.IntegerField()
        created = _counts()
        duplicates = _counts()
        notes = serializers.ListField(child=serializers.CharField())

    @extend_schema(request={"multipart/form-data": InputSerializer}, responses={201: OutputSerializer})
    def post(self, request, project_id: str):
        project = project_for(request, project_id, Role.REVIEWER)
        self.upload_or_none(request)  # 413 if the upload was stopped at the limit
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        upload = body.validated_data["file"]
        if upload.size > settings.IMPORT_MAX_BYTES:
            raise Invalid({"file": [f"line 1: the file is {upload.size:,} bytes; the limit is {settings.IMPORT_MAX_BYTES:,} bytes"]},
                          summary=REFUSED)
        try:
            result = labels_import(project=project, data=upload, fmt=body.validated_data["format"],
                                   skip_invalid=body.validated_data["skip_invalid"])
        except DjangoValidationError as exc:
            raise Invalid({"file": exc.messages}, summary=REFUSED) from None
        return Response(self.OutputSerializer(asdict(result)).data, status=status.HTTP_201_CREATED)
