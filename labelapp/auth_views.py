"""Log-in with a cap on failed attempts per client address (a cache counter per window)."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpResponse


def _key(request) -> str:
    return f"login-failures:{request.META.get('REMOTE_ADDR', '?')}"


class ThrottledLoginView(LoginView):
    def post(self, request, *args, **kwargs):
        if cache.get(_key(request), 0) >= settings.LOGIN_THROTTLE_ATTEMPTS:
            minutes = max(1, settings.LOGIN_THROTTLE_WINDOW // 60)
            return HttpResponse(
                f"Too many failed log-ins from your address; try again in {minutes} minute(s).",
                status=429,
                content_type="text/plain",
                headers={"Retry-After": str(settings.LOGIN_THROTTLE_WINDOW)},
            )
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        key = _key(self.request)
        cache.add(key, 0, timeout=settings.LOGIN_THROTTLE_WINDOW)
        cache.incr(key)
        return super().form_invalid(form)
