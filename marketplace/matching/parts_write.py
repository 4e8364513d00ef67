"""The write path of split demands (partial fills): the parts the engine chose for one demand
(``Match.gpus`` set, see ``partial``) are written together by
``marketplace.services.reservation_parts_create`` — one durable transaction per split demand,
all its reservations and holds or none. Kept apart from ``bulk`` (whole demands, written in
batches): split demands are few, and a batch must never hold half of one. A demand's
transaction aborted by a transient database error is run again, as a batch is
(``conflicts.retried``), and the demand dropped with ``write_conflict`` when it still is."""

import logging
from collections.abc import Sequence
from datetime import datetime

from django.db import OperationalError

from marketplace.errors import DomainError
from marketplace.models import Reservation
from marketplace.services import reservation_parts_create
from marketplace.timeutil import from_hour_index

from .conflicts import WRITE_ATTEMPTS, WRITE_CONFLICT, reason_keep, retried, transient_state
from .engine import Match

logger = logging.getLogger("marketplace.matching")


def split_matches(matches: Sequence[Match]) -> tuple[list[Match], dict[str, list[Match]]]:
    """``(whole matches in order, {demand id: its parts in order})``: a match with ``gpus``
    set is a part of a split demand."""
    whole: list[Match] = []
    parts: dict[str, list[Match]] = {}
    for m in matches:
        if m.gpus is None:
            whole.append(m)
        else:
            parts.setdefault(m.demand_id, []).append(m)
    return whole, parts


def parts_write(
    parts: dict[str, list[Match]], *, now: datetime, made: list[str], dropped: dict[str, str]
) -> None:
    """Write each split demand's parts (``reservation_parts_create``), appending the
    reservation ids made to ``made``; a demand refused there (capacity taken meanwhile, funds
    short, a rule) gets its reason code in ``dropped`` and as its ``unmatched_reason``, and
    stays open with nothing written. ``now`` (UTC) is the cycle's clock. A rule's refusal
    (``DomainError``) is not raised. A demand's transaction the database refuses transiently
    (deadlock ``40P01``, serialization failure ``40001``, lock not available ``55P03``) is run
    again from scratch, ``conflicts.WRITE_ATTEMPTS`` times in all; still refused, the demand is
    dropped with ``write_conflict`` and the next one written. Any other database error is
    raised."""
    for demand_id, matches in parts.items():

        def write(demand_id: str = demand_id, matches: list[Match] = matches) -> list[Reservation]:
            return reservation_parts_create(
                demand_id=demand_id,
                parts=[(m.offer_id, m.gpus or 0) for m in matches],
                start=from_hour_index(matches[0].start),
                now=now,
            )

        try:
            written = retried(write, what=f"parts of demand {demand_id}")
        except DomainError as exc:
            dropped[demand_id] = exc.code[:40]
            reason_keep([demand_id], exc.code[:40])
            continue
        except OperationalError as exc:
            if transient_state(exc) is None:
                raise
            logger.warning(
                "parts of demand %s refused %d times (%r); left open",
                demand_id,
                WRITE_ATTEMPTS,
                exc,
            )
            dropped[demand_id] = WRITE_CONFLICT
            reason_keep([demand_id], WRITE_CONFLICT)
            continue
        made += [str(r.pk) for r in written]
