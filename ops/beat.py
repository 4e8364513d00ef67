"""A single active beat: the database scheduler, ticking only while it holds a PostgreSQL
advisory lock.

Run as many ``celery beat`` processes as you like (for failover); one holds the lock and sends
the periodic tasks, the others wait and retry every ``BEAT_STANDBY_INTERVAL`` seconds. The lock
lives on a connection of its own, so it is released when the holder dies (its session ends) and a
standby takes over. On taking over, the standby re-reads the schedule (``last_run_at``) from the
database so it continues where the holder left off; a periodic run the holder had sent but not
yet saved may be sent again, which is safe because every periodic task is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection
from django_celery_beat.schedulers import DatabaseScheduler
from psycopg.conninfo import make_conninfo

logger = logging.getLogger("ops.beat")

BEAT_LOCK_KEY = zlib.crc32(b"suanli:celery-beat")


def _dsn() -> str:
    db = settings.DATABASES["default"]
    parts = {
        "dbname": connection.settings_dict["NAME"],
        "user": db.get("USER") or "",
        "password": db.get("PASSWORD") or "",
        "host": db.get("HOST") or "",
        "port": str(db.get("PORT") or ""),
    }
    return make_conninfo(**{k: v for k, v in parts.items() if v})


class SingleBeatScheduler(DatabaseScheduler):
    """``DatabaseScheduler`` that sends tasks only while holding the beat advisory lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock_conn: psycopg.Connection[Any] | None = None
        super().__init__(*args, **kwargs)

    def _holds_lock(self) -> bool:
        if connection.vendor != "postgresql":
            return True  # SQLite: one process, nothing to elect
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                logger.warning("beat lock connection lost; standing by")
                self._drop_lock_conn()
        try:
            conn = psycopg.connect(_dsn(), autocommit=True, connect_timeout=5)
        except psycopg.Error:
            logger.warning("beat lock: database unreachable", exc_info=True)
            return False
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", [BEAT_LOCK_KEY]).fetchone()
        if not (row and row[0]):
            conn.close()
            return False
        self._lock_conn = conn
        logger.info("beat lock acquired; this beat is active")
        # Continue from the schedule the previous holder saved.
        self._initial_read = True
        self._heap = None
        return True

    def _drop_lock_conn(self) -> None:
        if self._lock_conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._lock_conn.close()
        self._lock_conn = None

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._holds_lock():
            return float(getattr(settings, "BEAT_STANDBY_INTERVAL", 5))
        return float(super().tick(*args, **kwargs))

    def close(self) -> None:
        super().close()
        self._drop_lock_conn()
