"""``GET /api/v1/demands/{id}/explain/``: why a demand is not matched, counted over every
active offer by the first rule that blocks it, with the near misses."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import InternalError, connection

from marketplace.models import Demand, Offer
from marketplace.selectors import one_snapshot
from marketplace.services import reservation_create
from tests.api.conftest import error_of
from tests.factories import (
    AcceleratorFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    SiteFactory,
    next_hour,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def market(buyer, other_buyer, provider, site, accelerator):  # type: ignore[no-untyped-def]
    """One offer blocked by each rule for the buyer's demand (4 × A100 for 3 h in 6 h)."""
    t0 = next_hour(1)
    window = {"available_from": next_hour(0), "available_until": next_hour(24 * 7)}
    gansu = HubFactory.create(code="gansu")
    qingyang = SiteFactory.create(code="qy", city="Qingyang", metro_area="Qingyang", hub=gansu)
    deyang = SiteFactory.create(code="dy", city="Deyang", metro_area="Chengdu", hub=site.hub)

    def listed(**kw):  # type: ignore[no-untyped-def]
        fields = {"provider": provider, "site": site, "accelerator": accelerator, **window, **kw}
        return OfferFactory.create(**fields)

    offers = {
        "model": listed(accelerator=AcceleratorFactory.create(code="H800")),
        "price": listed(price_per_gpu_hour=Decimal("15")),
        "price-dearer": listed(price_per_gpu_hour=Decimal("20"), site=deyang),
        "locality": listed(site=qingyang),
        "self_trade": listed(provider=buyer),
        "window": listed(available_from=t0 + timedelta(hours=30)),
        "capacity": listed(gpu_count=2),
        "fragmentation": listed(),
    }
    # 6 of the 8 GPUs of the last offer are booked in hours 2–3 of the window: 36 free
    # GPU-hours remain, but no 3 hours in a row with 4 GPUs free
    other = DemandFactory.create(
        buyer=other_buyer,
        gpu_count=6,
        duration_hours=2,
        earliest_start=t0 + timedelta(hours=2),
        latest_end=t0 + timedelta(hours=4),
    )
    reservation_create(
        demand_id=other.pk, offer_id=offers["fragmentation"].pk, start=t0 + timedelta(hours=2)
    )
    demand = DemandFactory.create(
        buyer=buyer,
        gpu_count=4,
        duration_hours=3,
        earliest_start=t0,
        latest_end=t0 + timedelta(hours=6),
        max_price_per_gpu_hour=Decimal("12"),
        locality_limit="metro",
        unmatched_reason="no_free_window",
    )
    demand.accelerators.add(accelerator)
    return demand, offers, t0


def test_explain_counts_each_offer_under_its_first_blocking_rule(buyer_client, market):
    demand, offers, t0 = market
    response = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/")
    assert response.status_code == 200
    body = response.json()
    assert body["blocked"] == {
        "model": 1,
        "price": 2,
        "locality": 1,
        "self_trade": 1,
        "window": 1,
        "capacity": 1,
        "fragmentation": 1,
        "voucher": 0,
        "funds": 0,
    }
    assert (body["offers_considered"], body["fits"]) == (8, 0)
    assert (body["status"], body["unmatched_reason"]) == ("open", "no_free_window")
    # near misses: the cheapest offer over the limit, and the earliest start that would hold
    # the whole demand (just past its window, once the booking on the fragmented offer ends)
    assert body["near_misses"]["cheapest_over_limit"] == {
        "offer": str(offers["price"].pk),
        "site": "chengdu-tianfu",
        "tier": "city",
        "price_per_gpu_hour": "15.0000",
        "over_limit_by": "3.0000",
    }
    earliest = body["near_misses"]["earliest_fit"]
    assert earliest["offer"] == str(offers["fragmentation"].pk)
    assert earliest["start"] == (t0 + timedelta(hours=4)).isoformat().replace("+00:00", "Z")
    assert earliest["end"] == (t0 + timedelta(hours=7)).isoformat().replace("+00:00", "Z")
    assert earliest["inside_window"] is False
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == ("open", "no_free_window")


def _committed_meanwhile(write):  # type: ignore[no-untyped-def]
    """Run ``write`` in another thread, on its own connection, committed before it returns."""

    def run() -> None:
        try:
            write()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


