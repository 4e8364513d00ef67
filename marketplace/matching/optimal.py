"""Policy ``optimal``: batch clearing as a mixed-integer programme solved by HiGHS (PRODUCT.md §4).

Plain data in, plain data out (the snapshot types of ``engine``), no ORM.

Model. A column ``x[d, o, s] ∈ {0, 1}`` books the whole demand ``d`` (gang: all its GPUs on one
offer, hence one site — co-location) on offer ``o`` over hours ``[s, s + duration)``. Candidate
starts per feasible pair are the earliest and the latest start that fit the offer's free timeline
inside both windows (packing against existing bookings at either end, so gaps are not cut in
the middle), plus the greedy policy's own choice. Per demand, only the ``candidates_per_demand``
best offers by (tier, cost after voucher, hub latency, leftover) are kept, always including the
greedy choice: the programme stays sparse (no dense demand × offer matrix).

* one row per demand: ``Σ x ≤ 1``;
* capacity rows per offer at every candidate start and every hour where free capacity drops:
  booked GPUs ≤ free GPUs (the load of half-open intervals peaks at a start, or where free
  capacity falls); rows that can never bind are left out.

Objective (lexicographic by weights): maximise served GPU-hours; then, within a budget smaller
than one GPU-hour in total, per demand: the nearer locality tier (a step of one tier outweighs
every later term, so hub docking moves a demand outward only when that serves more GPU-hours),
then the buyer's cost after the voucher, hub latency, the sliver of GPUs the placement leaves
free on the offer (anti-fragmentation: a tight fit keeps larger blocks whole elsewhere), and
an earlier start.

Solving. The greedy result is computed first, passed to HiGHS as the starting solution, and is
the fallback when the solver finds nothing better in its limits or fails. Limits: a node limit
(deterministic) and a wall-clock ``time_limit`` (a setting, seconds). A solve that finishes
inside the node limit is deterministic for the same snapshot (one thread, fixed seed); the
solver facts (status, gap, columns, rows) are returned in ``Result.solver``.

Vouchers: the cost of a pair uses the voucher's part as if this pair alone drew on it; the final
parts are recomputed in demand order after solving, exactly like ``greedy`` does.
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
    """Solver limits. ``time_limit`` in seconds (wall clock); ``node_limit`` branch-and-bound
    nodes; ``candidates_per_demand`` offers kept per demand (besides the greedy choice)."""

    time_limit: float = 10.0
    node_limit: int = 5000
    candidates_per_demand: int = 8
    relax: bool = False  # solve the LP relaxation only (benchmarks: the upper bound)


@dataclass
class Candidate:
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
        return self.bill - self.voucher_part

    def key(self) -> tuple[int, Decimal, float, int, int, int, str]:
        return (
            self.rank,
            self.cost,
            self.distance,
            self.leftover,
            self.start,
            self.offer.listed,
            self.offer.id,
        )


def demand_candidates(
    demand: DemandSnap, index: OfferIndex, keep: int
) -> tuple[list[Candidate], str, int]:
    """Up to ``keep`` feasible offers of ``demand``, each with its earliest and latest start:
    nearest tier first, then cheapest bucket, then earliest start (the greedy walk of
    ``engine.best_pair``, not stopping at the first fit). Returns ``(candidates, first blocking
    reason if none, offers looked at)``; the rules and their order are those of ``greedy``."""
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
    if found:
        return found, "", evaluated
    _, reason, more = best_pair(demand, index)
    return [], reason, evaluated + more


def _forced(
    demand: DemandSnap,
    offer: OfferSnap,
    start: int,
    tier: str,
    latency: Mapping[tuple[str, str], float],
) -> Candidate:
    """The greedy choice as a column (kept feasible for the solver's starting point)."""
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


def solve_optimal(
    demands: Sequence[DemandSnap],
    offers: Sequence[OfferSnap],
    latency: Mapping[tuple[str, str], float] | None = None,
    settings: OptimalSettings | None = None,
) -> Result:
    """Run one ``optimal`` cycle (see the module doc). ``offers`` timelines are updated in place
    with the chosen bookings, and vouchers' ``available`` reduced, as ``solve_greedy`` does.

    Never serves fewer GPU-hours than ``greedy`` on the same snapshot: the greedy solution is
    feasible in the programme, is its starting point, and is returned when the solver's answer
    is not better (``Result.solver["fallback"]`` then says why)."""
    settings = settings or OptimalSettings()
    latency = latency or {}
    t0 = time.perf_counter()
    deadline = t0 + settings.time_limit
    demands = sorted(demands, key=lambda d: (-d.max_price, d.posted, d.id))
    offers = sorted(offers, key=lambda o: (o.listed, o.id))

    # The greedy answer on copies: starting point and fallback.
    greedy_demands, greedy_offers = snapshot_copy(demands, offers)
    greedy = solve_greedy(greedy_demands, greedy_offers, latency=latency)
    greedy_pick = {m.demand_id: (m.offer_id, m.start) for m in greedy.matches}
    greedy_tier = {m.demand_id: m.tier for m in greedy.matches}

    index = OfferIndex(offers, latency)
    columns: list[Candidate] = []
    unserved: dict[str, str] = {}
    pairs = 0
    over_time = False
    for i, demand in enumerate(demands):
        if i % 128 == 0 and time.perf_counter() > deadline:
            over_time = True
            break
        cands, reason, considered = demand_candidates(demand, index, settings.candidates_per_demand)
        pairs += considered
        if not cands:
            unserved[demand.id] = reason
            continue
        forced = greedy_pick.get(demand.id)
        if forced is not None and not any((c.offer.id, c.start) == forced for c in cands):
            offer = index.by_id[forced[0]]
            cands.append(_forced(demand, offer, forced[1], greedy_tier[demand.id], latency))
        columns += cands

    facts: dict[str, object] = {"columns": len(columns), "candidate_pairs": pairs}
    chosen: list[Candidate] | None = None
    if over_time:
        facts["fallback"] = "time limit reached while building the model"
    elif columns:
        chosen, solve_facts = _solve(columns, demands, settings, greedy_pick, deadline)
        facts.update(solve_facts)
    if settings.relax:
        facts["seconds"] = time.perf_counter() - t0
        return Result([], unserved, pairs, "optimal", facts)

    greedy_hours = greedy.gpu_hours
    if chosen is None:
        facts.setdefault("fallback", "no solution")
    elif not _feasible(chosen):
        facts["fallback"] = "solution over capacity"
        chosen = None
    elif sum(c.demand.gpu_count * c.demand.duration for c in chosen) < greedy_hours:
        facts["fallback"] = "greedy serves more"
        chosen = None

    result = Result([], {}, pairs, "optimal", facts)
    by_id = {o.id: o for o in offers}
    if chosen is None:
        demand_of = {d.id: d for d in demands}
        for m in greedy.matches:
            chosen_offer = by_id[m.offer_id]
            demand = demand_of[m.demand_id]
            chosen_offer.take(demand.gpu_count, m.start, demand.duration)
            if demand.voucher is not None and m.voucher_part:
                demand.voucher.available -= m.voucher_part
        result.matches = list(greedy.matches)
        result.served = dict(greedy.served)
    else:
        order = {d.id: i for i, d in enumerate(demands)}
        for c in sorted(chosen, key=lambda c: order[c.demand.id]):
            d, o = c.demand, c.offer
            o.take(d.gpu_count, c.start, d.duration)
            vpart = voucher_part_of(c.bill, d.voucher, o, d.buyer, d.related)
            if d.voucher is not None and vpart:
                d.voucher.available -= vpart
            result.matches.append(Match(d.id, o.id, c.start, TIERS[c.rank], c.bill, vpart))
            result.served[d.id] = d.gpu_count * d.duration
    # Why the rest is unserved: the same rule walk, on the timelines after the bookings.
    served = set(result.served)
    after = OfferIndex(offers, latency)
    for demand in demands:
        if demand.id in served:
            continue
        if demand.id in unserved:
            result.unserved[demand.id] = unserved[demand.id]
        else:
            _, reason, _ = best_pair(demand, after)
            result.unserved[demand.id] = reason or "no_free_window"
    facts["greedy_gpu_hours"] = greedy_hours
    facts["seconds"] = time.perf_counter() - t0
    return result


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
    greedy_pick: Mapping[str, tuple[str, int]],
    deadline: float,
) -> tuple[list[Candidate] | None, dict[str, object]]:
    n = len(columns)
    demand_row = {d.id: i for i, d in enumerate(demands)}
    # Capacity event points per offer: candidate starts and hours where free capacity drops.
    by_offer: dict[str, list[int]] = {}
    for j, c in enumerate(columns):
        by_offer.setdefault(c.offer.id, []).append(j)
    rows_of: list[list[int]] = [[demand_row[c.demand.id]] for c in columns]
    row_upper: list[float] = [1.0] * len(demands)
    for offer_cols in by_offer.values():
        offer = columns[offer_cols[0]].offer
        lo = min(columns[j].start for j in offer_cols)
        hi = max(columns[j].start + columns[j].demand.duration for j in offer_cols)
        points = {columns[j].start for j in offer_cols}
        prev = offer.free_at(lo)
        for h in range(lo + 1, hi):
            cur = offer.free_at(h)
            if cur < prev:
                points.add(h)
            prev = cur
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
        # nearer tier dominates (docking: outward only when it serves more), then cost, …
        secondary = (
            0.75 * c.rank / 3
            + 0.16 * float(c.cost) / max_cost
            + 0.03 * c.distance / max_distance
            + 0.04 * c.leftover / max(1, c.offer.gpu_count)
            + 0.02 * (c.start - c.demand.start) / max(1, c.demand.end - c.demand.start)
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
    if not settings.relax:
        lp.integrality_ = [highspy.HighsVarType.kInteger] * n

    highs = highspy.Highs()
    highs.setOptionValue("output_flag", False)
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("random_seed", 0)
    left = deadline - time.perf_counter()
    if left <= 0:
        return None, {"fallback": "time limit reached while building the model"}
    # HiGHS checks its clock coarsely (presolve, root LP): give it a margin of the time left
    highs.setOptionValue("time_limit", 0.6 * left)
    highs.setOptionValue("mip_max_nodes", int(settings.node_limit))
    highs.setOptionValue("mip_rel_gap", 0.0)
    highs.setOptionValue("mip_abs_gap", budget * 1e-5)
    lp.a_matrix_.value_ = values
    highs.passModel(lp)
    if not settings.relax and greedy_pick:
        start = highspy.HighsSolution()
        start.col_value = [
            1.0 if greedy_pick.get(c.demand.id) == (c.offer.id, c.start) else 0.0 for c in columns
        ]
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
        "objective": info.objective_function_value,
    }
    if settings.relax:
        facts["lp_bound_gpu_hours"] = -info.objective_function_value
        return None, facts
    facts["mip_gap"] = info.mip_gap
    facts["mip_bound_gpu_hours"] = -info.mip_dual_bound
    if info.primal_solution_status != highspy.kSolutionStatusFeasible:
        facts["fallback"] = "solver found no solution"
        return None, facts
    x = highs.getSolution().col_value
    return [columns[j] for j in range(n) if x[j] > 0.5], facts
