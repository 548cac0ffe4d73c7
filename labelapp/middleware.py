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


class ApiErrorMiddleware:
    """An unexpected exception under /api/ answers a JSON 500 (never Django's HTML page, debug or
    not), logged like any server error on the `django.request` logger. With DEBUG the body also
    names the exception."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith("/api/"):
            return None
        from django.conf import settings

        logging.getLogger("django.request").error(
            "Internal Server Error: %s", request.path, exc_info=exception, extra={"status_code": 500, "request": request}
        )
        body = {"detail": "Server error. It has been logged; try again later or tell the studio's operators."}
        if settings.DEBUG:
            body["debug"] = f"{type(exception).__name__}: {exception}"
        return JsonResponse(body, status=500)


class NulCharacterMiddleware:
    """A NUL character (\\x00, or \\u0000 in JSON) in a query parameter, a form field or a JSON body
    cannot be stored in PostgreSQL and used to end in a 500: refuse the request up front with a 400
    that says so (JSON in the API's error shape under /api/). Multipart bodies (file imports) are
    under /api/ (file imports) are left to the importers, which name the line; pages take no files."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = self._nul(request)
        if where is None:
            return self.get_response(request)
        from labelapp.services.text import NUL_REASON

        message = f"The {where} {NUL_REASON}."
        if request.path.startswith("/api/"):
            return JsonResponse({"detail": message, "errors": {"non_field_errors": [message]}}, status=400)
        page = f"<!doctype html><title>Not saved</title><h1>Not saved</h1><p>{message}</p>"
        return HttpResponse(page, status=400, content_type="text/html; charset=utf-8")

    @staticmethod
    def _nul(request: HttpRequest) -> str | None:
        for key, values in request.GET.lists():
            if "\x00" in key or any("\x00" in v for v in values):
                return f"query parameter {key.replace(chr(0), '')!r}"
        if request.method not in ("POST", "PUT", "PATCH"):
            return None
        content_type = request.content_type or ""
        if content_type == "application/json":
            body = request.body
            if b"\x00" in body or b"\\u0000" in body:
                return "request body"
        elif content_type == "application/x-www-form-urlencoded" or (
            content_type == "multipart/form-data" and not request.path.startswith("/api/")  # API: file imports
        ):
            for key, values in request.POST.lists():
                if "\x00" in key or any("\x00" in v for v in values):
                    return f"field {key.replace(chr(0), '')!r}"
        return None
