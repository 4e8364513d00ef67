"""Partial fills on plain data: a demand split across several offers at one site or one hub
(PRODUCT.md §4, "whether all GPUs must be at one site"; issue 4, "Partial fills").

A demand allows it with ``DemandSnap.split``: ``"site"`` (every part at one site) or ``"hub"``
(every part at sites of one hub); ``"none"`` (the default) keeps the whole demand on one offer.
Each part is at least ``DemandSnap.min_part`` GPUs (whole nodes for a data-parallel job).

Rules of a split placement (``split_plan``):

* only after the whole demand has no fit at its turn (``engine.solve_greedy`` calls
  ``split_book`` then), so a split never takes capacity a whole placement could have used for
  the same demand;
* all or nothing: the demand is placed only when all its GPUs are; a plan is a set of parts, one
  per offer, that add up to ``gpu_count`` exactly, at most ``MAX_PARTS`` of them;
* every part runs over the same hours ``[start, start + duration)`` inside the demand's window
  (a data-parallel job starts all its workers together) with that many GPUs free on its offer
  every hour;
* every part passes the rules of a whole pair: model, price ≤ the limit (each part is billed at
  its own offer's price), locality within the limit, offer minimum duration, another
  organisation's offer;
* choice, as for a whole demand: the nearest locality tier that can hold the demand (a hub
  group's tier is its farthest part's); each group (a site, or a hub) is placed at its earliest
  common start that holds the whole demand, filled cheapest offer first (then lower latency,
  larger free block, listing order) — a greedy fill, not an exhaustive search; among the groups
  of that tier the lowest cost to the buyer after the voucher wins, then lower hub latency,
  then the earlier start, then fewer parts, then the group's id.

The earliest common start (``_group_plan``): every start hour of the window is a candidate,
however often the offers' free capacity changes (no cap on the search). With ``min_part`` = 1
and at most ``MAX_PARTS`` usable offers the start is exactly the first hour whose free blocks
add up to the demand. Otherwise it is the first hour where the greedy fill succeeds, which may
be later than the first hour some other choice of parts would fit (or there may be none): 15
GPUs in parts of at least 5 over free blocks of 8, 5 and 5 (cheapest first) takes 8 and cannot
make the 7 left, where 5 + 5 + 5 would; and 128 GPUs over seventeen 8-GPU offers, the cheapest
with 4 free, needs 17 parts cheapest first, where the 16 full blocks would do (an hour later,
once that offer is full, they do).

Cost of the search (``_group_plan``, ``_fills``): the start hours are taken in chunks of about
``CHUNK_CELLS`` (2^20) offer-hours, earliest first, and the search stops at the first chunk with
a fit. In a chunk, each offer's free block at every start (a sliding minimum) and the starts
whose 16 largest blocks could hold the demand come from numpy; the first ``SCALAR_TRIES`` (4)
of those starts are filled one by one (on ordinary input the first fits), and for the rest
whether the greedy fill succeeds is decided at once: the fill only ever uses the first
``MAX_PARTS`` positions of an hour's fill order (one more part fails), and once fewer than
2 × ``min_part`` GPUs are left it succeeds exactly when some later block holds all of them.
So one group costs O(offers × window hours) numpy element operations (× (chunk + duration) /
chunk for durations longer than a chunk), a Python loop of at most ``MAX_PARTS`` steps per
chunk, and about offers × (chunk + duration) cells of memory; the scalar ``_fill`` takes the
parts at the start chosen. A deadline (``engine.solve_greedy``'s, or the ``optimal`` policy's
time limit in ``split_after``) is checked before each demand, before the split pass builds its
index and before each chunk: a split demand not placed by then stays open (not reached), with
no reason. The policy can end past its limit by one index build and one chunk (0.2-0.3 s for
1,000 offers over 8,784 hours).

Measured on the reviewer's adversarial case (one hub; the cheapest offer 8 GPUs free, the
others 5 or 6 changing every hour; 15 GPUs in parts of at least 5 for 10 hours, which the
greedy fill never places), 2026-11-30 on the shared 2-core development machine, before → after
in one session, three runs each (two for the slowest): greedy, 200 offers × 5,000 hours × 50
demands 27.4-29.5 s → 2.3-2.9 s; 1,000 offers × 8,784 hours × 1 demand 17.0-22.1 s and
249 MB peak → 1.3-1.6 s and 99 MB (72 MB with splitting off); ``optimal`` with a 2 s limit, 1,000
offers × 8,784 hours × 3 demands 53.3-55.2 s → 2.4-2.5 s under ``tracemalloc`` (2.0-2.3 s
without), the 3 demands left open instead of searched in full long past the limit.
``bench/partial.py`` (10k trace demands × 16 GPUs) is unchanged: split cycles 2.2-3.7 s
before, 2.3-3.6 s after.

Money: each part is its own reservation with its own bill (``bill_of`` of its GPUs, hours and
its offer's price, rounded once) and at most one voucher, the demand's. The voucher pays the
parts in fill order, each ``min(floor_fen(bill × max_share), what the voucher has left)``, so
the parts' voucher amounts never exceed what one bill of the same total could have drawn.

``split_reach`` answers the "why" of an unplaced split demand (``explain``): per group, the most
GPUs its offers hold together over one window, every start hour of the demand's window counted.
"""

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

