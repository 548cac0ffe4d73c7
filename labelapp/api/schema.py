"""The OpenAPI schema's views (errors in JSON) and post-processing (drf-spectacular hooks, listed
in config.settings). Who may read it: labelapp.api.permissions.DocsAccess."""
from __future__ import annotations

from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.renderers import JSONRenderer


def reviewer_only_fields(result, generator, request, public):
    """Fields that annotators do not receive (labelapp.api.serializers.REVIEWER_ONLY_FIELDS) are
    optional in the schema and say so, instead of being listed as always present."""
    from labelapp.api.serializers import REVIEWER_ONLY_FIELDS

    schemas = result.get("components", {}).get("schemas", {})
    for component, names in REVIEWER_ONLY_FIELDS.items():
        schema = schemas.get(component)
        if not schema:
            continue
        schema["required"] = [name for name in schema.get("required", []) if name not in names]
        for name in names:
            prop = schema.get("properties", {}).get(name)
            if prop is not None:
                note = "Reviewers and admins of the project only; left out for annotators."
                prop["description"] = f"{prop['description']} {note}" if prop.get("description") else note
    return result


class _JsonErrors:
    """Errors (a 401 when the docs need a log-in) as JSON like the rest of the API, not in the
    view's own format (YAML for the schema, HTML for Swagger UI)."""

    def handle_exception(self, exc):
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return super().handle_exception(exc)


class SchemaView(_JsonErrors, SpectacularAPIView):
    pass


class SwaggerView(_JsonErrors, SpectacularSwaggerSplitView):
    pass
