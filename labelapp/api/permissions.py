"""Permission classes of the API beyond DRF's."""
from __future__ import annotations

from django.conf import settings
from rest_framework.permissions import BasePermission


class DocsAccess(BasePermission):
    """The schema and Swagger UI: anyone with API_DOCS_PUBLIC, else logged-in users and token holders."""

    message = "The API documentation needs a log-in here (API_DOCS_PUBLIC is off): log in, or send your token."

    def has_permission(self, request, view) -> bool:
        return settings.API_DOCS_PUBLIC or bool(request.user and request.user.is_authenticated)
