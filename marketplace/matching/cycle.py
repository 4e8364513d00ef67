"""One matching cycle for one hub: load a snapshot, run the engine, write in batches through
the service helpers (``bulk.matches_write``)."""

import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

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
    Site,
)
from marketplace.money import quantize_money
from marketplace.timeutil import from_hour_index, hour_index, hour_index_ceil
from marketplace.types import ObjectId
from vouchers.bulk import limits_used, region_scopes
from vouchers.models import CatalogueEntry, Voucher
from vouchers.services import programme_year

from .bulk import matches_write
from .conflicts import reason_keep
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


# Columns the snapshot reads, as plain rows (no model instances: a cycle reads every open
# demand of the hub and every active offer, and building models for them cost more than the
# engine's solve).
DEMAND_COLUMNS = (
    "id",
    "buyer_id",
    "origin_site_id",
    "voucher_id",
    "gpu_count",
    "duration_hours",
    "earliest_start",
    "latest_end",
    "max_price_per_gpu_hour",
    "locality_limit",
    "split",
    "min_gpus_per_part",
    "min_memory_gb",
    "min_tflops",
)
OFFER_COLUMNS = (
    "id",
    "provider_id",
    "accelerator__code",
    "site_id",
    "price_per_gpu_hour",
    "gpu_count",
    "available_from",
    "available_until",
    "min_duration_hours",
)


def models_meeting(
    catalogue: Iterable[tuple[str, int | None, Decimal | None]],
    memory: int | None,
    tflops: Decimal | None,
) -> list[str]:
    """The codes of the ``catalogue``'s models (code, memory GB, BF16 TFLOPS) that meet a
    demand's ``min_memory_gb`` and ``min_tflops`` (``None`` or 0: no minimum): the models a
    demand listing none accepts (§4.1; a model with no figure meets no minimum)."""
    return [
        code
        for code, gb, flops in catalogue
        if (not memory or (gb or 0) >= memory) and (not tflops or (flops or 0) >= tflops)
    ]


def site_refs(site_ids: Iterable[object]) -> dict[str, SiteRef]:
    """The engine's view of each site in ``site_ids``, by site id (str); one query."""
    return {
        str(pk): SiteRef(
            id=str(pk),
            city=city,
            metro=metro,
            hub=str(hub_id),
            cluster=str(cluster_id) if cluster_id else None,
        )
        for pk, city, metro, hub_id, cluster_id in Site.objects.filter(
            pk__in=set(site_ids)
        ).values_list("pk", "city", "metro_area", "hub_id", "cluster_id")
    }


def snapshot_load(hub: Hub, now: datetime) -> tuple[list[DemandSnap], list[OfferSnap]]:
    """Open demands whose home site is in ``hub`` and every active offer (any hub: docking) of
    a model one of them accepts and available after ``now`` (UTC), with free-capacity
    timelines from the reservations that hold capacity. Demands are in posting order
    (``created_at``, then id), offers in listing order; a demand whose window has passed is
    left out (``demands_expire`` closes it). Reads plain rows, a fixed number of queries
    whatever the market's size."""
    now_h = hour_index_ceil(now)
    # The demands and their listed models in one statement (a row per listed model, or one
    # with None): a second statement could miss the list of a demand closed in between and
    # let it stand for every model meeting its minimums.
    demands: list[tuple[Any, ...]] = []
    listed: dict[object, list[str]] = defaultdict(list)
    for *row, code in (
        Demand.objects.filter(status=Demand.Status.OPEN, origin_site__hub=hub)
        .order_by("created_at", "id")
        .values_list(*DEMAND_COLUMNS, "accelerators__code")
    ):
        if not demands or demands[-1][0] != row[0]:
            demands.append(tuple(row))
        if code is not None:
            listed[row[0]].append(code)
    catalogue = list(Accelerator.objects.values_list("code", "memory_gb", "bf16_tflops"))
    meeting: dict[tuple[object, object], list[str]] = {}  # models meeting (memory, TFLOPS)

    buyers = {row[1] for row in demands}
    related: dict[object, set[str]] = defaultdict(set)
    for org_id, other_id in Organisation.related.through.objects.filter(
        from_organisation_id__in=buyers
    ).values_list("from_organisation_id", "to_organisation_id"):
        related[org_id].add(str(other_id))
    frozen = {org_id: frozenset(ids) for org_id, ids in related.items()}
    voucher_snaps = _voucher_snaps(
        list(
            Voucher.objects.filter(pk__in={row[3] for row in demands if row[3]}).select_related(
                "programme"
            )
        ),
        now,
    )
    sites = site_refs({row[2] for row in demands})

    snaps: list[DemandSnap] = []
    wanted: set[str] = set()
    for order, (
        pk,
        buyer_id,
        site_id,
        voucher_id,
        gpus,
        duration,
        earliest,
        latest,
        max_price,
        limit,
        split,
        min_part,
        min_memory,
        min_tflops,
    ) in enumerate(demands):
        first, last = max(hour_index_ceil(earliest), now_h), hour_index(latest)
        if last - first < duration:
            continue  # the window has passed: expired by ``demands_expire``, reason kept
        chosen = listed.get(pk)
        if not chosen:
            if (min_memory, min_tflops) not in meeting:
                meeting[min_memory, min_tflops] = models_meeting(catalogue, min_memory, min_tflops)
            chosen = meeting[min_memory, min_tflops]
        wanted.update(chosen)
        snaps.append(
            DemandSnap(
                id=str(pk),
                buyer=str(buyer_id),
                related=frozen.get(buyer_id, frozenset()),
                models=frozenset(chosen),
                gpu_count=gpus,
                duration=duration,
                start=first,
                end=last,
                max_price=max_price,
                origin=sites[str(site_id)],
                limit=limit,
                posted=order,
                voucher=voucher_snaps.get(str(voucher_id)) if voucher_id else None,
                split=split,
                min_part=min_part,
            )
        )
    offers = list(
        Offer.objects.filter(
            status=Offer.Status.ACTIVE,
            available_until__gt=from_hour_index(now_h),
            accelerator__code__in=wanted,
        )
        .order_by("created_at", "id")
        .values_list(*OFFER_COLUMNS)
    )
    sites.update(site_refs({str(row[3]) for row in offers} - set(sites)))
    offer_snaps = offer_snapshots(offers, sites, now_h)
    timelines_fill(offer_snaps, now_h)
    return snaps, list(offer_snaps.values())


