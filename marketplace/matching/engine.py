"""Greedy batch clearing with hub docking, on plain data (PRODUCT.md §4).

Input: a snapshot of open demands and active offers with their free-capacity timelines, all in
whole UTC hours since the epoch, prices in CNY per GPU-hour. Output: the chosen ``(demand,
offer, start)`` matches and, for each unserved demand, a reason code (``REASONS``: the furthest
rule any of its candidate offers got to). Deterministic for the same snapshot. Nothing here
touches the database or raises on valid input.

Policy ``greedy`` (price-time priority, PRODUCT.md §4.2): demands in order of higher limit
price, then earlier posting. For each demand, locality tiers are tried nearest first up to its
limit (city → metro → hub region → other hubs — the hub docking step, §4.3); within the first
tier that has a feasible offer, the pair with the lowest cost to the buyer after the voucher
wins, then the lower hub latency (other hubs), then the earlier start, then the offer listed
first, then the offer id. Capacity taken by a match is removed from the offer's timeline before
the next demand.
"""

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from operator import attrgetter

import numpy as np

from marketplace.locality import TIERS, tier_between, tier_rank

FEN = Decimal("0.01")
_INT16_MAX = int(np.iinfo(np.int16).max)

# Reasons an unserved demand reports (its ``unmatched_reason``), ranked: each candidate offer is
# stopped by one rule, and the demand reports the furthest-ranked rule any of them reached
# (``best_pair``). ``self_trade`` ranks last although it is checked before the window: when
# only the buyer's own offer got that far, that is the reason worth telling.
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
    """Where a site is, as the locality rule reads it (``marketplace.locality.tier_between``):
    site ``id``, ``city``, ``metro`` area, ``hub`` id and ``cluster`` id (ids as strings)."""

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
        """Book ``gpus`` GPUs over hours ``[start, start + duration)`` (inside the offer's
        window; the caller has checked they are free)."""
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
        """Whether the voucher may pay on ``offer`` (PRODUCT.md §5.4): its provider is in the
        programme's approved catalogue for the year and its site in the programme's region
        (hub, cluster or site; no region = everywhere). Owner and related parties are
        ``voucher_part_of``'s to check."""
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
    """An open demand (PRODUCT.md §4): ``gpu_count`` GPUs of one of ``models`` for ``duration``
    hours inside hours ``[start, end)`` (UTC hour indices), at most ``max_price`` CNY per
    GPU-hour, within ``limit`` (a locality tier name) of ``origin``; ``buyer`` and its
    ``related`` organisations by id; ``voucher`` shared with the buyer's other demands in the
    cycle."""

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
    # Partial fills (``partial``): "none", or split across offers at one "site" / one "hub",
    # every part at least ``min_part`` GPUs.
    split: str = "none"
    min_part: int = 1


@dataclass(frozen=True)
class Match:
    """A chosen pair: the demand on the offer from hour index ``start`` (UTC) for its duration,
    at locality ``tier``; ``bill`` and ``voucher_part`` in CNY (``bill_of``,
    ``voucher_part_of``)."""

    demand_id: str
    offer_id: str
    start: int
    tier: str
    bill: Decimal
    voucher_part: Decimal
    gpus: int | None = None  # GPUs of this part of a split demand; None = the whole demand

    @property
    def cash_part(self) -> Decimal:
        """What the buyer pays in cash (CNY): the bill less the voucher part (§5.4)."""
        return self.bill - self.voucher_part


@dataclass
class Result:
    """A cycle's answer: ``matches`` in booking order, ``unserved`` demands with their reason
    (``REASONS``), and the facts of the solve. A demand in neither was not reached before the
    deadline and stays open (``solver["not_reached"]``)."""

    matches: list[Match]
    unserved: dict[str, str]  # demand id → its reason (``REASONS``)
    pairs_considered: int = 0
    policy: str = "greedy"
    # Solver facts for ``optimal`` (status, columns, rows, objective, fallback used, seconds).
    solver: dict[str, object] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)  # demand id → GPU-hours served

    @property
    def gpu_hours(self) -> int:
        """Served GPU-hours (the primary objective of both policies)."""
        return sum(self.served.values())


