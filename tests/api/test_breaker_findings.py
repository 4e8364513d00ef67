"""Inputs a second independent review (the "breaker") found crashing or silently ignored: each
is now a 4xx naming the parameter or field, and nothing changes."""

from datetime import timedelta

import pytest

from marketplace.models import Offer
from tests.api.conftest import error_of
from tests.factories import DemandFactory, next_hour
from vouchers.models import VoucherApplication

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("period", ["0000-01", "0000-12"])
def test_statement_period_of_year_zero_is_a_400_not_a_500(operator_client, period):
    response = operator_client.get("/api/v1/statements/", {"period": period})
    assert error_of(response) == (400, "invalid", "period")


@pytest.mark.parametrize(
    ("url", "query", "field"),
    [
        ("/api/v1/demands/", "status=open&status=cancelled", "status"),
        ("/api/v1/offers/", "min_gpus=1&min_gpus=64", "min_gpus"),
        ("/api/v1/reservations/", "role=buyer&role=provider", "role"),
        ("/api/v1/demands/", "page=1&page=2", "page"),
        ("/api/v1/demands/", "page_size=1&page_size=2", "page_size"),
    ],
)
def test_a_query_parameter_given_twice_is_a_400_not_its_last_value(
    buyer_client, buyer, offer, url, query, field
):
    # given a demand of the caller's, so that a list that ignored the first value is not empty
    DemandFactory.create(buyer=buyer)
    # when a filter is given twice (the list would use only the last value)
    response = buyer_client.get(f"{url}?{query}")
    # then it is refused, naming the parameter
    assert error_of(response) == (400, "invalid", field)


def test_an_offer_cannot_be_moved_into_the_past_by_a_partial_update(provider_client, offer):
    before = (offer.available_from, offer.available_until)
    past_from = next_hour(0) - timedelta(days=30)
    response = provider_client.patch(
        f"/api/v1/offers/{offer.pk}/",
        {
            "available_from": past_from.isoformat(),
            "available_until": (past_from + timedelta(days=1)).isoformat(),
        },
        format="json",
    )
    assert error_of(response) == (400, "window_in_past", "available_until")
    offer.refresh_from_db()
    assert (offer.available_from, offer.available_until) == before
    assert offer.status == Offer.Status.ACTIVE


def test_an_offer_cannot_be_moved_past_the_listing_horizon_by_a_partial_update(
    provider_client, offer
):
    before = offer.available_until
    for until in ("9999-12-31T23:00:00Z", next_hour(367 * 24).isoformat()):
        response = provider_client.patch(
            f"/api/v1/offers/{offer.pk}/", {"available_until": until}, format="json"
        )
        assert error_of(response) == (400, "window_too_far", "available_until")
    offer.refresh_from_db()
    assert offer.available_until == before


def test_a_partial_update_that_keeps_a_future_window_is_still_allowed(provider_client, offer):
    until = offer.available_until + timedelta(hours=5)
    response = provider_client.patch(
        f"/api/v1/offers/{offer.pk}/", {"available_until": until.isoformat()}, format="json"
    )
    assert response.status_code == 200, response.json()
    offer.refresh_from_db()
    assert offer.available_until == until
    assert offer.status == Offer.Status.ACTIVE


def test_a_provider_applying_for_a_voucher_is_a_403_like_every_buyer_action(
    provider_client, programme
):
    response = provider_client.post(
        "/api/v1/voucher-applications/",
        {"programme": str(programme.pk), "amount": "100.00"},
        format="json",
    )
    assert error_of(response) == (403, "not_a_buyer", None)
    assert not VoucherApplication.objects.exists()
