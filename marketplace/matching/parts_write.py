"""The write path of split demands (partial fills): the parts the engine chose for one demand
(``Match.gpus`` set, see ``partial``) are written together by
``marketplace.services.reservation_parts_create`` — one durable transaction per split demand,
all its reservations and holds or none. Kept apart from ``bulk`` (whole demands, written in
batches): split demands are few, and a batch must never hold half of one."""

from collections.abc import Sequence
from datetime import datetime

from marketplace.errors import DomainError
from marketplace.models import Demand
from marketplace.services import reservation_parts_create
from marketplace.timeutil import from_hour_index

from .engine import Match


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
    (``DomainError``) is not raised; a database error is."""
    for demand_id, matches in parts.items():
        try:
            written = reservation_parts_create(
                demand_id=demand_id,
                parts=[(m.offer_id, m.gpus or 0) for m in matches],
                start=from_hour_index(matches[0].start),
                now=now,
            )
        except DomainError as exc:
            dropped[demand_id] = exc.code[:40]
            Demand.objects.filter(pk=demand_id, status=Demand.Status.OPEN).update(
                unmatched_reason=exc.code[:40]
            )
            continue
        made += [str(r.pk) for r in written]
