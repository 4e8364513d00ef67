"""Policy ``optimal``: batch clearing as mixed-integer programmes solved by HiGHS (PRODUCT.md §4).

Plain data in, plain data out (the snapshot types of ``engine``), no ORM.

Model. A column ``x[d, o, s] ∈ {0, 1}`` books the whole demand ``d`` (gang: all its GPUs on one
offer, hence one site — co-location) on offer ``o`` over hours ``[s, s + duration)``. Candidate
starts per feasible pair are the earliest and the latest start that fit the offer's free timeline
inside both windows (packing against existing bookings at either end, so gaps are not cut in
the middle), plus the incumbent's own choice. Per demand, only the first
``candidates_per_demand`` offers that fit in the greedy walk's order are kept
(``demand_candidates``: nearest tier, then the cheapest bucket — price, then hub latency —,
then within a bucket the earliest start and listing order), always including the
incumbent's choice: the programme stays sparse (no dense demand × offer matrix).

* one row per demand: ``Σ x ≤ 1``;
* capacity rows per offer at every candidate start and every hour where free capacity drops:
  booked GPUs ≤ free GPUs (the load of half-open intervals peaks at a start, or where free
  capacity falls); rows that can never bind are left out.

Objective (the order, approximated by weights): maximise served GPU-hours; then, within a
budget smaller than one GPU-hour in total, per demand: the nearer locality tier (a step of one
tier outweighs every later term of the same demand, so hub docking moves a demand outward for
its own sake only when that serves more GPU-hours; the terms of several demands add up, though,
and a block answer that serves more GPU-hours may move one demand a tier out where that saves
other buyers more than a tier step weighs, as PRODUCT.md §4.2's literal order (cost, then
tier) would; the equally served answer keeping every demand near is then not looked for:
README, "Where the two orders meet"),
then the buyer's cost after the voucher, hub latency, an earlier start (a tie-break of
PRODUCT.md §4.2), and the sliver of GPUs the placement leaves free on the offer
(anti-fragmentation: a tight fit keeps larger blocks whole elsewhere).

Solving, under one deadline ``time_limit`` seconds after the call (wall clock; the last 10 %
are kept for applying the answer and the fill step):

1. The greedy result is computed first (``engine.solve_greedy`` on copies). It is the incumbent,
   the starting solution of every programme and the answer wherever nothing better is found in
   time: the policy never serves fewer GPU-hours than ``greedy``. Greedy too stops at 90 % of
   the limit (a limit shorter than greedy's own run, e.g. about 3 s at 50k demands × 10k
   offers on one core here, would otherwise be overrun); the demands it did not reach stay
   open for the next cycle and only then can the answer fall below a full greedy run.
2. Decomposition. Demands and offers split into independent components: a demand joins every
   offer bucket (model, site, price, provider, minimum duration) it could use by model, price,
   locality, minimum duration and provider, and components are the connected parts of that
   graph; two components share no offer and no demand, so their optima add up. A component of
   at most ``block_demands`` demands is one block; a larger one is cut into blocks of offers (in
   site, model, price and listing order) holding about half that many current bookings each,
   and each block is re-optimised with every booking outside it fixed (a large-neighbourhood
   step): its programme holds the demands booked on its offers plus the still unserved demands
   of the component that could use them (price-time order, up to ``block_demands`` in all).
3. Blocks are solved most promising first (the most GPU-hours greedy left idle on their offers
   inside the unserved demands' windows), each given an equal share of the time left but at
   least ``block_seconds``. Building a block's model stops at the deadline. A block's answer
   replaces the incumbent's there only if it is capacity-feasible and strictly better in the
   objective (never fewer GPU-hours); a block not reached or not improved in time keeps the
   incumbent. When a round of blocks is done and served more GPU-hours, another round runs
   with blocks twice as large (other boundaries), up to whole components.
4. Fill: the demands still unserved are walked in price-time order (``engine.best_pair``) on the
   final timelines and booked where they still fit (the programme offers a few starts per pair;
   a demand may fit at another); past the deadline the walk stops and a demand unserved by greedy
   keeps greedy's reason (for an unserved demand the first blocking rule does not depend on the
   capacity taken, since every bucket is walked).

Determinism: one thread, a fixed seed, a node limit per block and a fixed block order make the
answer the same for the same snapshot and settings whenever the work ends before the clock
(``Result.solver["deadline_hit"]`` is ``False``); the wall-clock deadline is the safety net, and
an answer cut by it is still valid (and never below greedy unless greedy itself was cut).

Vouchers: the cost of a column uses the voucher's part as if this pair alone drew on it; the
final parts are recomputed in demand order after solving, exactly like ``greedy`` does.

The order, not the weights, decides (``_standing``): the weights only approximate it (a
sliver saved can outweigh a slightly dearer price, a voucher shared by two demands is counted
twice). A block's answer is polished (``_polish``: each booked demand moves to another of its
columns that still fits and is ahead in the order) and replaces the incumbent's bookings only
when it is ahead of them in the order: more GPU-hours; or as many and a lower sum of tier ranks;
or as near and less cash for the buyers, each voucher drawn exactly as the answer is applied
(in priority order, its demands outside the block included; a voucher of more than
``EXACT_VOUCHER_DEMANDS`` demands in the cycle is costed per pair, as the solver does, to keep
each comparison cheap); then latency, delay, slivers. The polish stops at the blocks' deadline.
"""