def snapshot_copy(
    demands: Iterable[DemandSnap], offers: Iterable[OfferSnap]
) -> tuple[list[DemandSnap], list[OfferSnap]]:
    """Copies to solve on without touching the originals: offers' timelines and vouchers'
    ``available`` are copied (a voucher shared by several demands stays shared)."""
    vouchers: dict[int, VoucherSnap] = {}
    out_d = []
    for d in demands:
        v = d.voucher
        if v is not None:
            v = vouchers.setdefault(id(v), replace(v))
        out_d.append(replace(d, voucher=v))
    return out_d, [replace(o, used=list(o.used)) for o in offers]


def bill_of(gpus: int, hours: int, price: Decimal) -> Decimal:
    """Same rule as ``marketplace.money.bill_amount`` (half-up to the fen), kept ORM-free."""
    return (Decimal(gpus) * hours * price).quantize(FEN, rounding=ROUND_HALF_UP)


def is_self_trade(demand: DemandSnap, provider: str) -> bool:
    """Whether an offer of ``provider`` (organisation id) is a self trade for ``demand``: the
    pairing rule "different organisations" (PRODUCT.md §4 step 1) — only the buyer's own
    organisation. A related organisation's offer is a normal candidate: §5.4 only makes its
    voucher part zero (``voucher_part_of``), so its bill is paid in cash. The bucket walks
    (``best_pair``, ``OfferIndex.usable``, ``optimal``, ``partial``) compare
    ``bucket.provider == demand.buyer`` inline, the same rule."""
    return provider == demand.buyer


def voucher_part_of(
    bill: Decimal,
    voucher: VoucherSnap | None,
    offer: OfferSnap,
    buyer: str,
    related: frozenset[str],
    available: Decimal | None = None,
) -> Decimal:
    """The part of ``bill`` (CNY) ``voucher`` pays on ``offer`` (PRODUCT.md §5.4): the share
    rounded down to the fen, at most what the voucher has ``available`` (default: its
    ``available`` now); zero for the buyer's own or a related provider, or an offer the voucher
    does not cover."""
    if voucher is None or offer.provider == buyer or offer.provider in related:
        return Decimal("0.00")
    if not voucher.covers(offer):
        return Decimal("0.00")
    share = (bill * voucher.max_share).quantize(FEN, rounding=ROUND_DOWN)
    left = voucher.available if available is None else available
    return max(Decimal("0.00"), min(share, left))


