"""``explain`` on plain data: the money rules (voucher, funds), self trade and the near
misses, and explain against the matcher on random instances."""

import copy
from dataclasses import replace
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.matching.engine import VoucherSnap, solve_greedy
from marketplace.matching.explain import explain
from tests.marketplace.snaps import CHENGDU, CHONGQING, DEYANG, GUIYANG, make_demand, make_offer
from tests.marketplace.test_engine_optimal import QINGYANG, demand, offer


def voucher(providers: set[str]) -> VoucherSnap:
    return VoucherSnap(
        id="v", max_share=Decimal("0.5"), available=Decimal("1000"), providers=frozenset(providers)
    )


def test_voucher_blocks_when_only_the_voucher_share_would_have_made_the_wallet_enough():
    # 4 GPUs × 4 h × CNY 10 = CNY 160; the wallet holds 100, a 50 % voucher would make it 80
    d = demand("d", voucher=voucher({"p2"}))
    result = explain(d, [offer("p1-offer", provider="p1")], wallet=Decimal("100"))
    assert result.first_rule == {"p1-offer": "voucher"}


def test_funds_block_when_even_the_voucher_share_is_not_enough():
    d = demand("d", voucher=voucher({"p1"}))
    result = explain(d, [offer("o", provider="p1")], wallet=Decimal("79.99"))
    assert result.first_rule == {"o": "funds"}
    assert explain(d, [offer("o", provider="p1")], wallet=Decimal("80")).fits == 1


def test_rules_apply_in_order_and_the_cheapest_over_limit_is_named():
    d = demand("d", price="12", limit="region")
    offers = [
        offer("far-and-dear", price="13", site=QINGYANG),  # price comes before locality
        offer("dearer", price="19"),
        offer("far", price="9", site=QINGYANG, listed=1),
    ]
    result = explain(d, offers, wallet=Decimal("1000"))
    assert result.first_rule == {"far-and-dear": "price", "dearer": "price", "far": "locality"}
    # the ¥13 offer is beyond the locality limit as well: the near miss is the ¥19 one, the
    # cheapest that a higher limit alone would make fit
    assert result.cheapest_over_limit is not None
    assert (result.cheapest_over_limit.offer_id, result.cheapest_over_limit.price) == (
        "dearer",
        Decimal("19"),
    )
    assert result.earliest_fit is None


def test_a_related_organisations_offer_fits_as_the_matcher_books_it():
    # given (the reviewer's case) one city-tier offer of p3 at ¥5, 8 GPUs over hours [0, 48),
    # and buyer b1, related to p3, asking 4 GPUs × 4 h at up to ¥10 within its city
    d = make_demand("d", price="10", limit="city", related=frozenset({"p3"}))
    offers = [make_offer("p3-offer", provider="p3", price="5")]
    # when the buyer asks why, and the matcher runs on the same snapshot
    why = explain(d, copy.deepcopy(offers), wallet=Decimal("1000"))
    booked = solve_greedy([d], offers, latency={}).matches
    # then the offer fits (a related party only loses the voucher part, §5.4), as booked
    assert (why.fits, why.blocked["self_trade"], why.first_rule) == (1, 0, {"p3-offer": ""})
    assert why.earliest_fit is not None
    assert (why.earliest_fit.offer_id, why.earliest_fit.start) == ("p3-offer", 0)
    assert [(m.offer_id, m.voucher_part) for m in booked] == [("p3-offer", Decimal("0.00"))]


def test_only_the_buyers_own_offer_is_a_self_trade_and_never_a_near_miss():
    # given buyer b1, related to p3, and an offer of b1 itself at ¥5 and one of p3 at ¥10
    d = make_demand("d", price="10", related=frozenset({"p3"}))
    offers = [
        make_offer("own", provider="b1", price="5"),
        make_offer("related", provider="p3", price="10", listed=1),
    ]
    # when the buyer asks why: its own offer is a self trade, the related party's fits
    result = explain(d, offers, wallet=Decimal("1000"))
    assert result.first_rule == {"own": "self_trade", "related": ""}
    assert result.earliest_fit is not None and result.earliest_fit.offer_id == "related"
    # and at a limit of ¥4 both are over it: the near miss is p3's, not the cheaper own one
    result = explain(replace(d, max_price=Decimal("4")), offers, wallet=Decimal("1000"))
    assert result.blocked["price"] == 2
    assert result.cheapest_over_limit is not None
    assert result.cheapest_over_limit.offer_id == "related"


