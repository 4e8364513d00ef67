"""Policy ``optimal`` on plain data: hand-made instances with known optimal answers, and the
invariants both policies keep on random instances. No database."""

import copy
from dataclasses import replace
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketplace.locality import tier_between, tier_rank
from marketplace.matching.engine import (
    DemandSnap,
    OfferSnap,
    Result,
    SiteRef,
    VoucherSnap,
    solve_greedy,
)
from marketplace.matching.optimal import OptimalSettings, solve_optimal
from tests.marketplace.snaps import (
    CHENGDU,
    CHONGQING,
    DEYANG,
    GUIYANG,
    QINGYANG,
    make_demand,
    make_offer,
)

SITES = [CHENGDU, DEYANG, CHONGQING, QINGYANG, GUIYANG]
LATENCY = {("cc", "gansu"): 12.0, ("cc", "guizhou"): 8.0}


def offer(
    id: str,
    gpus: int = 8,
    price: str = "10",
    site: SiteRef = CHENGDU,
    start: int = 0,
    end: int = 48,
    provider: str = "p1",
    listed: int = 0,
) -> OfferSnap:
    return make_offer(
        id,
        site=site,
        price=price,
        gpus=gpus,
        start=start,
        end=end,
        provider=provider,
        listed=listed,
    )


def demand(id: str, gpus: int = 4, duration: int = 4, **kw: Any) -> DemandSnap:
    return make_demand(id, gpus=gpus, duration=duration, **kw)


def picks(result: Result) -> list[tuple[str, str, int]]:
    return sorted((m.demand_id, m.offer_id, m.start) for m in result.matches)


def both(demands: list[DemandSnap], offers: list[OfferSnap]) -> tuple[Result, Result]:
    greedy = solve_greedy(copy.deepcopy(demands), copy.deepcopy(offers), latency=LATENCY)
    optimal = solve_optimal(copy.deepcopy(demands), copy.deepcopy(offers), latency=LATENCY)
    return greedy, optimal


def test_fragmentation_trap_across_offers_is_solved():
    # given a cheap 8-GPU offer and a dearer 4-GPU one, both only for hours [0, 4), and a
    # well-paying 4-GPU demand posted before an 8-GPU one
    offers = [offer("big", 8, "10", end=4), offer("small", 4, "11", end=4, listed=1)]
    demands = [demand("d4", 4, price="30"), demand("d8", 8, price="20", posted=1)]
    greedy, optimal = both(demands, offers)
    # then greedy puts the 4 GPUs on the big offer and strands the 8-GPU gang …
    assert picks(greedy) == [("d4", "big", 0)]
    assert greedy.unserved == {"d8": "no_free_window"}
    # … and the optimum serves both: 48 GPU-hours instead of 16
    assert picks(optimal) == [("d4", "small", 0), ("d8", "big", 0)]
    assert (greedy.gpu_hours, optimal.gpu_hours) == (16, 48)
    assert optimal.unserved == {}
    assert optimal.solver["statuses"] == {"Optimal": 1}


def test_time_window_trap_is_solved_by_a_later_start():
    # given one 8-GPU offer over [0, 8); a flexible demand and one that must run in [0, 4)
    offers = [offer("o", 8, end=8)]
    demands = [
        demand("flexible", 8, 4, start=0, end=8, price="30"),
        demand("tight", 8, 4, start=0, end=4, price="20", posted=1),
    ]
    greedy, optimal = both(demands, offers)
    assert picks(greedy) == [("flexible", "o", 0)]
    assert picks(optimal) == [("flexible", "o", 4), ("tight", "o", 0)]


def test_tight_fit_keeps_the_large_block_whole():
    # given two offers at the same price: 8 GPUs (listed first) and 5 GPUs
    offers = [offer("eight", 8), offer("five", 5, listed=1)]
    greedy, optimal = both([demand("d", 4)], offers)
    # then greedy takes the first listed; optimal leaves a 1-GPU sliver on the 5 and keeps 8 whole
    assert picks(greedy) == [("d", "eight", 0)]
    assert picks(optimal) == [("d", "five", 0)]


def test_nearest_tier_wins_at_equal_service_even_if_dearer():
    offers = [offer("remote", price="5", site=QINGYANG), offer("metro", price="9", site=DEYANG)]
    _, optimal = both([demand("d")], offers)
    assert [(m.offer_id, m.tier) for m in optimal.matches] == [("metro", "metro")]


