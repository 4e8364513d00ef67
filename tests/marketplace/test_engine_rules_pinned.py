"""Matching rules pinned by hand-made instances with known answers (no database).

Each test here was written against a single-point change of the engine that the rest of the
engine tests did not notice (a manual mutation-testing pass): the rule it states is the one
that change broke. Money (§5.4 voucher split), greedy's tie-breaks, ``optimal``'s order and
capacity model, the split placement (partial fills) and ``explain``'s first blocking rule and
near misses."""

import copy
from decimal import Decimal
from typing import Any

from marketplace.matching.engine import (
    DemandSnap,
    OfferSnap,
    Result,
    SiteRef,
    VoucherSnap,
    solve_greedy,
)
from marketplace.matching.explain import explain
from marketplace.matching.optimal import OptimalSettings, solve_optimal
from marketplace.matching.partial import solve_optimal_split
from tests.marketplace.snaps import (
    DEYANG,
    GUIYANG,
    QINGYANG,
    make_demand,
    make_offer,
)

LATENCY = {("cc", "gansu"): 12.0, ("cc", "guizhou"): 8.0}
CHENGDU_B = SiteRef("s-cd-b", "Chengdu", "Chengdu", "cc")  # a second site in the same city


def voucher(providers: set[str], available: str = "1000", **region: frozenset[str]) -> VoucherSnap:
    """A 50 % voucher for ``providers``' offers (region: ``hubs``, ``clusters``, ``sites``)."""
    return VoucherSnap(
        "v", Decimal("0.5"), Decimal(available), providers=frozenset(providers), **region
    )


def booked(result: Result) -> list[tuple[str, str, int, Decimal]]:
    """``(demand, offer, start, voucher part)`` per match, sorted."""
    return sorted((m.demand_id, m.offer_id, m.start, m.voucher_part) for m in result.matches)


def picks(result: Result) -> list[tuple[str, str, int]]:
    return sorted((m.demand_id, m.offer_id, m.start) for m in result.matches)


def both(demands: list[DemandSnap], offers: list[OfferSnap]) -> tuple[Result, Result]:
    greedy = solve_greedy(copy.deepcopy(demands), copy.deepcopy(offers), latency=LATENCY)
    optimal = solve_optimal(
        copy.deepcopy(demands),
        copy.deepcopy(offers),
        latency=LATENCY,
        settings=OptimalSettings(time_limit=30),
    )
    return greedy, optimal


# --- §5.4: when the voucher pays nothing, and how much it pays --------------------------------


def test_a_related_providers_offer_gets_no_voucher_part_so_the_cheaper_cash_offer_wins():
    # given buyer b1 related to p2, a 50 % voucher covering p2, and two city offers: p2's at
    # ¥12 (¥192 for 4 GPUs × 4 h, ¥96 if the voucher paid half) and p1's at ¥10 (¥160)
    v = voucher({"p2"})
    offers = [
        make_offer("related", provider="p2", price="12"),
        make_offer("plain", provider="p1", price="10", listed=1),
    ]
    d = make_demand("d", voucher=v, related=frozenset({"p2"}))
    for result in both([d], offers):
        # then the related party's offer is paid in cash only (§5.4), so p1's is cheaper
        assert booked(result) == [("d", "plain", 0, Decimal("0.00"))]
    # and booked on its own, the related offer carries no voucher part and draws nothing
    result = solve_greedy([d], [offers[0]])
    assert booked(result) == [("d", "related", 0, Decimal("0.00"))]
    assert v.available == Decimal("1000")


def test_a_voucher_pays_nothing_on_a_site_outside_its_programmes_region():
    # given a 50 % voucher for p2 valid at the Gansu hub only, p2's ¥12 offer in Chengdu and
    # p1's ¥10 offer next to it
    v = voucher({"p2"}, hubs=frozenset({"gansu"}))
    offers = [
        make_offer("outside", provider="p2", price="12"),
        make_offer("plain", provider="p1", price="10", listed=1),
    ]
    for result in both([make_demand("d", voucher=v)], offers):
        # then the voucher does not cover the Chengdu offer: the cheaper cash offer wins
        assert booked(result) == [("d", "plain", 0, Decimal("0.00"))]
    # while inside the region the voucher pays its share
    inside = make_offer("inside", provider="p2", price="12", site=QINGYANG)
    result = solve_greedy([make_demand("d", voucher=v)], [inside])
    assert booked(result) == [("d", "inside", 0, Decimal("96.00"))]