class Bucket:
    """Offers interchangeable but for capacity and listing order: same model, site, price,
    provider and minimum duration, in listing order. Keeps the free-GPU matrix (offers × hours
    of the bucket's span, 0 outside an offer's window) so one vectorised query answers "which
    offer of the bucket fits earliest" for all its offers at once. The free runs behind that
    query are kept per GPU count; a booking makes its row stale only for the GPU counts whose
    free/blocked hours it changed, and a stale row is recomputed at the next query."""

    def __init__(self, offers: list[OfferSnap]) -> None:
        self.offers = offers
        first = offers[0]
        self.price, self.provider = first.price, first.provider
        self.min_duration = first.min_duration
        self.start = min(o.start for o in offers)
        self.end = max(o.end for o in offers)
        self.row = {o.id: i for i, o in enumerate(offers)}
        span = self.end - self.start
        # int16 keeps the matrix small; a bucket whose GPU counts or span (hours, also stored
        # in this type by ``_free_runs``) do not fit takes int32 (offers of up to ``MAX_GPUS``
        # GPUs and windows of any length are valid input, and must not stop the hub's cycle).
        fits16 = max(max(o.gpu_count for o in offers), span) <= _INT16_MAX
        dtype: type[np.signedinteger] = np.int16 if fits16 else np.int32
        counts = np.array([o.gpu_count for o in offers], dtype=dtype)
        if all(o.start == self.start and o.end == self.end for o in offers):  # one conversion
            self.free = counts[:, None] - np.array([o.used for o in offers], dtype=dtype)
        else:
            self.free = np.zeros((len(offers), span), dtype=dtype)
            for i, o in enumerate(offers):
                a = o.start - self.start
                self.free[i, a : o.end - self.start] = counts[i] - np.array(o.used, dtype=dtype)
        self._hours = np.arange(span, dtype=dtype)
        self._span = np.full(span, span, dtype=dtype)
        # per GPU count: free-run lengths, hours × rows (transposed: one C-order argmax over a
        # window finds the earliest hour, then the first listed row)
        self._runs: dict[int, np.ndarray] = {}
        self._dirty: dict[int, set[int]] = {}  # rows booked since the runs were computed

    def _free_runs(self, free: np.ndarray, gpus: int) -> np.ndarray:
        """Per row (or for one row) and hour: consecutive hours from that hour with ≥ ``gpus``
        free (the span's end counts as blocked)."""
        blocked = np.where(free >= gpus, self._span, self._hours)
        nxt = np.minimum.accumulate(blocked[..., ::-1], axis=-1)[..., ::-1]
        return nxt - self._hours

    def _runs_for(self, gpus: int) -> np.ndarray:
        runs = self._runs.get(gpus)
        if runs is None:
            runs = self._runs[gpus] = np.ascontiguousarray(self._free_runs(self.free, gpus).T)
            self._dirty[gpus] = set()
            return runs
        dirty = self._dirty[gpus]
        if len(dirty) == 1:  # the usual case: one booking since the last query
            row = dirty.pop()
            runs[:, row] = self._free_runs(self.free[row], gpus)
        elif dirty:
            rows = sorted(dirty)
            dirty.clear()
            runs[:, rows] = self._free_runs(self.free[rows], gpus).T
        return runs

    def earliest(self, gpus: int, duration: int, lo: int, hi: int) -> tuple[int, int] | None:
        """``(row, start)`` of the earliest fit over the bucket, first listed on ties: every
        hour of ``[start, start + duration)`` inside ``[lo, hi)`` has ``gpus`` free on the
        offer ``self.offers[row]``; ``None`` if no offer of the bucket fits. Reads the longest
        free run from each hour of each row, cached per GPU count and refreshed for the rows
        booked since: O(candidate starts × offers) per query."""
        lo, hi = max(lo, self.start), min(hi, self.end)
        if hi - lo < duration:
            return None
        ok = self._runs_for(gpus)[lo - self.start : hi - self.start - duration + 1] >= duration
        k = int(ok.argmax())  # row-major: the earliest hour, then the first listed row
        if not ok.item(k):
            return None
        h, row = divmod(k, ok.shape[1])
        return row, lo + h

    def fits(
        self, gpus: int, duration: int, lo: int, hi: int, keep: int
    ) -> list[tuple[int, int, int]]:
        """Up to ``keep`` offers of the bucket that fit, as ``(row, earliest start, latest
        start)``, earliest start first then listing order (one vectorised pass)."""
        lo, hi = max(lo, self.start), min(hi, self.end)
        if hi - lo < duration or self.earliest(gpus, duration, lo, hi) is None:
            return []
        ok = self.free[:, lo - self.start : hi - self.start] >= gpus
        sums = np.zeros((ok.shape[0], ok.shape[1] + 1), dtype=np.int32)
        np.cumsum(ok, axis=1, out=sums[:, 1:])
        fit = (sums[:, duration:] - sums[:, :-duration]) == duration
        rows = np.flatnonzero(fit.any(axis=1))
        first = fit[rows].argmax(axis=1)
        last = fit.shape[1] - 1 - fit[rows, ::-1].argmax(axis=1)
        order = np.lexsort((rows, first))[:keep]
        return [(int(rows[i]), lo + int(first[i]), lo + int(last[i])) for i in order]

    def took(self, offer: OfferSnap, gpus: int, start: int, duration: int) -> None:
        """Record a booking of ``gpus`` on ``offer`` over ``[start, start + duration)``."""
        row = self.row[offer.id]
        a = start - self.start
        hours = self.free[row, a : a + duration]
        np.subtract(hours, gpus, out=hours)
        # the runs for ``g`` GPUs change only if some hour went from ≥ g free to < g
        free = hours.tolist()
        if not free:  # an empty booking changes nothing
            return
        least, most = min(free), max(free) + gpus
        for g, rows in self._dirty.items():
            if least < g <= most:
                rows.add(row)


@dataclass
class Ring:
    """A demand's candidate offers, by locality tier (city, metro, region, national — up to its
    limit), each tier one list of ``(bucket, hub latency ms)`` in ascending price (then latency
    and listing order). ``beyond_min_price`` is the cheapest offer past the limit (``None``:
    none), for the reason an unserved demand reports."""

    tiers: list[list[tuple[Bucket, float]]]
    beyond_min_price: Decimal | None


