"""Partial fills on plain data (``marketplace.matching.partial``): no database."""

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from marketplace.locality import tier_between, tier_rank
from marketplace.matching import partial
from marketplace.matching.engine import (
    DemandSnap,
    OfferSnap,
    SiteRef,
    VoucherSnap,
    solve_greedy,
)
from marketplace.matching.optimal import OptimalSettings
from marketplace.matching.partial import (
    MAX_PARTS,
    Reach,
    _fill,
    _fill_classes,
    _fills,
    solve_optimal_split,
    split_reach,
)
from tests.marketplace.snaps import (
    CHONGQING,
    QINGYANG,
    make_demand,
    make_offer,
)

CHENGDU_A = SiteRef("s-cd-a", "Chengdu", "Chengdu", "cc")
CHENGDU_B = SiteRef("s-cd-b", "Chengdu", "Chengdu", "cc")


def offer(id: str, site: SiteRef = CHENGDU_A, **kw: Any) -> OfferSnap:
    return make_offer(id, site=site, **kw)


def demand(
    id: str = "d", gpus: int = 16, split: str = "site", origin: SiteRef = CHENGDU_A, **kw: Any
) -> DemandSnap:
    return make_demand(id, gpus=gpus, split=split, origin=origin, **kw)


def parts(result) -> list[tuple[str, str, int | None, int]]:  # type: ignore[no-untyped-def]
    return sorted((m.demand_id, m.offer_id, m.gpus, m.start) for m in result.matches)


def test_sixteen_gpus_over_two_eight_gpu_offers_at_one_site_only_with_split():
    # given two 8-GPU offers at one site and a 16-GPU demand
    def offers() -> list[OfferSnap]:
        return [offer("o1", listed=0), offer("o2", listed=1)]

    # when the demand does not split, then it is not served
    whole = solve_greedy([demand(split="none")], offers())
    assert whole.matches == [] and whole.unserved == {"d": "no_free_window"}
    # when it splits at the site, then it is served in two parts of 8 over the same hours
    fleet = offers()
    split = solve_greedy([demand(split="site")], fleet)
    assert parts(split) == [("d", "o1", 8, 0), ("d", "o2", 8, 0)]
    assert split.served == {"d": 64} and split.unserved == {}
    assert [m.bill for m in split.matches] == [Decimal("320.00"), Decimal("320.00")]
    assert all(o.used[:4] == [8, 8, 8, 8] and o.used[4] == 0 for o in fleet)


def test_a_site_split_never_spans_two_sites_but_a_hub_split_does():
    def offers() -> list[OfferSnap]:
        return [offer("a", CHENGDU_A), offer("b", CHONGQING)]

    site = solve_greedy([demand(split="site")], offers())
    assert site.matches == []
    hub = solve_greedy([demand(split="hub")], offers())
    assert parts(hub) == [("d", "a", 8, 0), ("d", "b", 8, 0)]
    assert sorted(m.tier for m in hub.matches) == ["city", "region"]


def test_a_hub_split_never_spans_two_hubs():
    # given 8 GPUs in the demand's hub and 8 in another hub, the limit national
    result = solve_greedy([demand(split="hub")], [offer("cd", CHENGDU_A), offer("qy", QINGYANG)])
    # then the demand stays whole-or-nothing inside one hub: not served
    assert result.matches == [] and "d" in result.unserved


def test_all_or_nothing_leaves_every_offer_untouched_when_short():
    fleet = [offer("o1"), offer("o2")]
    result = solve_greedy([demand(gpus=24, split="hub")], fleet)
    assert result.matches == [] and result.served == {}
    assert all(sum(o.used) == 0 for o in fleet)


def test_a_whole_fit_is_preferred_to_a_cheaper_split():
    # given a 16-GPU offer and two cheaper 8-GPU offers at the same site
    result = solve_greedy(
        [demand(split="site")],
        [offer("big", price="12", gpus=16), offer("s1", price="5"), offer("s2", price="5")],
    )
    # then the whole fit comes first (splitting is only for demands that cannot be whole)
    assert parts(result) == [("d", "big", None, 0)]


def test_the_cheapest_offers_of_the_group_are_filled_first_and_over_limit_ones_never():
    result = solve_greedy(
        [demand(gpus=12, price="20", split="site")],
        [
            offer("pricey", price="19", gpus=8, listed=0),
            offer("cheap", price="11", gpus=8, listed=1),
            offer("over", price="21", gpus=16, listed=2),
        ],
    )
    assert parts(result) == [("d", "cheap", 8, 0), ("d", "pricey", 4, 0)]
    by_offer = {m.offer_id: m.bill for m in result.matches}
    assert by_offer == {"cheap": Decimal("352.00"), "pricey": Decimal("304.00")}