def test_a_voucher_scoped_to_a_cluster_pays_at_the_clusters_sites_only():
    # given a voucher for p2 valid in cluster "tianfu" (no hub or site scope), p2's offers at a
    # site of that cluster and at another site of the same hub outside it
    v = voucher({"p2"}, clusters=frozenset({"tianfu"}))
    in_cluster = SiteRef("s-tf", "Chengdu", "Chengdu", "cc", cluster="tianfu")
    other = SiteRef("s-cq2", "Chengdu", "Chengdu", "cc", cluster="chongqing")
    assert v.covers(make_offer("a", provider="p2", site=in_cluster))
    assert not v.covers(make_offer("b", provider="p2", site=other))
    # then a demand booked in the cluster gets the voucher's half of ¥160
    result = solve_greedy(
        [make_demand("d", voucher=v)], [make_offer("tf", provider="p2", site=in_cluster)]
    )
    assert booked(result) == [("d", "tf", 0, Decimal("80.00"))]


def test_the_voucher_share_is_rounded_down_to_the_fen():
    # given one GPU for one hour at ¥3.3333: a bill of ¥3.33, half of which is ¥1.665
    v = voucher({"p1"})
    offers = [make_offer("o", price="3.3333")]
    result = solve_greedy([make_demand("d", gpus=1, duration=1, voucher=v)], offers)
    [m] = result.matches
    # then the voucher pays floor_fen(1.665) = ¥1.66 and the buyer ¥1.67 (§5.4)
    assert (m.bill, m.voucher_part, m.cash_part) == (
        Decimal("3.33"),
        Decimal("1.66"),
        Decimal("1.67"),
    )


# --- Greedy's tie-breaks ------------------------------------------------------------------------


def test_across_hubs_the_lower_latency_hub_wins_over_an_earlier_start():
    # given two national offers at one price: Guizhou (8 ms) free from hour 5 only, Gansu
    # (12 ms) free from hour 0
    guizhou = make_offer("guizhou", site=GUIYANG, used=[8] * 5 + [0] * 43)
    gansu = make_offer("gansu", site=QINGYANG, listed=1)
    result = solve_greedy([make_demand("d")], [guizhou, gansu], latency=LATENCY)
    # then docking goes to the nearer hub by latency, even though it starts later (§4.3)
    assert picks(result) == [("d", "guizhou", 5)]


# --- Optimal: its order, its objective and its capacity model ------------------------------------


def test_optimal_maximises_gpu_hours_not_gpus():
    # given one 8-GPU offer over [0, 4): an 8-GPU, 1-hour demand that must run in hour 0, and
    # a 4-GPU, 4-hour one; both need hour 0, so only one can run
    offers = [make_offer("o", end=4)]
    demands = [
        make_demand("wide", gpus=8, duration=1, end=1, price="30"),
        make_demand("long", gpus=4, duration=4, end=4, price="20", posted=1),
    ]
    greedy, optimal = both(demands, offers)
    # then greedy serves the higher bid (8 GPU-hours), optimal the longer job (16)
    assert picks(greedy) == [("wide", "o", 0)]
    assert picks(optimal) == [("long", "o", 0)]
    assert (greedy.gpu_hours, optimal.gpu_hours) == (8, 16)


