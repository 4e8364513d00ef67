"""Rate limits on writes and the login lock-out, kept in Django's cache (Redis in test and
production, local memory in the embedded default).

Rates come from ``settings.API_RATES`` (read at each request, so tests and deployments can change
them): ``write_user`` and ``write_ip`` limit unsafe methods (POST, PUT, PATCH, DELETE) per
authenticated user and per client IP; ``login_ip`` limits token requests per IP. Past a limit the
API answers 429 ``throttled`` with ``Retry-After`` (seconds).

Lock-out: ``LOGIN_MAX_FAILURES`` wrong passwords for one username inside ``LOGIN_LOCKOUT_SECONDS``
lock that username for ``LOGIN_LOCKOUT_SECONDS`` from the last failure: every token request for
it, even with the right password, is a 429 ``login_locked`` with ``Retry-After``.
"""

import math
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

if TYPE_CHECKING:  # runtime import would be circular (DRF imports throttles in APIView)
    from rest_framework.views import APIView

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _SettingsRateThrottle(SimpleRateThrottle):
    """A ``SimpleRateThrottle`` whose rate is read from ``settings.API_RATES[scope]``."""

    cache = cache

    def __init__(self) -> None:  # DRF reads the rate in __init__; keep that, from our settings
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)

    def get_rate(self) -> str | None:
        return getattr(settings, "API_RATES", {}).get(self.scope)


class WriteUserRateThrottle(_SettingsRateThrottle):
    """Writes per authenticated user (anonymous writes are refused before they cost much)."""

    scope = "write_user"

    def get_cache_key(self, request: Request, view: "APIView") -> str | None:
        if request.method in SAFE_METHODS or not request.user.is_authenticated:
            return None
        return f"throttle:{self.scope}:{request.user.pk}"


class WriteIPRateThrottle(_SettingsRateThrottle):
    """Writes per client IP (``REMOTE_ADDR``, or ``X-Forwarded-For`` per ``NUM_PROXIES``)."""

    scope = "write_ip"

    def get_cache_key(self, request: Request, view: "APIView") -> str | None:
        if request.method in SAFE_METHODS:
            return None
        return f"throttle:{self.scope}:{self.get_ident(request)}"


class LoginIPRateThrottle(_SettingsRateThrottle):
    """Token requests per client IP."""

    scope = "login_ip"

    def get_cache_key(self, request: Request, view: "APIView") -> str | None:
        return f"throttle:{self.scope}:{self.get_ident(request)}"


def _keys(username: str) -> tuple[str, str]:
    name = username.strip().lower()
    return f"login:failures:{name}", f"login:locked:{name}"


def login_check_locked(username: str) -> None:
    """Raise 429 ``login_locked`` (with ``Retry-After``) while ``username`` is locked out."""
    until = cache.get(_keys(username)[1])
    if until is None:
        return
    wait = until - time.time()
    if wait > 0:
        raise exceptions.Throttled(
            wait=math.ceil(wait),
            detail="too many failed logins for this user; try again later",
            code="login_locked",
        )


def login_failed(username: str) -> None:
    """Count a wrong password for ``username`` (atomic ``incr``, so parallel guesses all
    count); at ``LOGIN_MAX_FAILURES`` the username is locked."""
    failures_key, locked_key = _keys(username)
    window = settings.LOGIN_LOCKOUT_SECONDS
    cache.add(failures_key, 0, timeout=window)
    try:
        count = cache.incr(failures_key)
    except ValueError:  # expired between add and incr
        cache.set(failures_key, 1, timeout=window)
        count = 1
    cache.touch(failures_key, timeout=window)
    if count >= settings.LOGIN_MAX_FAILURES:
        cache.set(locked_key, time.time() + window, timeout=window)


def login_succeeded(username: str) -> None:
    """Forget the failures of ``username``."""
    cache.delete(_keys(username)[0])
