"""The engine on valid input too large for its compact int16 free-GPU matrix: an offer of more
than 32,767 GPUs (the API allows up to ``MAX_GPUS``) or with a window longer than 32,767 hours
(about 3.7 years; no limit on an offer's window). Either used to raise ``OverflowError`` in
every cycle of the hub, so no demand of that hub was matched. No database."""

import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from marketplace.matching.cycle import engine_solve
from marketplace.matching.engine import Result
from marketplace.matching.partial import MAX_PARTS, Reach, split_reach
from marketplace.models import Hub
from marketplace.services import MAX_GPUS
from tests.marketplace.snaps import make_demand, make_offer

LONG = 24 * 366 * 4  # hours: a four-year window


def _solve(policy: str, demands: list[Any], offers: list[Any]) -> Result:
    return engine_solve(policy, demands, offers, latency={}, time_limit=5.0)


@pytest.mark.parametrize("policy", [Hub.Policy.GREEDY, Hub.Policy.OPTIMAL])
@pytest.mark.parametrize(
    "make_big",
    [
        lambda: make_offer("big", gpus=MAX_GPUS, price="9"),
        lambda: make_offer("long", end=LONG, price="9"),
    ],
    ids=["max_gpus", "long_window"],
)
def test_a_huge_offer_does_not_stop_the_cycle(policy, make_big):
    # given an ordinary offer and demand, and beside them one valid but huge offer (made per
    # run: the engine books into an offer's timeline)
    big = make_big()
    small = make_offer("small", gpus=8, price="10")
    demands = [
        make_demand("d", gpus=4, duration=2),
        make_demand("split", gpus=12, duration=2, split="site", min_part=4, posted=1),
    ]
    # when the engine runs
    result = _solve(policy, demands, [small, big])
    # then both demands are served (the huge offer takes part: it is the cheaper one)
    assert {m.demand_id for m in result.matches} == {"d", "split"}
    assert big.id in {m.offer_id for m in result.matches}


@pytest.mark.parametrize("policy", [Hub.Policy.GREEDY, Hub.Policy.OPTIMAL])
def test_a_demand_for_more_gpus_than_int16_is_served_by_an_offer_that_large(policy):
    offers = [make_offer("small", gpus=8), make_offer("big", gpus=MAX_GPUS, end=LONG)]
    demand = make_demand("d", gpus=40_000, duration=3, end=LONG)
    result = _solve(policy, [demand], offers)
    assert [(m.demand_id, m.offer_id) for m in result.matches] == [("d", "big")]


FAR = 10_000_000  # hours ahead: a window ending about the year 3110 (the API accepts 9999)
MB = 1 << 20


def _peak_bytes(run: Callable[[], Any]) -> tuple[Any, int]:
    """``run()`` and the most memory it held at once (numpy reports its arrays to
    tracemalloc): a count of bytes, not a timing."""
    tracemalloc.start()
    try:
        return run(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("policy", [Hub.Policy.GREEDY, Hub.Policy.OPTIMAL])
def test_a_split_demand_whose_window_reaches_far_ahead_is_planned_on_the_offers_hours(policy):
    # given thirty 8-GPU offers over two days at one site and a 100-GPU split demand whose
    # window ends centuries ahead (the split pass sized a matrix offers x window hours: 1.2 GB)
    offers = [make_offer(f"o{i:02}", gpus=8, listed=i) for i in range(30)]
    demand = make_demand("split", gpus=100, duration=2, end=FAR, split="site", min_part=4)
    # when the engine runs
    result, peak = _peak_bytes(lambda: _solve(policy, [demand], offers))
    # then it is served in parts at the first hour, planned on the offers' 48 hours only
    assert sum(m.gpus or 0 for m in result.matches) == 100
    assert {m.start for m in result.matches} == {0}
    assert peak < 50 * MB


def test_why_no_match_of_such_a_demand_counts_the_offers_hours():
    offers = [make_offer(f"o{i:02}", gpus=8, listed=i) for i in range(30)]
    demand = make_demand("split", gpus=1000, duration=2, end=FAR, split="site", min_part=4)
    reach, peak = _peak_bytes(lambda: split_reach(demand, offers))
    assert reach == [Reach("s-cd", 30, MAX_PARTS * 8, 0)]
    assert peak < 50 * MB