def test_parts_hold_at_least_min_part_gpus():
    # 16 GPUs in parts of at least 8 over offers of 12 free each: 8 + 8, never 12 + 4
    result = solve_greedy(
        [demand(split="site", min_part=8)],
        [offer("o1", gpus=12, listed=0), offer("o2", gpus=12, listed=1)],
    )
    assert parts(result) == [("d", "o1", 8, 0), ("d", "o2", 8, 0)]
    # four offers of 6: no part can hold 8, so not served
    small = solve_greedy(
        [demand(split="site", min_part=8)], [offer(f"o{i}", gpus=6) for i in range(4)]
    )
    assert small.matches == []


def test_every_part_runs_over_the_same_hours():
    # given o1 free from hour 0 and o2 busy until hour 5
    fleet = [offer("o1"), offer("o2", used=[8] * 5 + [0] * 43)]
    result = solve_greedy([demand(split="site")], fleet)
    # then both parts start together at hour 5, the first hour both are free
    assert parts(result) == [("d", "o1", 8, 5), ("d", "o2", 8, 5)]


def test_the_window_bounds_the_common_start():
    fleet = [offer("o1"), offer("o2", used=[8] * 5 + [0] * 43)]
    result = solve_greedy([demand(split="site", end=8)], fleet)
    assert result.matches == []


def test_higher_limit_split_demand_takes_capacity_before_a_lower_whole_one():
    result = solve_greedy(
        [
            demand("whole", gpus=8, end=4, price="15", split="none", posted=0),
            demand("split", gpus=16, end=4, price="18", split="site", posted=1),
        ],
        [offer("o1", listed=0), offer("o2", listed=1)],
    )
    assert parts(result) == [("split", "o1", 8, 0), ("split", "o2", 8, 0)]
    assert result.unserved == {"whole": "no_free_window"}


def test_a_voucher_pays_the_parts_in_fill_order_until_it_runs_out():
    # given a 60 % voucher with 400 CNY left and two parts of 320 CNY each
    voucher = VoucherSnap("v", Decimal("0.6"), Decimal("400.00"), frozenset({"p1"}))
    result = solve_greedy(
        [demand(split="site", voucher=voucher)], [offer("o1", listed=0), offer("o2", listed=1)]
    )
    # then the first part takes its 60 % (192.00), the second what is left (208 > 192: 192)
    assert [(m.offer_id, m.voucher_part, m.cash_part) for m in result.matches] == [
        ("o1", Decimal("192.00"), Decimal("128.00")),
        ("o2", Decimal("192.00"), Decimal("128.00")),
    ]
    assert voucher.available == Decimal("16.00")
    # and with 250 left, the second part gets the remaining 58.00
    short = VoucherSnap("v", Decimal("0.6"), Decimal("250.00"), frozenset({"p1"}))
    again = solve_greedy(
        [demand(split="site", voucher=short)], [offer("o1", listed=0), offer("o2", listed=1)]
    )
    assert [m.voucher_part for m in again.matches] == [Decimal("192.00"), Decimal("58.00")]
    assert short.available == Decimal("0.00")


def test_the_nearest_tier_group_wins_over_a_cheaper_farther_one():
    # given 16 GPUs at the home site at 15 and 16 GPUs in Chongqing (region tier) at 5
    result = solve_greedy(
        [demand(split="hub")],
        [
            offer("home1", CHENGDU_A, price="15", listed=0),
            offer("home2", CHENGDU_B, price="15", listed=1),
            offer("far1", CHONGQING, price="5", listed=2),
            offer("far2", CHONGQING, price="5", listed=3),
        ],
    )
    assert parts(result) == [("d", "home1", 8, 0), ("d", "home2", 8, 0)]
    assert {m.tier for m in result.matches} == {"city"}


def test_optimal_places_split_demands_after_the_milp_on_the_capacity_left():
    # given a whole 8-GPU demand and a 16-GPU split demand with a higher limit, 24 GPUs in all
    fleet = [offer("o1", listed=0), offer("o2", listed=1), offer("o3", listed=2)]
    demands = [
        demand("whole", gpus=8, price="15", split="none"),
        demand("split", gpus=16, price="18", split="site", posted=1),
    ]
    result = solve_optimal_split(demands, fleet, settings=OptimalSettings(time_limit=5))
    # then the MILP places the whole demand first and the split pass the split one after it
    assert result.policy == "optimal"
    whole = [m for m in result.matches if m.demand_id == "whole"]
    split = [m for m in result.matches if m.demand_id == "split"]
    assert len(whole) == 1 and whole[0].gpus is None
    assert sorted(m.gpus or 0 for m in split) == [8, 8]
    assert {m.offer_id for m in split}.isdisjoint({whole[0].offer_id})
    assert result.served == {"whole": 32, "split": 64} and result.unserved == {}
    assert all(max(o.used) == 8 for o in fleet)


def test_optimal_reports_a_split_demand_it_cannot_place_in_parts_either():
    result = solve_optimal_split(
        [demand(gpus=24)], [offer("o1"), offer("o2")], settings=OptimalSettings(time_limit=5)
    )
    assert result.matches == [] and result.unserved == {"d": "no_free_window"}