class OfferIndex:
    """Offers indexed for one cycle: by model, then by site, then in buckets; rings of candidate
    buckets cached per (acceptable models, origin site, locality limit), so a demand only ever
    looks at offers of its models inside its limit, nearest tier first and cheapest first."""

    def __init__(
        self, offers: Iterable[OfferSnap], latency: Mapping[tuple[str, str], float]
    ) -> None:
        self.latency = latency
        self.by_id: dict[str, OfferSnap] = {}
        grouped: dict[str, dict[SiteRef, dict[tuple[Decimal, str, int], list[OfferSnap]]]] = {}
        for offer in sorted(offers, key=lambda o: (o.price, o.listed, o.id)):
            grouped.setdefault(offer.model, {}).setdefault(offer.site, {}).setdefault(
                (offer.price, offer.provider, offer.min_duration), []
            ).append(offer)
            self.by_id[offer.id] = offer
        self.by_model: dict[str, dict[SiteRef, list[Bucket]]] = {}
        self.bucket_of: dict[str, Bucket] = {}
        for model, sites in grouped.items():
            for site, buckets in sites.items():
                made = [Bucket(b) for b in buckets.values()]
                self.by_model.setdefault(model, {})[site] = made
                for bucket in made:
                    for o in bucket.offers:
                        self.bucket_of[o.id] = bucket
        self._rings: dict[tuple[frozenset[str], str, str, str, str], Ring] = {}
        self._bills: dict[tuple[int, int, Decimal], Decimal] = {}

    def bill(self, gpus: int, hours: int, price: Decimal) -> Decimal:
        """``bill_of(gpus, hours, price)``, memoised for the cycle (CNY)."""
        key = (gpus, hours, price)
        bill = self._bills.get(key)
        if bill is None:
            bill = self._bills[key] = bill_of(gpus, hours, price)
        return bill

    def take(self, offer: OfferSnap, gpus: int, start: int, duration: int) -> None:
        """Book ``gpus`` on ``offer`` over ``[start, start + duration)`` and update the index."""
        offer.take(gpus, start, duration)
        self.bucket_of[offer.id].took(offer, gpus, start, duration)

    def ring(self, demand: DemandSnap) -> Ring:
        """``demand``'s candidate buckets by tier (``Ring``), built once per (models, origin
        city, metro and hub, locality limit) and cached for the cycle."""
        origin = demand.origin
        # what the ring depends on, in plain hashable values (str hashes are cached)
        key = (demand.models, origin.city, origin.metro, origin.hub, demand.limit)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = self._ring(demand.models, origin, demand.limit)
        return ring

    def usable(self, demand: DemandSnap) -> Iterator[Bucket]:
        """The buckets of ``demand``'s ring that pass its limit price, its duration (each
        offer's minimum) and the self-trade rule, nearest tier first and cheapest first within
        a tier. No timeline is queried: a bucket yielded may still have no free window."""
        max_price, duration, buyer = demand.max_price, demand.duration, demand.buyer
        for entries in self.ring(demand).tiers:
            for bucket, _ in entries:
                if bucket.price > max_price:
                    break
                if bucket.min_duration > duration or bucket.provider == buyer:
                    continue
                yield bucket

    def _ring(self, models: frozenset[str], origin: SiteRef, limit_name: str) -> Ring:
        limit = tier_rank(limit_name)
        tiers: list[list[tuple[Bucket, float]]] = [[], [], [], []]
        beyond: Decimal | None = None
        for model in sorted(models):
            for site, buckets in self.by_model.get(model, {}).items():
                rank = tier_rank(
                    tier_between(
                        origin.city, origin.metro, origin.hub, site.city, site.metro, site.hub
                    )
                )
                if rank > limit:
                    cheapest = buckets[0].price
                    beyond = cheapest if beyond is None else min(beyond, cheapest)
                    continue
                distance = self.latency.get((origin.hub, site.hub), 0.0) if rank == 3 else 0.0
                tiers[rank] += [(b, distance) for b in buckets]
        for entries in tiers:
            entries.sort(key=lambda e: (e[0].price, e[1], e[0].offers[0].listed, e[0].offers[0].id))
        return Ring(tiers[: limit + 1], beyond)


def least_cash(bill: Decimal, v: VoucherSnap | None) -> Decimal:
    """``bill`` (CNY) less the largest part voucher ``v`` could pay of it: the least the buyer
    can pay after the voucher, non-decreasing in the price behind ``bill``."""
    if v is None:
        return bill
    share = (bill * v.max_share).quantize(FEN, rounding=ROUND_DOWN)
    return bill - max(Decimal("0.00"), min(share, v.available))


