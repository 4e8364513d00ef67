"""The greedy engine on plain data: no database."""

import time
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.matching.engine import (
    DemandSnap,
    OfferSnap,
    SiteRef,
    VoucherSnap,
    solve_greedy,
)
from tests.marketplace.snaps import (
    CHENGDU,
    DEYANG,
    QINGYANG,
    make_demand,
    make_offer,
)


def offer(
    id: str, site: SiteRef = CHENGDU, price: str = "10", gpus: int = 8, **kw: Any
) -> OfferSnap:
    return make_offer(id, site=site, price=price, gpus=gpus, **kw)


def demand(id: str, gpus: int = 4, duration: int = 2, **kw: Any) -> DemandSnap:
    return make_demand(id, gpus=gpus, duration=duration, **kw)


def test_nearest_tier_wins_over_a_cheaper_remote_offer():
    result = solve_greedy([demand("d")], [offer("remote", QINGYANG, "5"), offer("local", DEYANG)])
    assert [(m.offer_id, m.tier) for m in result.matches] == [("local", "metro")]


def test_unserved_locally_docks_to_another_hub_within_the_limit():
    local = offer("local", CHENGDU, gpus=4)
    remote = offer("remote", QINGYANG)
    result = solve_greedy(
        [demand("a", end=2, posted=0), demand("b", end=2, posted=1)], [local, remote]
    )
    assert [(m.demand_id, m.offer_id, m.tier) for m in result.matches] == [
        ("a", "local", "city"),
        ("b", "remote", "national"),
    ]


def test_region_limit_blocks_docking_and_reports_locality():
    result = solve_greedy([demand("d", limit="region")], [offer("remote", QINGYANG)])
    assert result.matches == []
    assert result.unserved == {"d": "outside_locality"}


def test_price_time_priority_gives_scarce_capacity_to_the_higher_limit():
    result = solve_greedy(
        [demand("early", price="12", posted=0), demand("rich", price="15", posted=1)],
        [offer("o", gpus=4, end=2)],
    )
    assert [m.demand_id for m in result.matches] == ["rich"]
    assert result.unserved == {"early": "no_free_window"}


def test_cheapest_after_voucher_wins_within_a_tier():
    voucher = VoucherSnap("v", Decimal("0.5"), Decimal("1000"), providers=frozenset({"p2"}))
    a = offer("a", price="10", provider="p1")
    b = offer("b", price="12", provider="p2")  # ¥96 bill, ¥48 after the 50 % voucher
    result = solve_greedy([demand("d", voucher=voucher)], [a, b])
    assert [(m.offer_id, m.voucher_part) for m in result.matches] == [("b", Decimal("48.00"))]


def test_earliest_fit_skips_a_full_hour():
    o = offer("o", gpus=8, end=10)
    o.used[2] = 6
    assert o.earliest_fit(4, 2, 0, 10) == 0
    assert o.earliest_fit(4, 3, 0, 10) == 3
    assert o.earliest_fit(4, 8, 0, 10) is None


@settings(max_examples=200, deadline=None)
@given(
    demands=st.lists(
        st.tuples(st.integers(1, 8), st.integers(1, 6), st.integers(0, 20), st.integers(10, 30)),
        min_size=1,
        max_size=12,
    ),
    offers=st.lists(
        st.tuples(st.integers(1, 8), st.integers(0, 10), st.integers(12, 30)),
        min_size=1,
        max_size=4,
    ),
)
def test_no_offer_is_ever_overbooked_and_windows_hold(demands, offers):
    snaps = [offer(f"o{i}", gpus=g, start=s, end=e) for i, (g, s, e) in enumerate(offers)]
    ds = [
        demand(f"d{i}", gpus=g, duration=dur, start=s, end=s + w, posted=i)
        for i, (g, dur, s, w) in enumerate(demands)
    ]
    result = solve_greedy(ds, [OfferSnap(**{**o.__dict__, "used": []}) for o in snaps])
    by_id = {d.id: d for d in ds}
    load: dict[tuple[str, int], int] = {}
    for m in result.matches:
        d = by_id[m.demand_id]
        o = next(x for x in snaps if x.id == m.offer_id)
        assert d.start <= m.start and m.start + d.duration <= d.end
        assert o.start <= m.start and m.start + d.duration <= o.end
        for h in range(m.start, m.start + d.duration):
            load[(o.id, h)] = load.get((o.id, h), 0) + d.gpu_count
            assert load[(o.id, h)] <= o.gpu_count
    assert len(result.matches) + len(result.unserved) == len(ds)
    # deterministic: the same snapshot gives the same result
    again = solve_greedy(ds, [OfferSnap(**{**o.__dict__, "used": []}) for o in snaps])
    assert again.matches == result.matches


def test_docking_prefers_the_lower_latency_hub_at_equal_cost():
    far = offer("a-far", SiteRef("s-zw", "Zhongwei", "Zhongwei", "ningxia"))
    near = offer("b-near", QINGYANG)
    latency = {("cc", "gansu"): 9.0, ("cc", "ningxia"): 12.0}
    result = solve_greedy([demand("d")], [far, near], latency=latency)
    assert [m.offer_id for m in result.matches] == ["b-near"]
    latency = {("cc", "gansu"): 14.0, ("cc", "ningxia"): 12.0}
    result = solve_greedy([demand("d")], [far, near], latency=latency)
    assert [m.offer_id for m in result.matches] == ["a-far"]


def test_ties_go_to_the_offer_listed_first_not_to_the_id():
    first = offer("zzz", DEYANG)
    first.listed = 0
    second = offer("aaa", DEYANG)
    second.listed = 1
    result = solve_greedy([demand("d")], [second, first])
    assert [m.offer_id for m in result.matches] == ["zzz"]


def test_a_passed_deadline_stops_the_walk_and_leaves_the_rest_open():
    # given a deadline already passed (the optimal policy's time limit)
    offers = [offer("o")]
    result = solve_greedy(
        [demand("d1"), demand("d2", posted=1)], offers, deadline=time.perf_counter()
    )
    # then no demand is matched or given a reason: both stay open for the next cycle
    assert (result.matches, result.unserved) == ([], {})
    assert result.solver == {"not_reached": 2}
    assert offers[0].used == [0] * 48


def test_no_deadline_walks_every_demand():
    result = solve_greedy([demand("d1"), demand("d2", posted=1, gpus=16)], [offer("o")])
    assert [m.demand_id for m in result.matches] == ["d1"]
    assert result.unserved == {"d2": "no_free_window"}
    assert "not_reached" not in result.solver