def test_docking_moves_outward_only_what_the_hub_cannot_serve():
    # given one local offer that holds one demand for the whole window, and two remote hubs
    offers = [
        offer("local", 4, "10", end=4),
        offer("gansu", 4, "10", site=QINGYANG, end=4, listed=1),
        offer("guizhou", 4, "10", site=GUIYANG, end=4, listed=2),
    ]
    demands = [
        demand("national", 4, price="30", limit="national"),
        demand("city-only", 4, price="20", limit="city", posted=1),
    ]
    greedy, optimal = both(demands, offers)
    # then greedy gives the local offer to the higher bid and the city-only demand starves,
    assert picks(greedy) == [("national", "local", 0)]
    # while the optimum keeps the city-only demand local and docks the other at the
    # lower-latency hub (Guizhou, 8 ms, before Gansu, 12 ms)
    assert picks(optimal) == [("city-only", "local", 0), ("national", "guizhou", 0)]
    assert {m.demand_id: m.tier for m in optimal.matches} == {
        "city-only": "city",
        "national": "national",
    }


def test_cheaper_after_voucher_wins_within_a_tier():
    voucher = VoucherSnap(
        id="v", max_share=Decimal("0.5"), available=Decimal("1000"), providers=frozenset({"p2"})
    )
    offers = [offer("cash", price="8"), offer("voucher", price="12", provider="p2", listed=1)]
    _, optimal = both([demand("d", voucher=voucher)], offers)
    [match] = optimal.matches
    assert (match.offer_id, match.bill, match.voucher_part) == (
        "voucher",
        Decimal("192.00"),
        Decimal("96.00"),
    )


def test_unserved_demands_keep_their_first_blocking_reason():
    offers = [offer("o", 4, "10")]
    demands = [
        demand("too-cheap", 4, price="5"),
        demand("too-big", 8),
        demand("far", 4, origin=QINGYANG, limit="region"),
    ]
    _, optimal = both(demands, offers)
    assert optimal.unserved == {
        "too-cheap": "over_price",
        "too-big": "no_free_window",
        "far": "outside_locality",
    }


def test_same_snapshot_same_answer():
    offers = [offer(f"o{i}", 4 + i % 5, str(9 + i % 3), listed=i, end=24) for i in range(6)]
    demands = [
        demand(f"d{i}", 1 + i % 6, 2 + i % 5, start=i % 4, end=24, posted=i) for i in range(25)
    ]
    first = solve_optimal(copy.deepcopy(demands), copy.deepcopy(offers))
    second = solve_optimal(copy.deepcopy(demands), copy.deepcopy(offers))
    assert picks(first) == picks(second)
    assert first.gpu_hours == second.gpu_hours


def test_the_time_limit_is_a_setting_and_greedy_is_the_fallback():
    offers = [offer(f"o{i}", 8, listed=i, end=24) for i in range(4)]
    demands = [demand(f"d{i}", 3, 5, end=24, posted=i) for i in range(30)]
    greedy = solve_greedy(copy.deepcopy(demands), copy.deepcopy(offers))
    # a node limit of zero: no branching, the answer is at least the greedy start
    result = solve_optimal(demands, offers, settings=OptimalSettings(time_limit=5, node_limit=0))
    assert result.gpu_hours >= greedy.gpu_hours
    assert result.policy == "optimal"


# --- Invariants on random instances (both policies) -----------------------------------------

offers_st = st.lists(
    st.tuples(
        st.integers(1, 8),  # gpus
        st.integers(5, 15),  # price
        st.sampled_from(SITES),
        st.integers(0, 6),  # start
        st.integers(4, 16),  # length
        st.integers(0, 3),  # already used GPUs in every hour
    ),
    min_size=1,
    max_size=6,
)
demands_st = st.lists(
    st.tuples(
        st.integers(1, 8),  # gpus
        st.integers(1, 6),  # duration
        st.integers(0, 8),  # window start
        st.integers(0, 8),  # window slack
        st.integers(5, 15),  # limit price
        st.sampled_from(SITES),
        st.sampled_from(["city", "metro", "region", "national"]),
    ),
    min_size=1,
    max_size=12,
)


def build(raw_offers: list, raw_demands: list) -> tuple[list[DemandSnap], list[OfferSnap]]:
    offers = []
    for i, (gpus, price, site, start, length, used) in enumerate(raw_offers):
        o = offer(f"o{i}", gpus, str(price), site, start, start + length, listed=i)
        o.used = [min(used, gpus)] * length
        offers.append(o)
    demands = [
        demand(
            f"d{i}",
            g,
            dur,
            start=s,
            end=s + dur + slack,
            price=str(p),
            limit=limit,
            posted=i,
            origin=origin,
        )
        for i, (g, dur, s, slack, p, origin, limit) in enumerate(raw_demands)
    ]
    return demands, offers


