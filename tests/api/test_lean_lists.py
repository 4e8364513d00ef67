"""The lean read paths of the API's busiest lists write exactly what their serializers would:
offer search (``offer_values_representation``) and the reservation list
(``reservation_values_representation``), and the one-query page with its total.

Their speed is measured in ``bench/bench_api.py``; here only that they say the same thing."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.renderers import JSONRenderer

from marketplace.api.serializers import (
    OFFER_VALUES,
    RESERVATION_VALUES,
    OfferSerializer,
    ReservationSerializer,
    offer_values_representation,
    reservation_values_representation,
)
from marketplace.models import Offer, Reservation
from marketplace.selectors import offer_search
from marketplace.services import reservation_create, reservation_report_usage
from tests.factories import AcceleratorFactory, DemandFactory, OfferFactory

pytestmark = pytest.mark.django_db


def _json(data):  # type: ignore[no-untyped-def]
    """What a client receives: the rendered JSON, parsed."""
    return json.loads(JSONRenderer().render(data))


def test_offer_rows_are_written_as_the_offer_serializer_writes_them(provider, site, offer):
    # given offers with odd prices, an interconnect, microseconds and a whole-hour window
    OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=AcceleratorFactory.create(code="LEAN-1"),
        price_per_gpu_hour=Decimal("0.0001"),
        interconnect="NVLink",
    )
    OfferFactory.create(provider=provider, site=site, price_per_gpu_hour=Decimal("123456.5"))
    offers = offer_search()
    # when both paths write them
    lean = offer_values_representation(offer_search(related=False).values(*OFFER_VALUES))
    full = OfferSerializer(offers, many=True).data
    # then a client cannot tell them apart
    assert len(lean) == 3
    assert _json(lean) == _json(full)


def test_reservation_rows_are_written_as_the_reservation_serializer_writes_them(
    buyer, provider, offer, voucher
):
    # given a cash reservation, one paid partly with a voucher, and one with reported usage
    demand = DemandFactory.create(buyer=buyer)
    demand.accelerators.add(offer.accelerator)
    reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    paid = DemandFactory.create(buyer=buyer, voucher=voucher)
    paid.accelerators.add(offer.accelerator)
    reservation_create(
        demand_id=paid.pk, offer_id=offer.pk, start=paid.earliest_start + timedelta(hours=2)
    )
    used = DemandFactory.create(buyer=buyer)
    used.accelerators.add(offer.accelerator)
    done = reservation_create(
        demand_id=used.pk, offer_id=offer.pk, start=used.earliest_start + timedelta(hours=4)
    )
    Reservation.objects.filter(pk=done.pk).update(status=Reservation.Status.ACTIVE)
    reservation_report_usage(reservation_id=done.pk, provider=provider, delivered_gpu_hours=3)
    rows = Reservation.objects.order_by("start", "id")
    # when both paths write them, for the buyer and for the provider
    for caller, sees_voucher in ((buyer, {True, False}), (provider, {True})):
        lean = reservation_values_representation(
            rows.values(*RESERVATION_VALUES), organisation=caller
        )
        full = ReservationSerializer(rows, many=True, context={"organisation": caller}).data
        # then they are the same, delivered GPU-hours and all; the voucher only to the buyer
        assert len(lean) == 3
        assert {r["voucher"] is None for r in lean} == sees_voucher
        assert {r["delivered_gpu_hours"] for r in lean} == {None, 3}
        assert _json(lean) == _json(full)


def test_offer_search_reads_its_page_and_total_in_one_query(buyer_client, provider, site):
    # given 7 active offers and a paused one
    for _ in range(7):
        OfferFactory.create(provider=provider, site=site)
    OfferFactory.create(provider=provider, site=site, status=Offer.Status.PAUSED)
    # when a client reads the second page of 3
    with CaptureQueriesContext(connection) as ctx:
        response = buyer_client.get("/api/v1/offers/?page=2&page_size=3")
    # then the total, the links and the rows come from one query
    body = response.json()
    assert response.status_code == 200
    assert body["count"] == 7
    assert body["next"].endswith("/api/v1/offers/?page=3&page_size=3")
    assert body["previous"].endswith("/api/v1/offers/?page_size=3")
    assert len(body["results"]) == 3
    offer_queries = [q for q in ctx.captured_queries if "marketplace_offer" in q["sql"]]
    assert len(offer_queries) == 1, offer_queries


def test_pages_past_the_end_and_of_an_empty_list(buyer_client, provider, site):
    # given no offers: page 1 is an empty page with a zero count
    empty = buyer_client.get("/api/v1/offers/")
    assert empty.status_code == 200
    assert empty.json() == {"count": 0, "next": None, "previous": None, "results": []}
    # given 2 offers: page 2 of size 2 is past the end, a 404; so is an absurdly far page
    OfferFactory.create(provider=provider, site=site)
    OfferFactory.create(provider=provider, site=site)
    assert buyer_client.get("/api/v1/offers/?page=2&page_size=2").status_code == 404
    far = buyer_client.get(f"/api/v1/offers/?page={10**30}")
    assert far.status_code == 404


@pytest.mark.parametrize("raw", ["²", "٣", "1.0", "-1", "0", " 1"])
def test_page_numbers_are_ascii_digits(buyer_client, raw):
    # "²" and "٣" are digits to str.isdigit(); int("²") raises, int("٣") reads 3
    response = buyer_client.get("/api/v1/offers/", {"page": raw})
    assert response.status_code == 400
    assert response.json()["field"] == "page"
    response = buyer_client.get("/api/v1/offers/", {"page_size": raw})
    assert response.status_code == 400
    assert response.json()["field"] == "page_size"