def test_optimal_respects_capacity_that_drops_inside_a_booking():
    # given the fragmentation trap (a cheap 8-GPU offer, a dearer one), where the dearer offer
    # has 8 GPUs free in hour 0 but only 4 from hour 1 on
    offers = [
        make_offer("big", gpus=8, price="10", end=4),
        make_offer("small", gpus=8, price="11", end=4, used=[0, 4, 4, 4], listed=1),
    ]
    demands = [
        make_demand("d4", gpus=4, price="30"),
        make_demand("d8", gpus=8, price="20", posted=1),
        make_demand("d2", gpus=2, price="15", posted=2),
    ]
    greedy, optimal = both(demands, offers)
    assert picks(greedy) == [("d2", "big", 0), ("d4", "big", 0)]
    # then optimal serves the gang on the big offer and d4 on the small one, where only 4
    # GPUs are free after hour 0: d2 cannot join it there (its 2 GPUs would overbook hours
    # 1-3), and an answer that ignored that drop would be thrown away for greedy's
    assert picks(optimal) == [("d4", "small", 0), ("d8", "big", 0)]
    assert (greedy.gpu_hours, optimal.gpu_hours) == (24, 48)
    assert optimal.unserved == {"d2": "no_free_window"}


def test_at_equal_service_optimal_keeps_every_demand_in_its_nearest_tier_over_cheaper_cash():
    # given a ¥5 city offer and a ¥5 metro offer of 12 GPUs each and three ¥40 city offers of
    # 4 GPUs; a 12-GPU demand that may dock anywhere (highest bid) and three 4-GPU demands
    # that must stay in the city
    offers = [
        make_offer("city", gpus=12, price="5", end=4),
        make_offer("metro", gpus=12, price="5", end=4, site=DEYANG, listed=1),
    ] + [make_offer(f"dear{i}", gpus=4, price="40", end=4, listed=2 + i) for i in range(3)]
    demands = [make_demand("big", gpus=12, price="50", end=4)] + [
        make_demand(f"small{i}", gpus=4, price="45", limit="city", end=4, posted=1 + i)
        for i in range(3)
    ]
    greedy, optimal = both(demands, offers)
    # then greedy serves everyone in the city; moving the big demand to the metro offer would
    # let the small ones share the ¥5 city offer (¥480 cash instead of ¥2,160), but it serves
    # no more GPU-hours, so optimal keeps greedy's answer: the nearer tier comes first
    expected = [
        ("big", "city", 0),
        ("small0", "dear0", 0),
        ("small1", "dear1", 0),
        ("small2", "dear2", 0),
    ]
    assert picks(optimal) == picks(greedy) == expected
    assert {m.tier for m in optimal.matches} == {"city"}


def test_a_block_that_serves_more_still_keeps_each_demand_in_its_nearest_tier():
    # given the fragmentation trap for hours [10, 14) (a ¥1 8-GPU and a ¥2 4-GPU offer), which
    # optimal improves, and for hours [0, 4) a ¥5 city and a ¥5 metro offer of 8 GPUs and two
    # ¥12 city offers of 4 GPUs; an 8-GPU demand free to dock and two 4-GPU city-only ones
    offers = [
        make_offer("city", gpus=8, price="5", end=4),
        make_offer("metro", gpus=8, price="5", end=4, site=DEYANG, listed=1),
        make_offer("dear0", gpus=4, price="12", end=4, listed=2),
        make_offer("dear1", gpus=4, price="12", end=4, listed=3),
        make_offer("t-big", gpus=8, price="1", start=10, end=14, listed=4),
        make_offer("t-small", gpus=4, price="2", start=10, end=14, listed=5),
    ]
    demands = [
        make_demand("t4", gpus=4, price="60", start=10, end=14),
        make_demand("t8", gpus=8, price="55", start=10, end=14, posted=1),
        make_demand("big", gpus=8, price="50", end=4, posted=2),
        make_demand("small0", price="45", limit="city", end=4, posted=3),
        make_demand("small1", price="44", limit="city", end=4, posted=4),
    ]
    greedy, optimal = both(demands, offers)
    assert picks(greedy) == [
        ("big", "city", 0),
        ("small0", "dear0", 0),
        ("small1", "dear1", 0),
        ("t4", "t-big", 10),
    ]
    # then optimal serves the trap (one block: every demand could use every bucket) and keeps
    # the 8-GPU demand in the city: sending it to the metro offer so that the small ones share
    # the ¥5 city offer would save cash but serve no more GPU-hours
    assert picks(optimal) == [
        ("big", "city", 0),
        ("small0", "dear0", 0),
        ("small1", "dear1", 0),
        ("t4", "t-small", 10),
        ("t8", "t-big", 10),
    ]
    assert {m.tier for m in optimal.matches} == {"city"}