def check_invariants(result: Result, demands: list[DemandSnap], offers: list[OfferSnap]) -> None:
    by_offer = {o.id: o for o in offers}
    by_demand = {d.id: d for d in demands}
    load: dict[tuple[str, int], int] = {}
    assert len({m.demand_id for m in result.matches}) == len(result.matches)
    for m in result.matches:
        d, o = by_demand[m.demand_id], by_offer[m.offer_id]
        assert o.price <= d.max_price
        tier = tier_between(
            d.origin.city, d.origin.metro, d.origin.hub, o.site.city, o.site.metro, o.site.hub
        )
        assert tier_rank(tier) <= tier_rank(d.limit)
        assert d.start <= m.start and m.start + d.duration <= d.end
        assert o.start <= m.start and m.start + d.duration <= o.end
        for h in range(m.start, m.start + d.duration):
            load[(o.id, h)] = load.get((o.id, h), 0) + d.gpu_count
    for (oid, h), gpus in load.items():
        o = by_offer[oid]
        assert o.used[h - o.start] + gpus <= o.gpu_count
    assert set(result.unserved) | {m.demand_id for m in result.matches} == set(by_demand)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(offers_st, demands_st)
def test_both_policies_keep_capacity_price_locality_and_windows(raw_offers, raw_demands):
    demands, offers = build(raw_offers, raw_demands)
    greedy = solve_greedy(copy.deepcopy(demands), copy.deepcopy(offers))
    optimal = solve_optimal(copy.deepcopy(demands), copy.deepcopy(offers))
    check_invariants(greedy, demands, offers)
    check_invariants(optimal, demands, offers)
    assert optimal.gpu_hours >= greedy.gpu_hours


def test_independent_components_are_each_solved_to_their_optimum():
    # given the fragmentation trap twice: on A100 offers and on H100 offers, which no demand
    # can mix (two components)
    offers = [offer("big", 8, "10", end=4), offer("small", 4, "11", end=4, listed=1)]
    offers += [
        replace(offer("big-h", 8, "10", end=4, listed=2), model="H100"),
        replace(offer("small-h", 4, "11", end=4, listed=3), model="H100"),
    ]
    demands = [demand("d4", 4, price="30"), demand("d8", 8, price="20", posted=1)]
    demands += [
        replace(demand("h4", 4, price="30", posted=2), models=frozenset({"H100"})),
        replace(demand("h8", 8, price="20", posted=3), models=frozenset({"H100"})),
    ]
    greedy, optimal = both(demands, offers)
    # then each component is one block, solved to its optimum: 96 GPU-hours instead of 32
    assert (greedy.gpu_hours, optimal.gpu_hours) == (32, 96)
    assert picks(optimal) == [
        ("d4", "small", 0),
        ("d8", "big", 0),
        ("h4", "small-h", 0),
        ("h8", "big-h", 0),
    ]
    assert (optimal.solver["blocks"], optimal.solver["improved"]) == (2, 2)
    assert optimal.solver["statuses"] == {"Optimal": 2}


def test_a_zero_time_limit_books_nothing_and_leaves_every_demand_open():
    # given a market where greedy would serve everything
    offers = [offer(f"o{i}", 8, listed=i, end=24) for i in range(4)]
    demands = [demand(f"d{i}", 2, 3, end=24, posted=i) for i in range(10)]
    before = copy.deepcopy(offers)
    # when optimal has no time at all
    result = solve_optimal(demands, offers, settings=OptimalSettings(time_limit=0.0))
    # then it stops before greedy's first demand: nothing booked, no reason claimed, all open
    assert result.matches == [] and result.unserved == {}
    assert result.solver["not_reached"] == 10
    assert result.solver["deadline_hit"] is True
    assert [o.used for o in offers] == [o.used for o in before]


# --- Equal service: the buyer's cost comes before start and fit (PRODUCT.md §4.2) -----------


def cash_paid(result: Result) -> Decimal:
    return sum((m.bill - m.voucher_part for m in result.matches), Decimal("0"))


def test_a_cheaper_offer_beats_a_tighter_fit_at_equal_service():
    # given a large offer at ¥5.00 and a one-GPU offer at ¥5.50, and a one-GPU demand
    offers = [offer("large", 64, "5.00"), offer("one", 1, "5.50", listed=1)]
    greedy, optimal = both([demand("d", 1, 10)], offers)
    # then both book the cheaper offer: a sliver left on the large one is no reason to pay more
    assert picks(greedy) == picks(optimal) == [("d", "large", 0)]
    assert cash_paid(optimal) == Decimal("50.00")


