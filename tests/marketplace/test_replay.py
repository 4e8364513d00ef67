"""``bench/replay.py`` on a tiny slice of the trace (so the replay cannot rot), and its
first-come-first-fit baseline on hand-made offers. No database."""

import importlib
import math
import sys
from decimal import Decimal
from pathlib import Path

from marketplace.matching.engine import DemandSnap, OfferSnap, SiteRef

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
replay = importlib.import_module("replay")

CHENGDU = SiteRef("s-cd", "Chengdu", "Chengdu", "cc")


def offer(id: str, gpus: int, listed: int, used: list[int] | None = None) -> OfferSnap:
    return OfferSnap(
        id=id,
        provider="p1",
        model="T4",
        site=CHENGDU,
        price=Decimal("10"),
        gpu_count=gpus,
        start=0,
        end=8,
        listed=listed,
        used=used or [],
    )


def demand(id: str, gpus: int, posted: int, price: str = "20") -> DemandSnap:
    return DemandSnap(
        id=id,
        buyer="b1",
        related=frozenset(),
        models=frozenset({"T4"}),
        gpu_count=gpus,
        duration=2,
        start=0,
        end=8,
        max_price=Decimal(price),
        origin=CHENGDU,
        limit="city",
        posted=posted,
    )


def test_fcfs_serves_arrival_order_at_the_earliest_hour_on_the_first_offer_with_room():
    # given a 4-GPU offer listed first but busy in hours [0, 3) and a 2-GPU offer free now
    offers = [offer("busy", 4, 0, used=[4, 4, 4, 0, 0, 0, 0, 0]), offer("free", 2, 1)]
    # and a later, better-paying demand for the same GPUs
    demands = [demand("late-rich", 2, posted=2, price="30"), demand("early", 2, posted=1)]
    placed = replay.first_come_first_fit(demands, offers)
    # then the earlier arrival starts now on the offer with room now; the later one waits for
    # the earliest hour any offer has room: hour 2 on "free", before "busy" frees at 3
    assert placed == [("early", "free", 0), ("late-rich", "free", 2)]


def test_fcfs_leaves_a_demand_nothing_can_hold():
    placed = replay.first_come_first_fit([demand("too-big", 8, posted=1)], [offer("o", 4, 0)])
    assert placed == []


def test_replay_of_one_trace_day_on_six_nodes():
    # given the tasks of trace day 120 on a six-node fleet (contended: jobs wait)
    jobs = replay.trace_jobs(days=(120, 121))
    fleet = replay.fleet(6)
    refused = replay.refused_by_rules(jobs, fleet, 12)
    kept = [j for j in jobs if j.demand.id not in refused]
    gpus = {o.id: o.gpu_count for o in fleet}
    by_offer = {o.id: o for o in fleet}
    assert len(fleet) == 6 and 0 < len(kept) < len(jobs)
    for policy, engine in replay.engines(10.0).items():
        # when each policy replays it
        outcome = replay.simulate(policy, engine, kept, fleet)
        stats = replay.summary(outcome, kept, sum(gpus.values()))
        # then every demand is placed or still waiting, none twice
        assert len(outcome.starts) + outcome.waiting_at_end == len(kept)
        assert set(outcome.starts) == set(outcome.placed_on)
        # no GPU is booked twice, no job starts before it arrived, the rules hold
        load: dict[tuple[str, int], int] = {}
        for j in kept:
            start = outcome.starts.get(j.demand.id)
            if start is None:
                continue
            assert start >= j.arrival
            offer_id = outcome.placed_on[j.demand.id]
            assert replay._rules_pass(j.demand, by_offer[offer_id])
            for h in range(start, start + j.demand.duration):
                load[(offer_id, h)] = load.get((offer_id, h), 0) + j.demand.gpu_count
        assert all(n <= gpus[o] for (o, _), n in load.items())
        assert 0 < stats["utilisation"] <= 100
        assert 0 <= stats["p50"] <= stats["p90"] <= stats["p99"]
        assert not math.isnan(stats["price"])
        # and the replay is the same when run again
        again = replay.simulate(policy, engine, kept, fleet)
        assert again.starts == outcome.starts and again.placed_on == outcome.placed_on
