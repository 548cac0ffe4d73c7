"""Middleware: a strict Content-Security-Policy, and database outages answered with a 503.

Model outputs and prompts are untrusted text; autoescaping renders them inert, and the CSP header
is the second fence should a template ever slip. Django's admin keeps its own relaxed policy
because it relies on inline styles.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

STRICT = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ADMIN = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'"


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        relaxed = request.path.startswith(("/admin/", "/api/v1/docs/"))  # both rely on inline styles
        policy = ADMIN if relaxed else STRICT
        response.headers.setdefault("Content-Security-Policy", policy)
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


DB_UNAVAILABLE = "The database is unavailable for a moment (its connection dropped). Try again in a few seconds."


class DatabaseUnavailableMiddleware:
    """A dropped database connection (a restart, a failover, a killed backend), a deadlock or a
    serialization failure is a passing condition: answer 503 with Retry-After, as JSON under
    /api/ and as a short page elsewhere, instead of a 500. Django closes the broken connection
    at the end of the request (CONN_HEALTH_CHECKS checks the next one before use)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.warning("database unavailable: %s %s", request.method, request.path, exc_info=exception)
        if request.path.startswith("/api/"):
            response = JsonResponse({"detail": DB_UNAVAILABLE}, status=503)
        else:
            page = f"<!doctype html><title>Try again</title><h1>Try again in a moment</h1><p>{DB_UNAVAILABLE}</p>"
            response = HttpResponse(page, status=503, content_type="text/html; charset=utf-8")
        response["Retry-After"] = "5"
        return response
