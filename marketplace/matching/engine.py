"""Greedy batch clearing with hub docking, on plain data (PRODUCT.md §4).

Input: a snapshot of open demands and active offers with their free-capacity timelines, all in
whole UTC hours since the epoch. Output: the chosen ``(demand, offer, start)`` matches and, for
each unserved demand, the first rule that blocked it. Deterministic for the same snapshot.

Policy ``greedy`` (price-time priority): demands in order of higher limit price, then earlier
posting. For each demand, locality tiers are tried nearest first up to its limit (city → metro →
hub region → other hubs — the hub docking step); within the first tier that has a feasible offer,
the pair with the lowest cost to the buyer after the voucher wins, then the earlier start, then the
offer id. Capacity taken by a match is removed from the offer's timeline before the next demand.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from marketplace.locality import TIERS, tier_between, tier_rank

FEN = Decimal("0.01")

# Reasons an unserved demand reports, in the order the rules are applied (first blocker wins).
REASONS = (
    "no_model",
    "over_price",
    "outside_locality",
    "min_duration",
    "no_free_window",
    "self_trade",
)


@dataclass(frozen=True)
class SiteRef:
    id: str
    city: str
    metro: str
    hub: str
    cluster: str | None = None


@dataclass
class OfferSnap:
    """An active offer: ``gpu_count`` GPUs of ``model`` at ``site`` over hours ``[start, end)``;
    ``used[h - start]`` GPUs are already reserved in hour ``h``."""

    id: str
    provider: str
    model: str
    site: SiteRef
    price: Decimal  # CNY per GPU-hour
    gpu_count: int
    start: int
    end: int
    min_duration: int = 1
    used: list[int] = field(default_factory=list)
    listed: int = 0  # listing order (smaller = listed earlier): the last tie-breaker

    def __post_init__(self) -> None:
        if not self.used:
            self.used = [0] * (self.end - self.start)

    def earliest_fit(self, gpus: int, duration: int, lo: int, hi: int) -> int | None:
        """Earliest start ``s`` with ``lo ≤ s`` and ``s + duration ≤ hi`` such that every hour of
        ``[s, s + duration)`` has ``gpus`` free GPUs; ``None`` if there is none."""
        lo, hi = max(lo, self.start), min(hi, self.end)
        if hi - lo < duration or gpus > self.gpu_count:
            return None
        limit = self.gpu_count - gpus
        run_start = lo
        used, base = self.used, self.start
        for h in range(lo, hi):
            if used[h - base] > limit:
                run_start = h + 1
                if hi - run_start < duration:
                    return None
            elif h + 1 - run_start >= duration:
                return run_start
        return None

    def latest_fit(self, gpus: int, duration: int, lo: int, hi: int) -> int | None:
        """Latest start ``s`` with ``lo ≤ s`` and ``s + duration ≤ hi`` such that every hour of
        ``[s, s + duration)`` has ``gpus`` free GPUs; ``None`` if there is none."""
        lo, hi = max(lo, self.start), min(hi, self.end)
        if hi - lo < duration or gpus > self.gpu_count:
            return None
        limit = self.gpu_count - gpus
        run_end = hi
        used, base = self.used, self.start
        for h in range(hi - 1, lo - 1, -1):
            if used[h - base] > limit:
                run_end = h
                if run_end - lo < duration:
                    return None
            elif run_end - h >= duration:
                return h
        return None

    def free_at(self, hour: int) -> int:
        """GPUs free in ``hour`` (0 outside the offer's window)."""
        if not self.start <= hour < self.end:
            return 0
        return self.gpu_count - self.used[hour - self.start]

    def leftover(self, gpus: int, start: int, duration: int) -> int:
        """The fewest GPUs left free in ``[start, start + duration)`` after taking ``gpus``:
        0 is a perfect fit, a small positive number a sliver (anti-fragmentation score)."""
        base = self.start
        return self.gpu_count - gpus - max(self.used[start - base : start - base + duration])

    def take(self, gpus: int, start: int, duration: int) -> None:
        for h in range(start - self.start, start - self.start + duration):
            self.used[h] += gpus


@dataclass
class VoucherSnap:
    """What a voucher can still pay in this cycle: ``available`` CNY (min of balance, programme
    budget left and the buyer's annual cap left), for providers in ``providers`` at sites in the
    region (empty region sets = everywhere)."""

    id: str
    max_share: Decimal
    available: Decimal
    providers: frozenset[str]
    hubs: frozenset[str] = frozenset()
    clusters: frozenset[str] = frozenset()
    sites: frozenset[str] = frozenset()

    def covers(self, offer: OfferSnap) -> bool:
        if offer.provider not in self.providers:
            return False
        if not (self.hubs or self.clusters or self.sites):
            return True
        s = offer.site
        return (
            s.hub in self.hubs
            or s.id in self.sites
            or (s.cluster is not None and s.cluster in self.clusters)
        )


@dataclass
class DemandSnap:
    id: str
    buyer: str
    related: frozenset[str]
    models: frozenset[str]
    gpu_count: int
    duration: int
    start: int  # earliest start hour (already ≥ now)
    end: int  # latest end hour
    max_price: Decimal
    origin: SiteRef
    limit: str
    posted: int  # posting order (smaller = earlier)
    voucher: VoucherSnap | None = None


@dataclass(frozen=True)
class Match:
    demand_id: str
    offer_id: str
    start: int
    tier: str
    bill: Decimal
    voucher_part: Decimal

    @property
    def cash_part(self) -> Decimal:
        return self.bill - self.voucher_part


@dataclass
class Result:
    matches: list[Match]
    unserved: dict[str, str]  # demand id → first blocking reason
    pairs_considered: int = 0
    policy: str = "greedy"
    # Solver facts for ``optimal`` (status, columns, rows, objective, fallback used, seconds).
    solver: dict[str, object] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # demand id → GPU-hours served

    @property
    def gpu_hours(self) -> int:
        """Served GPU-hours (the primary objective of both policies)."""
        return sum(self.served.values())


def bill_of(gpus: int, hours: int, price: Decimal) -> Decimal:
    """Same rule as ``marketplace.money.bill_amount`` (half-up to the fen), kept ORM-free."""
    return (Decimal(gpus) * hours * price).quantize(FEN, rounding=ROUND_HALF_UP)


def voucher_part_of(
    bill: Decimal,
    voucher: VoucherSnap | None,
    offer: OfferSnap,
    buyer: str,
    related: frozenset[str],
) -> Decimal:
    if voucher is None or offer.provider == buyer or offer.provider in related:
        return Decimal("0.00")
    if not voucher.covers(offer):
        return Decimal("0.00")
    share = (bill * voucher.max_share).quantize(FEN, rounding=ROUND_DOWN)
    return max(Decimal("0.00"), min(share, voucher.available))


def solve_greedy(
    demands: Iterable[DemandSnap],
    offers: Iterable[OfferSnap],
    on_match: Callable[[Match], None] | None = None,
    latency: Mapping[tuple[str, str], float] | None = None,
) -> Result:
    """Run one greedy cycle. ``offers`` timelines are updated in place as capacity is taken.

    ``latency`` maps ``(hub, hub)`` to milliseconds: across hubs, among offers of equal cost to
    the buyer the lower-latency hub wins (docking "other hubs by latency", §4.3).
    """
    # Offers grouped by model and site (one locality tier and latency per demand and group),
    # each group sorted by price: whole groups beyond the demand's limit, and the dear tail
    # of a group, are skipped without looking at each offer.
    groups: dict[str, dict[str, list[OfferSnap]]] = {}
    by_id: dict[str, OfferSnap] = {}
    for offer in sorted(offers, key=lambda o: (o.price, o.listed, o.id)):
        groups.setdefault(offer.model, {}).setdefault(offer.site.id, []).append(offer)
        by_id[offer.id] = offer
    by_model = {model: list(sites.values()) for model, sites in groups.items()}
    result = Result(matches=[], unserved={})
    ordered = sorted(demands, key=lambda d: (-d.max_price, d.posted, d.id))
    for demand in ordered:
        match, reason, considered = _best_pair(demand, by_model, latency or {})
        result.pairs_considered += considered
        if match is None:
            result.unserved[demand.id] = reason
            continue
        offer = by_id[match.offer_id]
        offer.take(demand.gpu_count, match.start, demand.duration)
        if demand.voucher is not None and match.voucher_part:
            demand.voucher.available -= match.voucher_part
        result.matches.append(match)
        result.served[demand.id] = demand.gpu_count * demand.duration
        if on_match is not None:
            on_match(match)
    return result


def _best_pair(
    demand: DemandSnap,
    by_model: dict[str, list[list[OfferSnap]]],
    latency: Mapping[tuple[str, str], float],
) -> tuple[Match | None, str, int]:
    """The best feasible pair of ``demand`` in its nearest tier that has one, else the
    furthest rule any offer passed. ``considered`` counts every offer of an acceptable model
    (the candidate pairs), also those skipped in bulk."""
    limit = tier_rank(demand.limit)
    blocked = 0  # index into REASONS of the furthest rule any candidate passed
    considered = 0
    origin = demand.origin
    by_rank: list[list[tuple[list[OfferSnap], float]]] = [[], [], [], []]
    for model in sorted(demand.models):
        for group in by_model.get(model, ()):
            considered += len(group)
            site = group[0].site
            rank = tier_rank(
                tier_between(origin.city, origin.metro, origin.hub, site.city, site.metro, site.hub)
            )
            if rank > limit:
                blocked = max(blocked, 1 if group[0].price > demand.max_price else 2)
                continue
            distance = latency.get((origin.hub, site.hub), 0.0) if rank == 3 else 0.0
            by_rank[rank].append((group, distance))
    plain = demand.voucher is None  # cost ∝ price: the first fit in price order is the cheapest
    for rank, rank_groups in enumerate(by_rank):
        best: tuple[tuple[Decimal, float, int, int, str], Match] | None = None
        for group, distance in rank_groups:
            found_price: Decimal | None = None
            for offer in group:
                if offer.price > demand.max_price:
                    blocked = max(blocked, 1)
                    break
                if plain and found_price is not None and offer.price > found_price:
                    break
                if offer.min_duration > demand.duration:
                    blocked = max(blocked, 3)
                    continue
                if offer.provider == demand.buyer:
                    blocked = max(blocked, 5)
                    continue
                start = offer.earliest_fit(
                    demand.gpu_count, demand.duration, demand.start, demand.end
                )
                if start is None:
                    blocked = max(blocked, 4)
                    continue
                found_price = offer.price
                bill = bill_of(demand.gpu_count, demand.duration, offer.price)
                vpart = voucher_part_of(bill, demand.voucher, offer, demand.buyer, demand.related)
                key = (bill - vpart, distance, start, offer.listed, offer.id)
                if best is None or key < best[0]:
                    best = (key, Match(demand.id, offer.id, start, TIERS[rank], bill, vpart))
        if best is not None:
            return best[1], "", considered
    return None, REASONS[blocked], considered