@pytest.mark.django_db(transaction=True)
def test_explain_counts_from_one_snapshot_while_an_offer_is_listed_meanwhile(  # type: ignore[no-untyped-def]
    buyer_client, market, provider, site, accelerator
):
    # given the market of the test above, and another offer over the price limit committed
    # after explain read the demand and before it counts the offers
    demand = market[0]

    def listed() -> None:
        OfferFactory.create(
            provider=provider,
            site=site,
            accelerator=accelerator,
            price_per_gpu_hour=Decimal("16"),
            available_from=next_hour(0),
            available_until=next_hour(24 * 7),
        )

    seen: list[str] = []

    def list_one_meanwhile(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if "marketplace_offer" in sql and not seen:
            seen.append(sql)
            _committed_meanwhile(listed)
        return execute(sql, params, many, context)

    # when the buyer asks why, then the answer is the market as it was when explain began:
    # every count and the near misses from one snapshot
    with connection.execute_wrapper(list_one_meanwhile):
        body = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    assert seen
    assert (body["offers_considered"], body["blocked"]["price"]) == (8, 2)
    # and the next question sees the new offer
    body = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    assert (body["offers_considered"], body["blocked"]["price"]) == (9, 3)


@pytest.mark.django_db(transaction=True)
def test_one_snapshot_reads_one_snapshot_and_refuses_writes(buyer, provider, site, accelerator):  # type: ignore[no-untyped-def]
    def listed() -> None:
        OfferFactory.create(provider=provider, site=site, accelerator=accelerator)

    with one_snapshot():
        before = Offer.objects.count()
        _committed_meanwhile(listed)
        assert Offer.objects.count() == before
    assert Offer.objects.count() == before + 1
    with pytest.raises(InternalError, match="read-only transaction"), one_snapshot():
        Offer.objects.filter(provider=provider).update(price_per_gpu_hour=Decimal("1"))


def test_an_offer_that_fits_is_counted_as_fits(buyer_client, buyer, offer):
    demand = DemandFactory.create(buyer=buyer)
    demand.accelerators.add(offer.accelerator)
    body = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    assert (body["fits"], sum(body["blocked"].values())) == (1, 0)
    assert body["near_misses"]["cheapest_over_limit"] is None
    assert body["near_misses"]["earliest_fit"]["inside_window"] is True


def test_explain_of_another_organisations_demand_is_404(other_client, market):
    demand = market[0]
    assert error_of(other_client.get(f"/api/v1/demands/{demand.pk}/explain/")) == (
        404,
        "not_found",
        "demand",
    )


def test_explain_needs_authentication_and_a_valid_id(anon_client, buyer_client, market):
    demand = market[0]
    assert anon_client.get(f"/api/v1/demands/{demand.pk}/explain/").status_code == 401
    assert error_of(buyer_client.get("/api/v1/demands/not-a-uuid/explain/"))[:2] == (
        404,
        "not_found",
    )


def test_explain_of_a_matched_demand_is_409_and_changes_nothing(buyer_client, buyer, offer):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(buyer=buyer)
    demand.accelerators.add(offer.accelerator)
    reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    response = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/")
    assert error_of(response) == (409, "demand_not_open", "demand")
    assert Demand.objects.get(pk=demand.pk).status == Demand.Status.RESERVED


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("accelerator=H800", "accelerator"),  # a filter it does not take: not a narrower answer
        ("tier=city", "tier"),
        ("page=2", "page"),
        ("format=json", "format"),
    ],
)
def test_explain_refuses_query_parameters_naming_them(buyer_client, market, query, field):  # type: ignore[no-untyped-def]
    # given an open demand; when explain is asked with a parameter it does not take
    demand = market[0]
    response = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/?{query}")
    # then a 400 naming it, never the whole explanation as if the parameter had narrowed it
    assert error_of(response) == (400, "invalid", field)
    assert response.json()["errors"] == {field: ["unknown query parameter"]}
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == ("open", "no_free_window")


def test_explain_with_a_parameter_still_hides_another_organisations_demand(other_client, market):  # type: ignore[no-untyped-def]
    demand = market[0]
    response = other_client.get(f"/api/v1/demands/{demand.pk}/explain/?tier=city")
    assert error_of(response) == (404, "not_found", "demand")


