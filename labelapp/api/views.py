"""REST API views. Every object is looked up through a queryset already scoped to the caller
(labelapp.selectors.labels.visible_*), so another project's or user's object is a 404, never a 403
that would confirm it exists. Filters come from an explicit allow-list per resource."""
from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.http import StreamingHttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from labelapp.api import serializers as s
from labelapp.api.errors import Invalid
from labelapp.api.uploads import LimitedUploadMixin
from labelapp.formats import exports
from labelapp.formats.prompts import detect_format
from labelapp.models import ApiToken, Demonstration, Project, Prompt, Role
from labelapp.selectors import labels as selectors
from labelapp.selectors.stats import project_agreement
from labelapp.services.access import has_role
from labelapp.services.projects import prompts_import
from labelapp.services.tokens import api_token_create, api_token_revoke
from labelapp.throttle import TokenCreateThrottle


class Cursor(CursorPagination):
    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


RESERVED_PARAMS = {"cursor", "page_size", "format"}


def _int(value: str) -> int:
    if not value.isdigit():
        raise ValueError("must be a whole number")
    return int(value)


def _datetime(value: str):
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-26T10:00:00Z")
    return parsed


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def apply_filters(request, qs, allowed: dict[str, tuple[str | Callable, Callable]]):
    """Apply ?name=value filters from the allow-list; anything else is a 400 naming it. A lookup is
    a field path, or a function of the parsed value returning a Q."""
    unknown = sorted(set(request.query_params) - set(allowed) - RESERVED_PARAMS)
    if unknown:
        raise Invalid({"filters": f"unknown filter(s) {unknown}; allowed: {sorted(allowed)}"})
    for name, (lookup, parse) in allowed.items():
        if name in request.query_params:
            try:
                value = parse(request.query_params[name])
            except ValueError as exc:
                raise Invalid({name: str(exc)}) from None
            qs = qs.filter(lookup(value)) if callable(lookup) else qs.filter(**{lookup: value})
    return qs


class ScopedReadViewSet(viewsets.ReadOnlyModelViewSet):
    pagination_class = Cursor
    scope: Callable = staticmethod(lambda user: None)
    filters: dict[str, tuple[str, Callable]] = {}

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types: no user
            return self.get_serializer_class().Meta.model.objects.none()
        qs = type(self).scope(self.request.user)
        if self.action == "list":
            qs = apply_filters(self.request, qs, self.filters)
        return qs


def _project_ref(value: str) -> str:
    if not value or "\x00" in value:
        raise ValueError("must be a project id or slug")
    return value


def project_filter(prefix: str = "") -> dict:
    """?project=<id or slug> on a field path to the project (e.g. "prompt__")."""
    def lookup(ref: str) -> Q:
        return Q(**{f"{prefix}project_id": int(ref)}) if ref.isdigit() else Q(**{f"{prefix}project__slug": ref})

    return {"project": (lookup, _project_ref)}


PROJECT = project_filter()
CREATED = {"created_after": ("created_at__gte", _datetime), "created_before": ("created_at__lt", _datetime)}


class ProjectViewSet(ScopedReadViewSet):
    """Projects, each addressable by id or slug (/projects/7/ or /projects/support-bot/)."""

    serializer_class = s.ProjectSerializer
    scope = staticmethod(selectors.visible_projects)

    @extend_schema(parameters=[OpenApiParameter("id", str, OpenApiParameter.PATH, description="The project's id or slug.")])
    def retrieve(self, request, *args, **kwargs):
        return super().retrieve(request, *args, **kwargs)

    def get_object(self):
        project = project_lookup(self.get_queryset(), self.kwargs["pk"])
        if project is None:
            raise NotFound("No such project.")
        self.check_object_permissions(self.request, project)
        return project


class PromptViewSet(ScopedReadViewSet):
    serializer_class = s.PromptSerializer
    scope = staticmethod(selectors.visible_prompts)
    filters = {
        **PROJECT,
        **CREATED,
        "category": ("category", str),  # one of the categories of the caller's projects (checked below)
        "split": ("split", _choice(*Prompt.Split.values)),
        "source": ("source", _choice(*Prompt.Source.values)),
    }

    def get_queryset(self):
        category = self.request.query_params.get("category")
        if self.action == "list" and category is not None:
            known = {c for cats in selectors.visible_projects(self.request.user).values_list("categories", flat=True)
                     for c in cats}
            if category not in known:
                raise Invalid({"category": f"must be one of your projects' categories: {', '.join(sorted(known))}"})
        return super().get_queryset()


