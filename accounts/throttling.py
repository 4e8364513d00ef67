"""Rate limits on writes and the login lock-out, kept in Django's cache (Redis in test and
production, local memory in the embedded default).

Rates come from ``settings.API_RATES`` (read at each request, so tests and deployments can change
them): ``write_user`` and ``write_ip`` limit unsafe methods (POST, PUT, PATCH, DELETE) per
authenticated user and per client IP; ``login_ip`` limits token requests per IP. Past a limit the
API answers 429 ``throttled`` with ``Retry-After`` (seconds).

Lock-out, keyed so that a stranger cannot lock a user out from one machine:

* ``LOGIN_MAX_FAILURES`` (5) wrong passwords for one username *from one client IP* inside
  ``LOGIN_LOCKOUT_SECONDS`` lock that (username, IP) pair for ``LOGIN_LOCKOUT_SECONDS`` from the
  last failure; the same user logging in from another IP is not affected.
* ``LOGIN_MAX_FAILURES_PER_USERNAME`` (50) wrong passwords for one username from all IPs together
  inside the window lock the username everywhere (the brake on guessing from many IPs; locking a
  user out then takes that many requests from many addresses, each pair held under its own limit).

While locked, every token request for it, even with the right password, is a 429
``login_locked`` with ``Retry-After``. A successful login forgets the failures of its
(username, IP) pair. The client IP is DRF's ``get_ident`` (``REMOTE_ADDR``, or
``X-Forwarded-For`` per ``NUM_PROXIES``), as for the rate limits.
"""

import hashlib
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


def _name(username: str) -> str:
    """The username as a cache-key part: normalised, then hashed, so any characters (spaces,
    non-ASCII, control characters) make a key every cache backend accepts."""
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]


def _locks(username: str, ip: str) -> tuple[str, str]:
    """Cache keys of the (username, IP) lock and of the username-wide lock."""
    name = _name(username)
    return f"login:locked:{name}:{ip}", f"login:locked:{name}"


def login_check_locked(username: str, ip: str) -> None:
    """Raise 429 ``login_locked`` (with ``Retry-After``) while ``username`` is locked for
    ``ip`` or everywhere."""
    now = time.time()
    untils = [until for until in cache.get_many(_locks(username, ip)).values() if until]
    wait = max(untils, default=now) - now
    if wait > 0:
        raise exceptions.Throttled(
            wait=math.ceil(wait),
            detail="too many failed logins for this user; try again later",
            code="login_locked",
        )


def _count(key: str, window: int) -> int:
    """Add one to the counter ``key`` (atomic ``incr``, so parallel guesses all count) and keep
    it ``window`` seconds after this failure."""
    cache.add(key, 0, timeout=window)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        count = 1
    cache.touch(key, timeout=window)
    return count


def login_failed(username: str, ip: str) -> None:
    """Count a wrong password for ``username`` from ``ip``: at ``LOGIN_MAX_FAILURES`` for the
    pair the pair is locked, at ``LOGIN_MAX_FAILURES_PER_USERNAME`` over all IPs the username."""
    name, window = _name(username), settings.LOGIN_LOCKOUT_SECONDS
    pair_lock, name_lock = _locks(username, ip)
    until = time.time() + window
    if _count(f"login:failures:{name}:{ip}", window) >= settings.LOGIN_MAX_FAILURES:
        cache.set(pair_lock, until, timeout=window)
    if _count(f"login:failures:{name}", window) >= settings.LOGIN_MAX_FAILURES_PER_USERNAME:
        cache.set(name_lock, until, timeout=window)


def login_succeeded(username: str, ip: str) -> None:
    """Forget the failures of ``username`` from ``ip`` (the username-wide count stays: a
    success from one address does not reset guessing from others)."""
    cache.delete(f"login:failures:{_name(username)}:{ip}")