def test_optimal_moves_a_demand_to_the_tighter_fit_after_the_solve():
    # given the fragmentation trap on two offers for hours [0, 4), which optimal improves, and
    # a third demand for hours [4, 8) with two ¥12 offers there: 8 GPUs (listed first, 4
    # left after it) and 100 GPUs with 90 in use (6 left after it)
    offers = [
        make_offer("big", gpus=8, price="10", end=4),
        make_offer("small", gpus=4, price="11", end=4, listed=1),
        make_offer("eight", gpus=8, price="12", start=4, end=8, listed=2),
        make_offer("hundred", gpus=100, price="12", start=4, end=8, used=[90] * 4, listed=3),
    ]
    demands = [
        make_demand("d4", gpus=4, price="30", end=4),
        make_demand("d8", gpus=8, price="20", end=4, posted=1),
        make_demand("late", gpus=4, start=4, end=8, posted=2),
    ]
    greedy, optimal = both(demands, offers)
    assert picks(greedy) == [("d4", "big", 0), ("late", "eight", 4)]
    # then optimal serves the trap, and the late demand stays on the 8-GPU offer: a 4-GPU
    # sliver, not 6 (the solver's weights favour the small share of a large offer; the polish
    # puts it back in the policy's order, fewest GPUs left as slivers)
    assert picks(optimal) == [("d4", "small", 0), ("d8", "big", 0), ("late", "eight", 4)]


def test_optimal_draws_a_shared_voucher_in_price_time_order_like_greedy():
    # given one voucher (50 %, ¥60 left) on two demands of one buyer that both fit: the
    # earlier posted bids ¥15, the later ¥20
    v = voucher({"p1"}, available="60")
    offers = [make_offer("o", gpus=16)]
    demands = [
        make_demand("early", price="15", voucher=v),
        make_demand("rich", price="20", voucher=v, posted=1),
    ]
    greedy, optimal = both(demands, offers)
    # then the higher limit draws first: ¥60 of its ¥80 share; nothing is left for the other
    expected = [("early", "o", 0, Decimal("0.00")), ("rich", "o", 0, Decimal("60.00"))]
    assert booked(greedy) == booked(optimal) == expected


# --- Split placements (partial fills) ---------------------------------------------------------


def split_demand(id: str = "d", gpus: int = 8, **kw: Any) -> DemandSnap:
    return make_demand(id, gpus=gpus, split="site", **kw)


def parts(result: Result) -> list[tuple[str, str, int | None, int]]:
    return sorted((m.demand_id, m.offer_id, m.gpus, m.start) for m in result.matches)


def test_a_split_never_takes_a_part_on_the_buyers_own_offer():
    # given two 4-GPU offers at one site, one of them the buyer's own, and an 8-GPU split
    # demand
    offers = [make_offer("own", gpus=4, provider="b1"), make_offer("other", gpus=4, listed=1)]
    result = solve_greedy([split_demand()], offers)
    # then no part lands on the buyer's own offer, so the demand is not placed
    assert result.matches == []
    assert result.unserved == {"d": "self_trade"}
    assert all(max(o.used) == 0 for o in offers)


def test_a_split_takes_parts_priced_exactly_at_the_limit():
    offers = [make_offer("a", gpus=4, price="10"), make_offer("b", gpus=4, price="10", listed=1)]
    result = solve_greedy([split_demand(price="10")], offers)
    assert parts(result) == [("d", "a", 4, 0), ("d", "b", 4, 0)]


def test_among_sites_of_one_tier_the_cheaper_split_wins_over_an_earlier_one():
    # given two sites in the buyer's city: two ¥10 4-GPU offers free from hour 10 at one, two
    # ¥12 ones free from hour 0 at the other
    offers = [
        make_offer("cheap1", gpus=4, price="10", start=10),
        make_offer("cheap2", gpus=4, price="10", start=10, listed=1),
        make_offer("dear1", gpus=4, price="12", site=CHENGDU_B, listed=2),
        make_offer("dear2", gpus=4, price="12", site=CHENGDU_B, listed=3),
    ]
    result = solve_greedy([split_demand()], offers)
    # then the buyer pays less (¥320, not ¥384) and waits until hour 10 (§4.2: cost first)
    assert parts(result) == [("d", "cheap1", 4, 10), ("d", "cheap2", 4, 10)]


