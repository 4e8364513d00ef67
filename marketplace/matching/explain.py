"""Why a demand is not matched (PRODUCT.md §4, "asked why"): every active offer is counted under
the first rule that blocks it for this demand, and the nearest misses are named.

``explain`` works on plain data (the engine's snapshot types); ``demand_explain`` loads that
data for one demand from the database and calls it.

Rules, in the order they are applied (the first that blocks an offer counts it):

* ``model`` — the offer's accelerator is not one the demand accepts;
* ``price`` — the offer's price per GPU-hour is over the demand's limit;
* ``locality`` — the offer's site is beyond the demand's locality limit;
* ``self_trade`` — the offer is the buyer's own organisation's (``engine.is_self_trade``: a
  related organisation's offer is a candidate like any other, paid in cash, §5.4);
* ``window`` — the offer's availability and the demand's window overlap by less than the
  duration, or the offer's minimum duration is longer than the demand's;
* ``capacity`` — the offer has fewer GPUs than the demand, or fewer free GPU-hours in the
  overlap than the demand needs;
* ``fragmentation`` — enough free GPU-hours in the overlap, but no run of ``duration`` hours
  with ``gpu_count`` GPUs free at once (the capacity is cut into pieces);
* ``voucher`` — the pair fits, the demand's voucher does not apply to this offer, and the cash
  wallet cannot pay the whole bill (it could have with the voucher's share);
* ``funds`` — the pair fits, and the wallet cannot pay the cash part even with the voucher.

Offers passing every rule are counted as ``fits`` (they would be booked by the next cycle).
The near misses: ``cheapest_over_limit``, the cheapest offer blocked by the price alone
(``fits_but_for_price``: a limit raised to its price would make the demand fit there), and
``earliest_fit``, the earliest start at which an offer would hold the whole demand.

The counts are for the whole demand on one offer. A demand that may split (``split`` = ``site``
or ``hub``, partial fills) also gets ``split``: per site or hub, the most GPUs its eligible
offers hold together over one window (``partial.split_reach``), so "12 of 16 GPUs at one site"
tells the buyer how far the best group falls short.
"""

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

from marketplace.locality import TIERS, tier_between, tier_rank

from .engine import FEN, DemandSnap, OfferSnap, bill_of, is_self_trade, voucher_part_of

if TYPE_CHECKING:
    from django.db.models import QuerySet
from .partial import SCOPES, split_reach

RULES = (
    "model",
    "price",
    "locality",
    "self_trade",
    "window",
    "capacity",
    "fragmentation",
    "voucher",
    "funds",
)


@dataclass
class NearMiss:
    """An offer that nearly fits: its ``tier`` name from the demand's origin, ``price`` (CNY
    per GPU-hour) and, for ``earliest_fit``, the ``start`` hour index (UTC) that would hold
    the whole demand."""

    offer_id: str
    tier: str
    price: Decimal
    start: int | None = None  # hour index, for a window near miss


@dataclass
class Explanation:
    """``explain``'s answer: ``offers`` counted, ``blocked`` per rule (``RULES``), ``fits``,
    the two near misses, and each offer's first blocking rule (``""`` when it fits)."""

    demand_id: str
    offers: int
    blocked: dict[str, int]
    fits: int
    cheapest_over_limit: NearMiss | None = None
    earliest_fit: NearMiss | None = None
    first_rule: dict[str, str] = field(default_factory=dict)  # offer id → rule ("" = fits)


def _max_free_run_start(offer: OfferSnap, gpus: int, duration: int, lo: int) -> int | None:
    """Earliest start ≥ ``lo`` at which the offer holds ``gpus`` GPUs for ``duration`` hours,
    up to the end of its availability (ignoring the demand's latest end)."""
    return offer.earliest_fit(gpus, duration, lo, offer.end)


