"""Policy ``optimal`` on instances built from the Alibaba trace (``bench/instances.py``): never
fewer GPU-hours than ``greedy``, the same answer for the same snapshot, and a valid answer when
the time limit cuts it short. No database."""

import importlib
import sys
from pathlib import Path

import pytest

from marketplace.matching.engine import snapshot_copy, solve_greedy
from marketplace.matching.optimal import OptimalSettings, solve_optimal
from tests.marketplace.test_engine_optimal import check_invariants, picks

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
instances = importlib.import_module("instances")


@pytest.mark.parametrize("n", [200, 600])
def test_optimal_serves_at_least_what_greedy_serves_on_trace_instances(n):
    # given a contended batch from the trace (n demands, n / 5 single-node offers)
    demands, offers = instances.cycle_instance(n)
    lat = instances.latency()
    greedy = solve_greedy(*snapshot_copy(demands, offers), latency=lat)
    # when optimal runs with blocks far smaller than the component (several blocks, rounds)
    settings = OptimalSettings(time_limit=120, block_demands=60)
    optimal = solve_optimal(*snapshot_copy(demands, offers), lat, settings)
    # then it keeps every rule and serves more GPU-hours than greedy (these batches have
    # fragmentation greedy cannot see), block by block
    check_invariants(optimal, demands, offers)
    assert optimal.gpu_hours > greedy.gpu_hours
    assert optimal.solver["greedy_gpu_hours"] == greedy.gpu_hours
    assert int(optimal.solver["blocks"]) > 1  # type: ignore[call-overload]
    assert optimal.solver["not_reached"] == 0


def test_same_trace_snapshot_same_answer():
    demands, offers = instances.cycle_instance(300)
    lat = instances.latency()
    settings = OptimalSettings(time_limit=120, block_demands=60)
    first = solve_optimal(*snapshot_copy(demands, offers), lat, settings)
    second = solve_optimal(*snapshot_copy(demands, offers), lat, settings)
    assert picks(first) == picks(second)
    assert first.unserved == second.unserved
    assert [m.voucher_part for m in first.matches] == [m.voucher_part for m in second.matches]


def test_a_tiny_time_limit_still_gives_a_valid_capacity_respecting_answer():
    # given a batch far larger than 20 ms of work
    demands, offers = instances.cycle_instance(3000)
    d, o = snapshot_copy(demands, offers)
    # when optimal gets 20 ms: wherever the clock stops it (inside greedy, the blocks or the
    # fill), the answer must hold
    result = solve_optimal(d, o, instances.latency(), OptimalSettings(time_limit=0.02))
    # then every booking keeps capacity, price, locality and windows …
    served = {m.demand_id for m in result.matches}
    assert len(served) == len(result.matches)
    not_reached = int(result.solver["not_reached"])  # type: ignore[call-overload]
    # … every demand is served, refused with a reason, or left open as not reached …
    assert not served & set(result.unserved)
    assert len(served) + len(result.unserved) + not_reached == len(demands)
    by_id = {x.id: x for x in demands}
    reached = [by_id[i] for i in served | set(result.unserved)]
    check_invariants(result, reached, offers)
    # … and the offers given were booked exactly with the matches
    for before, after in zip(offers, o, strict=True):
        booked = [0] * (before.end - before.start)
        for m in result.matches:
            if m.offer_id == before.id:
                for h in range(m.start, m.start + by_id[m.demand_id].duration):
                    booked[h - before.start] += by_id[m.demand_id].gpu_count
        assert after.used == [u + b for u, b in zip(before.used, booked, strict=True)]
