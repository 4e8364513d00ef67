"""The engine on valid input too large for its compact int16 free-GPU matrix: an offer of more
than 32,767 GPUs (the API allows up to ``MAX_GPUS``) or with a window longer than 32,767 hours
(about 3.7 years; no limit on an offer's window). Either used to raise ``OverflowError`` in
every cycle of the hub, so no demand of that hub was matched. No database."""

from typing import Any

import pytest

from marketplace.matching.cycle import engine_solve
from marketplace.matching.engine import Result
from marketplace.models import Hub
from marketplace.services import MAX_GPUS
from tests.marketplace.snaps import make_demand, make_offer

LONG = 24 * 366 * 4  # hours: a four-year window


def _solve(policy: str, demands: list[Any], offers: list[Any]) -> Result:
    return engine_solve(policy, demands, offers, latency={}, time_limit=5.0)


@pytest.mark.parametrize("policy", [Hub.Policy.GREEDY, Hub.Policy.OPTIMAL])
@pytest.mark.parametrize(
    "big",
    [
        make_offer("big", gpus=MAX_GPUS, price="9"),
        make_offer("long", end=LONG, price="9"),
    ],
    ids=["max_gpus", "long_window"],
)
def test_a_huge_offer_does_not_stop_the_cycle(policy, big):
    # given an ordinary offer and demand, and beside them one valid but huge offer
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
