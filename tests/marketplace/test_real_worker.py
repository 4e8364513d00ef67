"""A real Celery worker process, on the local Redis and the test PostgreSQL database, turns a
posted demand into a reservation."""

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
import redis
from django.conf import settings
from django.db import connection

from marketplace import celery_app
from marketplace.models import Hub, Reservation
from marketplace.services import demand_create
from marketplace.tasks import hub_queue
from tests.factories import next_hour


def start_worker(default_queue: str, hub_codes: list[str]) -> subprocess.Popen[bytes]:
    """Start ``celery worker`` (solo pool) on the test database and Redis, consuming its own
    default queue and the matching queues of ``hub_codes`` (``-Q default,match.<code>,…``, the
    prefix being this test's ``MATCH_QUEUE_PREFIX``). Stop it with ``stop_worker``."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": default_queue,
        "MATCH_QUEUE_PREFIX": settings.MATCH_QUEUE_PREFIX,
    }
    queues = ",".join([default_queue, *(hub_queue(code) for code in hub_codes)])
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "marketplace", "worker", "-P", "solo"),
            *("-Q", queues, "--without-heartbeat", "--without-gossip", "--without-mingle"),
            *("-l", "WARNING"),
        ],
        env=env,
        cwd=settings.BASE_DIR,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def worker_queue(site):  # type: ignore[no-untyped-def]
    """Start ``celery worker`` on a default queue of its own plus every hub's matching queue
    (derived from the Hub rows; per-hub routing is on because Celery is not eager here)."""
    suffix = uuid.uuid4().hex[:8]
    queue = f"test-{suffix}"
    old_prefix = settings.MATCH_QUEUE_PREFIX
    settings.MATCH_QUEUE_PREFIX = f"test-{suffix}-match"
    codes = list(Hub.objects.order_by("code").values_list("code", flat=True))
    proc = start_worker(queue, codes)
    old = (celery_app.conf.task_always_eager, celery_app.conf.task_default_queue)
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = queue
    try:
        yield proc
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_default_queue = old
        stop_worker(proc)
        settings.MATCH_QUEUE_PREFIX = old_prefix
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(
            queue, *(hub_queue(c) for c in codes)
        )


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_posted_demand_becomes_a_reservation_in_a_real_worker(worker_queue, buyer, offer):
    # given an active offer and a worker process consuming its own queue
    start = next_hour(2)
    # when the buyer posts a demand (matching is enqueued on commit)
    demand = demand_create(
        buyer=buyer,
        accelerators=["A100-80G"],
        gpu_count=2,
        duration_hours=3,
        earliest_start=start,
        latest_end=start + timedelta(hours=12),
        max_price_per_gpu_hour=Decimal("12.5"),
        locality_limit="city",
    )
    # then, within a bounded wait, the worker has booked it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and worker_queue.poll() is None:
        if Reservation.objects.filter(demand=demand).exists():
            break
        time.sleep(0.25)
    assert worker_queue.poll() is None, "worker exited early"
    reservation = Reservation.objects.get(demand=demand)
    assert (reservation.offer_id, reservation.start, reservation.gpu_count) == (offer.pk, start, 2)
    assert reservation.bill == Decimal("60.00")
