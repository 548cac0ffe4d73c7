from django.urls import path

from labelapp.pages import quality as quality_views
from labelapp.pages import studio as views
from labelapp.pages import templates as template_views

app_name = "studio"

urlpatterns = [
    path("p/<slug:slug>/", views.overview, name="overview"),
    path("p/<slug:slug>/runs.json", views.status_json, name="status"),
    path("p/<slug:slug>/rounds/start/", views.round_start_view, name="round_start"),
    path("p/<slug:slug>/rounds/<int:round_id>/cancel/", views.round_cancel_view, name="round_cancel"),
    path("p/<slug:slug>/rounds/<int:round_id>/advance/", views.round_advance_view, name="round_advance"),
    path("p/<slug:slug>/rounds/<int:round_id>/promote/", views.round_promote_view, name="round_promote"),
    path("p/<slug:slug>/rounds/<int:round_id>/discard/", views.round_discard_view, name="round_discard"),
    path("p/<slug:slug>/runs/<int:run_id>/", views.run_detail, name="run"),
    path("p/<slug:slug>/runs/<int:run_id>.json", views.run_json, name="run_json"),
    path("p/<slug:slug>/runs/<int:run_id>/cancel/", views.run_cancel_view, name="run_cancel"),
    path("p/<slug:slug>/runs/<int:run_id>/retry/", views.run_retry_view, name="run_retry"),
    path("p/<slug:slug>/models/<int:version_id>/current/", views.make_current_view, name="make_current"),
    path("p/<slug:slug>/quality/", quality_views.quality, name="quality"),
    path("p/<slug:slug>/quality/refit/", quality_views.quality_refit, name="quality_refit"),
    path("p/<slug:slug>/quality/gold/", quality_views.gold_mark, name="gold_mark"),
    path("p/<slug:slug>/quality/ai-labels/", quality_views.ai_label_start, name="ai_label_start"),
    path("p/<slug:slug>/quality/active-learning/", quality_views.active_learning, name="active_learning"),
    path("p/<slug:slug>/categories/", quality_views.categories, name="categories"),
    path("p/<slug:slug>/templates/", template_views.templates_page, name="templates"),
    path("p/<slug:slug>/templates/<int:template_id>/", template_views.template_page, name="template"),
    path("p/<slug:slug>/templates/preview/", template_views.template_preview_fragment, name="template_preview"),
    path("p/<slug:slug>/templates/import/", template_views.template_import, name="template_import"),
]