def fits_but_for_price(demand: DemandSnap, offer: OfferSnap) -> bool:
    """Whether ``offer`` would hold the whole ``demand`` if the demand's limit price were the
    offer's price (CNY per GPU-hour): an acceptable model, a site inside the locality limit,
    not the buyer's own (``is_self_trade``), its minimum duration met, and a start in the
    demand's window with ``gpu_count`` GPUs free for the whole duration on the offer's
    timeline as given. Money (voucher, funds) is not looked at."""
    o, s = demand.origin, offer.site
    return (
        offer.model in demand.models
        and tier_rank(tier_between(o.city, o.metro, o.hub, s.city, s.metro, s.hub))
        <= tier_rank(demand.limit)
        and not is_self_trade(demand, offer.provider)
        and offer.min_duration <= demand.duration
        and offer.earliest_fit(demand.gpu_count, demand.duration, demand.start, demand.end)
        is not None
    )


def explain(demand: DemandSnap, offers: list[OfferSnap], wallet: Decimal) -> Explanation:
    """Count ``offers`` by the first rule (``RULES``) blocking each for ``demand``, given the
    buyer's cash ``wallet`` balance (CNY). Near misses: ``cheapest_over_limit``, the cheapest
    offer blocked only by price (``fits_but_for_price``: raising the limit to its price would
    make the demand fit there; the first listed among equal prices; ``None`` if no offer over
    the limit qualifies), and ``earliest_fit``, the earliest start (hour index) at which an
    offer passing model, price, locality, self trade and minimum duration would hold the
    whole demand, even past the demand's window."""
    blocked = dict.fromkeys(RULES, 0)
    result = Explanation(demand.id, len(offers), blocked, 0)
    limit = tier_rank(demand.limit)
    origin = demand.origin
    gpu_hours = demand.gpu_count * demand.duration
    for offer in sorted(offers, key=lambda o: (o.listed, o.id)):
        site = offer.site
        rank = tier_rank(
            tier_between(origin.city, origin.metro, origin.hub, site.city, site.metro, site.hub)
        )
        rule = ""
        if offer.model not in demand.models:
            rule = "model"
        elif offer.price > demand.max_price:
            rule = "price"
            best = result.cheapest_over_limit
            if (best is None or offer.price < best.price) and fits_but_for_price(demand, offer):
                result.cheapest_over_limit = NearMiss(offer.id, TIERS[rank], offer.price)
        elif rank > limit:
            rule = "locality"
        elif is_self_trade(demand, offer.provider):
            rule = "self_trade"
        else:
            if offer.gpu_count >= demand.gpu_count and offer.min_duration <= demand.duration:
                start = _max_free_run_start(offer, demand.gpu_count, demand.duration, demand.start)
                best = result.earliest_fit
                if start is not None and (best is None or best.start is None or start < best.start):
                    result.earliest_fit = NearMiss(offer.id, TIERS[rank], offer.price, start)
            lo, hi = max(demand.start, offer.start), min(demand.end, offer.end)
            if offer.min_duration > demand.duration or hi - lo < demand.duration:
                rule = "window"
            elif offer.gpu_count < demand.gpu_count or (
                sum(offer.free_at(h) for h in range(lo, hi)) < gpu_hours
            ):
                rule = "capacity"
            elif offer.earliest_fit(demand.gpu_count, demand.duration, lo, hi) is None:
                rule = "fragmentation"
            else:
                bill = bill_of(demand.gpu_count, demand.duration, offer.price)
                voucher = demand.voucher
                vpart = voucher_part_of(bill, voucher, offer, demand.buyer, demand.related)
                if wallet < bill - vpart:
                    rule = "funds"
                    if voucher is not None and not voucher.covers(offer):
                        share = (bill * voucher.max_share).quantize(FEN, rounding=ROUND_DOWN)
                        if wallet >= bill - min(share, voucher.available):
                            rule = "voucher"
        result.first_rule[offer.id] = rule
        if rule:
            blocked[rule] += 1
        else:
            result.fits += 1
    return result


# --- Loading one demand's explanation from the database ----------------------------------