def test_the_cheapest_over_limit_is_the_cheapest_a_higher_limit_alone_would_fit():
    # given a demand of 4 GPUs × 4 h in hours [0, 10) at up to ¥10 within its city, and
    # offers over the limit that each break one more rule, cheapest first
    d = make_demand("d", end=10, price="10", limit="city")
    broken = [
        make_offer("metro", price="11", site=DEYANG),  # beyond the locality limit
        make_offer("own", price="12", provider="b1"),  # the buyer's own
        make_offer("long", price="13", min_duration=5),  # minimum duration 5 h > 4 h
        make_offer("late", price="14", start=7),  # only 3 h of the window left
        make_offer("full", price="15", used=[5] * 48),  # 3 of 8 GPUs free
        make_offer("small", price="16", gpus=2),  # fewer GPUs than the demand
    ]
    fitting = [make_offer("ok-b", price="17", listed=1), make_offer("ok-a", price="17")]
    # when the buyer asks why
    result = explain(d, [*broken, *fitting], wallet=Decimal("1000"))
    # then every one counts under price, and the near miss is the cheapest that would fit,
    # the first listed among equal prices
    assert (result.blocked["price"], result.fits) == (8, 0)
    assert result.cheapest_over_limit is not None
    assert (result.cheapest_over_limit.offer_id, result.cheapest_over_limit.tier) == (
        "ok-a",
        "city",
    )
    # and without the fitting ones there is none
    assert explain(d, broken, wallet=Decimal("1000")).cheapest_over_limit is None


# --- explain agrees with the matcher -------------------------------------------------------

_SITES = (CHENGDU, DEYANG, CHONGQING, QINGYANG, GUIYANG)
_LIMITS = ("city", "metro", "region", "national")


@given(
    need=st.tuples(
        st.integers(1, 8),  # GPUs
        st.integers(1, 6),  # hours
        st.integers(0, 12),  # earliest start hour
        st.integers(0, 12),  # slack hours in the window
        st.integers(8, 20),  # limit price
        st.sampled_from(_LIMITS),
    ),
    listed=st.lists(
        st.tuples(
            st.sampled_from(_SITES),
            st.sampled_from(("A100", "A100", "H800")),
            st.integers(5, 22),  # price
            st.integers(1, 8),  # GPUs
            st.integers(0, 10),  # first hour
            st.integers(1, 24),  # hours available
            st.sampled_from(("p1", "p2", "p3", "b1")),  # b1: the buyer's own offer
            st.lists(st.integers(0, 8), max_size=30),  # GPUs already booked per hour
            st.sampled_from((1, 1, 1, 3, 8)),  # minimum duration
        ),
        min_size=1,
        max_size=8,
    ),
    related=st.frozensets(st.sampled_from(("p1", "p2", "p3"))),  # the buyer's related parties
)
@settings(max_examples=300, deadline=None)
def test_explain_says_an_offer_fits_exactly_when_the_matcher_books_the_demand(
    need, listed, related
):
    # given one demand of a buyer with related organisations, offers of every kind (model,
    # price, place, owner: own, related or not, minimum duration, window, bookings), and a
    # wallet that pays any bill
    gpus, hours, start, slack, price, limit = need
    d = make_demand(
        "d",
        gpus=gpus,
        duration=hours,
        start=start,
        end=start + hours + slack,
        price=str(price),
        limit=limit,
        related=related,
    )
    offers = [
        make_offer(
            f"o{i}",
            site=site,
            model=model,
            price=str(p),
            gpus=n,
            start=first,
            end=first + length,
            provider=provider,
            used=[min(b, n) for b in booked[:length]] + [0] * max(0, length - len(booked)),
            listed=i,
            min_duration=least,
        )
        for i, (site, model, p, n, first, length, provider, booked, least) in enumerate(listed)
    ]
    # when the buyer asks why, and the matcher runs on the same snapshot
    why = explain(d, copy.deepcopy(offers), wallet=Decimal("1000000"))
    booked_by = solve_greedy([d], offers, latency={}).matches
    # then every offer is counted once, explain finds a fit exactly when the matcher books
    # the demand, and the offer booked is one explain says fits
    assert sum(why.blocked.values()) + why.fits == why.offers == len(offers)
    assert (why.fits > 0) == bool(booked_by)
    for match in booked_by:
        assert why.first_rule[match.offer_id] == ""
    # and the cheapest over the limit is, by brute force, the cheapest offer over the limit
    # that the matcher books the demand on once the limit is its price (first listed on ties)
    at_its_price = [
        o
        for o in offers
        if o.price > d.max_price
        and solve_greedy([replace(d, max_price=o.price)], [copy.deepcopy(o)], latency={}).matches
    ]
    cheapest = min(at_its_price, key=lambda o: (o.price, o.listed), default=None)
    named = why.cheapest_over_limit
    assert (named and named.offer_id) == (cheapest and cheapest.id)
