"""Probes and metrics for the orchestrator and Prometheus. No authentication: they reveal no
market data beyond aggregate gauges; keep ``/metrics`` on the internal network (see README)."""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from . import metrics

logger = logging.getLogger("ops.health")


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Touches neither the database nor Redis, so a database
    outage does not make the orchestrator restart healthy web processes."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def _check_redis() -> str:
    if not settings.REDIS_URL:
        return "not configured (tasks run in-process)"
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the database and Redis both answer, else 503 naming what failed.
    Shape: ``{"status": "ok"|"unavailable", "checks": {"database": str, "redis": str},
    "seconds": float}``."""
    t0 = time.perf_counter()
    checks: dict[str, str] = {}
    ok = True
    for name, check in (("database", _check_database), ("redis", _check_redis)):
        try:
            checks[name] = check()
        except Exception as exc:  # any failure makes the instance not ready
            logger.warning("readiness check %s failed: %s", name, exc)
            checks[name] = f"error: {type(exc).__name__}"
            ok = False
    return JsonResponse(
        {
            "status": "ok" if ok else "unavailable",
            "checks": checks,
            "seconds": round(time.perf_counter() - t0, 4),
        },
        status=200 if ok else 503,
    )


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition text (see ``ops.metrics``)."""
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
