"""Transient refusals of a cycle's writes by PostgreSQL, and running a write again after one.

A cycle's write transactions (a batch of ``bulk``, a split demand of ``parts_write``, one pair of
the one-by-one fallback) lock rows that people's requests and other tasks lock too. The lock
order of the service layer keeps them from deadlocking with each other, but not with every
statement of every session (an operator's SQL, a future writer that gets the order wrong), and a
lock wait can outlast ``lock_timeout`` (``DB_LOCK_TIMEOUT_MS`` in production). PostgreSQL then
aborts the transaction with one of ``TRANSIENT_SQLSTATES``: nothing of it was written, and the
same transaction run again, from its first lock, can succeed. Django raises these as
``django.db.OperationalError`` with the psycopg error (which carries ``sqlstate``) as
``__cause__``, like the errors that are not transient (connection lost, ``statement_timeout``'s
``57014``, the server shutting down): those still propagate.

``retried`` runs a write up to ``WRITE_ATTEMPTS`` times (the first and two more) in all,
immediately one after the other: the deadlock's other party keeps its locks until it commits,
and the next attempt queues behind it instead of meeting it halfway again, so a second attempt
almost always succeeds; a third failure in a row means a row so contended that more attempts
would mostly hold the hub's matching lock longer (each attempt may wait ``deadlock_timeout``,
1 s by default, or ``lock_timeout``, 5 s in production, before it fails). The write must be one
whole durable transaction (``transaction.atomic(durable=True)``): after the error the database
has rolled back all of it, and each attempt locks and checks everything again from scratch.
"""

import logging
from collections.abc import Callable, Collection
from typing import TypeVar

from django.db import OperationalError

from marketplace.models import Demand

logger = logging.getLogger("marketplace.matching")

# SQLSTATE → what PostgreSQL reports: the transaction was aborted and may succeed if run again.
TRANSIENT_SQLSTATES = {
    "40P01": "deadlock detected",
    "40001": "serialization failure",
    "55P03": "lock not available",
}
# Attempts of one write transaction in all, the first included.
WRITE_ATTEMPTS = 3
# The reason (``unmatched_reason``) of a pair or split demand still refused transiently after
# its attempts: it stays open, and the next cycle tries it again.
WRITE_CONFLICT = "write_conflict"

T = TypeVar("T")


def transient_state(exc: BaseException) -> str | None:
    """The SQLSTATE of ``exc`` if it is one of ``TRANSIENT_SQLSTATES`` raised by the database
    (a ``django.db.OperationalError`` wrapping the psycopg error), else ``None``."""
    if not isinstance(exc, OperationalError):
        return None
    state = getattr(exc.__cause__, "sqlstate", None)
    return state if state in TRANSIENT_SQLSTATES else None


def retried(write: Callable[[], T], *, what: str) -> T:
    """``write()``, run again while the database refuses it transiently (``transient_state``),
    ``WRITE_ATTEMPTS`` times at most; each retry is logged at WARNING with ``what``. Returns what
    the attempt that succeeded returned; raises any other error at once, and the last transient
    one when the attempts are spent. ``write`` must be one durable transaction."""
    attempt = 1
    while True:
        try:
            return write()
        except OperationalError as exc:
            state = transient_state(exc)
            if state is None or attempt >= WRITE_ATTEMPTS:
                raise
            logger.warning(
                "%s: %s (SQLSTATE %s) on attempt %d of %d, rolled back; running it again",
                what,
                TRANSIENT_SQLSTATES[state],
                state,
                attempt,
                WRITE_ATTEMPTS,
            )
            attempt += 1


def reason_keep(demand_ids: Collection[str], reason: str) -> None:
    """Store ``reason`` as the ``unmatched_reason`` of the demands of ``demand_ids`` still open
    (one UPDATE, its own transaction). The reason only informs (``explain``, the demand's
    page): when the database refuses the UPDATE transiently — a demand's row held by whoever
    the write just conflicted with — it is logged and left, rather than ending the cycle."""
    try:
        Demand.objects.filter(pk__in=demand_ids, status=Demand.Status.OPEN).update(
            unmatched_reason=reason
        )
    except OperationalError as exc:
        if transient_state(exc) is None:
            raise
        logger.warning("reason %s of demands %s not stored: %r", reason, sorted(demand_ids), exc)