import bisect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import highspy
import numpy as np

from marketplace.locality import TIERS

from .engine import (
    Bucket,
    DemandSnap,
    Match,
    OfferIndex,
    OfferSnap,
    Result,
    best_pair,
    bill_of,
    snapshot_copy,
    solve_greedy,
    voucher_part_of,
)


@dataclass(frozen=True)
class OptimalSettings:
    """Solver limits. ``time_limit``: seconds (wall clock) for the whole policy, greedy and
    model building included; ``node_limit``: branch-and-bound nodes per block;
    ``candidates_per_demand``: offers kept per demand (besides the incumbent's);
    ``block_demands``: the most demands in one programme (larger components are cut);
    ``block_seconds``: the least wall-clock time a block's solve is given while time is left."""

    time_limit: float = 10.0
    node_limit: int = 5000
    candidates_per_demand: int = 4
    block_demands: int = 400
    block_seconds: float = 0.5


@dataclass
class Candidate:
    """A column of the programme: ``demand`` whole on ``offer`` from hour index ``start``
    (UTC), at tier ``rank`` (0 = city … 3 = national), its ``bill`` and ``voucher_part`` (CNY,
    as if this pair alone drew on the voucher), hub latency ``distance`` (ms; 0 inside the
    hub) and the ``leftover`` sliver of GPUs it leaves free on the offer."""

    demand: DemandSnap
    offer: OfferSnap
    start: int
    rank: int
    bill: Decimal
    voucher_part: Decimal
    distance: float
    leftover: int

    @property
    def cost(self) -> Decimal:
        """What the buyer pays after the voucher (CNY)."""
        return self.bill - self.voucher_part

    def key(self) -> tuple[int, Decimal, float, int, int, int, str]:
        """The demand's own order of its columns (PRODUCT.md §4.2, README): nearer tier, lower
        cost after the voucher (as if this pair alone drew on it), lower hub latency, earlier
        start, tighter fit, then listing order."""
        return (
            self.rank,
            self.cost,
            self.distance,
            self.start,
            self.leftover,
            self.offer.listed,
            self.offer.id,
        )


class _Deadline(Exception):
    """The shared deadline passed while a block's model was being built."""


def demand_candidates(
    demand: DemandSnap, index: OfferIndex, keep: int
) -> tuple[list[Candidate], int]:
    """Up to ``keep`` feasible offers of ``demand`` in ``index``, each with its earliest and
    latest start: nearest tier first, then cheapest bucket, then earliest start (the greedy walk
    of ``engine.best_pair``, not stopping at the first fit). Returns ``(candidates, offers
    looked at)``; the rules are those of ``greedy``."""
    found: list[Candidate] = []
    evaluated = 0
    offers = 0
    for rank, entries in enumerate(index.ring(demand).tiers):
        for bucket, distance in entries:
            if offers >= keep:
                break
            if bucket.price > demand.max_price:
                break
            if bucket.min_duration > demand.duration or bucket.provider == demand.buyer:
                continue
            evaluated += len(bucket.offers)
            rows = bucket.fits(
                demand.gpu_count, demand.duration, demand.start, demand.end, keep - offers
            )
            if not rows:
                continue
            bill = bill_of(demand.gpu_count, demand.duration, bucket.price)
            for row, first, last in rows:
                offer = bucket.offers[row]
                offers += 1
                vpart = voucher_part_of(bill, demand.voucher, offer, demand.buyer, demand.related)
                for start in sorted({first, last}):
                    found.append(
                        Candidate(
                            demand,
                            offer,
                            start,
                            rank,
                            bill,
                            vpart,
                            distance,
                            offer.leftover(demand.gpu_count, start, demand.duration),
                        )
                    )
    return found, evaluated


def _forced(
    demand: DemandSnap,
    offer: OfferSnap,
    start: int,
    tier: str,
    latency: Mapping[tuple[str, str], float],
) -> Candidate:
    """A chosen booking as a column (the incumbent's, kept feasible for the solver's start)."""
    rank = TIERS.index(tier)
    bill = bill_of(demand.gpu_count, demand.duration, offer.price)
    vpart = voucher_part_of(bill, demand.voucher, offer, demand.buyer, demand.related)
    distance = latency.get((demand.origin.hub, offer.site.hub), 0.0) if rank == 3 else 0.0
    return Candidate(
        demand,
        offer,
        start,
        rank,
        bill,
        vpart,
        distance,
        offer.leftover(demand.gpu_count, start, demand.duration),
    )


def _priority(d: DemandSnap) -> tuple[Decimal, int, str]:
    return (-d.max_price, d.posted, d.id)


def _offer_id(booking: Candidate | Match) -> str:
    return booking.offer.id if isinstance(booking, Candidate) else booking.offer_id