import numpy as np

from marketplace.locality import TIERS, tier_between, tier_rank

from .engine import (
    Bucket,
    DemandSnap,
    Match,
    OfferIndex,
    OfferSnap,
    Result,
    bill_of,
    is_self_trade,
    snapshot_copy,
    solve_greedy,
    voucher_part_of,
)
from .optimal import OptimalSettings, solve_optimal

SCOPES = ("site", "hub")
# With split demands, ``solve_optimal`` gets this share of the time limit; the split pass and
# the floor (greedy with partial fills) use the rest.
FLOOR_SHARE = 0.85
MAX_PARTS = 16  # parts of one demand (reservations written for it)
# Start hours are searched in chunks of about this many free-GPU cells (offers × hours), so the
# matrices of one chunk stay a few tens of MB whatever the group's size and window.
CHUNK_CELLS = 1 << 20
CHUNK_MIN_STARTS = 256
# Candidate starts of a chunk filled one by one (``_fill``) before the rest are decided at once
# (``_fills``): on ordinary input the first candidate usually fits.
SCALAR_TRIES = 4


class _Late(Exception):
    """The deadline passed while a split demand was being planned (it is not reached)."""


@dataclass(frozen=True)
class PartPlan:
    """One part: ``gpus`` GPUs on ``offer``, its bill and voucher part (CNY), its tier rank."""

    offer: OfferSnap
    gpus: int
    bill: Decimal
    voucher_part: Decimal
    rank: int


@dataclass(frozen=True)
class SplitPlan:
    """A whole demand in parts, all over ``[start, start + duration)`` in one group (a site id
    or a hub id, per ``scope``)."""

    scope: str
    key: str
    start: int
    parts: tuple[PartPlan, ...]
    distance: float

    @property
    def cost(self) -> Decimal:
        """What the buyer pays after the voucher (CNY)."""
        return sum((p.bill - p.voucher_part for p in self.parts), Decimal("0.00"))

    @property
    def gpus(self) -> int:
        """GPUs of all the parts (the demand's ``gpu_count`` for a complete plan)."""
        return sum(p.gpus for p in self.parts)

    def order_key(self) -> tuple[Decimal, float, int, int, str]:
        """Order among plans of one tier (module doc): lower cost after the voucher, lower hub
        latency, earlier start, fewer parts, then the group's id."""
        return (self.cost, self.distance, self.start, len(self.parts), self.key)


def scope_key(site_id: str, hub: str, scope: str) -> str:
    """The group a part belongs to: its site for ``"site"``, its hub for ``"hub"``."""
    return site_id if scope == "site" else hub


def _free_rows(offers: Sequence[OfferSnap], lo: int, hi: int) -> np.ndarray:
    """Free GPUs of each offer per hour of ``[lo, hi)`` (0 outside its availability)."""
    rows = np.zeros((len(offers), hi - lo), dtype=np.int32)
    for i, o in enumerate(offers):
        a, z = max(lo, o.start), min(hi, o.end)
        if z > a:
            rows[i, a - lo : z - lo] = o.gpu_count - np.asarray(
                o.used[a - o.start : z - o.start], dtype=np.int32
            )
    return rows


