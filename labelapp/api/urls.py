from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from labelapp.api import annotate, views
from labelapp.api import templates as prompt_templates
from labelapp.api.errors import not_found
from labelapp.api.label_imports import LabelImportView
from labelapp.api.loop import MakeCurrentView, RoundStartView, RoundViewSet, TrainingRunViewSet
from labelapp.api.quality import AnnotatorReportView, GoldView, ReliabilityRefitView
from labelapp.api.schema import SchemaView, SwaggerView

router = SimpleRouter()
router.register("projects", views.ProjectViewSet, basename="project")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("completions", views.CompletionViewSet, basename="completion")
router.register("ranking-tasks", views.RankingTaskViewSet, basename="rankingtask")
router.register("demonstrations", views.DemonstrationViewSet, basename="demonstration")
router.register("rankings", views.RankingViewSet, basename="ranking")
router.register("model-versions", views.ModelVersionViewSet, basename="modelversion")
router.register("tokens", views.TokenViewSet, basename="token")
router.register("runs", TrainingRunViewSet, basename="run")
router.register("rounds", RoundViewSet, basename="round")

app_name = "api"

urlpatterns = [
    *router.urls,
    path("projects/<str:project_id>/imports/prompts/", views.PromptImportView.as_view(), name="import-prompts"),
    path("projects/<str:project_id>/imports/labels/", LabelImportView.as_view(), name="import-labels"),
    path("projects/<str:project_id>/imports/templated/", prompt_templates.TemplatedImportView.as_view(),
         name="import-templated"),
    path("projects/<str:project_id>/templates/", prompt_templates.TemplateListView.as_view(), name="template-list"),
    path("projects/<str:project_id>/templates/preview/", prompt_templates.TemplatePreviewView.as_view(),
         name="template-preview"),
    path("projects/<str:project_id>/templates/<int:template_id>/", prompt_templates.TemplateDetailView.as_view(),
         name="template-detail"),
    path("projects/<str:project_id>/exports/<str:kind>/", views.ExportView.as_view(), name="export"),
    path("projects/<str:project_id>/statistics/agreement/", views.AgreementView.as_view(), name="agreement"),
    path("projects/<str:project_id>/statistics/categories/", views.CategoryMixView.as_view(), name="categories"),
    path("projects/<str:project_id>/statistics/annotators/", AnnotatorReportView.as_view(), name="annotators"),
    path("projects/<str:project_id>/statistics/annotators/refit/", ReliabilityRefitView.as_view(),
         name="annotators-refit"),
    path("projects/<str:project_id>/gold/", GoldView.as_view(), name="gold"),
    path("projects/<str:project_id>/rounds/", RoundStartView.as_view(), name="round-start"),
    path("model-versions/<int:pk>/make-current/", MakeCurrentView.as_view(), name="modelversion-make-current"),
    path("projects/<str:project_id>/queues/<str:queue>/claim/", annotate.ClaimView.as_view(), name="queue-claim"),
    path("assignments/<int:assignment_id>/", annotate.AssignmentView.as_view(), name="assignment-detail"),
    path("assignments/<int:assignment_id>/submit/", annotate.SubmitView.as_view(), name="assignment-submit"),
    path("assignments/<int:assignment_id>/skip/", annotate.SkipView.as_view(), name="assignment-skip"),
    path("demonstrations/<int:demonstration_id>/review/", annotate.ReviewView.as_view(), name="demonstration-review"),
    path("schema/", SchemaView.as_view(), name="schema"),
    path("docs/", SwaggerView.as_view(url_name="api:schema"), name="docs"),
    re_path(r"^.*$", not_found),  # last: any other path answers a JSON 404
]
