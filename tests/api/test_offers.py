"""Offer search and provider offer management through the API."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from marketplace.models import Offer
from tests.api.conftest import error_of
from tests.factories import (
    AcceleratorFactory,
    HubFactory,
    OfferFactory,
    ProviderFactory,
    SiteFactory,
    next_hour,
)

pytestmark = pytest.mark.django_db


def _ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.json()
    return [o["id"] for o in response.json()["results"]]


def test_search_lists_only_active_offers(buyer_client, offer):
    OfferFactory.create(provider=offer.provider, status=Offer.Status.PAUSED)
    body = buyer_client.get("/api/v1/offers/").json()
    assert body["count"] == 1
    item = body["results"][0]
    assert (item["id"], item["accelerator"], item["price_per_gpu_hour"], item["hub"]) == (
        str(offer.pk),
        "A100-80G",
        "10.0000",
        "chengdu-chongqing",
    )


def test_search_filters_by_accelerator_alias_price_gpus_and_ordering(
    buyer_client, provider, site, accelerator
):
    # given three offers of two models at three prices
    h100 = AcceleratorFactory.create(code="H100-SXM5-80G", memory_gb=80)
    cheap = OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=accelerator,
        price_per_gpu_hour=Decimal("8.0000"),
        gpu_count=4,
    )
    dear = OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=accelerator,
        price_per_gpu_hour=Decimal("12.5000"),
        gpu_count=16,
    )
    other = OfferFactory.create(
        provider=provider, site=site, accelerator=h100, price_per_gpu_hour=Decimal("20.0000")
    )
    # then each filter narrows the list
    assert _ids(
        buyer_client.get(
            "/api/v1/offers/", {"accelerator": "nvidia a100 80gb", "ordering": "-price"}
        )
    ) == [str(dear.pk), str(cheap.pk)]
    assert _ids(
        buyer_client.get("/api/v1/offers/", {"max_price": "12.5", "ordering": "price"})
    ) == [str(cheap.pk), str(dear.pk)]
    assert _ids(buyer_client.get("/api/v1/offers/", {"min_gpus": "10"})) == [str(dear.pk)]
    assert _ids(buyer_client.get("/api/v1/offers/", {"accelerator": "H100-SXM5-80G"})) == [
        str(other.pk)
    ]


def test_search_filters_by_hub_and_tier(buyer_client, provider, site, accelerator):
    # given an offer in the buyer's city and one in another hub
    near = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    far_site = SiteFactory.create(
        code="qingyang-1",
        city="Qingyang",
        metro_area="Qingyang",
        hub=HubFactory.create(code="gansu"),
    )
    far = OfferFactory.create(provider=provider, site=far_site, accelerator=accelerator)
    assert _ids(buyer_client.get("/api/v1/offers/", {"hub": "gansu"})) == [str(far.pk)]
    assert _ids(buyer_client.get("/api/v1/offers/", {"tier": "city"})) == [str(near.pk)]
    assert _ids(buyer_client.get("/api/v1/offers/", {"tier": "region"})) == [str(near.pk)]
    assert set(_ids(buyer_client.get("/api/v1/offers/", {"tier": "national"}))) == {
        str(near.pk),
        str(far.pk),
    }


def test_search_window_keeps_offers_available_over_it(buyer_client, provider, site, accelerator):
    # given an offer for the next 24 h and one starting in 48 h
    soon = OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=accelerator,
        available_from=next_hour(0),
        available_until=next_hour(24),
    )
    later = OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=accelerator,
        available_from=next_hour(48),
        available_until=next_hour(96),
    )
    window = {"window_start": next_hour(2).isoformat(), "window_end": next_hour(6).isoformat()}
    assert _ids(buyer_client.get("/api/v1/offers/", window)) == [str(soon.pk)]
    window = {"window_start": next_hour(50).isoformat(), "window_end": next_hour(60).isoformat()}
    assert _ids(buyer_client.get("/api/v1/offers/", window)) == [str(later.pk)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"accelerator": "GTX-1080"}, "accelerator"),
        ({"max_price": "NaN"}, "max_price"),
        ({"max_price": "Infinity"}, "max_price"),
        ({"max_price": "1.23456"}, "max_price"),
        ({"max_price": "cheap"}, "max_price"),
        ({"min_gpus": "1.5"}, "min_gpus"),
        ({"tier": "planet"}, "tier"),
        ({"hub": "atlantis"}, "hub"),
        ({"ordering": "provider"}, "ordering"),
        ({"window_start": "yesterday"}, "window_start"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_search_bad_filter_is_400_naming_it(buyer_client, offer, params, field):
    response = buyer_client.get("/api/v1/offers/", params)
    assert error_of(response)[0::2] == (400, field)


def test_search_window_end_before_start_is_400(buyer_client, offer):
    params = {"window_start": next_hour(6).isoformat(), "window_end": next_hour(2).isoformat()}
    assert error_of(buyer_client.get("/api/v1/offers/", params)) == (400, "invalid", "window_end")


def test_search_query_count_does_not_grow_with_offers(buyer_client, provider, site, accelerator):
    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert buyer_client.get("/api/v1/offers/", {"page_size": "50"}).status_code == 200
        return len(ctx.captured_queries)

    OfferFactory.create_batch(5, provider=provider, site=site, accelerator=accelerator)
    five = count()
    OfferFactory.create_batch(
        25,
        provider=ProviderFactory.create(),
        site=SiteFactory.create(),
        accelerator=AcceleratorFactory.create(code="L40S-48G"),
    )
    assert count() == five


def test_offer_detail_visible_for_active_and_404_for_others_paused(
    buyer_client, offer, provider_client
):
    assert buyer_client.get(f"/api/v1/offers/{offer.pk}/").json()["id"] == str(offer.pk)
    offer.status = Offer.Status.PAUSED
    offer.save()
    assert error_of(buyer_client.get(f"/api/v1/offers/{offer.pk}/"))[:2] == (404, "not_found")
    assert provider_client.get(f"/api/v1/offers/{offer.pk}/").json()["status"] == "paused"


def test_provider_creates_offer(provider_client, site):
    # given a provider and the catalogue
    AcceleratorFactory.create(code="H20-96G", memory_gb=96, aliases=["h20"])
    # when it lists capacity
    response = provider_client.post(
        "/api/v1/offers/",
        {
            "site": str(site.pk),
            "accelerator": "h20",
            "gpu_count": 16,
            "available_from": next_hour(0).isoformat(),
            "available_until": next_hour(48).isoformat(),
            "price_per_gpu_hour": "6.5000",
        },
        format="json",
    )
    # then the offer is active with the resolved catalogue code
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["accelerator"], body["gpu_count"], body["status"], body["price_per_gpu_hour"]) == (
        "H20-96G",
        16,
        "active",
        "6.5000",
    )
    assert Offer.objects.filter(pk=body["id"]).exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price_per_gpu_hour": "6.12345"}, "price_per_gpu_hour"),
        ({"price_per_gpu_hour": "NaN"}, "price_per_gpu_hour"),
        ({"accelerator": "GTX-1080"}, "accelerator"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"available_until": "9999-12-31T23:00:00Z"}, "available_until"),
        ({"available_until": next_hour(367 * 24).isoformat()}, "available_until"),
    ],
)
def test_provider_create_offer_bad_input_is_400_and_nothing_created(
    provider_client, site, accelerator, change, field
):
    body = {
        "site": str(site.pk),
        "accelerator": "A100-80G",
        "gpu_count": 8,
        "available_from": next_hour(0).isoformat(),
        "available_until": next_hour(48).isoformat(),
        "price_per_gpu_hour": "6.5",
    } | change
    response = provider_client.post("/api/v1/offers/", body, format="json")
    assert error_of(response)[0::2] == (400, field)
    assert Offer.objects.count() == 0


def test_buyer_cannot_create_offer(buyer_client, site, accelerator):
    response = buyer_client.post(
        "/api/v1/offers/",
        {
            "site": str(site.pk),
            "accelerator": "A100-80G",
            "gpu_count": 8,
            "available_from": next_hour(0).isoformat(),
            "available_until": next_hour(48).isoformat(),
            "price_per_gpu_hour": "6.5",
        },
        format="json",
    )
    assert error_of(response) == (403, "not_a_provider", None)
    assert Offer.objects.count() == 0


def test_provider_updates_and_changes_status_of_own_offer(provider_client, offer):
    response = provider_client.patch(
        f"/api/v1/offers/{offer.pk}/", {"price_per_gpu_hour": "9.5"}, format="json"
    )
    assert response.json()["price_per_gpu_hour"] == "9.5000"
    assert provider_client.post(f"/api/v1/offers/{offer.pk}/pause/").json()["status"] == "paused"
    assert provider_client.post(f"/api/v1/offers/{offer.pk}/activate/").json()["status"] == "active"
    assert (
        provider_client.post(f"/api/v1/offers/{offer.pk}/withdraw/").json()["status"] == "withdrawn"
    )
    # a withdrawn offer cannot come back: 409
    response = provider_client.post(f"/api/v1/offers/{offer.pk}/activate/")
    assert error_of(response) == (409, "illegal_transition", None)
    offer.refresh_from_db()
    assert offer.status == Offer.Status.WITHDRAWN


def test_provider_cannot_lower_capacity_below_reserved(provider_client, offer, reservation):
    response = provider_client.patch(f"/api/v1/offers/{offer.pk}/", {"gpu_count": 2}, format="json")
    assert error_of(response) == (409, "below_reserved", "gpu_count")
    offer.refresh_from_db()
    assert offer.gpu_count == 8


def test_other_organisation_cannot_touch_an_offer(buyer_client, offer):
    # given another organisation (a buyer) and an active offer it can see
    for method, url, body in [
        ("patch", f"/api/v1/offers/{offer.pk}/", {"gpu_count": 1}),
        ("post", f"/api/v1/offers/{offer.pk}/pause/", None),
        ("post", f"/api/v1/offers/{offer.pk}/withdraw/", None),
    ]:
        response = getattr(buyer_client, method)(url, body, format="json")
        assert error_of(response)[:2] == (404, "not_found"), url
    offer.refresh_from_db()
    assert (offer.status, offer.gpu_count) == (Offer.Status.ACTIVE, 8)
