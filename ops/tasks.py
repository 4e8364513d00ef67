"""The base class of every Celery task of the project (``Celery(task_cls=...)`` in
``marketplace/celery.py``), so the task modules only declare what a task does.

At-least-once, done safely:

* ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged after the task returns;
  a worker that dies mid-task leaves it to be delivered again. Every task is idempotent (tasks
  take ids, re-read state, and the services refuse a second effect), so a second delivery is
  harmless.
* Transient errors only are retried, with exponential backoff and jitter, at most
  ``CELERY_TASK_MAX_RETRIES`` times: database connection and timeout errors
  (``django.db.OperationalError``/``InterfaceError``) and Redis/broker connection errors.
  Anything else (a bug, a rule refused) fails at once.
* A task that failed for good is recorded as a ``FailedTask`` row (visible in the admin).
* A message whose worker died ``CELERY_TASK_MAX_DELIVERIES`` times (a poison message that kills
  the process) is not run again: it is recorded as failed and acknowledged, so it cannot loop.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions
import redis.exceptions
from celery import Task
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError

logger = logging.getLogger("ops.tasks")

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


class ReliableTask(Task):
    """Retries transient errors with backoff; records tasks that fail for good."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT_ERRORS
    max_retries = _setting("CELERY_TASK_MAX_RETRIES", 5)
    retry_backoff = _setting("CELERY_TASK_RETRY_BACKOFF", 2)  # seconds, doubled each retry
    retry_backoff_max = _setting("CELERY_TASK_RETRY_BACKOFF_MAX", 300)
    retry_jitter = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        # Count broker deliveries only: not in-process runs, nor a task called as a plain
        # function from another task (no id, no delivery info of its own).
        delivered = not req.is_eager and req.id and req.delivery_info
        if delivered and self._delivered_too_often():
            return None
        return super().__call__(*args, **kwargs)

    def _delivered_too_often(self) -> bool:
        """Count this delivery (per task id and retry number, in Redis); past the limit, record
        the message as failed instead of running it again."""
        limit = _setting("CELERY_TASK_MAX_DELIVERIES", 5)
        key = f"ops:deliveries:{self.request.id}:{self.request.retries or 0}"
        try:
            with self.app.pool.acquire(block=True) as conn:
                client = conn.default_channel.client
                count = int(client.incr(key))
                client.expire(key, 7 * 86400)
        except Exception:  # no Redis-like broker (memory://): nothing to count
            logger.debug("delivery count unavailable for %s", self.request.id, exc_info=True)
            return False
        if count <= limit:
            return False
        logger.error(
            "task %s[%s] delivered %d times without finishing; giving up",
            self.name,
            self.request.id,
            count - 1,
        )
        self._record("worker_lost", None, f"worker lost on {count - 1} deliveries", "")
        return True

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        reason = "retries_exhausted" if isinstance(exc, TRANSIENT_ERRORS) else "error"
        self._record(reason, exc, str(exc), str(einfo))

    def _record(self, reason: str, exc: Exception | None, message: str, tb: str) -> None:
        from .models import FailedTask

        req = self.request
        try:
            FailedTask.objects.get_or_create(
                task_id=str(req.id),
                defaults={
                    "task_name": self.name,
                    "args": _jsonable(list(req.args or [])),
                    "kwargs": _jsonable(dict(req.kwargs or {})),
                    "reason": reason,
                    "exception": type(exc).__name__ if exc is not None else "WorkerLostError",
                    "message": message[:5000],
                    "traceback": tb[:20000],
                    "retries": req.retries or 0,
                    "request_id": getattr(req, "request_id", None) or "",
                },
            )
        except (OperationalError, InterfaceError, IntegrityError):
            # The database itself is down: the log line is the record.
            logger.exception("could not record failed task %s[%s]", self.name, req.id)


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))
