"""Label quality over the API: the per-annotator report, a refit, and gold items (admins)."""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from labelapp.api import serializers as s
from labelapp.api.views import project_for
from labelapp.models import EvaluationTask, RankingTask, Role
from labelapp.selectors.quality import annotator_report
from labelapp.services.quality import gold_import, reliability_refit_enqueue


class AnnotatorReportView(APIView):
    """Per annotator: gold accuracy, agreement with the others and with the consensus, estimated
    reliability with its 95% interval, labels per hour, median time on task and flags (admins)."""

    @extend_schema(responses=s.AnnotatorReportSerializer)
    def get(self, request, project_id: int):
        project = project_for(request, project_id, Role.ADMIN)
        return Response(s.AnnotatorReportSerializer(annotator_report(project=project)).data)


class ReliabilityRefitView(APIView):
    """Queue a refit of the reliability model now (a Celery job on the default queue)."""

    @extend_schema(request=None, responses={202: None, 503: None})
    def post(self, request, project_id: int):
        project = project_for(request, project_id, Role.ADMIN)
        if not reliability_refit_enqueue(project=project, user=request.user):
            return Response({"detail": "The job queue is unreachable; the periodic refresh will refit when it is back."},
                            status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"queued": True}, status=status.HTTP_202_ACCEPTED)


class GoldView(APIView):
    """The project's gold items with how annotators did on them (GET), or mark items gold, all or
    nothing (POST {"items": [{"ranking_task": id, "expected": [[ids], …]} | {"evaluation_task": id,
    "expected": "a" | "b" | "tie"}]}; `expected` null makes an item ordinary again)."""

    @extend_schema(responses=None)
    def get(self, request, project_id: int):
        from django.db.models import Avg, Count, Q

        project = project_for(request, project_id, Role.ADMIN)
        ranking = (
            RankingTask.objects.filter(project=project, gold_order__isnull=False)
            .annotate(labels=Count("rankings"), accuracy=Avg("rankings__gold_score")).order_by("id")
        )
        evaluation = (
            EvaluationTask.objects.filter(project=project).exclude(gold_winner="")
            .annotate(labels=Count("comparisons"), right=Count("comparisons", filter=Q(comparisons__gold_correct=True)))
            .order_by("id")
        )
        return Response({
            "gold_rate": project.gold_rate,
            "ranking_tasks": [{"id": t.pk, "expected": t.gold_order, "labels": t.labels, "accuracy": t.accuracy}
                              for t in ranking],
            "evaluation_tasks": [{"id": t.pk, "expected": t.gold_winner, "labels": t.labels,
                                  "accuracy": t.right / t.labels if t.labels else None} for t in evaluation],
        })

    @extend_schema(request=s.GoldImportSerializer, responses=None)
    def post(self, request, project_id: int):
        project = project_for(request, project_id, Role.ADMIN)
        items = request.data.get("items") if isinstance(request.data, dict) else None
        try:
            done = gold_import(project=project, user=request.user, items=items)
        except DjangoValidationError as exc:
            raise ValidationError({"items": exc.messages}) from None
        return Response(done, status=status.HTTP_200_OK)
