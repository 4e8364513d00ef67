"""The indexed greedy walk (offer buckets, locality rings, free-run queries, early exit) gives
exactly the answer of a plain scan of every (demand, offer) pair — the reference below."""

from dataclasses import replace
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from marketplace.locality import TIERS, tier_between, tier_rank
from marketplace.matching.engine import (
    REASONS,
    DemandSnap,
    Match,
    OfferIndex,
    OfferSnap,
    SiteRef,
    VoucherSnap,
    bill_of,
    solve_greedy,
    voucher_part_of,
)
from tests.marketplace.snaps import make_demand, make_offer

SITES = [
    SiteRef("s-cd", "Chengdu", "Chengdu", "cc"),
    SiteRef("s-dy", "Deyang", "Chengdu", "cc"),
    SiteRef("s-cq", "Chongqing", "Chongqing", "cc"),
    SiteRef("s-qy", "Qingyang", "Qingyang", "gansu"),
    SiteRef("s-zw", "Zhongwei", "Zhongwei", "ningxia", cluster="c1"),
]
LATENCY = {("cc", "gansu"): 9.0, ("cc", "ningxia"): 12.0, ("gansu", "cc"): 9.0}


def reference_greedy(demands: list[DemandSnap], offers: list[OfferSnap]) -> tuple[list, dict]:
    """Every pair scanned, hour by hour: the rules of ``engine`` without any index."""
    matches: list[Match] = []
    unserved: dict[str, str] = {}
    for d in sorted(demands, key=lambda d: (-d.max_price, d.posted, d.id)):
        limit = tier_rank(d.limit)
        blocked = 0
        best: dict[int, tuple] = {}
        for o in offers:
            if o.model not in d.models:
                continue
            rank = tier_rank(
                tier_between(
                    d.origin.city,
                    d.origin.metro,
                    d.origin.hub,
                    o.site.city,
                    o.site.metro,
                    o.site.hub,
                )
            )
            if rank > limit:
                blocked = max(blocked, 2 if o.price <= d.max_price else 1)
                continue
            if o.price > d.max_price:
                blocked = max(blocked, 1)
                continue
            if o.min_duration > d.duration:
                blocked = max(blocked, 3)
                continue
            if o.provider == d.buyer:
                blocked = max(blocked, 5)
                continue
            start = o.earliest_fit(d.gpu_count, d.duration, d.start, d.end)
            if start is None:
                blocked = max(blocked, 4)
                continue
            bill = bill_of(d.gpu_count, d.duration, o.price)
            vpart = voucher_part_of(bill, d.voucher, o, d.buyer, d.related)
            distance = LATENCY.get((d.origin.hub, o.site.hub), 0.0) if rank == 3 else 0.0
            key = (bill - vpart, distance, start, o.listed, o.id)
            if rank not in best or key < best[rank][0]:
                best[rank] = (key, Match(d.id, o.id, start, TIERS[rank], bill, vpart), o)
        if not best:
            unserved[d.id] = REASONS[blocked]
            continue
        _, match, o = best[min(best)]
        o.take(d.gpu_count, match.start, d.duration)
        if d.voucher is not None and match.voucher_part:
            d.voucher.available -= match.voucher_part
        matches.append(match)
    return matches, unserved


offer_st = st.tuples(
    st.integers(0, len(SITES) - 1),
    st.sampled_from(["8", "9", "9.001", "10", "12"]),
    st.integers(1, 8),
    st.integers(0, 6),
    st.integers(10, 30),
    st.sampled_from(["p1", "p2", "b1"]),
    st.sampled_from(["A100", "H800"]),
    st.integers(1, 3),
)
demand_st = st.tuples(
    st.integers(1, 8),
    st.integers(1, 6),
    st.integers(0, 16),
    st.integers(0, 14),
    st.sampled_from(["9", "10", "12", "20"]),
    st.sampled_from(list(TIERS)),
    st.integers(0, len(SITES) - 1),
    st.booleans(),
    st.sampled_from([frozenset({"A100"}), frozenset({"H800"}), frozenset({"A100", "H800"})]),
)