def test_a_split_fills_the_larger_free_block_first_at_one_price():
    # given three offers at one site and price with 2, 4 and 12 GPUs (listed in that order),
    # and a 14-GPU split demand
    offers = [
        make_offer("two", gpus=2),
        make_offer("four", gpus=4, listed=1),
        make_offer("twelve", gpus=12, listed=2),
    ]
    result = solve_greedy([split_demand(gpus=14)], offers)
    # then it takes 12 + 2 (two parts, two reservations), not 2 + 4 + 8
    assert parts(result) == [("d", "four", 2, 0), ("d", "twelve", 12, 0)]


def test_optimal_places_split_demands_in_price_time_order():
    # given two 4-GPU offers at one site and two 8-GPU split demands: the earlier posted bids
    # ¥15, the later ¥20; the site holds only one of them
    offers = [make_offer("a", gpus=4, end=4), make_offer("b", gpus=4, end=4, listed=1)]
    demands = [
        split_demand("early", price="15", end=4),
        split_demand("rich", price="20", end=4, posted=1),
    ]
    result = solve_optimal_split(demands, offers, settings=OptimalSettings(time_limit=30))
    # then the split pass gives the site to the higher limit
    assert parts(result) == [("rich", "a", 4, 0), ("rich", "b", 4, 0)]
    assert result.unserved == {"early": "no_free_window"}


# --- explain: the first blocking rule and the near misses --------------------------------------


def test_explain_counts_the_buyers_own_offer_beyond_the_limit_under_locality():
    # given the buyer's own offer in Gansu and a demand limited to its city
    d = make_demand("d", limit="city")
    result = explain(d, [make_offer("own", provider="b1", site=QINGYANG)], Decimal("1000"))
    # then locality blocks it first (model, price, locality, then self trade)
    assert result.first_rule == {"own": "locality"}


def test_explain_says_voucher_when_the_wallet_holds_exactly_the_cash_part_with_the_voucher():
    # given a ¥160 bill, a 50 % voucher that does not cover the offer, and ¥80 in the wallet
    d = make_demand("d", voucher=voucher({"p2"}))
    result = explain(d, [make_offer("o", provider="p1")], wallet=Decimal("80"))
    # then the voucher is what blocks: with it the wallet would have been enough
    assert result.first_rule == {"o": "voucher"}
    assert explain(d, [make_offer("o", provider="p1")], wallet=Decimal("79.99")).first_rule == {
        "o": "funds"
    }


def test_explain_earliest_fit_is_the_first_listed_of_equal_starts():
    d = make_demand("d")
    offers = [make_offer("zzz", listed=0), make_offer("aaa", listed=1)]
    result = explain(d, offers, Decimal("1000"))
    assert result.earliest_fit is not None
    assert (result.earliest_fit.offer_id, result.earliest_fit.start) == ("zzz", 0)


def test_explain_earliest_fit_never_names_an_offer_whose_minimum_duration_is_too_long():
    # given an offer free from hour 0 that sells 10 hours at least, and a 4-hour demand
    d = make_demand("d")
    result = explain(d, [make_offer("long-min", min_duration=10)], Decimal("1000"))
    # then it is blocked by the window rule and is no near miss: it would never be booked
    assert result.first_rule == {"long-min": "window"}
    assert result.earliest_fit is None


def test_explain_earliest_fit_reaches_the_offers_last_hour():
    # given an 8-GPU offer over [0, 48), full until hour 44, and a demand for [0, 10)
    d = make_demand("d", end=10)
    o = make_offer("o", used=[8] * 44 + [0] * 4)
    result = explain(d, [o], Decimal("1000"))
    # then the near miss is the run [44, 48) that ends with the offer, past the window
    assert result.first_rule == {"o": "capacity"}
    assert result.earliest_fit is not None
    assert (result.earliest_fit.offer_id, result.earliest_fit.start) == ("o", 44)