def test_optimal_leaves_split_demands_it_had_no_time_to_reach_open():
    # given a split demand that two offers could hold in parts
    fleet = [offer("o1"), offer("o2", listed=1)]
    # when optimal has no time at all, so greedy reaches no demand
    result = solve_optimal_split([demand()], fleet, settings=OptimalSettings(time_limit=0.0))
    # then the split pass does not place it past the limit either: it stays open
    assert (result.matches, result.unserved) == ([], {})
    assert result.solver["not_reached"] == 1
    assert all(max(o.used) == 0 for o in fleet)


def test_split_reach_names_the_group_holding_most_gpus_together():
    fleet = [
        offer("a1", CHENGDU_A, gpus=8),
        offer("a2", CHENGDU_A, gpus=8, used=[4] * 48),
        offer("b1", CHENGDU_B, gpus=8),
        offer("far", QINGYANG, gpus=64),
    ]
    reach = split_reach(demand(gpus=32, split="site", limit="region"), fleet)
    assert [(r.key, r.offers, r.gpus, r.start) for r in reach] == [
        ("s-cd-a", 2, 12, 0),
        ("s-cd-b", 1, 8, 0),
    ]
    assert split_reach(demand(split="none"), fleet) == []


def test_split_reach_counts_a_related_partys_offers_as_split_book_books_them():
    # given two 8-GPU offers at one site, one of them of p3, related to buyer b1, and one of
    # b1's own, and a 16-GPU site-split demand of b1
    def fleet() -> list[OfferSnap]:
        return [
            offer("p1-a", provider="p1", listed=0),
            offer("p3-a", provider="p3", listed=1),
            offer("own-a", provider="b1", listed=2),
        ]

    d = demand(gpus=16, related=frozenset({"p3"}))
    # when the buyer asks how far the site falls short, and the matcher runs
    reach = split_reach(d, fleet())
    booked = solve_greedy([d], fleet(), latency={})
    # then the related party's GPUs count (the site holds all 16), not the buyer's own, and
    # the matcher books the demand on exactly those two offers
    assert [(r.key, r.offers, r.gpus) for r in reach] == [("s-cd-a", 2, 16)]
    assert sorted((m.offer_id, m.gpus) for m in booked.matches) == [("p1-a", 8), ("p3-a", 8)]


# --- The common start: every hour of the window, however often capacity changes --------------


def reviewer_offers() -> list[OfferSnap]:
    """Two 4-GPU offers at one site over hours [0, 1000): X busy every even hour (500 hours
    where its free GPUs rise), Y busy until hour 700."""
    return [
        offer("x", gpus=4, end=1000, used=[4 if h % 2 == 0 else 0 for h in range(1000)]),
        offer("y", gpus=4, end=1000, used=[4] * 700 + [0] * 300, listed=1),
    ]


def test_a_common_start_past_hundreds_of_capacity_changes_is_found():
    # given the reviewer's two offers: both free together first at hour 701 (X's 351st rise;
    # the search used to stop after 256 candidate starts and report no free window)
    demands = [demand(gpus=8, duration=1, end=1000)]
    # when greedy runs, and optimal (whose split pass places it after the MILP)
    greedy = solve_greedy(demands, reviewer_offers())
    optimal = solve_optimal_split(
        demands, reviewer_offers(), settings=OptimalSettings(time_limit=5)
    )
    # then both serve it in two parts of 4 at hour 701
    for result in (greedy, optimal):
        assert parts(result) == [("d", "x", 4, 701), ("d", "y", 4, 701)]
        assert result.served == {"d": 8} and result.unserved == {}


def test_why_no_match_counts_a_window_past_hundreds_of_capacity_changes():
    # given the same offers and a demand for more than they hold (12 GPUs)
    reach = split_reach(demand(gpus=12, duration=1, end=1000), reviewer_offers())
    # then the site holds 8 together from hour 701 (was: 4 from hour 1, the best of the
    # first 256 candidate starts)
    assert reach == [Reach("s-cd-a", 2, 8, 701)]


def test_a_start_is_tried_even_where_no_offer_gains_capacity():
    # given 15 GPUs wanted in parts of at least 5 for 2 hours in [0, 4): the cheap offer A
    # holds 8 over [0, 2) and 5 from hour 1, B and C hold 5 throughout
    fleet = [
        offer("a", gpus=8, price="5", end=4, used=[0, 0, 3, 3]),
        offer("b", gpus=5, price="6", end=4, listed=1),
        offer("c", gpus=5, price="6", end=4, listed=2),
    ]
    result = solve_greedy([demand(gpus=15, duration=2, end=4, min_part=5)], fleet)
    # then at hour 0 the cheapest-first fill takes 8 on A and cannot make the 7 left of parts
    # of 5, and at hour 1, where no offer's capacity rises (the old candidate starts skipped
    # it), the fill is 5 + 5 + 5
    assert parts(result) == [("d", "a", 5, 1), ("d", "b", 5, 1), ("d", "c", 5, 1)]


