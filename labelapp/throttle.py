"""Log-in and token-creation throttles, shared by every web process through Django's cache (Redis
when REDIS_URL is set, the database otherwise: config.settings.CACHES).

Who is asking is the account (the username, case-insensitive) *and* the client's address as the
trusted proxies report it (`client_address`, TRUSTED_PROXY_COUNT / TRUSTED_PROXY_HEADER): failed
log-ins for one account from one address never slow down another account, nor the same account
from elsewhere.

Progressive delay, not a lock-out: the first LOGIN_THROTTLE_ATTEMPTS failures of an (account,
address) pair are free; after that each attempt must wait 1 s, then 2 s, 4 s … up to
LOGIN_THROTTLE_MAX_DELAY after the previous failure, and is refused with 429 and Retry-After until
then. The correct password works as soon as the wait is over, and a successful log-in clears the
pair. Failures are remembered for LOGIN_THROTTLE_WINDOW seconds after the last one. A second,
looser bucket per address alone (LOGIN_THROTTLE_ADDRESS_ATTEMPTS) slows down one address trying
many accounts. Attempts past the free ones run one at a time per bucket (an atomic `add` on the
cache), so a burst of parallel guesses gets no more through than a sequence. If the cache is
unreachable the throttle lets the attempt through and logs it (a Redis restart must not stop
people from logging in).
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import time
from dataclasses import dataclass
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

logger = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or with TRUSTED_PROXY_COUNT = n > 0 the n-th address from
    the right of TRUSTED_PROXY_HEADER (each trusted proxy appends the address it saw, so the entries
    further left are the client's own claims and are not trusted). A request with fewer entries
    than proxies did not come through them: its REMOTE_ADDR is used."""
    remote = request.META.get("REMOTE_ADDR", "") or "unknown"
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    header = request.META.get(settings.TRUSTED_PROXY_HEADER, "")
    hops = [h.strip() for h in header.split(",") if h.strip()]
    if len(hops) < count:
        return remote
    candidate = hops[-count]
    try:
        return str(ipaddress.ip_address(candidate.split("%")[0]))
    except ValueError:
        return remote


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:32]


@dataclass(frozen=True)
class Bucket:
    """Failed attempts of one key, with the progressive wait after `free` of them."""

    key: str
    free: int

    def _k(self, part: str) -> str:
        return f"throttle:{self.key}:{part}"

    def wait(self) -> int:
        """Seconds until the next attempt may run (0: now)."""
        until = cache.get(self._k("gate"))
        return max(0, math.ceil(until - time.time())) if until else 0

    def begin(self) -> bool:
        """Count an attempt; False when it must not run now (another one past the free ones is in flight)."""
        cache.add(self._k("count"), 0, timeout=settings.LOGIN_THROTTLE_WINDOW)
        n = cache.incr(self._k("count"))
        if n <= self.free:
            return True
        if cache.add(self._k("slot"), 1, timeout=60):
            if not self.wait():  # a failure that finished meanwhile set the wait before freeing the slot
                return True
            cache.delete(self._k("slot"))
        cache.decr(self._k("count"))
        return False

    def failed(self) -> None:
        n = cache.get(self._k("count")) or 0
        cache.touch(self._k("count"), settings.LOGIN_THROTTLE_WINDOW)
        if n >= self.free:
            delay = min(2 ** (n - self.free), settings.LOGIN_THROTTLE_MAX_DELAY)
            cache.set(self._k("gate"), time.time() + delay, timeout=delay)
        cache.delete(self._k("slot"))

    def cancel(self) -> None:
        """The attempt was not a password check after all (e.g. a missing CSRF token)."""
        cache.decr(self._k("count"))
        cache.delete(self._k("slot"))

    def clear(self) -> None:
        cache.delete_many([self._k("count"), self._k("gate"), self._k("slot")])


def login_buckets(request: HttpRequest, username: str) -> tuple[Bucket, Bucket]:
    """(account and address, address alone)."""
    address = client_address(request)
    account = _digest(username.strip().lower())
    return (
        Bucket(f"login:{account}:{address}", settings.LOGIN_THROTTLE_ATTEMPTS),
        Bucket(f"login-address:{address}", settings.LOGIN_THROTTLE_ADDRESS_ATTEMPTS),
    )


def refused(request: HttpRequest, wait: int) -> HttpResponse:
    message = (f"Too many failed log-ins for this account from your address: try again in {wait} second"
               f"{'s' if wait != 1 else ''}. The wait grows with each failure and ends after a successful log-in.")
    from django.contrib.auth.forms import AuthenticationForm

    # unbound: a bound form would check the password while refusing to (and tell whether it was right)
    form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
    response = TemplateResponse(request, "registration/login.html",
                                {"form": form, "throttled": message, "next": request.POST.get("next", "")}, status=429)
    response["Retry-After"] = str(max(1, wait))
    return response


def throttled_login(view):
    """Wrap a log-in view (the site's and the admin's) with the throttle described above."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if request.method != "POST":
            return view(request, *args, **kwargs)
        try:
            buckets = login_buckets(request, request.POST.get("username", ""))
            wait = max(b.wait() for b in buckets)
            if wait:
                return refused(request, wait)
            started = []
            for bucket in buckets:
                if not bucket.begin():
                    for done in started:
                        done.cancel()
                    return refused(request, 1)
                started.append(bucket)
        except Exception:  # the cache is down: let people log in, and say so in the log
            logger.exception("login throttle unavailable; attempt allowed")
            return view(request, *args, **kwargs)
        response = view(request, *args, **kwargs)
        try:
            if response.status_code in (301, 302, 303) and request.user.is_authenticated:
                buckets[0].clear()
                buckets[1].cancel()  # a success is not a failure of the address either
            elif response.status_code == 200:  # the form came back: wrong username or password
                for bucket in buckets:
                    bucket.failed()
            else:
                for bucket in buckets:
                    bucket.cancel()
        except Exception:
            logger.exception("login throttle unavailable; failure not counted")
        return response

    return wrapper


def parse_rate(rate: str) -> tuple[int, int]:
    """"20/hour" → (20, 3600); the period is s, m, h or d (or a word starting with one)."""
    try:
        number, period = rate.split("/")
        return int(number), {"s": 1, "m": 60, "h": 3600, "d": 86400}[period.strip()[0]]
    except (ValueError, KeyError, IndexError):
        raise ImproperlyConfigured(f"throttle rate {rate!r}: write it like 20/hour") from None


class TokenCreateThrottle(BaseThrottle):
    """API token creation: THROTTLE_TOKEN_CREATE (e.g. "20/hour") per (account, client address), counted
    with atomic increments in the shared cache over fixed windows of the rate's period."""

    def allow_request(self, request, view) -> bool:
        number, period = parse_rate(api_settings.DEFAULT_THROTTLE_RATES["token_create"])
        try:
            window = int(time.time() // period)
            key = f"throttle:token:{request.user.pk}:{client_address(request)}:{window}"
            cache.add(key, 0, timeout=period + 1)
            if cache.incr(key) <= number:
                return True
            self._wait = (window + 1) * period - time.time()
            return False
        except Exception:  # the cache is down: do not turn token creation into a 500
            logger.exception("token throttle unavailable; request allowed")
            return True

    def wait(self) -> float | None:
        return getattr(self, "_wait", None)