def _window_min(rows: np.ndarray, duration: int) -> np.ndarray:
    """Per row, the least value over every run of ``duration`` consecutive columns: an
    ``(offers, width - duration + 1)`` array whose column ``s`` is
    ``rows[:, s : s + duration].min(axis=1)`` (for free GPUs per hour: the GPUs each offer
    holds free over the hours ``[lo + s, lo + s + duration)``). The van Herk/Gil-Werman
    sliding minimum: prefix and suffix minima over blocks of ``duration`` columns, so the cost
    is O(offers × width) whatever the duration; ``width ≥ duration``."""
    n, width = rows.shape
    if duration == 1:
        return rows
    blocks = -(-width // duration)
    padded = np.full((n, blocks * duration), np.iinfo(rows.dtype).max, dtype=rows.dtype)
    padded[:, :width] = rows
    cut = padded.reshape(n, blocks, duration)
    prefix = np.minimum.accumulate(cut, axis=2).reshape(n, -1)
    suffix = np.minimum.accumulate(cut[:, :, ::-1], axis=2)[:, :, ::-1].reshape(n, -1)
    starts = width - duration + 1
    return np.minimum(suffix[:, :starts], prefix[:, duration - 1 : duration - 1 + starts])


def _held(free: np.ndarray, least: int) -> np.ndarray:
    """Per start (column of ``free``, offers × starts), the most GPUs the offers can hold
    together in parts of at least ``least``, at most ``MAX_PARTS`` of them: the sum of the
    ``MAX_PARTS`` largest free blocks of ``least`` or more (int64)."""
    held = np.where(free >= least, free, 0)
    if held.shape[0] > MAX_PARTS:
        held = np.partition(held, held.shape[0] - MAX_PARTS, axis=0)[-MAX_PARTS:]
    return held.sum(axis=0, dtype=np.int64)


@dataclass
class _Group:
    """The offers of one site or hub that may hold a part, from the index's buckets: their free
    GPUs per hour of the demand's window (one row per offer) and their fill-order keys."""

    key: str
    buckets: list[tuple[Bucket, int, float]]  # (bucket, tier rank, hub latency ms)

    def keys(self) -> tuple[list[OfferSnap], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(offers, tier ranks, price in 1e-4 CNY, latency ms, listing order)``, one entry
        per row of ``free``."""
        offers = [o for b, _, _ in self.buckets for o in b.offers]
        n = len(offers)
        rank = np.empty(n, dtype=np.int64)
        price = np.empty(n, dtype=np.int64)
        distance = np.empty(n, dtype=np.float64)
        i = 0
        for bucket, r, dist in self.buckets:
            k = len(bucket.offers)
            rank[i : i + k] = r
            price[i : i + k] = int(bucket.price.scaleb(4))
            distance[i : i + k] = dist
            i += k
        listed = np.array([o.listed for o in offers], dtype=np.int64)
        return offers, rank, price, distance, listed

    def free(self, lo: int, hi: int) -> np.ndarray:
        """Free GPUs per offer and hour of ``[lo, hi)`` (int32, offers × hours), read from the
        buckets' free-GPU matrices (kept current by ``OfferIndex.take``)."""
        rows = np.zeros((sum(len(b.offers) for b, _, _ in self.buckets), hi - lo), dtype=np.int32)
        i = 0
        for bucket, _, _ in self.buckets:
            k = len(bucket.offers)
            a, z = max(lo, bucket.start), min(hi, bucket.end)
            if z > a:
                rows[i : i + k, a - lo : z - lo] = bucket.free[
                    :, a - bucket.start : z - bucket.start
                ]
            i += k
        return rows

    def peak(self, lo: int, hi: int) -> np.ndarray:
        """Each offer's most free GPUs in any hour of ``[lo, hi)`` (0 if none there)."""
        out = []
        for bucket, _, _ in self.buckets:
            a, z = max(lo, bucket.start), min(hi, bucket.end)
            if z > a:
                out.append(bucket.free[:, a - bucket.start : z - bucket.start].max(axis=1))
            else:
                out.append(np.zeros(len(bucket.offers), dtype=bucket.free.dtype))
        return np.concatenate(out).astype(np.int64)


def _fill(demand: DemandSnap, order: np.ndarray, free: np.ndarray) -> list[tuple[int, int]] | None:
    """Parts ``(row, GPUs)`` adding up to the demand, taken from the rows in ``order`` (each
    with ``free[row] ≥ min_part``), each at least ``min_part`` and at most its free block;
    ``None`` when they cannot."""
    remaining, least = demand.gpu_count, demand.min_part
    parts: list[tuple[int, int]] = []
    for i in order:
        take = min(int(free[i]), remaining)
        if 0 < remaining - take < least:  # leave a remainder a later part can still hold
            take = remaining - least
            if take < least:
                continue
        parts.append((int(i), take))
        remaining -= take
        if remaining == 0:
            break
    if remaining or len(parts) > MAX_PARTS:
        return None
    return parts


def _fill_classes(
    price: np.ndarray, distance: np.ndarray, listed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The part of the fill order that does not depend on the hour: ``(static, cls)``, the rows
    sorted by price, latency, listing order and row (``static``), and per position of
    ``static`` its class, the rank of its ``(price, latency)`` (``cls``, non-decreasing).
    Inside a class the fill takes larger free blocks first, then ``static``'s order."""
    static = np.lexsort((listed, distance, price))
    p, d = price[static], distance[static]
    fresh = np.ones(len(static), dtype=np.int64)
    fresh[0] = 0
    fresh[1:] = (p[1:] != p[:-1]) | (d[1:] != d[:-1])
    return static, np.cumsum(fresh)


def _fills(demand: DemandSnap, free: np.ndarray, static: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """Per column of ``free`` (offers × starts: each offer's free block at that start), whether
    ``_fill`` over the rows usable there (``free ≥ min_part``) in fill order succeeds — the same
    answer, for all starts at once in numpy.

    Why it needs only the first ``MAX_PARTS`` positions of each column's order: with ``r`` GPUs
    left and ``r ≥ 2 × min_part`` every usable offer becomes a part (all of ``r``, all of its
    block, or ``r − min_part``, which leaves ``min_part``), so while ``r`` stays that large the
    parts are the first usable offers in order and a 17th part fails. Once ``min_part ≤ r <
    2 × min_part`` (or ``r < min_part`` from the start) an offer either takes all of ``r``
    (block ≥ ``r``) or is passed over, so the fill succeeds exactly when some later offer's
    block is ≥ ``r`` and fewer than ``MAX_PARTS`` parts are taken. So: the first
    ``MAX_PARTS`` positions (``np.argpartition``, then sorted), the largest block after them,
    and a loop of at most ``MAX_PARTS`` steps over arrays of starts — O(offers × starts) numpy
    work and no Python loop per start or per offer."""
    n, m = free.shape
    least, gpus = demand.min_part, demand.gpu_count
    f = free[static]
    f = np.where(f >= least, f, 0)  # not usable: never a part, sorted last
    top = int(f.max(initial=0)) + 1
    rows = np.arange(n, dtype=np.int64)[:, None]
    # fill order: class, larger block, then ``static``'s order; every key distinct
    key = np.where(f > 0, cls[:, None] * top + (top - 1 - f), (int(cls[-1]) + 1) * top)
    key = key * n + rows
    k = min(n, MAX_PARTS)
    if n > k:
        part = np.argpartition(key, k - 1, axis=0)
        rest = np.take_along_axis(f, part[k:], axis=0).max(axis=0)
        first = part[:k]
    else:
        rest = np.zeros(m, dtype=f.dtype)
        first = np.broadcast_to(rows, (n, m))
    first = np.take_along_axis(first, np.take_along_axis(key, first, axis=0).argsort(axis=0), 0)
    blocks = np.take_along_axis(f, first, axis=0)  # k × m, in fill order
    # after[j]: the largest block at position j or later of each column's order
    after = np.maximum.accumulate(np.vstack([blocks, rest[None, :]])[::-1], axis=0)[::-1]
    left = np.full(m, gpus, dtype=np.int64)
    done = np.zeros(m, dtype=bool)
    open_ = np.ones(m, dtype=bool)  # still taking every usable offer as a part
    for j in range(k):
        last = open_ & (left < 2 * least)  # one more part, of all that is left, or none
        done |= last & (after[j] >= left)
        open_ &= ~last
        block = blocks[j].astype(np.int64)
        open_ &= block > 0  # no usable offer left in this column
        if not open_.any():
            break
        take = np.minimum(block, left)
        rem = left - take
        take = np.where((rem > 0) & (rem < least), left - least, take)
        left = np.where(open_, left - take, left)
        done |= open_ & (left == 0)
        open_ &= left > 0
    # a column still open here has taken ``k`` parts and has GPUs left: with ``k`` =
    # ``MAX_PARTS`` it would need one part too many, with fewer offers there is none left
    return done


def _priced(
    demand: DemandSnap, offers: Sequence[OfferSnap], rank: np.ndarray, fill: list[tuple[int, int]]
) -> tuple[PartPlan, ...]:
    """Bills and voucher parts of a fill, the voucher drawn part by part in fill order."""
    voucher = demand.voucher
    available = voucher.available if voucher is not None else Decimal("0.00")
    parts = []
    for i, gpus in fill:
        offer = offers[i]
        bill = bill_of(gpus, demand.duration, offer.price)
        vpart = Decimal("0.00")
        if voucher is not None:
            vpart = voucher_part_of(
                bill, replace(voucher, available=available), offer, demand.buyer, demand.related
            )
            available -= vpart
        parts.append(PartPlan(offer, gpus, bill, vpart, int(rank[i])))
    return tuple(parts)


def _group_plan(
    demand: DemandSnap, group: _Group, deadline: float | None = None
) -> SplitPlan | None:
    """The plan of one group at the earliest common start that holds the whole demand (the
    module doc), or ``None``. An upper bound (each offer's most free GPUs in the window)
    rules a short group out before any start is tried. Raises ``_Late`` when ``deadline`` (a
    ``time.perf_counter()`` value) passes before the search ends.

    Every start hour of the window is a candidate, in chunks of start hours (about
    ``CHUNK_CELLS`` offers × hours each, earliest first, stopping at the first chunk with a
    fit): the GPUs each offer holds free over ``[start, start + duration)`` come for the
    chunk's starts at once (``_window_min``), the starts whose largest blocks (``_held``) can
    hold the demand are kept, of a run of starts with the same free blocks only the first (the
    fill depends on nothing else); the first ``SCALAR_TRIES`` of them are filled one by one
    (``_fill``; usually the first fits), and the greedy fill is decided for the rest at once
    (``_fills``), ``_fill`` taking the parts at the first start it succeeds. So
    the cost is O(offers × window hours) numpy work (× (chunk + duration) / chunk when the
    duration is long), a Python loop of at most ``MAX_PARTS`` steps per chunk, and memory of
    about ``offers × (chunk + duration)`` cells. No cap: every hour of the window is
    examined."""
    duration, least = demand.duration, demand.min_part
    # Only hours some offer of the group is available can hold a part: the matrix spans
    # those, not a window that may reach years past them (valid input, e.g. to 9999).
    lo = max(demand.start, min(bucket.start for bucket, _, _ in group.buckets))
    hi = min(demand.end, max(bucket.end for bucket, _, _ in group.buckets))
    if hi - lo < duration:
        return None
    peak = group.peak(lo, hi)
    if int(peak[peak >= least].sum()) < demand.gpu_count:
        return None
    offers, rank, price, distance, listed = group.keys()
    classes: tuple[np.ndarray, np.ndarray] | None = None

    def plan_at(s0: int, s: int, free: np.ndarray) -> SplitPlan | None:
        usable = np.flatnonzero(free >= least)
        # cheapest first, then lower latency, larger free block, listing order
        order = usable[np.lexsort((listed[usable], -free[usable], distance[usable], price[usable]))]
        fill = _fill(demand, order, free)
        if fill is None:
            return None
        parts = _priced(demand, offers, rank, fill)
        farthest = max(float(distance[i]) for i, _ in fill)
        return SplitPlan(demand.split, group.key, lo + s0 + s, parts, farthest)

    starts = hi - lo - duration + 1
    step = max(CHUNK_CELLS // len(offers), CHUNK_MIN_STARTS)
    for s0 in range(0, starts, step):
        if deadline is not None and time.perf_counter() >= deadline:
            raise _Late
        s1 = min(starts, s0 + step)
        blocks = _window_min(group.free(lo + s0, lo + s1 + duration - 1), duration)
        candidate = _held(blocks, least) >= demand.gpu_count
        # a chunk's first start is always filled (its left neighbour is in the last chunk)
        candidate[1:] &= (blocks[:, 1:] != blocks[:, :-1]).any(axis=0)
        columns = np.flatnonzero(candidate)
        for s in columns[:SCALAR_TRIES]:
            plan = plan_at(s0, int(s), blocks[:, s])
            if plan is not None:
                return plan
        rest = columns[SCALAR_TRIES:]
        if not rest.size:
            continue
        if classes is None:
            classes = _fill_classes(price, distance, listed)
        for s in rest[_fills(demand, blocks[:, rest], *classes)]:
            plan = plan_at(s0, int(s), blocks[:, s])
            if plan is not None:  # ``_fills`` says it fits; ``_fill`` takes the parts
                return plan
    return None


def split_plan(
    demand: DemandSnap, index: OfferIndex, deadline: float | None = None
) -> tuple[SplitPlan | None, int]:
    """The split placement of ``demand`` on the current timelines of ``index`` (module doc),
    or ``None``; with the number of offers looked at. Reads only. Raises ``_Late`` when
    ``deadline`` (a ``time.perf_counter()`` value) passes before the plan is found.

    Candidates come from the demand's ring of buckets (inside its locality limit, nearest tier
    first): at most its limit price, minimum duration met, not the buyer's own, availability
    meeting the window. A bucket's offers share a site, so they join one group (site or hub).
    Tier by tier, the groups that gained offers in that tier are planned; the first tier with
    a plan returns the best one."""
    if demand.split not in SCOPES or demand.end - demand.start < demand.duration:
        return None, 0
    looked = 0
    groups: dict[str, _Group] = {}
    for rank, entries in enumerate(index.ring(demand).tiers):
        fresh: set[str] = set()
        for bucket, distance in entries:
            if bucket.price > demand.max_price:
                break
            if bucket.min_duration > demand.duration or bucket.provider == demand.buyer:
                continue
            if bucket.end - demand.start < demand.duration or demand.end <= bucket.start:
                continue
            looked += len(bucket.offers)
            site = bucket.offers[0].site
            key = scope_key(site.id, site.hub, demand.split)
            groups.setdefault(key, _Group(key, [])).buckets.append((bucket, rank, distance))
            fresh.add(key)
        best: SplitPlan | None = None
        for key in sorted(fresh):
            plan = _group_plan(demand, groups[key], deadline)
            if plan is not None and (best is None or plan.order_key() < best.order_key()):
                best = plan
        if best is not None:
            return best, looked
    return None, looked


def split_book(
    demand: DemandSnap,
    index: OfferIndex,
    result: Result,
    on_match: Callable[[Match], None] | None = None,
    deadline: float | None = None,
) -> bool | None:
    """Place ``demand`` in parts if it can be (``split_plan``): book every part on the index,
    draw the voucher, append one ``Match`` per part (``Match.gpus`` set, consecutive in
    ``result.matches``) and count the whole demand as served. Returns whether it was placed;
    nothing changes when it was not. ``None`` when ``deadline`` (a ``time.perf_counter()``
    value) passed before its plan was found: it was not reached (no reason is known)."""
    try:
        plan, looked = split_plan(demand, index, deadline)
    except _Late:
        return None
    result.pairs_considered += looked
    if plan is None:
        return False
    for part in plan.parts:
        index.take(part.offer, part.gpus, plan.start, demand.duration)
        if demand.voucher is not None and part.voucher_part:
            demand.voucher.available -= part.voucher_part
        match = Match(
            demand.id,
            part.offer.id,
            plan.start,
            TIERS[part.rank],
            part.bill,
            part.voucher_part,
            gpus=part.gpus,
        )
        result.matches.append(match)
        if on_match is not None:
            on_match(match)
    result.served[demand.id] = demand.gpu_count * demand.duration
    return True


def split_after(
    result: Result,
    demands: Iterable[DemandSnap],
    offers: Iterable[OfferSnap],
    latency: dict[tuple[str, str], float] | None = None,
    deadline: float | None = None,
) -> Result:
    """The split pass after a policy that places whole demands only (``optimal``): the split
    demands it left unserved, in price-time order (higher limit, earlier posting), are placed in
    parts on the timelines it left (``offers``, already updated in place). Mutates and returns
    ``result``; a demand placed here leaves ``result.unserved``. A demand in neither
    ``served`` nor ``unserved`` was not reached before the policy's time limit and stays open.

    ``deadline`` (a ``time.perf_counter()`` value, the policy's): once it has passed, the
    split demands not yet placed in parts (the one being planned included) are taken out of
    ``result.unserved`` — their reason was the whole demand's, and a split was never tried —
    and left open for the next cycle, counted in ``result.solver["not_reached"]`` with
    ``deadline_hit`` set, as ``engine.solve_greedy`` counts the demands it does not reach."""
    pending = sorted(
        (d for d in demands if d.split in SCOPES and d.id in result.unserved),
        key=lambda d: (-d.max_price, d.posted, d.id),
    )
    if not pending:
        return result
    index: OfferIndex | None = None  # built once the clock allows (it takes a while)
    for i, demand in enumerate(pending):
        placed: bool | None = None
        if deadline is None or time.perf_counter() < deadline:
            if index is None:
                index = OfferIndex(offers, latency or {})
            placed = split_book(demand, index, result, deadline=deadline)
        if placed is None:
            for d in pending[i:]:
                del result.unserved[d.id]
            reached = int(result.solver.get("not_reached", 0))  # type: ignore[call-overload]
            result.solver["not_reached"] = reached + len(pending) - i
            result.solver["deadline_hit"] = True
            break
        if placed:
            del result.unserved[demand.id]
    return result


def whole_only(demands: Iterable[DemandSnap]) -> list[DemandSnap]:
    """Copies of ``demands`` with splitting off (vouchers stay shared), for a policy whose model
    places whole demands only; ``split_after`` then places the split ones it left."""
    return [replace(d, split="none") if d.split != "none" else d for d in demands]


@dataclass(frozen=True)
class Reach:
    """For "why no match": the most GPUs ``offers`` offers of one group (site or hub ``key``)
    hold together, each part ≥ ``min_part``, over one window starting at ``start`` (hour index;
    ``None`` when no window fits at all)."""

    key: str
    offers: int
    gpus: int
    start: int | None


def split_reach(demand: DemandSnap, offers: Iterable[OfferSnap], *, top: int = 3) -> list[Reach]:
    """Per group of ``demand.split``, the most GPUs its eligible offers hold together over one
    window inside the demand's (capped at ``gpu_count``; at most ``MAX_PARTS`` parts), best
    ``top`` groups first (most GPUs, then earlier start, then key). Every start hour (UTC hour
    index) of the window counts, as in ``_group_plan``; ``Reach.start`` is the earliest one
    holding that most. Eligible: model, price, locality, not the buyer's own
    (``is_self_trade``: a related organisation's offer is eligible, as in ``split_book``),
    minimum duration, window overlap, at least ``min_part`` GPUs. Empty for a demand that
    does not split."""
    if demand.split not in SCOPES:
        return []
    limit = tier_rank(demand.limit)
    o = demand.origin
    groups: dict[str, list[OfferSnap]] = {}
    for offer in sorted(offers, key=lambda x: (x.listed, x.id)):
        s = offer.site
        rank = tier_rank(tier_between(o.city, o.metro, o.hub, s.city, s.metro, s.hub))
        if (
            offer.model not in demand.models
            or offer.price > demand.max_price
            or rank > limit
            or is_self_trade(demand, offer.provider)
            or offer.min_duration > demand.duration
            or offer.gpu_count < demand.min_part
            or min(demand.end, offer.end) - max(demand.start, offer.start) < demand.duration
        ):
            continue
        groups.setdefault(scope_key(s.id, s.hub, demand.split), []).append(offer)
    reach: list[Reach] = []
    duration = demand.duration
    for key, members in groups.items():
        # as in ``_group_plan``: only the hours the group's offers are available, every start
        # hour of them (each member overlaps the window by ``duration`` hours or more)
        lo = max(demand.start, min(o.start for o in members))
        hi = min(demand.end, max(o.end for o in members))
        held = _held(_window_min(_free_rows(members, lo, hi), duration), demand.min_part)
        gpus = np.minimum(held, demand.gpu_count)
        at = int(gpus.argmax())  # the earliest start of the most GPUs
        if gpus[at] > 0:
            reach.append(Reach(key, len(members), int(gpus[at]), lo + at))
        else:
            reach.append(Reach(key, len(members), 0, None))
    reach.sort(key=lambda r: (-r.gpus, r.start if r.start is not None else 1 << 62, r.key))
    return reach[:top]


def solve_optimal_split(
    demands: Sequence[DemandSnap],
    offers: Sequence[OfferSnap],
    latency: dict[tuple[str, str], float] | None = None,
    settings: OptimalSettings | None = None,
) -> Result:
    """Policy ``optimal`` with partial fills: the MILP places whole demands only (a split
    demand is offered to it whole), then ``split_after`` places the split demands it left in
    parts, in price-time order, on the capacity left. ``offers`` are updated in place. The
    split pass stops at the same deadline, ``settings.time_limit`` seconds after the call: the
    split demands it has not placed by then stay open (``split_after``). With split demands in
    the snapshot the MILP gets ``FLOOR_SHARE`` of the limit, and greedy with partial fills runs
    on copies in the time left; its answer is returned instead (timelines and vouchers as it
    left them) when it serves more GPU-hours (``Result.solver["floor"]``), so the policy the
    cycle runs never serves fewer GPU-hours than greedy when the floor ends in time."""
    settings = settings or OptimalSettings()
    deadline = time.perf_counter() + settings.time_limit
    if not any(d.split in SCOPES for d in demands):
        result = solve_optimal(demands, offers, latency, settings)
        return split_after(result, demands, offers, latency, deadline)
    # The floor, as ``solve_optimal`` keeps greedy's answer for whole demands: greedy with
    # partial fills, on copies taken now. The MILP sees split demands whole, so without it a
    # split demand greedy serves in parts could lose its capacity to whole demands bidding less.
    floor_demands, floor_offers = snapshot_copy(demands, offers)
    share = replace(settings, time_limit=FLOOR_SHARE * settings.time_limit)
    result = solve_optimal(whole_only(demands), offers, latency, share)
    result = split_after(result, demands, offers, latency, deadline)
    if time.perf_counter() >= deadline:
        return result
    floor = solve_greedy(floor_demands, floor_offers, latency=latency, deadline=deadline)
    if floor.gpu_hours <= result.gpu_hours:
        return result
    # Greedy with partial fills served more GPU-hours (every match of it is feasible, even if
    # the deadline cut its walk): its answer, and its timelines and voucher balances in place
    # of the ones ``solve_optimal`` left.
    for offer, solved in zip(offers, floor_offers, strict=True):
        offer.used[:] = solved.used
    for d, solved_d in zip(demands, floor_demands, strict=True):
        if d.voucher is not None and solved_d.voucher is not None:
            d.voucher.available = solved_d.voucher.available
    floor.policy = "optimal"
    floor.solver = {
        **floor.solver,
        "floor": "greedy with partial fills",
        "gpu_hours": floor.gpu_hours,
        "optimal": result.solver,  # the facts of the answer not taken
        "optimal_gpu_hours": result.gpu_hours,
    }
    return floor