def solve_greedy(
    demands: Iterable[DemandSnap],
    offers: Iterable[OfferSnap],
    on_match: Callable[[Match], None] | None = None,
    latency: Mapping[tuple[str, str], float] | None = None,
    deadline: float | None = None,
) -> Result:
    """Run one greedy cycle. ``offers`` timelines are updated in place as capacity is taken.

    ``latency`` maps ``(hub, hub)`` to milliseconds: across hubs, among offers of equal cost to
    the buyer the lower-latency hub wins (docking "other hubs by latency", §4.3).
    ``Result.pairs_considered`` counts the (demand, offer) pairs actually evaluated.
    A demand that allows splitting (``split``) and has no whole fit is then tried in parts at
    its turn (``partial.split_book``: several matches, all or none).
    ``deadline`` (a ``time.perf_counter()`` value; the ``optimal`` policy's time limit): once
    it has passed the walk stops, and the demands not reached are in neither ``matches`` nor
    ``unserved`` (they stay open for the next cycle) but counted in
    ``Result.solver["not_reached"]``. A split demand being planned in parts when the deadline
    passes is not reached either (``partial.split_book``).
    """
    index = OfferIndex(offers, latency or {})
    result = Result(matches=[], unserved={})
    # higher limit price first, then (a stable sort) earlier posting, then id
    ordered = sorted(demands, key=attrgetter("posted", "id"))
    ordered.sort(key=attrgetter("max_price"), reverse=True)
    for i, demand in enumerate(ordered):
        if deadline is not None and time.perf_counter() >= deadline:
            result.solver["not_reached"] = len(ordered) - i
            break
        match, reason, considered = best_pair(demand, index)
        result.pairs_considered += considered
        if match is None and demand.split != "none":
            from .partial import split_book  # ``partial`` builds on this module

            placed = split_book(demand, index, result, on_match, deadline)
            if placed is None:  # the deadline passed while it was being planned
                result.solver["not_reached"] = len(ordered) - i
                break
            if placed:
                continue
        if match is None:
            result.unserved[demand.id] = reason
            continue
        index.take(index.by_id[match.offer_id], demand.gpu_count, match.start, demand.duration)
        if demand.voucher is not None and match.voucher_part:
            demand.voucher.available -= match.voucher_part
        result.matches.append(match)
        result.served[demand.id] = demand.gpu_count * demand.duration
        if on_match is not None:
            on_match(match)
    return result


def best_pair(demand: DemandSnap, index: OfferIndex) -> tuple[Match | None, str, int]:
    """The best feasible pair of ``demand`` in its nearest tier that has one, else the furthest
    rule any offer passed (``REASONS``). Within a tier buckets are walked cheapest first; the
    walk stops at the first bucket over the limit price, or once the least cost the next bucket
    could reach after the voucher (``least_cash``) exceeds the best found; a bucket whose
    envelope has no fit, or whose best possible key loses, is skipped whole. Returns ``(match,
    reason, pairs evaluated)`` — the (demand, offer) pairs whose timeline was queried."""
    ring = index.ring(demand)
    blocked = 0  # index into REASONS of the furthest rule any candidate passed
    if ring.beyond_min_price is not None:
        blocked = 1 if ring.beyond_min_price > demand.max_price else 2
    evaluated = 0
    gpus, duration, lo, hi = demand.gpu_count, demand.duration, demand.start, demand.end
    max_price, buyer = demand.max_price, demand.buyer
    for rank, entries in enumerate(ring.tiers):
        best_key: tuple[Decimal, float, int, int, str] | None = None
        best: Match | None = None
        for bucket, distance in entries:
            price = bucket.price
            if price > max_price:
                blocked = max(blocked, 1)
                break
            bill = index.bill(gpus, duration, price)
            if best_key is not None and least_cash(bill, demand.voucher) > best_key[0]:
                break
            if bucket.min_duration > duration:
                blocked = max(blocked, 3)
                continue
            if bucket.provider == buyer:
                blocked = max(blocked, 5)
                continue
            evaluated += len(bucket.offers)
            found = bucket.earliest(gpus, duration, lo, hi)
            if found is None:
                blocked = max(blocked, 4)
                continue
            # the voucher's part is the same for every offer of a bucket (same provider and
            # site): the bucket's earliest fit is its best pair
            row, start = found
            offer = bucket.offers[row]
            vpart = voucher_part_of(bill, demand.voucher, offer, buyer, demand.related)
            key = (bill - vpart, distance, start, offer.listed, offer.id)
            if best_key is None or key < best_key:
                best_key = key
                best = Match(demand.id, offer.id, start, TIERS[rank], bill, vpart)
        if best is not None:
            return best, "", evaluated
    return None, REASONS[blocked], evaluated
