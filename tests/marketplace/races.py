"""Helpers for tests that race real threads against PostgreSQL: sessions waiting on locks,
a second connection that holds rows, and threads that record their outcome."""

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import connection


def blocked_on_locks() -> int:
    """How many other sessions of the test database wait on a lock now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def wait_for_blocked(n: int) -> None:
    """Return once at least ``n`` other sessions wait on a lock; a bounded poll (about 30 s),
    not a timed assertion: ``AssertionError`` if they never do."""
    for _ in range(600):
        if blocked_on_locks() >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} sessions never waited on a lock")


def other_session() -> psycopg.Connection[Any]:
    """A psycopg connection of its own to the test database (outside Django), to hold rows."""
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
    )


def in_thread(name: str, fn: Callable[[], object], outcomes: dict[str, object]) -> threading.Thread:
    """Start ``fn`` in a thread that stores its result, or the exception it raised, as
    ``outcomes[name]`` and closes its Django connection."""

    def run() -> None:
        try:
            outcomes[name] = fn()
        except Exception as exc:  # the race's outcome, asserted by the caller
            outcomes[name] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def race_behind(
    lock_sql: str, params: list[Any], *steps: tuple[str, Callable[[], object]]
) -> dict[str, object]:
    """Race ``steps`` behind a row lock: another session runs ``lock_sql`` (a ``SELECT … FOR
    UPDATE`` of the row with ``params``) and holds it; each step starts in its own thread once
    every step before it waits on a lock (``wait_for_blocked``); then the row is let go and
    every thread joined. Returns ``{step name: its result, or the exception it raised}``."""
    other = other_session()
    other.execute(lock_sql, params)
    outcomes: dict[str, object] = {}
    threads = []
    try:
        for n, (name, fn) in enumerate(steps, start=1):
            threads.append(in_thread(name, fn, outcomes))
            wait_for_blocked(n)
    finally:
        other.rollback()  # the row is let go: every step goes on
        other.close()
    for thread in threads:
        thread.join(60)
    return outcomes
