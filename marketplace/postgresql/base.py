"""Django's PostgreSQL backend with a cheaper ``CONN_HEALTH_CHECKS`` check.

With persistent connections (``CONN_MAX_AGE``) and ``CONN_HEALTH_CHECKS``, Django checks the
connection before the first query of every request by sending ``SELECT 1``: a round trip, and
on the API's cache hits (one query of their own, the token lookup) about a tenth of the
request's CPU. ``is_usable`` here looks at the connection's socket instead: a live, idle
connection has nothing to read, while a connection the server ended (a restart, an idle-session
timeout, ``pg_terminate_backend``) has its error message or end-of-file waiting. Only then, or
when anything else is waiting (a notice, a parameter status), does it fall back to Django's
``SELECT 1``, which consumes it and tells. A peer that vanished without closing the connection
(a cut network) is not seen by either check until a query times out.
"""

import select
from typing import Any

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    """Django's ``DatabaseWrapper`` for PostgreSQL; only ``is_usable`` differs."""

    def is_usable(self) -> bool:
        """Whether the open connection can run a query: ``False`` when it is closed or broken
        or the server ended it; no round trip while nothing waits on its socket."""
        connection: Any = self.connection
        if connection is None or connection.closed or connection.broken:
            return False
        try:
            poller = select.poll()
            poller.register(connection.fileno(), select.POLLIN | select.POLLPRI)
            waiting = poller.poll(0)
        except (OSError, ValueError):
            return False
        if not waiting:
            return True
        return bool(super().is_usable())
