"""Quotes and reservations through the API: scoping, transitions and the ledger behind them."""

from decimal import Decimal

import pytest

from ledger.models import Account
from ledger.services import organisation_account
from marketplace.models import Reservation
from marketplace.services import reservation_create, reservations_advance
from tests.api.conftest import error_of
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db


def _wallet(org) -> Decimal:  # type: ignore[no-untyped-def]
    return organisation_account(org, Account.Kind.WALLET).balance


def test_quote_splits_bill_between_voucher_and_cash(buyer_client, offer, voucher):
    # 4 GPUs x 2 h x CNY 10 = CNY 80; the voucher pays 60 %
    response = buyer_client.post(
        "/api/v1/quotes/",
        {"offer": str(offer.pk), "gpu_count": 4, "hours": 2, "voucher": str(voucher.pk)},
        format="json",
    )
    assert response.json() == {
        "bill": "80.00",
        "voucher_part": "48.00",
        "cash_part": "32.00",
        "voucher_note": "",
        "lines": [
            {
                "category": "gpu_time",
                "amount": "80.00",
                "eligible": True,
                "voucher_part": "48.00",
                "cash_part": "32.00",
            }
        ],
    }


def test_quote_with_another_organisations_voucher_is_404(other_client, offer, voucher):
    response = other_client.post(
        "/api/v1/quotes/",
        {"offer": str(offer.pk), "gpu_count": 1, "hours": 1, "voucher": str(voucher.pk)},
        format="json",
    )
    assert error_of(response) == (404, "not_found", "voucher")


def test_quote_bad_input_names_the_field(buyer_client, offer):
    response = buyer_client.post(
        "/api/v1/quotes/", {"offer": str(offer.pk), "gpu_count": 0, "hours": 1}, format="json"
    )
    assert error_of(response) == (400, "invalid", "gpu_count")
    response = buyer_client.post(
        "/api/v1/quotes/", {"offer": "nope", "gpu_count": 1, "hours": 1}, format="json"
    )
    assert error_of(response) == (400, "invalid", "offer")


def test_buyer_and_provider_see_the_reservation_by_role(buyer_client, provider_client, reservation):
    bought = buyer_client.get("/api/v1/reservations/", {"role": "buyer"}).json()
    sold = provider_client.get("/api/v1/reservations/", {"role": "provider"}).json()
    assert [r["id"] for r in bought["results"]] == [str(reservation.pk)]
    assert [r["id"] for r in sold["results"]] == [str(reservation.pk)]
    assert buyer_client.get("/api/v1/reservations/", {"role": "provider"}).json()["count"] == 0
    assert buyer_client.get("/api/v1/reservations/", {"status": "held"}).json()["count"] == 0
    detail = buyer_client.get(f"/api/v1/reservations/{reservation.pk}/").json()
    assert (detail["status"], detail["bill"], detail["cash_part"], detail["gpu_hours"]) == (
        "confirmed",
        "80.00",
        "80.00",
        8,
    )


def test_bad_reservation_filters_are_400(buyer_client):
    assert error_of(buyer_client.get("/api/v1/reservations/", {"role": "owner"})) == (
        400,
        "invalid",
        "role",
    )
    assert error_of(buyer_client.get("/api/v1/reservations/", {"status": "lost"})) == (
        400,
        "invalid",
        "status",
    )


def test_buyer_accepts_held_reservation(buyer_client, held_reservation):
    response = buyer_client.post(f"/api/v1/reservations/{held_reservation.pk}/accept/")
    assert response.json()["status"] == "confirmed"
    # accepting twice is an illegal transition
    again = buyer_client.post(f"/api/v1/reservations/{held_reservation.pk}/accept/")
    assert error_of(again) == (409, "illegal_transition", None)


def test_buyer_cancels_and_gets_money_back(buyer_client, buyer, held_reservation):
    assert _wallet(buyer) == Decimal("99920.00")
    response = buyer_client.post(f"/api/v1/reservations/{held_reservation.pk}/cancel/")
    assert response.json()["status"] == "cancelled"
    assert _wallet(buyer) == Decimal("100000.00")


def test_provider_reports_usage_of_active_reservation(provider_client, buyer_client, reservation):
    # before the start the reservation is not active: 409, nothing changes
    url = f"/api/v1/reservations/{reservation.pk}/usage/"
    assert error_of(provider_client.post(url, {"delivered_gpu_hours": 4}, format="json")) == (
        409,
        "illegal_transition",
        None,
    )
    reservations_advance(now=reservation.start)
    # the buyer may not report usage
    assert error_of(buyer_client.post(url, {"delivered_gpu_hours": 4}, format="json"))[:2] == (
        404,
        "not_found",
    )
    # too many hours names the field
    assert error_of(provider_client.post(url, {"delivered_gpu_hours": 9}, format="json")) == (
        400,
        "invalid",
        "delivered_gpu_hours",
    )
    response = provider_client.post(url, {"delivered_gpu_hours": 4}, format="json")
    assert (response.json()["status"], response.json()["delivered_gpu_hours"]) == ("completed", 4)


def test_another_organisation_gets_404_on_reservation_and_actions(
    other_client, buyer, held_reservation
):
    rid = held_reservation.pk
    assert error_of(other_client.get(f"/api/v1/reservations/{rid}/"))[:2] == (404, "not_found")
    for action in ("accept", "cancel"):
        response = other_client.post(f"/api/v1/reservations/{rid}/{action}/")
        assert error_of(response)[:2] == (404, "not_found"), action
    assert other_client.get("/api/v1/reservations/").json()["count"] == 0
    held_reservation.refresh_from_db()
    assert held_reservation.status == Reservation.Status.HELD
    assert _wallet(buyer) == Decimal("99920.00")


def test_provider_cannot_accept_or_cancel_buyers_reservation(provider_client, held_reservation):
    for action in ("accept", "cancel"):
        response = provider_client.post(f"/api/v1/reservations/{held_reservation.pk}/{action}/")
        assert error_of(response)[:2] == (404, "not_found")
    held_reservation.refresh_from_db()
    assert held_reservation.status == Reservation.Status.HELD


def test_the_voucher_of_a_reservation_is_shown_to_its_buyer_only(
    buyer, offer, voucher, buyer_client, provider_client
):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    for client, shown in ((buyer_client, str(voucher.pk)), (provider_client, None)):
        assert client.get(f"/api/v1/reservations/{r.pk}/").json()["voucher"] == shown
        rows = client.get("/api/v1/reservations/").json()["results"]
        assert [x["voucher"] for x in rows] == [shown]
    # offers never carried a voucher field
    assert "voucher" not in buyer_client.get(f"/api/v1/offers/{offer.pk}/").json()