def demand_explain(demand: Any, *, now: datetime) -> dict[str, Any]:
    """The explanation of ``demand`` (a ``Demand`` row) against every active offer at ``now``
    (UTC), as the API's JSON shape: counts per rule, ``fits``, and the two near misses
    (``explain``: ``cheapest_over_limit`` is the cheapest offer blocked by the price alone,
    found by ``_cheapest_over_limit``, null if none) with their offer, site code, tier, price
    (CNY per GPU-hour) and ``over_limit_by`` (CNY per GPU-hour) or start, end (UTC) and
    ``inside_window``; ``split`` for a demand that may split. Reads only; raises nothing of
    its own (``Organisation.DoesNotExist`` only if the buyer row is gone)."""
    from django.db.models import Count, Q
    from django.db.models.functions import TruncHour

    from accounts.models import Organisation
    from ledger.selectors import organisation_balances
    from marketplace.models import Accelerator, Offer, Site
    from marketplace.timeutil import HOUR, from_hour_index, hour_index, hour_index_ceil

    from .cycle import (
        OFFER_COLUMNS,
        _site_ref,
        _voucher_snaps,
        models_meeting,
        offer_snapshots,
        site_refs,
        timelines_fill,
    )

    now_h = hour_index_ceil(now)
    chosen = [a.code for a in demand.accelerators.all()] or models_meeting(
        Accelerator.objects.values_list("code", "memory_gb", "bf16_tflops"),
        demand.min_memory_gb,
        demand.min_tflops,
    )
    buyer = Organisation.objects.prefetch_related("related").get(pk=demand.buyer_id)
    vouchers = _voucher_snaps([demand.voucher] if demand.voucher_id else [], now)
    snap = DemandSnap(
        id=str(demand.pk),
        buyer=str(demand.buyer_id),
        related=frozenset(str(r.pk) for r in buyer.related.all()),
        models=frozenset(chosen),
        gpu_count=demand.gpu_count,
        duration=demand.duration_hours,
        start=max(hour_index_ceil(demand.earliest_start), now_h),
        end=hour_index(demand.latest_end),
        max_price=demand.max_price_per_gpu_hour,
        origin=_site_ref(demand.origin_site),
        limit=demand.locality_limit,
        posted=0,
        voucher=vouchers.get(str(demand.voucher_id)) if demand.voucher_id else None,
        split=demand.split,
        min_part=demand.min_gpus_per_part,
    )
    # Only the offers past the model and price rules are read as rows, with their
    # reservations (the rules after those read sites and free capacity); the others are only
    # counted, in the database. Of those over the limit, only the ones the near-miss search
    # looks at are read (``_cheapest_over_limit``), and only the one it finds is passed on.
    # "Active" as ``offer_snapshots`` keeps offers: at least one whole hour of availability
    # from now on (an offer available only inside one clock hour, which the services never
    # write, has none).
    active = Offer.objects.filter(
        status=Offer.Status.ACTIVE,
        available_until__gte=from_hour_index(now_h + 1),
    ).filter(available_until__gte=TruncHour("available_from", tzinfo=UTC) + HOUR)
    models = list(Accelerator.objects.filter(code__in=chosen).values_list("pk", flat=True))
    limit = demand.max_price_per_gpu_hour
    counted = active.aggregate(
        model=Count("pk", filter=~Q(accelerator_id__in=models)),
        price=Count("pk", filter=Q(accelerator_id__in=models, price_per_gpu_hour__gt=limit)),
    )
    rows = list(
        active.filter(accelerator_id__in=models, price_per_gpu_hour__lte=limit)
        .order_by("created_at", "id")
        .values_list(*OFFER_COLUMNS)
    )
    offers = offer_snapshots(rows, site_refs({row[3] for row in rows}), now_h)
    timelines_fill(offers, now_h)
    nearest = _cheapest_over_limit(
        snap, active.filter(accelerator_id__in=models, price_per_gpu_hour__gt=limit), now_h
    )
    if nearest is not None:
        offers[nearest.id] = replace(nearest, listed=len(rows))
    names: dict[str, str] = {}  # site and hub ids → their codes
    for site_id, code, hub_id, hub_code in Site.objects.filter(
        pk__in={o.site.id for o in offers.values()}
    ).values_list("pk", "code", "hub_id", "hub__code"):
        names[str(site_id)], names[str(hub_id)] = code, hub_code
    sites = {pk: names[o.site.id] for pk, o in offers.items()}
    wallet = organisation_balances(organisation=buyer)["wallet"]
    result = explain(snap, list(offers.values()), wallet)
    # the offers counted in the database, less the one over the limit passed to ``explain``
    over = counted["price"] - sum(1 for o in offers.values() if o.price > snap.max_price)
    result.blocked["model"] += counted["model"]
    result.blocked["price"] += over
    result.offers += counted["model"] + over

    def near(miss: NearMiss | None) -> dict[str, Any] | None:
        if miss is None:
            return None
        shown: dict[str, Any] = {
            "offer": miss.offer_id,
            "site": sites[miss.offer_id],
            "tier": miss.tier,
            "price_per_gpu_hour": f"{miss.price:.4f}",
        }
        if miss.start is not None:
            shown["start"] = from_hour_index(miss.start)
            shown["end"] = from_hour_index(miss.start + snap.duration)
            shown["inside_window"] = miss.start + snap.duration <= snap.end
        else:
            shown["over_limit_by"] = f"{miss.price - snap.max_price:.4f}"
        return shown

    split: dict[str, Any] | None = None
    if snap.split in SCOPES:
        split = {
            "scope": snap.split,
            "min_gpus_per_part": snap.min_part,
            "gpus_needed": snap.gpu_count,
            "groups": [
                {
                    "group": names.get(r.key, r.key),
                    "offers": r.offers,
                    "gpus_together": r.gpus,
                    "start": None if r.start is None else from_hour_index(r.start),
                }
                for r in split_reach(snap, list(offers.values()))
            ],
        }
    return {
        "demand": str(demand.pk),
        "status": demand.status,
        "unmatched_reason": demand.unmatched_reason,
        "offers_considered": result.offers,
        "blocked": result.blocked,
        "fits": result.fits,
        "near_misses": {
            "cheapest_over_limit": near(result.cheapest_over_limit),
            "earliest_fit": near(result.earliest_fit),
        },
        "split": split,
    }


