"""One shape for every error under /api/, whatever raised it:

    {"detail": "<what went wrong, for a person>"}                       (401, 403, 404, 405, 413, 429, 5xx)
    {"detail": "<summary>", "errors": {"<field>": ["<message>", …], …}}   (400)

A refusal not tied to one field is listed under "non_field_errors" (DRF's name). Serializer
errors, `Invalid` raised by our views, and a service's Django ValidationError all come out in this
shape (`exception_handler`, REST_FRAMEWORK's EXCEPTION_HANDLER). Unknown routes under /api/ answer a
JSON 404 (`not_found`), and an unexpected exception under /api/ a JSON 500
(labelapp.middleware.ApiErrorMiddleware), never Django's HTML pages, debug or not.
"""
from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponsePermanentRedirect, JsonResponse
from django.urls import Resolver404, resolve
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler

NON_FIELD = "non_field_errors"


class Invalid(exceptions.ValidationError):
    """A 400 with field errors and, optionally, the summary to show as "detail"."""

    def __init__(self, errors: dict, summary: str | None = None):
        super().__init__({k: v if isinstance(v, (list, dict)) else [v] for k, v in errors.items()})
        self.summary = summary

    @classmethod
    def from_django(cls, exc: DjangoValidationError, summary: str | None = None) -> "Invalid":
        errors = exc.message_dict if hasattr(exc, "error_dict") else {NON_FIELD: exc.messages}
        return cls({(NON_FIELD if k == "__all__" else k): v for k, v in errors.items()}, summary)


def _messages(value) -> list:
    """Field errors as a list of strings (nested serializers keep their structure)."""
    if isinstance(value, dict):
        return {k: _messages(v) for k, v in value.items()}
    if isinstance(value, list):
        return [str(v) if not isinstance(v, (dict, list)) else _messages(v) for v in value]
    return [str(value)]


def _summary(errors: dict) -> str:
    flat = [(field, m) for field, ms in errors.items() for m in (ms if isinstance(ms, list) else [ms])]
    if len(flat) == 1:
        field, message = flat[0]
        text = message if isinstance(message, str) else "invalid"
        return text if field == NON_FIELD else f"{field}: {text}"
    return f"{len(flat)} problems with the request; see errors."


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):  # a service refused: its message is for the caller
        exc = Invalid.from_django(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: ApiErrorMiddleware answers with a JSON 500
    if isinstance(exc, exceptions.ValidationError):
        data = exc.detail
        errors = _messages(data if isinstance(data, dict) else {NON_FIELD: data})
        response.data = {"detail": getattr(exc, "summary", None) or _summary(errors), "errors": errors}
    elif response.status_code == 400:  # a malformed body (ParseError): a 400 like the others
        detail = str(response.data.get("detail", "")) if isinstance(response.data, dict) else str(response.data)
        response.data = {"detail": detail, "errors": {NON_FIELD: [detail]}}
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else response.data
        response.data = {"detail": str(detail)}
    return response


def not_found(request: HttpRequest, *args, **kwargs):
    """Any path under /api/ that names no route. A GET missing only its trailing slash is sent on
    (as Django's APPEND_SLASH would); other methods are told, since a redirect would drop the body."""
    path = request.path
    if not path.endswith("/"):
        try:
            match = resolve(path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not not_found:
            if request.method in ("GET", "HEAD"):
                query = request.META.get("QUERY_STRING", "")
                return HttpResponsePermanentRedirect(path + "/" + (f"?{query}" if query else ""))
            return JsonResponse({"detail": f"No API route {path}; did you mean {path}/ (with the slash)?"}, status=404)
    return JsonResponse({"detail": f"No API route {path}. The routes are listed at /api/v1/docs/."}, status=404)
