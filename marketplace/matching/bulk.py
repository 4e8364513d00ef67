"""The bulk write path of a matching cycle: the engine's matches written in batches (``BATCH``
per transaction) instead of one transaction per match, with the same rules as
``marketplace.services.reservation_create`` (its helpers are reused, not forked).

Per batch, in one durable transaction and in the service layer's lock order:
demands (by pk) → offers (by pk) → vouchers (by pk) → the buyers' wallets and the vouchers'
ledger accounts (by pk) → the programmes (by pk) → then each pair's writes, whose postings touch
only rows already locked plus the shared escrow (hot, last). Capacity of the whole batch is
re-checked in memory against the locked offers' reservations. A pair that fails a rule is
rolled back to its savepoint and dropped, its demand keeps the reason; the rest commits.
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from ledger.models import Account
from marketplace.errors import Conflict, DomainError
from marketplace.models import Demand, Offer, Reservation
from marketplace.services import _pair_check, reservation_locality_check, reservation_write
from marketplace.timeutil import HOUR, from_hour_index, hour_index
from vouchers.models import Programme, Voucher

from .engine import Match
from .parts_write import parts_write, split_matches

BATCH = 200


@dataclass
class BatchOutcome:
    """What a bulk write did: reservation ids made and ``{demand id: reason code}`` dropped."""

    made: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)


def matches_write(
    matches: Sequence[Match], *, now: datetime, batch: int | None = None
) -> BatchOutcome:
    """Write ``matches`` (engine output, hour-index starts) in batches of ``batch`` pairs
    (``MATCH_WRITE_BATCH``, default 200), each batch one durable transaction. Returns the ids
    made and the reasons of the pairs dropped (each also stored as the demand's
    ``unmatched_reason``). The parts of split demands are written after the batches, one
    transaction per demand (``parts_write``)."""
    size: int = batch if batch else settings.MATCH_WRITE_BATCH
    outcome = BatchOutcome()
    # Partial fills: the parts of a split demand go through ``parts_write``, all or none.
    matches, split = split_matches(matches)
    for i in range(0, len(matches), size):
        _batch_write(matches[i : i + size], now, outcome)
    parts_write(split, now=now, made=outcome.made, dropped=outcome.dropped)
    return outcome


def _batch_write(pairs: Sequence[Match], now: datetime, outcome: BatchOutcome) -> None:
    with transaction.atomic(durable=True):
        demands = {
            str(d.pk): d
            for d in Demand.objects.select_for_update(of=("self",))
            .select_related("buyer", "origin_site")
            .filter(pk__in=[m.demand_id for m in pairs])
            .order_by("pk")
        }
        offers = {
            str(o.pk): o
            for o in Offer.objects.select_for_update(of=("self",))
            .select_related("site", "provider", "accelerator")
            .filter(pk__in={m.offer_id for m in pairs})
            .order_by("pk")
        }
        voucher_ids = {d.voucher_id for d in demands.values() if d.voucher_id is not None}
        vouchers = {
            v.pk: v
            for v in Voucher.objects.select_for_update(of=("self",))
            .select_related("programme")
            .filter(pk__in=voucher_ids)
            .order_by("pk")
        }
        buyers = {d.buyer_id for d in demands.values()}
        # The ledger accounts every hold of the batch changes besides escrow, then the
        # programme rows (hot, shared): as ``voucher_hold_lock`` does for one hold.
        list(
            Account.objects.select_for_update()
            .filter(
                Q(kind=Account.Kind.WALLET, organisation_id__in=buyers)
                | Q(kind=Account.Kind.VOUCHER, voucher_id__in=voucher_ids)
            )
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        list(
            Programme.objects.select_for_update()
            .filter(pk__in={v.programme_id for v in vouchers.values()})
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        listed: dict[str, set[object]] = defaultdict(set)
        for demand_id, acc_id in Demand.accelerators.through.objects.filter(
            demand_id__in=list(demands)
        ).values_list("demand_id", "accelerator_id"):
            listed[str(demand_id)].add(acc_id)
        used = _reserved_by_hour(list(offers), now)

        for m in pairs:
            demand, offer = demands.get(m.demand_id), offers.get(m.offer_id)
            if demand is None or offer is None:
                outcome.dropped[m.demand_id] = "not_found"
                continue
            start = from_hour_index(m.start)
            end = start + demand.duration_hours * HOUR
            models = listed[m.demand_id]
            offer.model_listed = offer.accelerator_id in models  # type: ignore[attr-defined]
            offer.any_model = not models  # type: ignore[attr-defined]
            hours = range(hour_index(start), hour_index(end))
            timeline = used[m.offer_id]
            try:
                with transaction.atomic():
                    if demand.status != Demand.Status.OPEN:
                        raise Conflict(f"demand is {demand.status}", code="demand_not_open")
                    _pair_check(demand, offer, start, end, now)
                    reservation_locality_check(demand, offer)
                    peak = max((timeline[h] for h in hours), default=0)
                    if peak + demand.gpu_count > offer.gpu_count:
                        raise Conflict(
                            "no free capacity for the whole window", code="capacity_exhausted"
                        )
                    voucher = vouchers.get(demand.voucher_id) if demand.voucher_id else None
                    reservation = reservation_write(
                        demand, offer, start, now, voucher=voucher, programme_locked=True
                    )
            except DomainError as exc:
                demand.status = Demand.objects.values_list("status", flat=True).get(pk=demand.pk)
                outcome.dropped[m.demand_id] = exc.code[:40]
                continue
            for h in hours:
                timeline[h] += demand.gpu_count
            outcome.made.append(str(reservation.pk))
        for dropped_id, reason in outcome.dropped.items():
            if dropped_id in demands:
                Demand.objects.filter(pk=dropped_id, status=Demand.Status.OPEN).update(
                    unmatched_reason=reason
                )


def _reserved_by_hour(offer_ids: list[str], now: datetime) -> dict[str, dict[int, int]]:
    """GPUs reserved per hour index on each offer, from the reservations holding capacity
    (read under the offers' row locks, so no booking can slip in meanwhile)."""
    used: dict[str, dict[int, int]] = {o: defaultdict(int) for o in offer_ids}
    for offer_id, start, end, gpus in Reservation.objects.filter(
        offer_id__in=offer_ids, status__in=Reservation.CAPACITY_STATUSES, end__gt=now
    ).values_list("offer_id", "start", "end", "gpu_count"):
        timeline = used[str(offer_id)]
        for h in range(hour_index(start), hour_index(end)):
            timeline[h] += gpus
    return used
