"""Prometheus metrics.

* ``suanli_http_request_duration_seconds`` (histogram, per process; gunicorn workers are
  aggregated through ``PROMETHEUS_MULTIPROC_DIR`` when it is set).
* Read from the database and Redis at scrape time (so every worker process's work counts):
  matching cycle time and reservations per cycle (the last cycle of each hub and totals over the
  last hour), queue depth of each Celery queue in Redis, voucher budget left per programme (CNY),
  failed tasks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("ops.metrics")

REQUEST_LATENCY = Histogram(
    "suanli_http_request_duration_seconds",
    "HTTP request latency in seconds.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class MarketCollector(Collector):
    """Market and queue gauges read at scrape time."""

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count, Max, Sum
        from django.utils import timezone

        from ledger.models import Account
        from marketplace.models import MatchingCycle

        from .models import FailedTask

        last_seconds = GaugeMetricFamily(
            "suanli_matching_cycle_last_seconds",
            "Duration of the hub's last matching cycle, seconds.",
            labels=["hub"],
        )
        last_made = GaugeMetricFamily(
            "suanli_matching_cycle_last_reservations",
            "Reservations made by the hub's last matching cycle.",
            labels=["hub"],
        )
        latest = (
            MatchingCycle.objects.values("hub__code")
            .annotate(last=Max("id"))
            .values_list("last", flat=True)
        )
        for code, seconds, made in MatchingCycle.objects.filter(id__in=list(latest)).values_list(
            "hub__code", "seconds", "reservations_made"
        ):
            last_seconds.add_metric([code], float(seconds))
            last_made.add_metric([code], float(made))
        yield last_seconds
        yield last_made

        hour = MatchingCycle.objects.filter(
            started_at__gte=timezone.now() - timedelta(hours=1)
        ).aggregate(n=Count("id"), seconds=Sum("seconds"), made=Sum("reservations_made"))
        yield _gauge(
            "suanli_matching_cycles_last_hour", "Matching cycles in the last hour.", hour["n"]
        )
        yield _gauge(
            "suanli_matching_cycle_seconds_last_hour",
            "Total matching cycle time in the last hour, seconds.",
            hour["seconds"],
        )
        yield _gauge(
            "suanli_matching_reservations_last_hour",
            "Reservations made by matching cycles in the last hour.",
            hour["made"],
        )

        budget = GaugeMetricFamily(
            "suanli_voucher_budget_left_cny",
            "Balance of each voucher programme's budget account, CNY.",
            labels=["programme"],
        )
        for code, balance in Account.objects.filter(kind=Account.Kind.PROGRAMME).values_list(
            "programme__code", "balance"
        ):
            budget.add_metric([code or ""], float(balance))
        yield budget

        failed = CounterMetricFamily(
            "suanli_failed_tasks", "Celery tasks recorded as failed for good.", labels=["reason"]
        )
        for reason, n in FailedTask.objects.values_list("reason").annotate(n=Count("id")):
            failed.add_metric([reason], n)
        yield failed

        depth = GaugeMetricFamily(
            "suanli_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        for queue, n in queue_depths().items():
            depth.add_metric([queue], n)
        yield depth


def _gauge(name: str, doc: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value or 0))


def queue_depths() -> dict[str, int]:
    """Messages waiting per Celery queue on the Redis broker: the default queue and every
    per-hub matching queue (``<MATCH_QUEUE_PREFIX>.<hub code>``) present in Redis."""
    from django.conf import settings

    from marketplace.celery import app

    names = {app.conf.task_default_queue}
    prefix = getattr(settings, "MATCH_QUEUE_PREFIX", "match")
    try:
        with app.connection_for_read() as conn:
            client = conn.default_channel.client
            for key in client.scan_iter(match=f"{prefix}.*", count=500):
                names.add(key.decode() if isinstance(key, bytes) else str(key))
            return {q: int(client.llen(q)) for q in sorted(names)}
    except Exception:  # memory:// broker or Redis down: no depths to report
        logger.warning("queue depth unavailable", exc_info=True)
        return {}


def process_registry() -> CollectorRegistry:
    """The request metrics of every gunicorn worker (``PROMETHEUS_MULTIPROC_DIR`` set, as
    ``docker/start-web.sh`` does) or of this process, plus the process collectors."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in list(REGISTRY._collector_to_names):  # the default process collectors
            registry.register(collector)
    return registry


def render() -> bytes:
    """The exposition text: request metrics (``process_registry``) and the market gauges."""
    registry = process_registry()
    registry.register(MarketCollector())
    return generate_latest(registry)
