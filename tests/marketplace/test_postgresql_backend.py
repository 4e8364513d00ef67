"""``marketplace.postgresql``: the ``CONN_HEALTH_CHECKS`` check looks at the connection's
socket: no round trip for a live idle connection, ``False`` for one the server ended, Django's
``SELECT 1`` when something else waits on the socket. On a connection of its own (the test's
own runs in the test transaction)."""

import select
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections

from marketplace.postgresql.base import DatabaseWrapper

pytestmark = pytest.mark.django_db


@pytest.fixture
def own() -> Iterator[Any]:
    wrapper = connections.create_connection("default")
    assert isinstance(wrapper, DatabaseWrapper)
    wrapper.ensure_connection()
    wrapper.set_autocommit(True)
    yield wrapper
    wrapper.close()


def _pid(wrapper: Any) -> int:
    with wrapper.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def _wait_readable(wrapper: Any) -> None:
    """Until something waits on the connection's socket (the server's message), at most 30 s."""
    poller = select.poll()
    poller.register(wrapper.connection.fileno(), select.POLLIN)
    assert poller.poll(30_000), "nothing arrived on the connection"


def _is_usable_traced(own) -> tuple[bool, bytes]:  # type: ignore[no-untyped-def]
    """``own.is_usable()`` and the libpq protocol trace of what it sent and received."""
    with tempfile.TemporaryFile() as trace:
        own.connection.pgconn.trace(trace.fileno())
        try:
            usable = own.is_usable()
        finally:
            own.connection.pgconn.untrace()
        trace.seek(0)
        return usable, trace.read()


def test_the_settings_use_the_backend() -> None:
    assert connection.settings_dict["ENGINE"] == "marketplace.postgresql"
    assert isinstance(connections["default"], DatabaseWrapper)


def test_a_live_idle_connection_is_usable_without_a_round_trip(own) -> None:  # type: ignore[no-untyped-def]
    usable, traffic = _is_usable_traced(own)
    assert usable
    assert traffic == b""  # libpq sent and received nothing


def test_a_connection_the_server_ended_is_not_usable(own) -> None:  # type: ignore[no-untyped-def]
    pid = _pid(own)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    _wait_readable(own)  # the backend's FATAL message and end-of-file
    assert not own.is_usable()
    # and Django's health check then drops it: the next query runs on a new connection
    own.health_check_enabled, own.health_check_done = True, False
    own.close_if_health_check_failed()
    assert own.connection is None
    assert _pid(own) != pid


def test_a_notification_waiting_falls_back_to_select_1(own) -> None:  # type: ignore[no-untyped-def]
    with own.cursor() as cursor:
        cursor.execute("LISTEN suanli_backend_test")
    other = connections.create_connection("default")
    try:
        other.set_autocommit(True)
        with other.cursor() as cursor:
            cursor.execute("NOTIFY suanli_backend_test")
    finally:
        other.close()
    _wait_readable(own)
    usable, traffic = _is_usable_traced(own)
    assert usable
    assert b"SELECT 1" in traffic


def test_a_closed_connection_is_not_usable(own) -> None:  # type: ignore[no-untyped-def]
    own.connection.close()
    assert not own.is_usable()