def offer_snapshots(
    rows: list[tuple[Any, ...]], sites: dict[str, SiteRef], now_h: int
) -> dict[str, OfferSnap]:
    """Snapshots of offer ``rows`` (``OFFER_COLUMNS``, in listing order) at ``sites`` (by site
    id) from hour ``now_h`` on, by offer id, with no GPUs reserved yet: ``timelines_fill``
    adds the reservations. Offers whose availability has passed are left out."""
    offer_snaps: dict[str, OfferSnap] = {}
    for listed, row in enumerate(rows):
        pk, provider_id, model, site_id, price, gpus, begins, ends, min_hours = row
        start = max(hour_index(begins), now_h)
        end = hour_index(ends)
        if end <= start:
            continue
        offer_snaps[str(pk)] = OfferSnap(
            id=str(pk),
            provider=str(provider_id),
            model=model,
            site=sites[str(site_id)],
            price=price,
            gpu_count=gpus,
            start=start,
            end=end,
            min_duration=min_hours,
            listed=listed,
        )
    return offer_snaps


def timelines_fill(offers: dict[str, OfferSnap], now_h: int) -> None:
    """Add to each snapshot of ``offers`` (by offer id) the GPUs reserved per hour from hour
    ``now_h`` on by the reservations that hold capacity (one query)."""
    for offer_id, r_start, r_end, gpus in Reservation.objects.filter(
        offer_id__in=list(offers),
        status__in=Reservation.CAPACITY_STATUSES,
        end__gt=from_hour_index(now_h),
    ).values_list("offer_id", "start", "end", "gpu_count"):
        snap = offers[str(offer_id)]
        for h in range(max(hour_index(r_start), snap.start), min(hour_index(r_end), snap.end)):
            snap.used[h - snap.start] += gpus


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
    """The engine for a hub's ``policy`` (``Hub.Policy``: ``greedy`` or ``optimal``; anything
    else runs ``greedy``) on a loaded snapshot. ``time_limit`` (seconds,
    ``Hub.matching_time_limit``) bounds ``optimal`` only: ``greedy`` always walks every
    demand. Under ``optimal`` the MILP places whole demands and split demands it leaves are
    placed in parts by the greedy split pass after it (``partial.solve_optimal_split``).
    ``offers``' timelines and the vouchers' ``available`` are updated in place."""
    if policy == Hub.Policy.OPTIMAL:
        return solve_optimal_split(demands, offers, latency, OptimalSettings(time_limit=time_limit))
    return solve_greedy(demands, offers, latency=latency)


def matching_cycle_run(hub_id: ObjectId, *, now: datetime | None = None) -> MatchingCycle | None:
    """Run one cycle of the hub's policy for ``hub_id`` (PRODUCT.md §4) at ``now`` (UTC;
    default the clock). Returns the recorded cycle, or ``None`` when another worker holds the
    hub's lock (``hub_lock``); ``Hub.DoesNotExist`` for an unknown hub. The matches are written in
    batches (``bulk.matches_write``: ``MATCH_WRITE_BATCH`` per transaction, the rules of
    ``reservation_create``); a pair refused there (capacity taken by a person meanwhile, funds
    short, or ``write_conflict``: a deadlock or lock timeout that outlasted the write's
    attempts) is dropped and the demand stays open with the reason. ``reservations_made``
    counts the reservations committed, each once however often its batch ran; the cycle's row
    also keeps the engine's ``pairs_chosen``, the write's refusals by reason
    (``write_refusals``) and the demands left ``unserved`` by reason (``MatchingCycle``)."""
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
        outcome = matches_write(result.matches, now=now)
        unserved: dict[str, list[str]] = defaultdict(list)
        for demand_id, reason in result.unserved.items():
            unserved[reason].append(demand_id)
        for reason, ids in sorted(unserved.items()):
            reason_keep(ids, reason)  # the bookings stand: a lock timeout here only logs
        return MatchingCycle.objects.create(
            hub=hub,
            policy=hub.matching_policy,
            started_at=now,
            seconds=time.perf_counter() - t0,
            demands_considered=len(demands),
            offers_considered=len(offers),
            pairs_chosen=len(result.matches),
            reservations_made=len(outcome.made),
            write_refusals=dict(sorted(Counter(outcome.dropped.values()).items())),
            unserved={reason: len(ids) for reason, ids in sorted(unserved.items())},
        )
