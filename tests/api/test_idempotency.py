"""``Idempotency-Key`` on writes that move money or capacity (PRODUCT.md §6.1)."""

from decimal import Decimal

import pytest

from ledger.models import Account, IdempotencyKey, Transaction
from ledger.services import organisation_account
from marketplace.models import Demand
from tests.api.conftest import error_of
from tests.factories import next_hour

pytestmark = pytest.mark.django_db


def _deposit(client, amount: str, key: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/api/v1/wallet/deposits/", {"amount": amount}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


def test_same_key_and_body_replays_the_first_deposit(buyer_client, buyer):
    # given a first deposit with a key
    first = _deposit(buyer_client, "100.00", "k-1")
    deposits = Transaction.objects.filter(reason="deposit").count()
    # when it is retried with the same key and body
    again = _deposit(buyer_client, "100.00", "k-1")
    # then the first response is replayed and no money moves twice
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Transaction.objects.filter(reason="deposit").count() == deposits
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100100.00")


def test_same_key_other_body_is_422_and_moves_nothing(buyer_client, buyer):
    _deposit(buyer_client, "100.00", "k-2")
    response = _deposit(buyer_client, "999.00", "k-2")
    assert error_of(response) == (422, "idempotency_key_reused", "Idempotency-Key")
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100100.00")


def test_keys_are_per_organisation(buyer_client, other_client, buyer, other_buyer):
    _deposit(buyer_client, "100.00", "shared")
    assert _deposit(other_client, "100.00", "shared").status_code == 201
    assert organisation_account(other_buyer, Account.Kind.WALLET).balance == Decimal("100100.00")


def test_refused_request_releases_its_key(buyer_client, buyer):
    assert error_of(_deposit(buyer_client, "NaN", "k-3"))[0] == 400
    assert not IdempotencyKey.objects.filter(key="k-3").exists()
    assert _deposit(buyer_client, "5.00", "k-3").status_code == 201


@pytest.mark.parametrize("key", ["k" * 256, "two words", "clé-1", "tab\tkey"])
def test_a_key_outside_its_schema_is_400(buyer_client, buyer, key):
    # the header's schema: 1-255 visible ASCII characters (^[!-~]+$)
    response = _deposit(buyer_client, "5.00", key)
    assert error_of(response) == (400, "invalid_idempotency_key", "Idempotency-Key")
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100000.00")
    assert not IdempotencyKey.objects.exists()


def test_demand_create_replays_and_creates_one_demand(buyer_client, accelerator):
    body = {
        "accelerators": ["A100-80G"],
        "gpu_count": 2,
        "duration_hours": 2,
        "earliest_start": next_hour(1).isoformat(),
        "latest_end": next_hour(10).isoformat(),
        "max_price_per_gpu_hour": "15",
    }
    first = buyer_client.post("/api/v1/demands/", body, format="json", HTTP_IDEMPOTENCY_KEY="d")
    again = buyer_client.post("/api/v1/demands/", body, format="json", HTTP_IDEMPOTENCY_KEY="d")
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert Demand.objects.count() == 1
    other = buyer_client.post(
        "/api/v1/demands/", body | {"gpu_count": 3}, format="json", HTTP_IDEMPOTENCY_KEY="d"
    )
    assert error_of(other)[:2] == (422, "idempotency_key_reused")
    assert Demand.objects.count() == 1


def test_reservation_cancel_replays_instead_of_409(buyer_client, buyer, held_reservation):
    url = f"/api/v1/reservations/{held_reservation.pk}/cancel/"
    first = buyer_client.post(url, HTTP_IDEMPOTENCY_KEY="c")
    again = buyer_client.post(url, HTTP_IDEMPOTENCY_KEY="c")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100000.00")
    # without the key the second cancel is the illegal transition it is
    assert error_of(buyer_client.post(url))[:2] == (409, "illegal_transition")


def test_same_key_on_another_endpoint_is_422(buyer_client, held_reservation):
    _deposit(buyer_client, "1.00", "x")
    response = buyer_client.post(
        f"/api/v1/reservations/{held_reservation.pk}/accept/", HTTP_IDEMPOTENCY_KEY="x"
    )
    assert error_of(response)[:2] == (422, "idempotency_key_reused")
    held_reservation.refresh_from_db()
    assert held_reservation.status == "held"
