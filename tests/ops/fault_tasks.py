"""Test-only tasks, loaded by the fault-test workers with ``--include tests.ops.fault_tasks``."""

import logging
import os
import time

from celery import shared_task
from django.db import OperationalError

from ops.context import request_id_var

logger = logging.getLogger("tests.ops.fault_tasks")


@shared_task(name="tests.ops.log_request_id")
def log_request_id() -> str:
    """Logs one line; the test reads the worker's JSON log for the request id."""
    logger.info("fault task ran")
    return request_id_var.get()


@shared_task(name="tests.ops.poison_error")
def poison_error() -> None:
    """Fails every time with a non-transient error: must not be retried."""
    raise ValueError("poison: bad input that no retry can fix")


@shared_task(name="tests.ops.poison_transient")
def poison_transient() -> None:
    """Fails every time with a transient-looking error: retried with backoff, then gives up."""
    raise OperationalError("poison: the database is always down for this task")


@shared_task(name="tests.ops.poison_kill")
def poison_kill() -> None:
    """Kills its worker process every time (like a segfault or the OOM killer)."""
    os._exit(1)


@shared_task(name="tests.ops.slow_then_settle")
def slow_then_settle(reservation_id: str, seconds: float) -> bool:
    """Runs longer than the broker's visibility timeout, then settles (one real effect)."""
    from marketplace.tasks import settle_reservation

    time.sleep(seconds)
    return bool(settle_reservation(reservation_id))
