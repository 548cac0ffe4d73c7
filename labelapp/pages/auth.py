"""Log-in pages, the site's and the admin's, behind the shared log-in throttle (labelapp.throttle)."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.views import LoginView

from labelapp.throttle import throttled_login

login_view = throttled_login(LoginView.as_view())
admin_login_view = throttled_login(admin.site.login)
