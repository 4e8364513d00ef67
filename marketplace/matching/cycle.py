"""One matching cycle for one hub: load a snapshot, run the engine, write in batches through
the service helpers (``bulk.matches_write``)."""

import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from accounts.models import Organisation
from ledger.models import Account
from marketplace.models import (
    Accelerator,
    Demand,
    Hub,
    HubLatency,
    MatchingCycle,
    Offer,
    Reservation,
)
from marketplace.money import quantize_money
from marketplace.timeutil import from_hour_index, hour_index, hour_index_ceil
from marketplace.types import ObjectId
from vouchers.bulk import limits_used, region_scopes
from vouchers.models import CatalogueEntry, Voucher
from vouchers.services import programme_year

from .bulk import matches_write
from .engine import DemandSnap, OfferSnap, Result, SiteRef, VoucherSnap, solve_greedy
from .optimal import OptimalSettings
from .partial import solve_optimal_split


@contextmanager
def hub_lock(hub_id: ObjectId) -> Iterator[bool]:
    """A PostgreSQL session advisory lock per hub, so one cycle per hub runs at a time across
    all workers. Yields whether it was acquired. On SQLite (one process) it always is."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = zlib.crc32(f"match:{hub_id}".encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def _site_ref(site) -> SiteRef:  # type: ignore[no-untyped-def]
    return SiteRef(
        id=str(site.pk),
        city=site.city,
        metro=site.metro_area,
        hub=str(site.hub_id),
        cluster=str(site.cluster_id) if site.cluster_id else None,
    )


def snapshot_load(hub: Hub, now: datetime) -> tuple[list[DemandSnap], list[OfferSnap]]:
    """Open demands whose home site is in ``hub`` and every active offer (any hub: docking),
    with free-capacity timelines from the reservations that hold capacity."""
    now_h = hour_index_ceil(now)
    demands = list(
        Demand.objects.filter(status=Demand.Status.OPEN, origin_site__hub=hub)
        .select_related("origin_site", "voucher__programme", "buyer")
        .prefetch_related("accelerators")
        .order_by("created_at", "id")
    )
    catalogue = list(Accelerator.objects.all())
    related: dict[object, frozenset[str]] = {}
    for org in Organisation.objects.filter(pk__in={d.buyer_id for d in demands}).prefetch_related(
        "related"
    ):
        related[org.pk] = frozenset(str(r.pk) for r in org.related.all())
    voucher_snaps = _voucher_snaps([d.voucher for d in demands if d.voucher is not None], now)

    snaps: list[DemandSnap] = []
    wanted: set[str] = set()
    for order, d in enumerate(demands):
        chosen = [a.code for a in d.accelerators.all()]
        if not chosen:
            chosen = [
                a.code
                for a in catalogue
                if (not d.min_memory_gb or (a.memory_gb or 0) >= d.min_memory_gb)
                and (not d.min_tflops or (a.bf16_tflops or 0) >= d.min_tflops)
            ]
        first, last = max(hour_index_ceil(d.earliest_start), now_h), hour_index(d.latest_end)
        if last - first < d.duration_hours:
            continue  # the window has passed: expired by ``demands_expire``, reason kept
        wanted.update(chosen)
        snaps.append(
            DemandSnap(
                id=str(d.pk),
                buyer=str(d.buyer_id),
                related=related.get(d.buyer_id, frozenset()),
                models=frozenset(chosen),
                gpu_count=d.gpu_count,
                duration=d.duration_hours,
                start=first,
                end=last,
                max_price=d.max_price_per_gpu_hour,
                origin=_site_ref(d.origin_site),
                limit=d.locality_limit,
                posted=order,
                voucher=voucher_snaps.get(str(d.voucher_id)) if d.voucher_id else None,
                split=d.split,
                min_part=d.min_gpus_per_part,
            )
        )

    offers = list(
        Offer.objects.filter(
            status=Offer.Status.ACTIVE,
            available_until__gt=from_hour_index(now_h),
            accelerator__code__in=wanted,
        )
        .select_related("site", "accelerator")
        .order_by("created_at", "id")
    )
    return snaps, list(offer_snapshots(offers, now_h).values())


def offer_snapshots(offers: list[Offer], now_h: int) -> dict[str, OfferSnap]:
    """Plain snapshots of ``offers`` (listed in that order, each with ``site`` and
    ``accelerator`` loaded) from hour ``now_h`` on, by offer id, with the GPUs already reserved
    per hour filled in from the reservations that hold capacity (one query)."""
    offer_snaps: dict[str, OfferSnap] = {}
    for listed, o in enumerate(offers):
        start = max(hour_index(o.available_from), now_h)
        end = hour_index(o.available_until)
        if end <= start:
            continue
        offer_snaps[str(o.pk)] = OfferSnap(
            id=str(o.pk),
            provider=str(o.provider_id),
            model=o.accelerator.code,
            site=_site_ref(o.site),
            price=o.price_per_gpu_hour,
            gpu_count=o.gpu_count,
            start=start,
            end=end,
            min_duration=o.min_duration_hours,
            listed=listed,
        )
    for offer_id, r_start, r_end, gpus in Reservation.objects.filter(
        offer_id__in=list(offer_snaps),
        status__in=Reservation.CAPACITY_STATUSES,
        end__gt=from_hour_index(now_h),
    ).values_list("offer_id", "start", "end", "gpu_count"):
        snap = offer_snaps[str(offer_id)]
        for h in range(max(hour_index(r_start), snap.start), min(hour_index(r_end), snap.end)):
            snap.used[h - snap.start] += gpus
    return offer_snaps


def _voucher_snaps(vouchers: list[Voucher], now: datetime) -> dict[str, VoucherSnap]:
    snaps: dict[str, VoucherSnap] = {}
    unique = {v.pk: v for v in vouchers}
    balances = dict(
        Account.objects.filter(voucher_id__in=list(unique)).values_list("voucher_id", "balance")
    )
    approved: dict[object, set[str]] = defaultdict(set)
    for programme_id, provider_id, year in CatalogueEntry.objects.filter(
        programme_id__in={v.programme_id for v in unique.values()},
        status=CatalogueEntry.Status.APPROVED,
    ).values_list("programme_id", "provider_id", "year"):
        approved[(programme_id, year)].add(str(provider_id))
    # What ``programme_limits_left`` and the programmes' region relations give, for every
    # voucher's programme at once (one query each, not five a voucher).
    programmes = {v.programme_id: v.programme for v in unique.values()}
    budget_used, buyer_used = limits_used(programmes, {v.owner_id for v in unique.values()}, now)
    regions = region_scopes(programmes)
    for v in unique.values():
        if v.status != Voucher.Status.ACTIVE or now >= v.expires_at:
            continue
        p = v.programme
        budget_left = quantize_money(p.annual_budget - budget_used[p.pk])
        cap_left = quantize_money(p.buyer_annual_cap - buyer_used[p.pk, v.owner_id])
        hubs, clusters, sites = regions[p.pk]
        snaps[str(v.pk)] = VoucherSnap(
            id=str(v.pk),
            max_share=p.max_share,
            available=min(balances.get(v.pk, Decimal(0)), budget_left, cap_left),
            providers=frozenset(approved[(p.pk, programme_year(p, now))]),
            hubs=frozenset(str(x) for x in hubs),
            clusters=frozenset(str(x) for x in clusters),
            sites=frozenset(str(x) for x in sites),
        )
    return snaps


def engine_solve(
    policy: str,
    demands: list[DemandSnap],
    offers: list[OfferSnap],
    latency: dict[tuple[str, str], float],
    time_limit: float = 10.0,
) -> Result:
    """The engine for a hub's ``policy`` (``greedy`` or ``optimal``) on a loaded snapshot.
    Under ``optimal`` the MILP places whole demands and split demands it leaves are placed in
    parts by the greedy split pass after it (``partial.solve_optimal_split``)."""
    if policy == Hub.Policy.OPTIMAL:
        return solve_optimal_split(demands, offers, latency, OptimalSettings(time_limit=time_limit))
    return solve_greedy(demands, offers, latency=latency)


def matching_cycle_run(hub_id: ObjectId, *, now: datetime | None = None) -> MatchingCycle | None:
    """Run one cycle of the hub's policy for ``hub_id`` (PRODUCT.md §4). Returns the recorded
    cycle, or ``None`` when another worker holds the hub's lock. The matches are written in
    batches (``bulk.matches_write``: ``MATCH_WRITE_BATCH`` per transaction, the rules of
    ``reservation_create``); a pair refused there (capacity taken by a person meanwhile, funds
    short) is dropped and the demand stays open with the reason."""
    now = now or timezone.now()
    hub = Hub.objects.get(pk=hub_id)
    with hub_lock(hub.pk) as acquired:
        if not acquired:
            return None
        t0 = time.perf_counter()
        demands, offers = snapshot_load(hub, now)
        latency = {
            (str(a), str(b)): float(ms)
            for a, b, ms in HubLatency.objects.values_list("from_hub_id", "to_hub_id", "latency_ms")
        }
        result = engine_solve(
            hub.matching_policy, demands, offers, latency, hub.matching_time_limit
        )
        made = len(matches_write(result.matches, now=now).made)
        unserved: dict[str, list[str]] = defaultdict(list)
        for demand_id, reason in result.unserved.items():
            unserved[reason].append(demand_id)
        for reason, ids in sorted(unserved.items()):
            Demand.objects.filter(pk__in=ids, status=Demand.Status.OPEN).update(
                unmatched_reason=reason
            )
        return MatchingCycle.objects.create(
            hub=hub,
            policy=hub.matching_policy,
            started_at=now,
            seconds=time.perf_counter() - t0,
            demands_considered=len(demands),
            offers_considered=len(offers),
            reservations_made=made,
        )