def test_offers_counted_in_the_database_add_up_with_the_ones_read(
    buyer_client, buyer, other_buyer, provider, site, accelerator
):  # type: ignore[no-untyped-def]
    # given a demand for A100 at up to ¥12 and, beside one offer that fits: three offers of
    # other models (one of them booked), three over the limit of which two tie for cheapest
    # (the first listed is the near miss), and an offer that ended and a paused one (not
    # active: not considered)
    from marketplace.models import Offer

    t0 = next_hour(1)
    h800 = AcceleratorFactory.create(code="H800")
    t4 = AcceleratorFactory.create(code="T4", memory_gb=16)

    def listed(**kw):  # type: ignore[no-untyped-def]
        return OfferFactory.create(
            **{"provider": provider, "site": site, "accelerator": accelerator, **kw}
        )

    fits = listed()
    others = [listed(accelerator=h800), listed(accelerator=t4), listed(accelerator=h800)]
    booked = DemandFactory.create(buyer=other_buyer, gpu_count=8, earliest_start=t0)
    booked.accelerators.add(h800)
    reservation_create(demand_id=booked.pk, offer_id=others[0].pk, start=t0)
    dear = [listed(price_per_gpu_hour=Decimal(p)) for p in ("14", "13", "13")]
    listed(available_from=next_hour(-48), available_until=next_hour(-24))
    listed(status=Offer.Status.PAUSED)
    demand = DemandFactory.create(buyer=buyer, max_price_per_gpu_hour=Decimal("12"))
    demand.accelerators.add(accelerator)
    # when the buyer asks why
    body = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    # then every active offer is counted once, under its first blocking rule
    assert body["offers_considered"] == 7
    assert (body["blocked"]["model"], body["blocked"]["price"], body["fits"]) == (3, 3, 1)
    assert sum(body["blocked"].values()) + body["fits"] == 7
    assert body["near_misses"]["cheapest_over_limit"]["offer"] == str(dear[1].pk)
    assert body["near_misses"]["cheapest_over_limit"]["over_limit_by"] == "1.0000"
    assert body["near_misses"]["earliest_fit"]["offer"] == str(fits.pk)


def test_offers_available_inside_one_clock_hour_are_not_considered(
    buyer_client, buyer, provider, site, accelerator
):  # type: ignore[no-untyped-def]
    # given a demand for A100 at up to ¥12, an offer over the limit at ¥14, and two offers
    # (written directly, not through the services) available 10:15–10:45 of a coming hour:
    # no whole hour, so no snapshot — one of another model, one over the limit at ¥13
    hour = next_hour(3)
    inside = {
        "available_from": hour + timedelta(minutes=15),
        "available_until": hour + timedelta(minutes=45),
    }
    base = {"provider": provider, "site": site, "accelerator": accelerator}
    OfferFactory.create(**{**base, **inside, "accelerator": AcceleratorFactory.create(code="H800")})
    OfferFactory.create(**{**base, **inside, "price_per_gpu_hour": Decimal("13")})
    dear = OfferFactory.create(**base, price_per_gpu_hour=Decimal("14"))
    demand = DemandFactory.create(buyer=buyer, max_price_per_gpu_hour=Decimal("12"))
    demand.accelerators.add(accelerator)
    # when the buyer asks why
    body = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    # then only the ¥14 offer is considered, and it is the near miss (as the cycle sees them)
    assert body["offers_considered"] == 1
    assert (body["blocked"]["model"], body["blocked"]["price"]) == (0, 1)
    assert body["near_misses"]["cheapest_over_limit"]["offer"] == str(dear.pk)


def test_a_related_providers_offer_fits_and_only_the_buyers_own_is_a_self_trade(
    buyer_client, buyer, provider, site, accelerator
):  # type: ignore[no-untyped-def]
    # given (the reviewer's case) a city-tier offer at ¥5 of a provider related to the buyer,
    # an offer of the buyer's own organisation, and a demand of 4 GPUs × 4 h at up to ¥10
    # within its city
    buyer.related.add(provider)
    related = OfferFactory.create(
        provider=provider, site=site, accelerator=accelerator, price_per_gpu_hour=Decimal("5")
    )
    OfferFactory.create(provider=buyer, site=site, accelerator=accelerator)
    demand = DemandFactory.create(
        buyer=buyer,
        duration_hours=4,
        max_price_per_gpu_hour=Decimal("10"),
        locality_limit="city",
    )
    demand.accelerators.add(accelerator)
    # when the buyer asks why
    body = buyer_client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    # then the related provider's offer fits (§5.4: it only gets no voucher part) and is the
    # earliest fit; the buyer's own offer is the one self trade
    assert (body["fits"], body["blocked"]["self_trade"], body["offers_considered"]) == (1, 1, 2)
    assert body["near_misses"]["earliest_fit"]["offer"] == str(related.pk)
    # and a booking of that pair goes through, as explain says
    reservation = reservation_create(
        demand_id=demand.pk, offer_id=related.pk, start=demand.earliest_start
    )
    assert (reservation.offer_id, reservation.voucher_part) == (related.pk, Decimal("0.00"))


# --- the cheapest offer over the limit: blocked by the price alone ----------------------


