from django.urls import path

from labelapp.pages import annotate as views
from labelapp.pages import quality as quality_views

app_name = "labelapp"

urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_home, name="project"),
    path("p/<slug:slug>/mine/", views.mine, name="mine"),
    path("p/<slug:slug>/mine/<int:assignment_id>/", views.label, name="label"),
    path("p/<slug:slug>/mine/<int:assignment_id>/edit/", views.label_edit, name="label-edit"),
    path("p/<slug:slug>/mine/<int:assignment_id>/withdraw/", views.label_withdraw, name="label-withdraw"),
    path("p/<slug:slug>/review/", views.review, name="review"),
    path("p/<slug:slug>/adjudicate/", quality_views.adjudicate_list, name="adjudicate-list"),
    path("p/<slug:slug>/adjudicate/<int:task_id>/", quality_views.adjudicate, name="adjudicate"),
    path("p/<slug:slug>/<str:queue>/next/", views.claim_next, name="claim"),
    path("p/<slug:slug>/write/<int:assignment_id>/", views.write, name="write"),
    path("p/<slug:slug>/rank/<int:assignment_id>/", views.rank, name="rank"),
    path("p/<slug:slug>/compare/<int:assignment_id>/", views.compare, name="compare"),
    path("p/<slug:slug>/<str:queue>/<int:assignment_id>/skip/", views.skip, name="skip"),
]
