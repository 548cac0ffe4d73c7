from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from labelapp.auth_views import admin_login_view, login_view

urlpatterns = [
    path("admin/login/", admin_login_view, name="admin-login"),  # before admin.site.urls: throttled
    path("admin/", admin.site.urls),
    path("api/v1/", include("labelapp.api.urls")),
    path("studio/", include("labelapp.studio_urls")),
    path("accounts/login/", login_view, name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("labelapp.urls")),
]