class CompletionViewSet(ScopedReadViewSet):
    """Completions; which model wrote one (`model_version`, `decoding`, `source`, the
    `model_version` filter) is for reviewers and admins of its project only."""

    serializer_class = s.CompletionSerializer
    scope = staticmethod(selectors.visible_completions)
    filters = {"prompt": ("prompt_id", _int), **project_filter("prompt__"),
               "model_version": ("model_version_id", _int), **CREATED}

    def get_queryset(self):
        qs = super().get_queryset()
        if self.action == "list" and "model_version" in self.request.query_params:
            qs = qs.filter(prompt__project_id__in=s.reviewer_projects(self.request))
        return qs


class RankingTaskViewSet(ScopedReadViewSet):
    serializer_class = s.RankingTaskSerializer
    scope = staticmethod(selectors.visible_ranking_tasks)
    filters = {**PROJECT, "prompt": ("prompt_id", _int), **CREATED}


class DemonstrationViewSet(ScopedReadViewSet):
    serializer_class = s.DemonstrationSerializer
    scope = staticmethod(selectors.visible_demonstrations)
    filters = {**project_filter("prompt__"), "prompt": ("prompt_id", _int),
               "review_status": ("review_status", _choice(*Demonstration.Review.values)), **CREATED}


class RankingViewSet(ScopedReadViewSet):
    serializer_class = s.RankingSerializer
    scope = staticmethod(selectors.visible_rankings)
    filters = {**project_filter("task__"), "task": ("task_id", _int), **CREATED}


class ModelVersionViewSet(ScopedReadViewSet):
    serializer_class = s.ModelVersionSerializer
    scope = staticmethod(selectors.visible_model_versions)
    filters = {**PROJECT, "kind": ("kind", _choice("policy", "reward"))}


class TokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Your own API tokens. Creating one returns its key once; DELETE revokes it."""

    serializer_class = s.ApiTokenSerializer
    pagination_class = Cursor
    throttle_scope = "token_create"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular reading the types: no user
            return ApiToken.objects.none()
        return ApiToken.objects.filter(user=self.request.user)

    def get_throttles(self):
        return [TokenCreateThrottle()] if self.action == "create" else super().get_throttles()

    @extend_schema(request=s.ApiTokenCreateSerializer, responses={201: s.ApiTokenCreatedSerializer})
    def create(self, request):
        body = s.ApiTokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            token, key = api_token_create(user=request.user, name=body.validated_data["name"])
        except DjangoValidationError as exc:
            raise Invalid({"name": exc.messages}) from None
        out = s.ApiTokenCreatedSerializer(token).data
        out["key"] = key
        return Response(out, status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        token = self.get_object()  # 404 for anyone else's token
        api_token_revoke(token_id=token.pk, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


def project_lookup(qs, ref) -> Project | None:
    """A project of `qs` by id (digits) or slug."""
    ref = str(ref)
    return qs.filter(pk=int(ref)).first() if ref.isdigit() else qs.filter(slug=ref).first()


def project_for(request, project_id: int | str, min_role: str) -> Project:
    """The project named by id or slug in the URL, if the caller may see it (else 404) and holds
    `min_role` in it (else 403)."""
    project = project_lookup(selectors.visible_projects(request.user), project_id)
    if project is None:
        raise NotFound("No such project.")
    if not has_role(project=project, user=request.user, role=min_role):
        raise PermissionDenied(f"This needs the {Role(min_role).label.lower()} role in the project.")
    return project


REFUSED = "import refused, nothing was written"


class PromptImportView(LimitedUploadMixin, APIView):
    """Import prompts (JSONL or CSV, optionally gzipped) into a project: all or nothing."""

    parser_classes = [MultiPartParser]

    @extend_schema(
        request={"multipart/form-data": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}, "format": {"type": "string", "enum": ["jsonl", "csv"]}}}},
        responses={201: s.ImportResultSerializer},
    )
    def post(self, request, project_id: str):
        project = project_for(request, project_id, Role.REVIEWER)
        upload = self.upload_or_none(request)
        if upload is None:
            raise Invalid({"file": "attach the file as multipart field 'file'"})
        try:
            fmt = request.data.get("format") or detect_format(upload.name)
        except ValueError as exc:
            raise Invalid({"format": str(exc)}) from None
        if upload.size > settings.IMPORT_MAX_BYTES:
            raise Invalid({"file": f"the file is {upload.size:,} bytes; the limit is {settings.IMPORT_MAX_BYTES:,} bytes"},
                          summary=REFUSED)
        try:
            result = prompts_import(project=project, data=upload, fmt=fmt)  # read as a stream
        except DjangoValidationError as exc:
            raise Invalid({"file": exc.messages}, summary=REFUSED) from None
        return Response(s.ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)


EXPORT_PARAMS = [
    OpenApiParameter("split", str, enum=list(Prompt.Split.values)),
    OpenApiParameter("since", OpenApiTypes.DATETIME),
    OpenApiParameter("until", OpenApiTypes.DATETIME),
    OpenApiParameter("min_agreement", float, description="0..1; items whose annotators agree less are left out"),
    OpenApiParameter("style", str, enum=["plain", "conversational"], description="pairs only"),
    OpenApiParameter("margin", bool, description="pairs only: add the 1-7 score difference"),
    OpenApiParameter("meta", bool, description="pairs only: add ranking id and annotator pseudonym"),
    OpenApiParameter("status", str, description="demonstrations only: comma-separated review states"),
    OpenApiParameter("weights", bool, description="pairs only: add weight (annotator reliability) and confidence "
                     "(posterior that the order is right) from the latest reliability fit"),
    OpenApiParameter("min_confidence", float, description="pairs only, 0..1: leave out pairs whose confidence is lower"),
]


class ExportView(APIView):
    """Stream a project's labels as JSONL in a trainer's format."""

    ALLOWED = {"split", "since", "until", "min_agreement", "style", "margin", "meta", "status", "weights",
               "min_confidence"}

    @extend_schema(parameters=EXPORT_PARAMS, responses={(200, "application/x-ndjson"): OpenApiTypes.STR})
    def get(self, request, project_id: str, kind: str):
        project = project_for(request, project_id, Role.REVIEWER)
        if kind not in exports.FORMATS:
            raise NotFound(f"Unknown export {kind!r}; use one of {', '.join(exports.FORMATS)}.")
        q = request.query_params
        unknown = sorted(set(q) - self.ALLOWED)
        if unknown:
            raise Invalid({"filters": f"unknown parameter(s) {unknown}; allowed: {sorted(self.ALLOWED)}"})
        flt = exports.ExportFilter(
            project=project,
            split=self._parse(q, "split", _choice(*Prompt.Split.values)),
            since=self._parse(q, "since", _datetime),
            until=self._parse(q, "until", _datetime),
            min_agreement=self._parse(q, "min_agreement", _fraction),
        )
        flag = lambda name: q.get(name, "").lower() in {"1", "true", "yes"}  # noqa: E731
        if kind == "pairs":
            style = self._parse(q, "style", _choice("plain", "conversational")) or "plain"
            lines = exports.export_pairs(flt, conversational=style == "conversational", margin=flag("margin"),
                                         meta=flag("meta"), weights=flag("weights"),
                                         min_confidence=self._parse(q, "min_confidence", _fraction))
        elif kind == "rankings":
            lines = exports.export_rankings(flt)
        elif kind == "kto":
            lines = exports.export_kto(flt)
        elif kind == "prompts":
            lines = exports.export_prompts(flt)
        else:
            statuses = [x for x in q.get("status", "approved,pending").split(",") if x]
            for value in statuses:
                self._parse({"status": value}, "status", _choice(*Demonstration.Review.values))
            lines = exports.export_demonstrations(flt, statuses=statuses)
        response = StreamingHttpResponse(exports.buffered(lines), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="{project.slug}-{kind}.jsonl"'
        return response

    @staticmethod
    def _parse(q, name: str, parse: Callable):
        if name not in q or q[name] == "":
            return None
        try:
            return parse(q[name])
        except ValueError as exc:
            raise Invalid({name: str(exc)}) from None


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number between 0 and 1") from None
    if not 0 <= number <= 1:
        raise ValueError("must be between 0 and 1")
    return number


class CategoryMixView(APIView):
    """How the project's prompts, demonstrations and rankings spread over its categories, beside the
    InstructGPT mix (reviewers and admins)."""

    @extend_schema(responses=s.CategoryMixSerializer)
    def get(self, request, project_id: str):
        from labelapp.selectors.category_mix import category_mix

        project = project_for(request, project_id, Role.REVIEWER)
        return Response(s.CategoryMixSerializer(category_mix(project=project)).data)


class AgreementView(APIView):
    """Inter-annotator agreement on the project's items ranked by more than one annotator."""

    @extend_schema(responses=s.AgreementSerializer)
    def get(self, request, project_id: str):
        project = project_for(request, project_id, Role.REVIEWER)
        return Response(s.AgreementSerializer(project_agreement(project=project)).data)