def often(value: int, anything: st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    """``value`` often (an edge: the whole horizon, a long busy prefix), else anything."""
    return st.just(value) | anything


@st.composite
def busy_site(draw: st.DrawFn, *, least: int) -> tuple[DemandSnap, list[OfferSnap]]:
    """One site's offers (at most ``MAX_PARTS``) over up to 700 hours and one split demand at
    that site larger than any single offer (no whole fit), parts of at least ``least``. As in
    the reviewer's case, the first offer's capacity changes every hour or two from its start
    (hundreds of changes); each other offer is busy for a prefix, then free or busy on a
    periodic pattern."""
    horizon = draw(often(700, st.integers(8, 700)))
    fleet = []
    for i in range(draw(often(2, st.integers(1, 6)))):
        gpus = draw(st.sampled_from([2, 4, 8]))
        start = draw(often(0, st.integers(0, horizon // 3)))
        end = draw(often(horizon, st.integers(start + 1, horizon)))
        prefix = 0 if i == 0 else draw(often((end - start) * 3 // 4, st.integers(0, end - start)))
        period = draw(st.integers(2, 3) if i == 0 else often(1, st.integers(1, 5)))
        duty = draw(st.integers(1, period - 1) if i == 0 else often(0, st.integers(0, period)))
        busy = draw(st.integers(1, gpus))
        used = [
            gpus if h < prefix else busy if (h + i) % period < duty else 0
            for h in range(end - start)
        ]
        price = draw(st.sampled_from(["8", "9", "10"]))
        fleet.append(
            offer(f"o{i}", gpus=gpus, price=price, start=start, end=end, used=used, listed=i)
        )
    duration = draw(often(1, st.integers(1, 6)))
    start = draw(often(0, st.integers(0, horizon // 2)))
    end = start + duration + draw(often(horizon, st.integers(0, horizon)))
    most, total = max(o.gpu_count for o in fleet), sum(o.gpu_count for o in fleet)
    gpus = draw(often(max(most + 1, total), st.integers(most + 1, max(most + 1, total + 2))))
    wanted = demand(gpus=gpus, duration=duration, start=start, end=end, min_part=min(least, gpus))
    return wanted, fleet


def free_blocks(d: DemandSnap, fleet: list[OfferSnap], start: int) -> list[int]:
    """Each offer's free GPUs over ``[start, start + duration)``, hour by hour."""
    return [min(o.free_at(h) for h in range(start, start + d.duration)) for o in fleet]


def start_hours(d: DemandSnap) -> range:
    return range(d.start, d.end - d.duration + 1)


@given(case=busy_site(least=1))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_split_demand_is_served_at_the_earliest_hour_its_site_holds_it(case):
    wanted, fleet = case
    # brute force: the first start hour whose free blocks add up to the demand
    earliest = next(
        (s for s in start_hours(wanted) if sum(free_blocks(wanted, fleet, s)) >= wanted.gpu_count),
        None,
    )
    result = solve_greedy([wanted], fleet)
    if earliest is None:
        assert result.matches == [] and result.unserved == {"d": "no_free_window"}
    else:
        assert {m.start for m in result.matches} == {earliest}
        assert sum(m.gpus or 0 for m in result.matches) == wanted.gpu_count


def holds(blocks: list[int], gpus: int, least: int) -> bool:
    """Whether some parts, each 0 or ``least`` .. its block, add up to ``gpus`` exactly."""
    sums = {0}
    for block in blocks:
        sums |= {t + g for t in sums for g in range(least, block + 1) if t + g <= gpus}
    return gpus in sums


@given(case=busy_site(least=2) | busy_site(least=4))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_with_a_minimum_part_the_start_is_the_first_hour_the_greedy_fill_succeeds(case):
    # The fill is greedy (cheapest offer first, as much as it holds; the module doc), so with
    # parts of at least ``min_part`` > 1 it may pass over an hour where another choice of parts
    # would fit (15 in parts of 5 over blocks 8, 5, 5: it takes 8). The start search itself
    # is exhaustive: the engine's start is the first hour where that fill succeeds, never
    # earlier than the first hour some choice of parts fits, and the parts do fit there.
    wanted, fleet = case
    # the engine's fill order at one site (every latency 0): price, larger block, listing
    price = np.array([int(o.price) for o in fleet])
    listed = np.arange(len(fleet))

    def fills(s: int) -> bool:
        free = np.array(free_blocks(wanted, fleet, s))
        usable = np.flatnonzero(free >= wanted.min_part)
        order = usable[np.lexsort((listed[usable], -free[usable], price[usable]))]
        return _fill(wanted, order, free) is not None

    first_fill = next((s for s in start_hours(wanted) if fills(s)), None)
    first_fit = next(
        (
            s
            for s in start_hours(wanted)
            if holds(free_blocks(wanted, fleet, s), wanted.gpu_count, wanted.min_part)
        ),
        None,
    )
    result = solve_greedy([wanted], fleet)
    if first_fill is None:
        assert result.matches == []
    else:
        assert first_fit is not None and first_fit <= first_fill
        assert {m.start for m in result.matches} == {first_fill}
        assert sum(m.gpus or 0 for m in result.matches) == wanted.gpu_count


@given(case=busy_site(least=1) | busy_site(least=4))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_split_reach_is_the_most_any_start_hour_holds(case):
    wanted, fleet = case
    least, duration = wanted.min_part, wanted.duration
    members = [
        o
        for o in fleet
        if o.gpu_count >= least and min(wanted.end, o.end) - max(wanted.start, o.start) >= duration
    ]
    # brute force: per start hour, the MAX_PARTS largest blocks of ``least`` or more
    held = [
        min(
            sum(sorted(b for b in free_blocks(wanted, members, s) if b >= least)[-MAX_PARTS:]),
            wanted.gpu_count,
        )
        for s in start_hours(wanted)
    ]
    most = max(held, default=0)
    reach = split_reach(wanted, fleet)
    if not members:
        assert reach == []
    else:
        start = start_hours(wanted)[held.index(most)] if most else None
        assert reach == [Reach("s-cd-a", len(members), most, start)]


# --- Invariants ------------------------------------------------------------------------------

SITES = [CHENGDU_A, CHENGDU_B, CHONGQING, QINGYANG]

offers_st = st.lists(
    st.builds(
        lambda i, site, price, gpus, start, length, busy: offer(
            f"o{i}",
            SITES[site],
            price=str(price),
            gpus=gpus,
            start=start,
            end=start + length,
            provider=f"p{i % 3}",
            used=[min(busy, gpus)] * length,
            listed=i,
        ),
        st.integers(0, 10_000),
        st.integers(0, 3),
        st.integers(5, 30),
        st.sampled_from([4, 8, 16]),
        st.integers(0, 6),
        st.integers(12, 48),
        st.sampled_from([0, 0, 0, 2, 4, 8]),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda o: o.id,
)

demands_st = st.lists(
    st.builds(
        lambda i, gpus, duration, start, slack, price, split, min_part, limit: demand(
            f"d{i}",
            gpus,
            split,
            duration=duration,
            start=start,
            end=start + duration + slack,
            price=str(price),
            min_part=min(min_part, gpus),
            limit=limit,
            posted=i,
        ),
        st.integers(0, 10_000),
        st.integers(1, 32),
        st.integers(1, 8),
        st.integers(0, 12),
        st.integers(0, 12),
        st.integers(10, 30),
        st.sampled_from(["none", "site", "hub", "hub"]),
        st.integers(1, 8),
        st.sampled_from(["city", "metro", "region", "national"]),
    ),
    max_size=8,
    unique_by=lambda d: d.id,
)


# Split-heavy instances: several offers at the sites of the home hub under the limit price, and
# demands that all split, most of them larger than any one offer.
home_offers_st = st.lists(
    st.builds(
        lambda i, site, price, gpus, start, busy, hole: offer(
            f"h{i}",
            SITES[site],
            price=str(price),
            gpus=gpus,
            start=start,
            end=start + 40,
            provider=f"p{i % 3}",
            used=[min(busy, gpus) if not hole <= h < hole + 6 else 0 for h in range(40)],
            listed=i,
        ),
        st.integers(0, 10_000),
        st.integers(0, 2),
        st.integers(5, 12),
        st.sampled_from([4, 8, 8, 16]),
        st.integers(0, 4),
        st.sampled_from([0, 0, 2, 4, 8]),
        st.integers(0, 34),
    ),
    min_size=2,
    max_size=12,
    unique_by=lambda o: o.id,
)

split_demands_st = st.lists(
    st.builds(
        lambda i, gpus, duration, start, slack, split, min_part: demand(
            f"d{i}",
            gpus,
            split,
            duration=duration,
            start=start,
            end=start + duration + slack,
            price="12",
            min_part=min(min_part, gpus),
            posted=i,
        ),
        st.integers(0, 10_000),
        st.integers(6, 40),
        st.integers(1, 6),
        st.integers(0, 10),
        st.integers(0, 16),
        st.sampled_from(["site", "hub"]),
        st.sampled_from([1, 2, 4, 8]),
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda d: d.id,
)


@given(demands=demands_st, offers=offers_st, optimal=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_split_invariants(demands, offers, optimal):
    check_invariants(demands, offers, optimal)


@given(demands=split_demands_st, offers=home_offers_st, optimal=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_split_invariants_on_split_heavy_instances(demands, offers, optimal):
    check_invariants(demands, offers, optimal)


def check_invariants(demands, offers, optimal):  # type: ignore[no-untyped-def]
    """Never over capacity or the limit price, outside locality or the windows; parts add up
    to the demand exactly, over the same hours, in one site or hub, each ≥ ``min_part``."""
    before = {o.id: list(o.used) for o in offers}
    by_offer = {o.id: o for o in offers}
    if optimal:
        result = solve_optimal_split(demands, offers, settings=OptimalSettings(time_limit=5))
    else:
        result = solve_greedy(demands, offers)
    load: dict[tuple[str, int], int] = {}
    for d in demands:
        mine = [m for m in result.matches if m.demand_id == d.id]
        if not mine:
            assert d.id not in result.served
            continue
        gpus = [m.gpus if m.gpus is not None else d.gpu_count for m in mine]
        # all or nothing: the parts add up to the demand exactly, one per offer
        assert sum(gpus) == d.gpu_count and result.served[d.id] == d.gpu_count * d.duration
        assert len({m.offer_id for m in mine}) == len(mine) <= MAX_PARTS
        # the same hours, inside the window
        assert len({m.start for m in mine}) == 1
        assert d.start <= mine[0].start and mine[0].start + d.duration <= d.end
        sites = {by_offer[m.offer_id].site for m in mine}
        if len(mine) > 1:
            assert d.split in ("site", "hub") and all(g >= d.min_part for g in gpus)
            assert len(sites) == 1 if d.split == "site" else len({s.hub for s in sites}) == 1
        for m, g in zip(mine, gpus, strict=True):
            o = by_offer[m.offer_id]
            assert o.price <= d.max_price  # never over the limit price
            o_site = o.site
            tier = tier_between(
                d.origin.city, d.origin.metro, d.origin.hub, o_site.city, o_site.metro, o_site.hub
            )
            assert tier == m.tier and tier_rank(tier) <= tier_rank(d.limit)
            assert o.start <= m.start and m.start + d.duration <= o.end
            for h in range(m.start, m.start + d.duration):
                load[(o.id, h)] = load.get((o.id, h), 0) + g
    # never over capacity: what was reserved before plus what was booked now
    for (offer_id, h), booked in load.items():
        o = by_offer[offer_id]
        assert before[offer_id][h - o.start] + booked <= o.gpu_count
        assert o.used[h - o.start] == before[offer_id][h - o.start] + booked


# --- Bounded cost: the fill decided for all starts at once, in chunks, under the clock ------


def scalar_fills(
    d: DemandSnap, free: np.ndarray, price: np.ndarray, distance: np.ndarray, listed: np.ndarray
) -> list[bool]:
    """``_fill`` at every column, in the engine's fill order there (price, latency, larger
    block, listing order, row)."""
    out = []
    for s in range(free.shape[1]):
        f = free[:, s]
        usable = np.flatnonzero(f >= d.min_part)
        order = usable[np.lexsort((listed[usable], -f[usable], distance[usable], price[usable]))]
        out.append(_fill(d, order, f) is not None)
    return out


@st.composite
def fill_case(draw: st.DrawFn) -> tuple[DemandSnap, np.ndarray, np.ndarray, np.ndarray, Any]:
    """Up to 40 offers' free blocks at up to 8 starts, few prices, latencies and listing
    numbers (ties everywhere), parts of at least 1 to 8, demands up to 80 GPUs (more than 16
    parts of small blocks)."""
    n, m = draw(st.integers(1, 40)), draw(st.integers(1, 8))
    least = draw(st.sampled_from([1, 1, 2, 3, 4, 5, 8]))
    gpus = draw(st.integers(least, 80))
    blocks = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 16])
    free = np.array(
        draw(st.lists(st.lists(blocks, min_size=m, max_size=m), min_size=n, max_size=n)),
        dtype=np.int32,
    )
    price = np.array(draw(st.lists(st.sampled_from([5, 6, 7]), min_size=n, max_size=n)))
    distance = np.array(draw(st.lists(st.sampled_from([0.0, 2.5]), min_size=n, max_size=n)))
    listed = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    return demand(gpus=gpus, min_part=least), free, price, distance, listed


def column_case(gpus: int, least: int, blocks: list[int]) -> tuple[Any, ...]:
    """One start, offers in listing order at one price."""
    n = len(blocks)
    free = np.array(blocks, dtype=np.int32)[:, None]
    zeros = np.zeros(n, dtype=np.int64)
    return demand(gpus=gpus, min_part=least), free, zeros, zeros.astype(float), np.arange(n)


@given(case=fill_case())
@example(case=column_case(15, 5, [8, 5, 5]))  # 8 first, 7 left: no parts of 5 make it
@example(case=column_case(15, 5, [5, 5, 5]))
@example(case=column_case(17, 1, [1] * 17))  # 17 parts: one too many
@example(case=column_case(16, 1, [1] * 17))
@example(case=column_case(128, 8, [4] + [8] * 16))  # the module doc's seventeen offers
@example(case=column_case(9, 5, [6, 6, 9]))  # 6 leaves 3: skipped twice, then 9 takes all
@example(case=column_case(68, 4, [4] * 17))
@settings(max_examples=400, deadline=None)
def test_the_vectorised_fill_decides_every_start_as_the_scalar_fill(case):
    d, free, price, distance, listed = case
    static, cls = _fill_classes(price, distance, listed)
    assert _fills(d, free, static, cls).tolist() == scalar_fills(d, free, price, distance, listed)


def test_the_vectorised_fill_counts_parts_and_passes_over_offers_as_the_scalar_fill():
    cases = [
        (column_case(15, 5, [8, 5, 5]), [False]),
        (column_case(15, 5, [5, 5, 5]), [True]),
        (column_case(17, 1, [1] * 17), [False]),
        (column_case(16, 1, [1] * 17), [True]),
        (column_case(128, 8, [4] + [8] * 16), [True]),  # the 4 is not usable: 16 parts of 8
        (column_case(128, 8, [9] + [8] * 16), [False]),  # 9, then 13 × 8, leave 15: no block
        (column_case(64, 4, [4] * 17), [True]),  # 16 parts of 4
        (column_case(68, 4, [4] * 17), [False]),  # 17 parts of 4: one too many
        (column_case(9, 5, [6, 6, 9]), [True]),
    ]
    for (d, free, price, distance, listed), expected in cases:
        static, cls = _fill_classes(price, distance, listed)
        assert _fills(d, free, static, cls).tolist() == expected
        assert scalar_fills(d, free, price, distance, listed) == expected


@contextmanager
def chunks_of(starts: int, tries: int = partial.SCALAR_TRIES) -> Iterator[None]:
    """Search the start hours in chunks of ``starts`` whatever the group's size, filling the
    first ``tries`` candidate starts of each one by one (0: every start through ``_fills``)."""
    with (
        mock.patch.object(partial, "CHUNK_CELLS", 1),
        mock.patch.object(partial, "CHUNK_MIN_STARTS", starts),
        mock.patch.object(partial, "SCALAR_TRIES", tries),
    ):
        yield


def test_a_common_start_in_a_later_chunk_is_found():
    # given the reviewer's offers (both free together first at hour 701), searched 256 start
    # hours at a time: the fit is in the third chunk
    with chunks_of(256):
        result = solve_greedy([demand(gpus=8, duration=1, end=1000)], reviewer_offers())
    assert parts(result) == [("d", "x", 4, 701), ("d", "y", 4, 701)]


@given(
    case=busy_site(least=1) | busy_site(least=4),
    starts=st.sampled_from([1, 2, 7, 1000]),
    tries=st.sampled_from([0, 1, 4]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_chunk_size_and_the_scalar_tries_change_nothing(case, starts, tries):
    wanted, fleet = case
    whole = solve_greedy([wanted], copy.deepcopy(fleet))
    with chunks_of(starts, tries):
        chunked = solve_greedy([wanted], copy.deepcopy(fleet))
    assert (parts(chunked), chunked.unserved) == (parts(whole), whole.unserved)


class Clock:
    """``perf_counter`` for ``partial``: ``readings`` in turn, then ``late`` for ever."""

    def __init__(self, readings: list[float], late: float) -> None:
        self.readings, self.late = list(readings), late

    def perf_counter(self) -> float:
        return self.readings.pop(0) if self.readings else self.late


def test_greedy_leaves_a_split_demand_open_when_its_deadline_passes_while_it_is_planned(
    monkeypatch: pytest.MonkeyPatch,
):
    # given a 16-GPU site split over two 8-GPU offers (first in price-time order) and a
    # whole 4-GPU demand after it
    def fleet() -> list[OfferSnap]:
        return [offer("o1"), offer("o2", listed=1)]

    demands = [demand("split", price="20"), demand("whole", gpus=4, price="15", split="none")]
    served = solve_greedy(demands, fleet(), deadline=time.perf_counter() + 3600)
    assert set(served.served) == {"split", "whole"}  # with time to spare, both
    # when the deadline passes while the split is being planned (the split search's clock)
    monkeypatch.setattr(partial, "time", Clock([], late=math.inf))
    offers = fleet()
    result = solve_greedy(demands, offers, deadline=time.perf_counter() + 3600)
    # then neither is placed nor given a reason: both stay open, counted as not reached
    assert (result.matches, result.unserved, result.served) == ([], {}, {})
    assert result.solver["not_reached"] == 2
    assert all(max(o.used, default=0) == 0 for o in offers)


@pytest.mark.parametrize(
    "readings",
    [[0.0], [0.0, 1.0]],
    ids=["before-the-split-pass", "while-the-split-is-planned"],
)
def test_optimal_split_pass_stops_at_the_policy_deadline(
    monkeypatch: pytest.MonkeyPatch, readings: list[float]
):
    # given a whole 8-GPU demand the MILP places and a 16-GPU split demand it leaves
    fleet = [offer("o1", listed=0), offer("o2", listed=1), offer("o3", listed=2)]
    demands = [
        demand("whole", gpus=8, price="15", split="none"),
        demand("split", gpus=16, price="18", posted=1),
    ]
    # when the policy's 5 s (read at 0.0) have passed by the time the split pass runs (10.0)
    monkeypatch.setattr(partial, "time", Clock(readings, late=10.0))
    result = solve_optimal_split(demands, fleet, settings=OptimalSettings(time_limit=5))
    # then the whole demand stands and the split one stays open with no (whole-demand) reason
    assert [m.demand_id for m in result.matches] == ["whole"]
    assert result.served == {"whole": 32} and result.unserved == {}
    assert result.solver["not_reached"] == 1 and result.solver["deadline_hit"] is True
    assert sorted(max(o.used, default=0) for o in fleet) == [0, 0, 8]


def test_optimal_split_pass_keeps_what_it_placed_before_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
):
    # given five 8-GPU offers, a whole 8-GPU demand and two split demands (16 and 12 GPUs)
    # the MILP cannot place whole; all three fit together
    fleet = [offer(f"o{i}", listed=i) for i in range(5)]
    demands = [
        demand("whole", gpus=8, price="15", split="none"),
        demand("first", gpus=16, price="18", posted=1),
        demand("second", gpus=12, price="17", posted=2),
    ]
    # when the clock (deadline read at 0.0) allows the first split (its check, its one chunk)
    # and has run out (10.0 > 5) by the second
    monkeypatch.setattr(partial, "time", Clock([0.0, 1.0, 1.0], late=10.0))
    result = solve_optimal_split(demands, fleet, settings=OptimalSettings(time_limit=5))
    # then the first split stands in parts and the second stays open, with no reason
    assert sorted(m.gpus or 8 for m in result.matches if m.demand_id == "first") == [8, 8]
    assert result.served == {"whole": 32, "first": 64} and result.unserved == {}
    assert result.solver["not_reached"] == 1 and result.solver["deadline_hit"] is True
    assert sum(max(o.used, default=0) for o in fleet) == 24


# --- Optimal with partial fills never serves fewer GPU-hours than greedy with them ----------


def test_optimal_keeps_greedys_split_answer_when_it_serves_more():
    # given two 4-GPU offers over [0, 4); an 8-GPU demand that may split at the site, bidding
    # ¥30, and a 4-GPU whole demand bidding ¥20
    def offers() -> list[OfferSnap]:
        return [offer("a", gpus=4, end=4), offer("b", gpus=4, end=4, listed=1)]

    demands = [
        demand("split", gpus=8, duration=4, end=4, price="30"),
        demand("whole", gpus=4, duration=4, end=4, price="20", split="none", posted=1),
    ]
    greedy = solve_greedy(copy.deepcopy(demands), offers())
    fleet = offers()
    optimal = solve_optimal_split(
        copy.deepcopy(demands), fleet, settings=OptimalSettings(time_limit=5)
    )
    # then greedy serves the higher bid in two parts (32 GPU-hours), and so does optimal: its
    # MILP sees the split demand whole and would give an offer to the ¥20 demand (16)
    assert parts(greedy) == parts(optimal) == [("split", "a", 4, 0), ("split", "b", 4, 0)]
    assert greedy.gpu_hours == optimal.gpu_hours == 32
    assert optimal.policy == "optimal"
    assert optimal.solver["floor"] == "greedy with partial fills"
    # and the offers' timelines are those of the answer given
    assert [o.used for o in fleet] == [[4, 4, 4, 4], [4, 4, 4, 4]]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(1, 8), st.integers(0, 4), st.integers(4, 12)),  # gpus, start, len
        min_size=1,
        max_size=5,
    ),
    st.lists(
        st.tuples(
            st.integers(1, 16),  # gpus
            st.integers(1, 4),  # duration
            st.integers(0, 6),  # window slack
            st.sampled_from(["none", "site", "hub"]),
            st.integers(10, 30),  # limit price
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_optimal_with_splits_serves_at_least_greedy_with_splits(raw_offers, raw_demands):
    sites = [CHENGDU_A, CHENGDU_B]
    fleet = [
        offer(f"o{i}", sites[i % 2], gpus=g, start=s, end=s + n, listed=i)
        for i, (g, s, n) in enumerate(raw_offers)
    ]
    demands = [
        demand(f"d{i}", gpus=g, duration=dur, end=dur + slack, split=split, price=str(p), posted=i)
        for i, (g, dur, slack, split, p) in enumerate(raw_demands)
    ]
    greedy = solve_greedy(copy.deepcopy(demands), copy.deepcopy(fleet))
    solved = copy.deepcopy(fleet)
    optimal = solve_optimal_split(
        copy.deepcopy(demands), solved, settings=OptimalSettings(time_limit=10)
    )
    assert optimal.gpu_hours >= greedy.gpu_hours
    # the timelines left are the answer's: every booked hour within capacity, and as booked
    load: dict[tuple[str, int], int] = {}
    for m in optimal.matches:
        d = next(x for x in demands if x.id == m.demand_id)
        for h in range(m.start, m.start + d.duration):
            key = (m.offer_id, h)
            load[key] = load.get(key, 0) + (m.gpus or d.gpu_count)
    for o in solved:  # (the offers start with nothing booked)
        for h in range(o.start, o.end):
            assert o.used[h - o.start] == load.get((o.id, h), 0) <= o.gpu_count
