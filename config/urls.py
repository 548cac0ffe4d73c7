from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from labelapp.api.errors import not_found as api_not_found
from labelapp.pages.auth import admin_login_view, login_view

urlpatterns = [
    path("admin/login/", admin_login_view, name="admin-login"),  # before admin.site.urls: throttled
    path("admin/", admin.site.urls),
    path("api/v1/", include("labelapp.api.urls")),
    re_path(r"^api(/.*)?$", api_not_found),  # JSON 404 for any other path under /api/
    path("studio/", include("labelapp.pages.studio_urls")),
    path("accounts/login/", login_view, name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("labelapp.pages.urls")),
]