def test_a_cheaper_offer_beats_an_earlier_start_at_equal_service():
    # given ¥5.50 from hour 10 and ¥6.00 from hour 0, and a demand free to run in [0, 20)
    offers = [offer("later", 8, "5.50", start=10), offer("now", 8, "6.00", listed=1)]
    greedy, optimal = both([demand("d", 4, 4, end=20)], offers)
    assert picks(greedy) == picks(optimal) == [("d", "later", 10)]
    assert cash_paid(optimal) == Decimal("88.00")


def test_a_voucher_shared_by_two_demands_is_counted_once():
    # given one voucher (60 %, ¥60 left) on two demands of one buyer, an eligible offer at ¥10
    # and a cheaper one the voucher does not cover
    voucher = VoucherSnap(
        id="v", max_share=Decimal("0.6"), available=Decimal("60"), providers=frozenset({"pv"})
    )
    offers = [offer("eligible", 8, "10", provider="pv"), offer("cheap", 8, "8", listed=1)]
    demands = [
        demand("d1", 4, 4, end=4, voucher=voucher),
        demand("d2", 4, 4, end=4, voucher=voucher, posted=1),
    ]
    greedy, optimal = both(demands, offers)
    # then the voucher pays ¥60 of d1's ¥160 and d2 takes the cheaper cash offer: ¥228 in cash,
    # not ¥260 with both on the eligible offer as if each had the whole voucher
    assert picks(greedy) == picks(optimal) == [("d1", "eligible", 0), ("d2", "cheap", 0)]
    assert cash_paid(greedy) == cash_paid(optimal) == Decimal("228.00")


priced_offers_st = st.lists(
    st.tuples(
        st.sampled_from([1, 2, 4, 8, 16, 64]),  # gpus
        st.sampled_from(["5.00", "5.01", "5.50", "6.00", "8.00", "10.00"]),
        st.sampled_from(SITES),
        st.integers(0, 6),  # start
        st.integers(4, 16),  # length
        st.sampled_from(["p1", "p2", "pv"]),  # provider (the voucher covers pv)
    ),
    min_size=1,
    max_size=6,
)
voucher_demands_st = st.lists(
    st.tuples(
        st.integers(1, 8),  # gpus
        st.integers(1, 6),  # duration
        st.integers(0, 8),  # window start
        st.integers(0, 8),  # window slack
        st.sampled_from(SITES),
        st.sampled_from(["city", "metro", "region", "national"]),
        st.booleans(),  # pays with the shared voucher
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(priced_offers_st, voucher_demands_st, st.sampled_from(["0", "30", "60", "1000"]))
def test_at_equal_service_optimal_is_never_behind_greedy_in_tier_then_cash(
    raw_offers, raw_demands, voucher_left
):
    # given random offers of three providers and demands, some sharing one voucher (60 % of
    # the bill for provider pv's offers, ¥0 to ¥1,000 left)
    voucher = VoucherSnap(
        id="v",
        max_share=Decimal("0.6"),
        available=Decimal(voucher_left),
        providers=frozenset({"pv"}),
    )
    offers = [
        offer(f"o{i}", gpus, price, site, start, start + length, provider=provider, listed=i)
        for i, (gpus, price, site, start, length, provider) in enumerate(raw_offers)
    ]
    demands = [
        demand(
            f"d{i}",
            g,
            dur,
            start=s,
            end=s + dur + slack,
            limit=limit,
            posted=i,
            origin=origin,
            voucher=voucher if pays else None,
        )
        for i, (g, dur, s, slack, origin, limit, pays) in enumerate(raw_demands)
    ]
    greedy, optimal = both(demands, offers)
    check_invariants(optimal, demands, offers)
    # then optimal serves at least as many GPU-hours, and when it serves as many its bookings
    # are no further out (sum of tier ranks) and, as near, cost the buyers no more cash
    assert optimal.gpu_hours >= greedy.gpu_hours
    if optimal.gpu_hours == greedy.gpu_hours:

        def standing(result: Result) -> tuple[int, Decimal]:
            return sum(tier_rank(m.tier) for m in result.matches), cash_paid(result)

        assert standing(optimal) <= standing(greedy)
    # and the voucher never pays more than it had
    assert sum(m.voucher_part for m in optimal.matches) <= Decimal(voucher_left)