def build(offers, demands, used):
    o_snaps = [
        OfferSnap(
            id=f"o{i}",
            provider=prov,
            model=model,
            site=SITES[site],
            price=Decimal(price),
            gpu_count=gpus,
            start=start,
            end=end,
            min_duration=min_dur,
            listed=(i * 7) % len(offers),
        )
        for i, (site, price, gpus, start, end, prov, model, min_dur) in enumerate(offers)
    ]
    for o in o_snaps:
        for h in range(len(o.used)):
            o.used[h] = min(o.gpu_count, used[(h + int(o.id[1:])) % len(used)])
    d_snaps = []
    for i, (gpus, dur, start, slack, price, limit, origin, vouch, models) in enumerate(demands):
        voucher = (
            VoucherSnap(
                "v", Decimal("0.5"), Decimal("60"), frozenset({"p2"}), hubs=frozenset({"cc"})
            )
            if vouch
            else None
        )
        d_snaps.append(
            DemandSnap(
                id=f"d{i}",
                buyer="b1",
                related=frozenset({"p1"}) if i % 3 == 0 else frozenset(),
                models=models,
                gpu_count=gpus,
                duration=dur,
                start=start,
                end=start + dur + slack,
                max_price=Decimal(price),
                origin=SITES[origin],
                limit=limit,
                posted=(i * 5) % len(demands),
                voucher=voucher,
            )
        )
    return d_snaps, o_snaps


@settings(max_examples=300, deadline=None)
@given(
    offers=st.lists(offer_st, min_size=1, max_size=14),
    demands=st.lists(demand_st, min_size=1, max_size=14),
    used=st.lists(st.integers(0, 8), min_size=1, max_size=7),
)
def test_indexed_greedy_equals_the_plain_scan(offers, demands, used):
    d1, o1 = build(offers, demands, used)
    d2, o2 = build(offers, demands, used)
    result = solve_greedy(d1, o1, latency=LATENCY)
    matches, unserved = reference_greedy(d2, o2)
    assert result.matches == matches
    assert result.unserved == unserved
    assert [o.used for o in o1] == [o.used for o in o2]


def test_inside_a_bucket_the_earlier_start_wins_then_the_first_listed():
    # given three interchangeable offers of 8 GPUs (one bucket): the first listed is full in
    # hour 0, the other two are free
    offers = [make_offer(f"o{i}", end=24, listed=i) for i in range(3)]
    offers[0].used[0] = 8
    d = make_demand("d", gpus=4, duration=2, end=24, limit="city")
    # when 4 GPUs, then 8, then 8 are asked for two hours from hour 0
    asks = [d, replace(d, id="e", gpu_count=8, posted=1), replace(d, id="f", gpu_count=8, posted=2)]
    result = solve_greedy(asks, offers)
    # then the earliest start wins over listing order, and at one start the first listed wins
    assert [(m.offer_id, m.start) for m in result.matches] == [("o1", 0), ("o2", 0), ("o0", 1)]


bucket_offer_st = st.tuples(
    st.integers(1, 8),  # GPUs
    st.integers(0, 4),  # start
    st.integers(6, 20),  # end
    st.lists(st.integers(0, 8), min_size=1, max_size=5),  # used pattern
)
step_st = st.tuples(
    st.integers(1, 8),  # GPUs
    st.integers(1, 6),  # duration
    st.integers(0, 16),  # earliest start
    st.integers(0, 6),  # slack
    st.booleans(),  # book the fit found
)


@settings(max_examples=300, deadline=None)
@given(
    offers=st.lists(bucket_offer_st, min_size=1, max_size=6),
    steps=st.lists(step_st, min_size=1, max_size=30),
)
def test_bucket_earliest_equals_a_scan_of_its_offers_between_bookings(offers, steps):
    """The cached free runs per GPU count, refreshed only for the rows and GPU counts a booking
    changed, answer as a scan of every offer: earliest start, then first listed."""
    snaps = []
    for i, (gpus, start, end, pattern) in enumerate(offers):
        o = OfferSnap(f"o{i}", "p1", "A100", SITES[0], Decimal("10"), gpus, start, end, listed=i)
        o.used = [min(gpus, pattern[h % len(pattern)]) for h in range(end - start)]
        snaps.append(o)
    index = OfferIndex(snaps, {})
    (bucket,) = index.by_model["A100"][SITES[0]]
    for gpus, duration, lo, slack, book in steps:
        hi = lo + duration + slack
        fits = [
            (s, row)
            for row, o in enumerate(bucket.offers)
            if (s := o.earliest_fit(gpus, duration, lo, hi)) is not None
        ]
        expected = (min(fits)[1], min(fits)[0]) if fits else None
        assert bucket.earliest(gpus, duration, lo, hi) == expected
        if book and expected is not None:
            index.take(bucket.offers[expected[0]], gpus, expected[1], duration)
            assert (bucket.free >= 0).all()
