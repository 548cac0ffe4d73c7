"""Text that PostgreSQL can store: no NUL characters, anywhere (text columns and JSON alike)."""
from __future__ import annotations

from django.core.exceptions import ValidationError

NUL_REASON = "contains a NUL character (\\x00), which cannot be stored; remove it and try again"


def has_nul(value) -> bool:
    """A NUL in a string, or in any string (key or value) of a JSON-like structure."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_nul(v) for v in value)
    return False


def refuse_nul(value, *, what: str) -> None:
    if has_nul(value):
        raise ValidationError(f"The {what} {NUL_REASON}.")
