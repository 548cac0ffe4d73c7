"""API tokens: created for a user, shown once, stored only as a SHA-256 digest, revocable."""
from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from labelapp.models import ApiToken
from labelapp.services.text import refuse_nul

KEY_PREFIX = "rs_"
MAX_LIVE_TOKENS = 20
LAST_USED_RESOLUTION = timedelta(minutes=1)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@transaction.atomic
def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a token and return it with its key; the key cannot be read back later."""
    name = (name or "").strip()
    refuse_nul(name, what="token name")
    if not name or len(name) > 100:
        raise ValidationError("Give the token a name of 1 to 100 characters (e.g. the machine that uses it).")
    if ApiToken.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_LIVE_TOKENS:
        raise ValidationError(f"You already have {MAX_LIVE_TOKENS} live tokens; revoke one first.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, prefix=key[:10], digest=digest(key))
    return token, key


@transaction.atomic
def api_token_revoke(*, token_id: int, user) -> ApiToken:
    token = ApiToken.objects.select_for_update().filter(pk=token_id, user=user).first()
    if token is None:
        raise ApiToken.DoesNotExist
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def api_token_authenticate(key: str) -> ApiToken | None:
    """The live token for this key, or None. Marks it used (at most once a minute)."""
    token = (
        ApiToken.objects.select_related("user")
        .filter(digest=digest(key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token