@dataclass
class _Component:
    """Demands (price-time order) and the offer buckets they could use; shares none with
    another component."""

    demands: list[DemandSnap]
    buckets: list[Bucket]  # in decomposition order
    numbers: list[int]  # their bucket numbers


@dataclass
class _Block:
    offers: list[OfferSnap]
    buckets: frozenset[int]  # bucket numbers
    component: int  # index into the components
    whole: bool  # the whole component


def _components(
    demands: Sequence[DemandSnap],
    offers: Sequence[OfferSnap],
    latency: Mapping[tuple[str, str], float],
    finish: float,
) -> tuple[list[_Component], dict[str, frozenset[int]]]:
    """The independent components, and for each demand the bucket numbers it could use (model,
    price, locality, minimum duration, provider — the rules of ``greedy`` but capacity).
    Raises ``_Deadline`` when ``finish`` passes first."""
    index = OfferIndex(offers, latency)
    number: dict[int, int] = {}
    buckets: list[Bucket] = []
    for model in index.by_model.values():
        for site_buckets in model.values():
            for bucket in site_buckets:
                number[id(bucket)] = len(buckets)
                buckets.append(bucket)
    longest_min = max((b.min_duration for b in buckets), default=1)
    cache: dict[tuple[object, ...], frozenset[int]] = {}
    reach: dict[str, frozenset[int]] = {}
    parent = list(range(len(buckets)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, d in enumerate(demands):
        if i % 256 == 0 and time.perf_counter() >= finish:
            raise _Deadline
        key = (d.models, d.origin, d.limit, d.max_price, d.buyer, min(d.duration, longest_min))
        found = cache.get(key)
        if found is None:
            usable = [number[id(bucket)] for bucket in index.usable(d)]
            found = frozenset(usable)
            cache[key] = found
            if usable:
                root = find(usable[0])
                for b in usable[1:]:
                    other = find(b)
                    if other != root:
                        parent[other] = root
        reach[d.id] = found

    members: dict[int, list[DemandSnap]] = {}
    for d in demands:  # already in price-time order
        if reach[d.id]:
            members.setdefault(find(min(reach[d.id])), []).append(d)
    own: dict[int, list[int]] = {}
    for b in range(len(buckets)):
        own.setdefault(find(b), []).append(b)
    components = [
        _Component(members[root], [buckets[b] for b in numbers], numbers)
        for root, numbers in own.items()  # in bucket order: deterministic
        if root in members  # (offers no demand can use are left out)
    ]
    return components, reach


def _blocks(
    components: list[_Component], pick: Mapping[str, Candidate | Match], size: int
) -> list[_Block]:
    """A component of at most ``size`` demands is one block; a larger one is cut into blocks
    of offers (site, model, price, listing order) holding about ``size / 2`` of the current
    bookings each."""
    booked: dict[str, int] = {}
    for p in pick.values():
        booked[_offer_id(p)] = booked.get(_offer_id(p), 0) + 1
    blocks: list[_Block] = []
    for k, comp in enumerate(components):
        if len(comp.demands) <= size:
            offers_in = [o for b in comp.buckets for o in b.offers]
            blocks.append(_Block(offers_in, frozenset(comp.numbers), k, True))
            continue
        ordered = sorted(
            zip(comp.numbers, comp.buckets, strict=True),
            key=lambda e: (
                e[1].offers[0].site.id,
                e[1].offers[0].model,
                e[1].price,
                e[1].offers[0].listed,
            ),
        )
        chunk: list[OfferSnap] = []
        chunk_buckets: set[int] = set()
        load = 0
        for number, bucket in ordered:
            for o in bucket.offers:
                chunk.append(o)
                chunk_buckets.add(number)
                load += booked.get(o.id, 0)
                if load >= size // 2:
                    blocks.append(_Block(chunk, frozenset(chunk_buckets), k, False))
                    chunk, chunk_buckets, load = [], set(), 0
        if chunk:
            blocks.append(_Block(chunk, frozenset(chunk_buckets), k, False))
    return blocks


def solve_optimal(
    demands: Sequence[DemandSnap],
    offers: Sequence[OfferSnap],
    latency: Mapping[tuple[str, str], float] | None = None,
    settings: OptimalSettings | None = None,
) -> Result:
    """Run one ``optimal`` cycle (see the module doc). ``offers`` timelines are updated in place
    with the chosen bookings, and vouchers' ``available`` reduced, as ``solve_greedy`` does.

    Never serves fewer GPU-hours than ``greedy`` on the same snapshot when greedy itself ends
    inside 90 % of the time limit: the greedy solution is the incumbent, and a block's answer
    replaces it only when it is better. Past that point greedy stops (``engine.solve_greedy``'s
    ``deadline``) and the demands it did not reach stay open, in neither ``matches`` nor
    ``unserved`` (counted in ``Result.solver["not_reached"]``). ``Result.solver`` also holds
    blocks (in all, improved, skipped), columns, solver statuses, the greedy and final GPU-hours,
    whether the clock cut any work (``deadline_hit``) and the seconds of each step."""
    settings = settings or OptimalSettings()
    latency = latency or {}
    t0 = time.perf_counter()
    deadline = t0 + settings.time_limit
    # blocks stop here; the rest is for applying the answer and filling
    finish = deadline - 0.1 * settings.time_limit
    demands = sorted(demands, key=_priority)
    offers = sorted(offers, key=lambda o: (o.listed, o.id))
    by_id = {o.id: o for o in offers}

    # 1. The greedy answer on copies: the incumbent, the starting point and the floor.
    greedy_demands, greedy_offers = snapshot_copy(demands, offers)
    greedy = solve_greedy(greedy_demands, greedy_offers, latency=latency, deadline=finish)
    demand_of = {d.id: d for d in demands}
    # the incumbent: greedy's matches, replaced by a block's candidates where it does better
    pick: dict[str, Candidate | Match] = {m.demand_id: m for m in greedy.matches}
    not_reached = int(greedy.solver.get("not_reached", 0))  # type: ignore[call-overload]
    facts: dict[str, object] = {
        "greedy_gpu_hours": greedy.gpu_hours,
        "greedy_seconds": time.perf_counter() - t0,
        "deadline_hit": not_reached > 0,
        "not_reached": not_reached,
        "blocks": 0,
        "improved": 0,
        "skipped": 0,
        "columns": 0,
        "statuses": {},
        "solve_seconds": 0.0,
    }
    pairs = greedy.pairs_considered

    # 2–3. Blocks under the shared deadline.
    reach: dict[str, frozenset[int]] = {}
    t1 = time.perf_counter()
    if t1 < finish and not not_reached:
        users: dict[str, list[DemandSnap]] = {}  # voucher id → its demands, priority order
        for d in demands:
            if d.voucher is not None:
                users.setdefault(d.voucher.id, []).append(d)
        reach = _improve_blocks(
            demands, offers, greedy_offers, pick, latency, settings, finish, facts, users
        )
    facts["blocks_seconds"] = time.perf_counter() - t1
    pairs += int(facts.pop("candidate_pairs", 0))  # type: ignore[call-overload]

    # Apply: greedy's timelines, less the greedy bookings a block replaced, plus the blocks'
    # bookings; vouchers drawn in demand order, as greedy does.
    for o, g in zip(offers, greedy_offers, strict=True):
        o.used[:] = g.used
    for m in greedy.matches:
        if pick.get(m.demand_id) is not m:
            d, o = demand_of[m.demand_id], by_id[m.offer_id]
            for h in range(m.start - o.start, m.start - o.start + d.duration):
                o.used[h] -= d.gpu_count
    for booking in pick.values():
        if isinstance(booking, Candidate):
            booking.offer.take(booking.demand.gpu_count, booking.start, booking.demand.duration)
    result = Result([], {}, pairs, "optimal", facts)
    for d in demands:
        p = pick.get(d.id)
        if p is None:
            continue
        if isinstance(p, Candidate):
            offer, tier = p.offer, TIERS[p.rank]
        else:
            offer, tier = by_id[p.offer_id], p.tier
        vpart = voucher_part_of(p.bill, d.voucher, offer, d.buyer, d.related)
        if d.voucher is not None and vpart:
            d.voucher.available -= vpart
        if isinstance(p, Match) and p.voucher_part == vpart:
            result.matches.append(p)
        else:
            result.matches.append(Match(d.id, offer.id, p.start, tier, p.bill, vpart))
        result.served[d.id] = d.gpu_count * d.duration

    # 4. Fill what still fits; the reason of the rest. Greedy's reason stands for a demand it
    # left unserved (it walked every bucket: capacity does not change the first blocker); a
    # demand a block dropped is walked whatever the time (few: blocks only drop what they
    # replace with more GPU-hours); a demand greedy did not reach stays out.
    t1 = time.perf_counter()
    after: OfferIndex | None = None
    filled = 0
    for d in demands:
        if d.id in result.served:
            continue
        known = greedy.unserved.get(d.id)
        dropped = d.id in greedy.served
        late = time.perf_counter() >= deadline
        if known is not None and (late or not reach.get(d.id)):
            result.unserved[d.id] = known
            continue
        if not dropped and (late or known is None):
            continue  # not reached by greedy
        if after is None:
            after = OfferIndex(offers, latency)
        match, reason, considered = best_pair(d, after)
        result.pairs_considered += considered
        if match is None:
            result.unserved[d.id] = reason
            continue
        after.take(after.by_id[match.offer_id], d.gpu_count, match.start, d.duration)
        if d.voucher is not None and match.voucher_part:
            d.voucher.available -= match.voucher_part
        result.matches.append(match)
        result.served[d.id] = d.gpu_count * d.duration
        filled += 1
    if time.perf_counter() >= deadline:
        facts["deadline_hit"] = True
    facts["filled"] = filled
    facts["fill_seconds"] = time.perf_counter() - t1
    facts["gpu_hours"] = result.gpu_hours
    facts["seconds"] = time.perf_counter() - t0
    return result


def _improve_blocks(
    demands: list[DemandSnap],
    offers: list[OfferSnap],
    greedy_offers: list[OfferSnap],
    pick: dict[str, Candidate | Match],
    latency: Mapping[tuple[str, str], float],
    settings: OptimalSettings,
    finish: float,
    facts: dict[str, object],
    users: Mapping[str, list[DemandSnap]],
) -> dict[str, frozenset[int]]:
    """Steps 2–3 of the module doc: decompose, then re-optimise block by block until
    ``finish``, updating ``pick`` (demand id → booking) in place and the counters in ``facts``.
    Rounds: when a round has solved all its blocks and served more GPU-hours, the next round
    doubles the block size (other boundaries, larger neighbourhoods), up to whole components.
    ``greedy_offers`` are the offers as greedy left them (idle capacity ranks the blocks).
    Returns each demand's usable bucket numbers."""
    t1 = time.perf_counter()
    try:
        components, reach = _components(demands, offers, latency, finish)
    except _Deadline:
        facts["deadline_hit"] = True
        return {}
    finally:
        facts["decompose_seconds"] = time.perf_counter() - t1
    demand_of = {d.id: d for d in demands}
    by_id = {o.id: o for o in offers}
    waiting = [[d for d in comp.demands if d.id not in pick] for comp in components]
    # Most promising first: the GPU-hours greedy left idle on a block's offers inside the span
    # of the windows of its component's unserved demands (ties: decomposition order).
    after_greedy = {o.id: o for o in greedy_offers}
    spans = [(min(d.start for d in w), max(d.end for d in w)) if w else (0, 0) for w in waiting]

    def idle(block: _Block) -> int:
        lo, hi = spans[block.component]
        total = 0
        for o in block.offers:
            a, b = max(lo, o.start), min(hi, o.end)
            if a < b:
                used = after_greedy[o.id].used
                total += o.gpu_count * (b - a) - sum(used[a - o.start : b - o.start])
        return total

    on_offer: dict[str, set[str]] = {}
    for demand_id, p in pick.items():
        on_offer.setdefault(_offer_id(p), set()).add(demand_id)
    statuses: dict[str, int] = {}
    facts["statuses"] = statuses
    total = improved = columns = pairs = rounds = 0
    solve_seconds = 0.0
    size = settings.block_demands

    def hours(demand_id: str) -> int:
        d = demand_of[demand_id]
        return d.gpu_count * d.duration

    served = sum(hours(demand_id) for demand_id in pick)
    while True:
        served_before = served
        rounds += 1
        blocks = _blocks(components, pick, size)
        blocks = [b for _, _, b in sorted((-idle(b), i, b) for i, b in enumerate(blocks))]
        total += len(blocks)
        better = 0
        for i, block in enumerate(blocks):
            now = time.perf_counter()
            if now >= finish:
                facts["deadline_hit"] = True
                facts["skipped"] = len(blocks) - i
                break
            # an equal share of the time left, but never less than ``block_seconds``: when time
            # is short, fewer blocks are solved properly rather than all of them cut short
            share = now + max((finish - now) / (len(blocks) - i), settings.block_seconds)
            members = [d for o in block.offers for d in sorted(on_offer.get(o.id, ()))]
            extra: list[DemandSnap] = []
            for d in waiting[block.component]:
                if len(members) + len(extra) >= size:
                    break
                if not reach[d.id].isdisjoint(block.buckets):
                    extra.append(d)
            block_demands = sorted([demand_of[d] for d in members] + extra, key=_priority)
            try:
                chosen, block_facts = _improve(
                    block_demands,
                    block.offers,
                    pick,
                    by_id,
                    latency,
                    settings,
                    share,
                    finish,
                    users,
                )
            except _Deadline:
                facts["deadline_hit"] = True
                facts["skipped"] = len(blocks) - i
                break
            pairs += int(block_facts["candidate_pairs"])  # type: ignore[call-overload]
            columns += int(block_facts["columns"])  # type: ignore[call-overload]
            solve_seconds += float(block_facts.get("solve_seconds", 0.0))  # type: ignore[arg-type]
            status = str(block_facts.get("status", "no columns"))
            statuses[status] = statuses.get(status, 0) + 1
            if status == "Time limit reached":
                facts["deadline_hit"] = True  # the block's share of the clock cut it
            if chosen is None:
                continue
            better += 1
            dropped = []
            for d in block_demands:
                old = pick.pop(d.id, None)
                if old is not None:
                    on_offer[_offer_id(old)].discard(d.id)
                    dropped.append(d)
                    served -= hours(d.id)
            for c in chosen:
                pick[c.demand.id] = c
                on_offer.setdefault(c.offer.id, set()).add(c.demand.id)
                served += hours(c.demand.id)
            waiting[block.component] = sorted(
                [d for d in waiting[block.component] + dropped if d.id not in pick],
                key=_priority,
            )
        improved += better
        if facts["skipped"] or served <= served_before or all(b.whole for b in blocks):
            break
        size *= 2
    facts.update(
        rounds=rounds, blocks=total, improved=improved, columns=columns, candidate_pairs=pairs
    )
    facts["solve_seconds"] = solve_seconds
    return reach


def _improve(
    demands: list[DemandSnap],
    offers: list[OfferSnap],
    pick: Mapping[str, Candidate | Match],
    by_id: Mapping[str, OfferSnap],
    latency: Mapping[tuple[str, str], float],
    settings: OptimalSettings,
    share: float,
    finish: float,
    users: Mapping[str, list[DemandSnap]],
) -> tuple[list[Candidate] | None, dict[str, object]]:
    """Re-optimise one block: ``demands`` on ``offers`` (their bookings freed, all others
    fixed). Returns the block's new bookings when strictly ahead of the incumbent's there in the
    policy's order (``_standing``: GPU-hours, tier, exact cash after vouchers — ``users`` maps
    each voucher id to its demands in priority order —, latency, start, fit), else ``None``,
    and the solver facts. Raises ``_Deadline`` when ``finish`` passes while the model is being
    built."""
    index = OfferIndex(offers, latency)
    columns: list[Candidate] = []
    incumbent: list[int] = []
    pairs = 0
    keep = settings.candidates_per_demand
    for i, d in enumerate(demands):
        if i % 32 == 0 and time.perf_counter() >= finish:
            raise _Deadline
        cands, considered = demand_candidates(d, index, keep)
        pairs += considered
        current = pick.get(d.id)
        if isinstance(current, Match):
            current = _forced(d, by_id[current.offer_id], current.start, current.tier, latency)
        if current is not None:
            at = next(
                (
                    k
                    for k, c in enumerate(cands)
                    if (c.offer.id, c.start) == (current.offer.id, current.start)
                ),
                None,
            )
            if at is None:
                cands.append(current)
                at = len(cands) - 1
            incumbent.append(len(columns) + at)
        columns += cands
    facts: dict[str, object] = {"columns": len(columns), "candidate_pairs": pairs}
    if not columns:
        return None, facts
    chosen, solve_facts = _solve(columns, demands, settings, incumbent, share, finish)
    facts.update(solve_facts)
    if chosen is None or not _feasible(chosen):
        return None, facts
    cash = _Cash(users, pick, by_id, demands)
    chosen = _polish(chosen, columns, demands, cash, finish)
    before = _standing(demands, {columns[j].demand.id: columns[j] for j in incumbent}, cash)
    after = _standing(demands, {c.demand.id: c for c in chosen}, cash)
    if not after < before or not _feasible(chosen):
        # the weights only approximate the order: the solver's answer is not ahead in it
        facts["behind_incumbent"] = True
        return None, facts
    return chosen, facts


# The most demands of one voucher in a cycle whose cash is compared exactly (see ``_Cash``).
EXACT_VOUCHER_DEMANDS = 64


class _Cash:
    """The cash buyers pay (bill less the voucher's part, CNY) for one block's bookings, with
    vouchers drawn exactly as the answer is applied: in demand priority order, each voucher's
    ``available`` shared by all its demands, those outside the block (booked in ``pick``)
    included. ``users``: voucher id → its demands in priority order."""

    def __init__(
        self,
        users: Mapping[str, list[DemandSnap]],
        pick: Mapping[str, Candidate | Match],
        by_id: Mapping[str, OfferSnap],
        block: Sequence[DemandSnap],
    ) -> None:
        self.users, self.pick, self.by_id = users, pick, by_id
        self.block = {d.id for d in block}
        self.in_block: dict[str, list[DemandSnap]] = {}  # voucher id → its block demands
        for d in block:
            if d.voucher is not None:
                self.in_block.setdefault(d.voucher.id, []).append(d)

    def exact(self, voucher_id: str) -> bool:
        """Whether the voucher's draws are followed demand by demand (see ``voucher``)."""
        return len(self.users[voucher_id]) <= EXACT_VOUCHER_DEMANDS

    def voucher(self, voucher_id: str, cols: Mapping[str, Candidate]) -> Decimal:
        """Cash paid by every demand of the voucher, block demands booked as in ``cols``.
        A voucher of more than ``EXACT_VOUCHER_DEMANDS`` demands in the cycle: cash of the
        block's demands only, each pair's part as if it alone drew on the voucher (the
        solver's own costing; walking every demand of the voucher at each comparison would
        cost O(its demands) each time)."""
        total = Decimal("0.00")
        if not self.exact(voucher_id):
            for d in self.in_block[voucher_id]:
                c = cols.get(d.id)
                if c is not None:
                    total += c.cost
            return total
        left: Decimal | None = None
        for d in self.users[voucher_id]:
            p = cols.get(d.id) if d.id in self.block else self.pick.get(d.id)
            if p is None or d.voucher is None:
                continue
            offer = p.offer if isinstance(p, Candidate) else self.by_id[p.offer_id]
            available = d.voucher.available if left is None else left
            part = voucher_part_of(p.bill, d.voucher, offer, d.buyer, d.related, available)
            left = available - part
            total += p.bill - part
        return total


def _standing(
    demands: Sequence[DemandSnap], cols: Mapping[str, Candidate], cash: _Cash
) -> tuple[int, int, Decimal, float, int, int]:
    """A block's bookings ``cols`` (demand id → column) in the policy's order, smaller is
    better: GPU-hours served (negated), then the sum of tier ranks, the buyers' cash after
    vouchers (exact, ``_Cash``), hub latency, hours of delay past each window's start, and
    the GPUs left as slivers."""
    served = ranks = delay = slivers = 0
    latency = 0.0
    paid = Decimal("0.00")
    vouchers: set[str] = set()
    for d in demands:
        if d.voucher is not None:
            vouchers.add(d.voucher.id)
        c = cols.get(d.id)
        if c is None:
            continue
        served += d.gpu_count * d.duration
        ranks += c.rank
        latency += c.distance
        delay += c.start - d.start
        slivers += c.leftover
        if d.voucher is None:
            paid += c.bill
    for voucher_id in sorted(vouchers):
        paid += cash.voucher(voucher_id, cols)
    return (-served, ranks, paid, round(latency, 6), delay, slivers)


def _fits_instead(alt: Candidate, c: Candidate, load: Mapping[tuple[str, int], int]) -> bool:
    """Whether the demand booked as ``c`` fits as ``alt`` instead, beside the other bookings
    behind ``load`` (GPUs booked per (offer id, hour), ``c`` included)."""
    gpus, own = c.demand.gpu_count, c.offer.id == alt.offer.id
    for h in range(alt.start, alt.start + c.demand.duration):
        mine = gpus if own and c.start <= h < c.start + c.demand.duration else 0
        if load.get((alt.offer.id, h), 0) - mine + gpus > alt.offer.free_at(h):
            return False
    return True


def _polish(
    chosen: list[Candidate],
    columns: list[Candidate],
    demands: Sequence[DemandSnap],
    cash: _Cash,
    finish: float,
) -> list[Candidate]:
    """Move each booked demand of the block, in priority order, to the first of its other
    columns that still fits beside the rest of ``chosen`` and is ahead in ``_standing``'s order
    (same GPU-hours: nearer tier, less cash after vouchers, lower latency, earlier start,
    tighter fit): the solver weighs these terms, the policy orders them. Stops moving once
    ``finish`` (``time.perf_counter()``) has passed. Returns the bookings in priority order."""
    alternatives: dict[str, list[Candidate]] = {}
    for c in columns:
        alternatives.setdefault(c.demand.id, []).append(c)
    current = {c.demand.id: c for c in chosen}
    load: dict[tuple[str, int], int] = {}
    for c in chosen:
        for h in range(c.start, c.start + c.demand.duration):
            load[c.offer.id, h] = load.get((c.offer.id, h), 0) + c.demand.gpu_count
    for i, d in enumerate(demands):
        if i % 32 == 0 and time.perf_counter() >= finish:
            break
        booked = current.get(d.id)
        if booked is None:
            continue
        c = booked
        for alt in sorted(alternatives[d.id], key=Candidate.key):
            if alt.key() >= c.key():
                break
            if not _fits_instead(alt, c, load):
                continue
            if d.voucher is None or not cash.exact(d.voucher.id):
                paid = alt.cost - c.cost
            else:
                before = cash.voucher(d.voucher.id, current)
                current[d.id] = alt
                paid = cash.voucher(d.voucher.id, current) - before
                current[d.id] = c
            change = (
                alt.rank - c.rank,
                paid,
                round(alt.distance - c.distance, 6),
                alt.start - c.start,
                alt.leftover - c.leftover,
            )
            if change >= (0, Decimal("0"), 0.0, 0, 0):
                continue
            for h in range(c.start, c.start + d.duration):
                load[c.offer.id, h] -= d.gpu_count
            for h in range(alt.start, alt.start + d.duration):
                load[alt.offer.id, h] = load.get((alt.offer.id, h), 0) + d.gpu_count
            current[d.id] = alt
            break
    return [current[d.id] for d in demands if d.id in current]


def _feasible(chosen: list[Candidate]) -> bool:
    """Re-check the solver's answer hour by hour against the free timelines."""
    load: dict[tuple[str, int], int] = {}
    free: dict[str, OfferSnap] = {}
    seen: set[str] = set()
    for c in chosen:
        if c.demand.id in seen:
            return False
        seen.add(c.demand.id)
        free[c.offer.id] = c.offer
        for h in range(c.start, c.start + c.demand.duration):
            key = (c.offer.id, h)
            load[key] = load.get(key, 0) + c.demand.gpu_count
    return all(n <= free[o].free_at(h) for (o, h), n in load.items())


def _solve(
    columns: list[Candidate],
    demands: Sequence[DemandSnap],
    settings: OptimalSettings,
    incumbent: list[int],
    share: float,
    finish: float,
) -> tuple[list[Candidate] | None, dict[str, object]]:
    """Build and solve one block's programme; the answer when strictly better than the
    incumbent columns ``incumbent`` in the objective, else ``None``."""
    n = len(columns)
    demand_row = {d.id: i for i, d in enumerate(demands)}
    # Capacity event points per offer: candidate starts and hours where free capacity drops.
    by_offer: dict[str, list[int]] = {}
    for j, c in enumerate(columns):
        by_offer.setdefault(c.offer.id, []).append(j)
    rows_of: list[list[int]] = [[demand_row[c.demand.id]] for c in columns]
    row_upper: list[float] = [1.0] * len(demands)
    for count, offer_cols in enumerate(by_offer.values()):
        if count % 64 == 0 and time.perf_counter() >= finish:
            raise _Deadline
        offer = columns[offer_cols[0]].offer
        lo = min(columns[j].start for j in offer_cols)
        hi = max(columns[j].start + columns[j].demand.duration for j in offer_cols)
        points = {columns[j].start for j in offer_cols}
        # columns lie inside the offer's window: [lo, hi) ⊆ [offer.start, offer.end)
        used = np.asarray(offer.used[lo - offer.start : hi - offer.start])
        points.update((lo + 1 + np.flatnonzero(used[1:] > used[:-1])).tolist())
        ordered = sorted(points)
        covering: list[list[int]] = [[] for _ in ordered]
        for j in offer_cols:
            c = columns[j]
            a = bisect.bisect_left(ordered, c.start)
            b = bisect.bisect_left(ordered, c.start + c.demand.duration)
            for k in range(a, b):
                covering[k].append(j)
        for k, hour in enumerate(ordered):
            cols = covering[k]
            cap = offer.free_at(hour)
            if sum(columns[j].demand.gpu_count for j in cols) <= cap:
                continue  # can never bind
            row = len(row_upper)
            row_upper.append(float(cap))
            for j in cols:
                rows_of[j].append(row)

    # Objective (minimise): −GPU-hours + secondary terms worth < 1 GPU-hour in total.
    max_cost = float(max(c.cost for c in columns)) or 1.0
    max_distance = max(c.distance for c in columns) or 1.0
    budget = 1.0 / (len(demands) + 1)
    cost = np.empty(n)
    for j, c in enumerate(columns):
        gpus = c.demand.gpu_count
        # per demand: nearer tier dominates (docking: outward only when it serves more), then
        # cost, … (summed over demands the later terms can outweigh one tier step; module doc)
        # (an earlier start outweighs a tighter fit: the replay showed optimal delaying
        # jobs by up to the whole look-ahead for a tighter fit, bench/replay.py)
        secondary = (
            0.75 * c.rank / 3
            + 0.16 * float(c.cost) / max_cost
            + 0.03 * c.distance / max_distance
            + 0.04 * (c.start - c.demand.start) / max(1, c.demand.end - c.demand.start)
            + 0.02 * c.leftover / max(1, c.offer.gpu_count)
        )
        cost[j] = -gpus * c.demand.duration + budget * secondary

    starts = np.zeros(n + 1, dtype=np.int32)
    index: list[int] = []
    for j, rows in enumerate(rows_of):
        rows.sort()
        index += rows
        starts[j + 1] = len(index)
    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = len(row_upper)
    lp.col_cost_ = cost
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)
    lp.row_lower_ = np.full(len(row_upper), -highspy.kHighsInf)
    lp.row_upper_ = np.array(row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = starts
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    values = np.ones(len(index))
    for j in range(n):
        # the first entry of a column is its demand row (rows are numbered demands first)
        values[starts[j] + 1 : starts[j + 1]] = columns[j].demand.gpu_count
    lp.a_matrix_.value_ = values
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n

    left = min(share, finish) - time.perf_counter()
    if left <= 0:
        left = min(0.05, finish - time.perf_counter())
        if left <= 0:
            raise _Deadline
    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    # HiGHS checks its clock coarsely (presolve, root LP): give it a margin of the time left
    highs.setOptionValue("time_limit", 0.8 * left)
    highs.setOptionValue("mip_max_nodes", int(settings.node_limit))
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.setOptionValue("mip_abs_gap", budget * 1e-2)
    highs.passModel(lp)
    start_x = np.zeros(n)
    start_x[incumbent] = 1.0
    incumbent_value = float(cost @ start_x)
    if incumbent:
        start = highspy.HighsSolution()
        start.col_value = list(start_x)
        start.value_valid = True
        highs.setSolution(start)
    t0 = time.perf_counter()
    highs.run()
    status = highs.getModelStatus()
    info = highs.getInfo()
    facts: dict[str, object] = {
        "status": highs.modelStatusToString(status),
        "rows": len(row_upper),
        "nonzeros": len(index),
        "solve_seconds": time.perf_counter() - t0,
    }
    if info.primal_solution_status != highspy.kSolutionStatusFeasible:
        return None, facts
    x = np.asarray(highs.getSolution().col_value) > 0.5
    # strictly better than the incumbent, judged on the rounded answer (tolerance: a fraction
    # of the smallest weight step, so ties keep the incumbent — deterministic)
    if float(cost[x].sum()) >= incumbent_value - budget * 1e-6:
        return None, facts
    return [columns[j] for j in np.flatnonzero(x)], facts
