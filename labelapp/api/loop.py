"""The training loop over the API: rounds and runs (read; start, cancel, retry for admins),
evaluation results, and marking a model version current. Same services as the studio pages."""
from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from labelapp.api.errors import Invalid
from labelapp.api.views import PROJECT, ScopedReadViewSet, _choice, _int, project_for
from labelapp.models import Role, Round, TrainingRun
from labelapp.selectors import labels as selectors
from labelapp.selectors.stats import evaluation_summary
from labelapp.services.rounds import round_cancel, round_start
from labelapp.services.runs import model_version_make_current, run_cancel, run_retry


def visible_runs(user):
    """Reviewers and admins: runs name models, their settings and paths (annotators label blind)."""
    return TrainingRun.objects.filter(project_id__in=selectors.project_ids(user, min_role=Role.REVIEWER))


def visible_rounds(user):
    return Round.objects.filter(project_id__in=selectors.project_ids(user, min_role=Role.REVIEWER))


class TrainingRunSerializer(serializers.ModelSerializer):
    eta_seconds = serializers.FloatField(read_only=True, allow_null=True)
    length_diagnostics = serializers.SerializerMethodField(
        help_text="Reward-model runs: the length diagnostics of its held-out pairs (see model-versions); else null.")

    class Meta:
        model = TrainingRun
        fields = ["id", "project", "round", "kind", "status", "params", "input_model", "output_model", "step", "total",
                  "eta_seconds", "metrics", "result", "length_diagnostics", "error", "logs_tail", "attempts",
                  "max_attempts", "cancel_requested", "heartbeat_at", "started_at", "finished_at", "retry_of",
                  "created_at"]

    def get_length_diagnostics(self, obj) -> dict | None:
        from labelapp.selectors.length_watch import length_diagnostics

        return length_diagnostics(obj.result) if obj.kind == TrainingRun.Kind.REWARD else None


class RoundSerializer(serializers.ModelSerializer):
    class Meta:
        model = Round
        fields = ["id", "project", "number", "method", "stage", "params", "base_policy", "sft_policy", "reward_model",
                  "new_policy", "error", "gate", "created_at", "finished_at"]


class RoundStartSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=Round.Method.choices, default=Round.Method.PPO)
    params = serializers.DictField(required=False, default=dict)


def _service(call):
    """Run a service; its refusals become 400/403 with its message."""
    try:
        return call()
    except DjangoValidationError as exc:
        raise Invalid.from_django(exc) from None
    except DjangoPermissionDenied as exc:
        raise PermissionDenied(str(exc)) from None


class TrainingRunViewSet(ScopedReadViewSet):
    serializer_class = TrainingRunSerializer
    scope = staticmethod(visible_runs)
    filters = {**PROJECT, "round": ("round_id", _int),
               "kind": ("kind", _choice(*TrainingRun.Kind.values)), "status": ("status", _choice(*TrainingRun.Status.values))}

    @extend_schema(request=None, responses=TrainingRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = self.get_object()
        return Response(TrainingRunSerializer(_service(lambda: run_cancel(run_id=run.pk, user=request.user))).data)

    @extend_schema(request=None, responses={201: TrainingRunSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        run = self.get_object()
        new = _service(lambda: run_retry(run_id=run.pk, user=request.user))
        return Response(TrainingRunSerializer(new).data, status=status.HTTP_201_CREATED)


class RoundViewSet(ScopedReadViewSet):
    serializer_class = RoundSerializer
    scope = staticmethod(visible_rounds)
    filters = {**PROJECT, "stage": ("stage", _choice(*Round.Stage.values))}

    @extend_schema(request=None, responses=RoundSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        rnd = self.get_object()
        return Response(RoundSerializer(_service(lambda: round_cancel(round_id=rnd.pk, user=request.user))).data)

    @extend_schema(responses=OpenApiTypes.OBJECT)
    @action(detail=True, methods=["get"])
    def evaluation(self, request, pk=None):
        """Win-rate of the round's new policy over its parent: blind human comparisons and the
        reward model, each with a 95% bootstrap interval, raw and length-controlled (logistic model of
        the outcome on the answers' length difference, read at equal length), the mean answer lengths
        (characters), the same per prompt category, and over-optimisation warnings."""
        rnd = self.get_object()
        return Response(evaluation_summary(project=rnd.project, round_id=rnd.pk))


class RoundStartView(APIView):
    """Start the project's next round (admins)."""

    @extend_schema(request=RoundStartSerializer, responses={201: RoundSerializer})
    def post(self, request, project_id: str):
        project = project_for(request, project_id, Role.ADMIN)
        body = RoundStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        rnd = _service(lambda: round_start(project=project, user=request.user, **body.validated_data))
        return Response(RoundSerializer(rnd).data, status=status.HTTP_201_CREATED)


class MakeCurrentView(APIView):
    """Mark a model version as its project's current policy / reward model (admins)."""

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT})
    def post(self, request, pk: int):
        version = selectors.visible_model_versions(request.user).filter(pk=pk).first()
        if version is None:
            from rest_framework.exceptions import NotFound

            raise NotFound("No such model version.")
        made = _service(lambda: model_version_make_current(version_id=version.pk, user=request.user))
        return Response({"id": made.pk, "kind": made.kind, "is_current": made.is_current})



