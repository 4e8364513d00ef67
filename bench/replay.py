"""Replay of the Alibaba GPU trace in simulated time against the fleet (engine only, no
database): GPU utilisation and demand waiting time for ``greedy``, ``optimal`` and a naive
first-come-first-fit baseline, printed as a table with the run time of each.

The market (``bench/instances.py``): every GPU node of ``openb_node_list_gpu_node.csv`` is one
offer (its GPUs, its model) dealt round-robin to the nine provider cities at the demo's prices;
every GPU task of ``openb_pod_list_gpuspec33.csv`` is one demand with the demo's rules (GPU
count, acceptable models, run time in whole hours capped at 72, buyer city, limit price and
locality limit from the fixed hash of the task name).

Simulation, in whole UTC-like hours from the trace start:

* a task arrives at ``creation_time / 3600 / compress`` hours (``--compress`` 1 = as recorded);
* every ``--interval`` hours a matching cycle runs on the demands waiting at that moment: each
  may start at any hour in ``[now, now + duration + --lookahead)`` (a booking ahead is a
  reservation); what a cycle does not place waits for the next one, for ever (no expiry);
* a placed job holds its GPUs on its offer for its duration; the offers' timelines carry every
  booking made so far (the snapshot each cycle sees);
* a task no offer could ever take, even on an empty fleet (model, price, locality, minimum
  duration, own offer — the engine's rules), is counted once as "refused by the rules" and left
  out of every policy's figures (the same tasks for all three).

Policies: ``greedy`` and ``optimal`` are the engine's (``optimal`` with ``--time-limit``
seconds per cycle); ``fcfs`` is the baseline written here: demands in arrival order, each at the
earliest hour any offer passing the same rules has room, on the first such offer in listing
order — no price priority, no locality-tier, cost or fit preference, no look at later demands.

Figures per policy: GPU utilisation = GPU-hours booked between the first and the last arrival
÷ (fleet GPUs × those hours); waiting time = start hour − arrival (hours), p50/p90/p99 and mean
over every replayed demand (one still waiting when the simulation stops, ``--drain`` hours after
the last arrival, counts its wait so far: a lower bound); the number still waiting; the
average price paid (CNY per GPU-hour, before vouchers: greedy and optimal trade waiting for a
cheaper offer, PRODUCT.md §4.2);
engine seconds = wall time of the matching cycles.

Run: ``make bench-replay`` (``REPLAY_ARGS='--days 0:30 --policies greedy,fcfs'`` to choose).
"""

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

import numpy as np
from instances import NODES, PODS, SPAN, latency, offers, pod_demand

from marketplace.demo import MAX_HOURS
from marketplace.locality import tier_between, tier_rank
from marketplace.matching.engine import (
    DemandSnap,
    OfferIndex,
    OfferSnap,
    Result,
    best_pair,
    bill_of,
    solve_greedy,
)
from marketplace.matching.optimal import OptimalSettings, solve_optimal

POLICIES = ("fcfs", "greedy", "optimal")


@dataclass(frozen=True)
class Job:
    """One trace task as a demand: ``arrival`` in hours (fractional) since the trace start."""

    demand: DemandSnap
    arrival: float


@dataclass
class Outcome:
    policy: str
    jobs: int
    starts: dict[str, int] = field(default_factory=dict)  # demand id → start hour
    placed_on: dict[str, str] = field(default_factory=dict)  # demand id → offer id
    booked_in_span: int = 0  # GPU-hours between the first and the last arrival
    booked: int = 0  # GPU-hours placed in all
    billed: Decimal = Decimal(0)  # CNY, at the offers' prices
    engine_seconds: float = 0.0
    cycles: int = 0
    waiting_at_end: int = 0
    stopped: int = 0  # the hour the simulation stopped


def trace_jobs(compress: float = 1.0, days: tuple[float, float] | None = None) -> list[Job]:
    """The trace's GPU tasks arriving inside ``days`` (trace days, ``[from, to)``; ``None``: all),
    arrival times divided by ``compress``, in arrival order."""
    jobs = []
    for i, row in enumerate(PODS):
        created = int(row["creation_time"])
        if days is not None and not days[0] * 86400 <= created < days[1] * 86400:
            continue
        jobs.append(Job(pod_demand(i, SPAN / 3600, SPAN), created / 3600 / compress))
    return jobs