# Over-limit offers read in the first round of the near-miss search; each next round reads
# twice as many (the cheapest candidate usually fits, and a long search takes few rounds).
NEAR_MISS_FIRST_ROUND = 8


def _cheapest_over_limit(snap: DemandSnap, over: "QuerySet[Any]", now_h: int) -> OfferSnap | None:
    """The cheapest offer of ``over`` (active offers of ``snap``'s models over its limit
    price) that would hold the whole demand at its own price (``fits_but_for_price``), as a
    snapshot with its reservations from hour ``now_h`` on; the first listed among equal
    prices; ``None`` if none would.

    The database leaves out, exactly, the offers that cannot qualify: the buyer's own, a site
    beyond the locality limit, a longer minimum duration, fewer GPUs than the demand, and
    availability ending before the window's first ``duration`` hours or starting after its
    last. The rest are read in price order (then listing order) in rounds of 8, 16, 32, …
    rows, three queries a round (offers, their sites, their reservations), until one fits.
    Worst case (every one left has no free run of the duration in the window): all n of
    them and their reservations are read, in at most ⌊log2(n / 8 + 1)⌋ + 1 rounds (the
    offsets skip 8 + 16 + … < 2n rows in all)."""
    from marketplace.selectors import offers_within
    from marketplace.timeutil import from_hour_index

    from .cycle import OFFER_COLUMNS, offer_snapshots, site_refs, timelines_fill

    if snap.end - snap.start < snap.duration:
        return None
    candidates = (
        over.exclude(provider_id=snap.buyer)
        .filter(
            offers_within(snap.limit, snap.origin.city, snap.origin.metro, snap.origin.hub),
            min_duration_hours__lte=snap.duration,
            gpu_count__gte=snap.gpu_count,
            available_until__gte=from_hour_index(snap.start + snap.duration),
            available_from__lt=from_hour_index(snap.end - snap.duration + 1),
        )
        .order_by("price_per_gpu_hour", "created_at", "id")
        .values_list(*OFFER_COLUMNS)
    )
    read, size = 0, NEAR_MISS_FIRST_ROUND
    while True:
        rows = list(candidates[read : read + size])
        offers = offer_snapshots(rows, site_refs({row[3] for row in rows}), now_h)
        timelines_fill(offers, now_h)
        for offer in offers.values():  # in the rows' order
            if fits_but_for_price(snap, offer):
                return offer
        if len(rows) < size:
            return None
        read, size = read + size, size * 2
