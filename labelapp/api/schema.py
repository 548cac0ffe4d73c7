"""OpenAPI schema post-processing (drf-spectacular hooks, listed in config.settings)."""
from __future__ import annotations


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
