"""Fixtures for the fault tests: a set of real processes per test, stopped by pid."""

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from .harness import Cluster


@pytest.fixture(autouse=True)
def _one_queue_per_test(settings):  # type: ignore[no-untyped-def]
    """Tasks sent from this process go to the test's own queue, not to per-hub queues."""
    settings.MATCH_HUB_QUEUES = False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def other_session() -> Iterator[psycopg.Connection]:
    """A second database session on the test database (for holding row locks)."""
    db = connection.settings_dict
    conn = psycopg.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
    )
    try:
        yield conn
    finally:
        conn.close()