def fleet(nodes: int | None = None) -> list[OfferSnap]:
    """One offer per GPU node (``bench/instances.py``); ``nodes`` picks that many evenly
    spread over the node list (the whole fleet by default). Windows are set per cycle."""
    all_offers = offers(len(NODES), 1)
    if nodes is None or nodes >= len(all_offers):
        return all_offers
    return [all_offers[j * len(all_offers) // nodes] for j in range(nodes)]


def _rules_pass(d: DemandSnap, o: OfferSnap) -> bool:
    """Model, price, locality, minimum duration, not one's own offer (the engine's rules)."""
    if o.model not in d.models or o.price > d.max_price or o.min_duration > d.duration:
        return False
    if o.provider == d.buyer or o.provider in d.related:
        return False
    s, c = o.site, d.origin
    return tier_rank(tier_between(c.city, c.metro, c.hub, s.city, s.metro, s.hub)) <= tier_rank(
        d.limit
    )


class Timelines:
    """GPUs booked per offer and hour over the whole simulation (numpy, offers × hours)."""

    def __init__(self, fleet: Sequence[OfferSnap], hours: int) -> None:
        self.fleet = list(fleet)
        self.row = {o.id: k for k, o in enumerate(self.fleet)}
        self.used = np.zeros((len(self.fleet), hours), dtype=np.int16)
        self.gpus = np.array([o.gpu_count for o in self.fleet], dtype=np.int16)
        self.price = {o.id: o.price for o in self.fleet}

    def snapshot(self, now: int, until: int) -> list[OfferSnap]:
        """The offers as a cycle at hour ``now`` sees them: window ``[now, until)``."""
        return [
            replace(o, start=now, end=until, used=self.used[k, now:until].tolist())
            for k, o in enumerate(self.fleet)
        ]

    def book(self, offer_id: str, gpus: int, start: int, duration: int) -> None:
        k = self.row[offer_id]
        self.used[k, start : start + duration] += gpus
        assert self.used[k, start : start + duration].max() <= self.gpus[k], "over capacity"


def first_come_first_fit(
    pending: Sequence[DemandSnap], snapshot: Sequence[OfferSnap]
) -> list[tuple[str, str, int]]:
    """The baseline: ``pending`` in arrival (posting) order, each at the earliest hour of its
    window at which some offer passing the rules has ``gpu_count`` GPUs free for the whole
    duration, on the first such offer in listing order. Returns
    ``(demand id, offer id, start)``; takes the capacity on ``snapshot`` as it goes."""
    if not snapshot:
        return []
    base = snapshot[0].start
    hours = max(o.end for o in snapshot) - base
    free = np.zeros((len(snapshot), hours), dtype=np.int32)
    for k, o in enumerate(snapshot):
        free[k, o.start - base : o.end - base] = o.gpu_count - np.asarray(o.used, dtype=np.int32)
    passing: dict[tuple[object, ...], np.ndarray] = {}
    out = []
    for d in sorted(pending, key=lambda d: (d.posted, d.id)):
        key = (d.models, d.origin, d.limit, d.max_price, d.buyer, d.related, d.duration)
        rows = passing.get(key)
        if rows is None:
            rows = np.array([k for k, o in enumerate(snapshot) if _rules_pass(d, o)], dtype=int)
            passing[key] = rows
        lo, hi = max(d.start, base) - base, min(d.end, base + hours) - base
        if rows.size == 0 or hi - lo < d.duration:
            continue
        ok = free[rows, lo:hi] >= d.gpu_count
        sums = np.zeros((ok.shape[0], ok.shape[1] + 1), dtype=np.int32)
        np.cumsum(ok, axis=1, out=sums[:, 1:])
        fit = (sums[:, d.duration :] - sums[:, : -d.duration]) == d.duration
        when = fit.any(axis=0)
        if not when.any():
            continue
        h = int(when.argmax())  # the earliest hour it can start anywhere …
        i = int(fit[:, h].argmax())  # … on the first offer in listing order with room then
        k = int(rows[i])
        start = lo + h
        free[k, start : start + d.duration] -= d.gpu_count
        out.append((d.id, snapshot[k].id, base + start))
    return out


def refused_by_rules(
    jobs: Sequence[Job], the_fleet: Sequence[OfferSnap], lookahead: int
) -> dict[str, str]:
    """Demand id → the engine's first blocking reason for the tasks no offer could take even
    on an empty fleet (``engine.best_pair`` on empty timelines)."""
    horizon = MAX_HOURS + lookahead + 1
    empty = OfferIndex([replace(o, start=0, end=horizon, used=[]) for o in the_fleet], latency())
    refused = {}
    for job in jobs:
        d = replace(job.demand, start=0, end=job.demand.duration + lookahead)
        match, reason, _ = best_pair(d, empty)
        if match is None:
            refused[d.id] = reason
    return refused


Engine = Callable[[list[DemandSnap], list[OfferSnap]], list[tuple[str, str, int]]]


def engines(time_limit: float) -> dict[str, Engine]:
    lat = latency()

    def matches(result: Result) -> list[tuple[str, str, int]]:
        return [(m.demand_id, m.offer_id, m.start) for m in result.matches]

    return {
        "fcfs": first_come_first_fit,
        "greedy": lambda ds, os_: matches(solve_greedy(ds, os_, latency=lat)),
        "optimal": lambda ds, os_: matches(
            solve_optimal(ds, os_, lat, OptimalSettings(time_limit=time_limit))
        ),
    }


def simulate(
    policy: str,
    engine: Engine,
    jobs: Sequence[Job],
    the_fleet: Sequence[OfferSnap],
    *,
    interval: int = 1,
    lookahead: int = 12,
    drain: int = 7 * 24,
) -> Outcome:
    """Run the matching cycles of one policy over ``jobs`` (arrival order) on ``the_fleet``;
    see the module doc for the rules. Every booking is checked against capacity."""
    outcome = Outcome(policy, len(jobs))
    if not jobs:
        return outcome
    last_arrival = max(j.arrival for j in jobs)
    stop = math.ceil(last_arrival) + drain
    span = (math.floor(min(j.arrival for j in jobs)), math.ceil(last_arrival))
    timelines = Timelines(the_fleet, stop + MAX_HOURS + lookahead + interval + 1)
    arriving = sorted(jobs, key=lambda j: (j.arrival, j.demand.posted))
    waiting: dict[str, Job] = {}
    nxt = 0
    now = 0
    while now <= stop:
        while nxt < len(arriving) and arriving[nxt].arrival <= now:
            waiting[arriving[nxt].demand.id] = arriving[nxt]
            nxt += 1
        if waiting:
            pending = [
                replace(j.demand, start=now, end=now + j.demand.duration + lookahead)
                for j in waiting.values()
            ]
            until = max(d.end for d in pending)
            snapshot = timelines.snapshot(now, until)
            t0 = time.perf_counter()
            placed = engine(pending, snapshot)
            outcome.engine_seconds += time.perf_counter() - t0
            outcome.cycles += 1
            for demand_id, offer_id, start in placed:
                d = waiting.pop(demand_id).demand
                assert now <= start and start + d.duration <= until, "outside the window"
                timelines.book(offer_id, d.gpu_count, start, d.duration)
                outcome.booked += d.gpu_count * d.duration
                outcome.billed += bill_of(d.gpu_count, d.duration, timelines.price[offer_id])
                outcome.starts[demand_id] = start
                outcome.placed_on[demand_id] = offer_id
                outcome.booked_in_span += d.gpu_count * max(
                    0, min(start + d.duration, span[1]) - max(start, span[0])
                )
        elif nxt == len(arriving):
            break
        else:  # idle until the next arrival's cycle
            now = max(now + interval, interval * math.ceil(arriving[nxt].arrival / interval))
            continue
        now += interval
    outcome.waiting_at_end = len(waiting) + len(arriving) - nxt
    outcome.stopped = now
    return outcome


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0–100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(outcome: Outcome, jobs: Sequence[Job], fleet_gpus: int) -> dict[str, float]:
    """Placed and still waiting demands, utilisation (%), waiting hours: percentiles and mean
    over every replayed demand, one never placed counting its wait until the simulation
    stopped (censored: a lower bound, so a policy cannot look better by starving some)."""
    waits = [outcome.starts.get(j.demand.id, outcome.stopped) - j.arrival for j in jobs]
    arrivals = [j.arrival for j in jobs] or [0.0]
    span = max(1, math.ceil(max(arrivals)) - math.floor(min(arrivals)))
    return {
        "placed": len(outcome.starts),
        "waiting_at_end": outcome.waiting_at_end,
        "utilisation": 100 * outcome.booked_in_span / (fleet_gpus * span),
        "p50": percentile(waits, 50),
        "p90": percentile(waits, 90),
        "p99": percentile(waits, 99),
        "mean": sum(waits) / len(waits) if waits else float("nan"),
        "price": float(outcome.billed / outcome.booked) if outcome.booked else float("nan"),
        "engine_seconds": outcome.engine_seconds,
        "cycles": outcome.cycles,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", default="", help="trace days FROM:TO (default: all 149)")
    parser.add_argument("--compress", type=float, default=1.0, help="arrival time ÷ this")
    parser.add_argument("--nodes", type=int, default=None, help="fleet size in nodes (all)")
    parser.add_argument("--interval", type=int, default=1, help="hours between cycles")
    parser.add_argument("--lookahead", type=int, default=12, help="hours a start may wait")
    parser.add_argument("--drain", type=int, default=7 * 24, help="hours after last arrival")
    parser.add_argument("--time-limit", type=float, default=2.0, help="optimal, s per cycle")
    parser.add_argument("--policies", default=",".join(POLICIES))
    args = parser.parse_args(argv)
    days = tuple(float(x) for x in args.days.split(":")) if args.days else None
    t_start = time.perf_counter()
    jobs = trace_jobs(args.compress, days)  # type: ignore[arg-type]
    the_fleet = fleet(args.nodes)
    refused = refused_by_rules(jobs, the_fleet, args.lookahead)
    kept = [j for j in jobs if j.demand.id not in refused]
    fleet_gpus = sum(o.gpu_count for o in the_fleet)
    arrivals = [j.arrival for j in jobs] or [0.0]
    print(
        f"trace: {len(jobs)} GPU tasks arriving over hours {min(arrivals):.0f}–"
        f"{max(arrivals):.0f} ({(max(arrivals) - min(arrivals)) / 24:.1f} days, compress "
        f"×{args.compress:g}); fleet: {len(the_fleet)} nodes, {fleet_gpus} GPUs; cycles every "
        f"{args.interval} h, starts up to {args.lookahead} h ahead"
    )
    print(
        f"refused by the rules on an empty fleet (left out): {len(refused)} "
        f"{dict(sorted(Counter(refused.values()).items()))}; replayed: {len(kept)} demands, "
        f"{sum(j.demand.gpu_count * j.demand.duration for j in kept)} GPU-hours asked"
    )
    print(
        f"{'policy':>8} {'placed':>7} {'waiting':>7} {'util %':>7} {'wait p50 h':>10} "
        f"{'p90 h':>7} {'p99 h':>7} {'mean h':>7} {'CNY/GPU-h':>9} {'cycles':>6} "
        f"{'engine s':>9} {'run s':>7}"
    )
    run = engines(args.time_limit)
    for policy in args.policies.split(","):
        t0 = time.perf_counter()
        outcome = simulate(
            policy,
            run[policy],
            kept,
            the_fleet,
            interval=args.interval,
            lookahead=args.lookahead,
            drain=args.drain,
        )
        s = summary(outcome, kept, fleet_gpus)
        print(
            f"{policy:>8} {s['placed']:>7.0f} {s['waiting_at_end']:>7.0f} "
            f"{s['utilisation']:>7.3f} {s['p50']:>10.2f} {s['p90']:>7.2f} {s['p99']:>7.2f} "
            f"{s['mean']:>7.2f} {s['price']:>9.2f} {s['cycles']:>6.0f} {s['engine_seconds']:>9.1f} "
            f"{time.perf_counter() - t0:>7.1f}",
            flush=True,
        )
    print(f"total run time {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