@pytest.fixture
def dear_market(buyer, provider, site, accelerator):  # type: ignore[no-untyped-def]
    """A demand of 4 × A100 for 2 h in the coming 24 h at up to ¥10 within its city, and a
    ``listed(price, **fields)`` for A100 offers of ``provider`` at the home site."""
    demand = DemandFactory.create(
        buyer=buyer, max_price_per_gpu_hour=Decimal("10"), locality_limit="city"
    )
    demand.accelerators.add(accelerator)

    def listed(price: str, **kw):  # type: ignore[no-untyped-def]
        fields = {"provider": provider, "site": site, "accelerator": accelerator, **kw}
        return OfferFactory.create(price_per_gpu_hour=Decimal(price), **fields)

    return demand, listed


def near_miss(client, demand):  # type: ignore[no-untyped-def]
    body = client.get(f"/api/v1/demands/{demand.pk}/explain/").json()
    return body, body["near_misses"]["cheapest_over_limit"]


def test_the_cheapest_over_limit_is_inside_the_locality_limit(buyer_client, dear_market):
    # given (the reviewer's case) a ¥11 offer at another hub (national) and a ¥12 one in the
    # demand's city, both over its ¥10 limit, for a demand that stays within its city
    demand, listed = dear_market
    gansu = HubFactory.create(code="gansu")
    listed("11", site=SiteFactory.create(code="qy", city="Qingyang", hub=gansu))
    city = listed("12")
    # when the buyer asks why
    body, miss = near_miss(buyer_client, demand)
    # then both count under price, and the near miss is the city one: the far one would stay
    # blocked by locality at any price
    assert (body["blocked"]["price"], body["offers_considered"]) == (2, 2)
    assert miss == {
        "offer": str(city.pk),
        "site": "chengdu-tianfu",
        "tier": "city",
        "price_per_gpu_hour": "12.0000",
        "over_limit_by": "2.0000",
    }


def test_the_cheapest_over_limit_is_not_the_buyers_own_nor_too_long(
    buyer_client, buyer, dear_market
):  # type: ignore[no-untyped-def]
    # given over the limit: the buyer's own offer at ¥11, one needing at least 3 h (the demand
    # runs 2 h) at ¥11.5, and one that would fit at ¥13
    demand, listed = dear_market
    listed("11", provider=buyer)
    listed("11.5", min_duration_hours=3)
    fits = listed("13")
    body, miss = near_miss(buyer_client, demand)
    assert body["blocked"]["price"] == 3
    assert (miss["offer"], miss["over_limit_by"]) == (str(fits.pk), "3.0000")


def test_the_cheapest_over_limit_has_free_capacity_in_the_window(
    buyer_client, other_buyer, dear_market
):  # type: ignore[no-untyped-def]
    # given over the limit: a ¥11 offer of which another buyer holds 6 of 8 GPUs for the
    # demand's whole window, one of 2 GPUs at ¥11.5, and one available only from the last
    # hour of the window at ¥12
    demand, listed = dear_market
    full = listed("11")
    other = DemandFactory.create(
        buyer=other_buyer,
        gpu_count=6,
        duration_hours=24,
        earliest_start=demand.earliest_start,
        latest_end=demand.latest_end,
    )
    reservation_create(demand_id=other.pk, offer_id=full.pk, start=demand.earliest_start)
    listed("11.5", gpu_count=2)
    late = listed("12", available_from=demand.latest_end - timedelta(hours=1))
    # when the buyer asks why: no offer over the limit would fit
    body, miss = near_miss(buyer_client, demand)
    assert (body["blocked"]["price"], miss) == (3, None)
    # and once the late offer starts an hour earlier, it is the near miss
    late.available_from -= timedelta(hours=1)
    late.save()
    body, miss = near_miss(buyer_client, demand)
    assert (body["blocked"]["price"], miss["offer"]) == (3, str(late.pk))


def test_the_cheapest_over_limit_is_found_past_the_first_round_of_rows(buyer_client, dear_market):  # type: ignore[no-untyped-def]
    # given 12 offers over the limit, ¥11.00–¥11.11, each available for one hour inside the
    # demand's window (the database cannot tell they do not fit, the snapshot can), and one
    # at ¥15 that fits
    demand, listed = dear_market
    hour = demand.earliest_start + timedelta(hours=4)
    for i in range(12):
        listed(f"11.{i:02}", available_from=hour, available_until=hour + timedelta(hours=1))
    fits = listed("15")
    # when the buyer asks why
    body, miss = near_miss(buyer_client, demand)
    # then the search reads on past the first 8 rows and names the ¥15 offer
    assert (body["blocked"]["price"], body["offers_considered"]) == (13, 13)
    assert miss["offer"] == str(fits.pk)
