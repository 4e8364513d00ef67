"""Vouchers, voucher applications, wallet, deposits and ledger entries through the API."""

from decimal import Decimal

import pytest

from ledger.models import Account, Entry
from ledger.services import organisation_account
from tests.api.conftest import error_of
from vouchers.models import VoucherApplication

pytestmark = pytest.mark.django_db


def test_vouchers_list_and_detail_show_ledger_balance(buyer_client, voucher, reservation):
    body = buyer_client.get("/api/v1/vouchers/").json()
    assert [(v["id"], v["programme"], v["face_value"], v["balance"]) for v in body["results"]] == [
        (str(voucher.pk), "chengdu-2025", "1000.00", "1000.00")
    ]
    detail = buyer_client.get(f"/api/v1/vouchers/{voucher.pk}/").json()
    assert detail["expires_at"] == voucher.expires_at.isoformat().replace("+00:00", "Z")


def test_another_organisations_voucher_is_404(other_client, voucher):
    assert error_of(other_client.get(f"/api/v1/vouchers/{voucher.pk}/"))[:2] == (404, "not_found")
    assert other_client.get("/api/v1/vouchers/").json()["count"] == 0


def test_voucher_application_submit_list_detail(buyer_client, other_client, programme):
    response = buyer_client.post(
        "/api/v1/voucher-applications/",
        {"programme": str(programme.pk), "amount": "5000.00", "purpose": "LLM fine-tuning"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["amount"], body["programme"]) == (
        "submitted",
        "5000.00",
        "chengdu-2025",
    )
    listed = buyer_client.get("/api/v1/voucher-applications/").json()
    assert [a["id"] for a in listed["results"]] == [body["id"]]
    assert buyer_client.get(f"/api/v1/voucher-applications/{body['id']}/").status_code == 200
    assert error_of(other_client.get(f"/api/v1/voucher-applications/{body['id']}/"))[:2] == (
        404,
        "not_found",
    )


@pytest.mark.parametrize("amount", ["12.345", "NaN", "-5"])
def test_voucher_application_bad_amount_is_400(buyer_client, programme, amount):
    response = buyer_client.post(
        "/api/v1/voucher-applications/",
        {"programme": str(programme.pk), "amount": amount},
        format="json",
    )
    assert error_of(response)[0::2] == (400, "amount")
    assert VoucherApplication.objects.count() == 0


def test_wallet_and_deposit(buyer_client, buyer):
    assert buyer_client.get("/api/v1/wallet/").json() == {
        "currency": "CNY",
        "balance": "100000.00",
        "payable": "0.00",
        "claims": "0.00",
    }
    response = buyer_client.post("/api/v1/wallet/deposits/", {"amount": "250.50"}, format="json")
    assert response.status_code == 201
    assert (response.json()["amount"], response.json()["balance"]) == ("250.50", "100250.50")
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100250.50")


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "1.001", "0", "abc"])
def test_bad_deposit_is_400_amount_and_moves_nothing(buyer_client, buyer, amount):
    response = buyer_client.post("/api/v1/wallet/deposits/", {"amount": amount}, format="json")
    assert error_of(response)[0::2] == (400, "amount")
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100000.00")


def test_provider_cannot_deposit(provider_client, provider):
    response = provider_client.post("/api/v1/wallet/deposits/", {"amount": "10"}, format="json")
    assert error_of(response) == (403, "not_a_buyer", None)
    assert not Account.objects.filter(organisation=provider, kind="wallet").exists()


def test_ledger_lists_own_entries_only(buyer_client, other_client, voucher, reservation):
    body = buyer_client.get("/api/v1/ledger/").json()
    rows = {(e["reason"], e["account"], e["amount"], e["reservation"]) for e in body["results"]}
    assert rows == {
        ("deposit", "wallet", "100000.00", None),
        ("voucher_issue", "voucher", "1000.00", None),
        ("hold", "wallet", "-80.00", str(reservation.pk)),
    }
    holds = buyer_client.get("/api/v1/ledger/", {"reason": "hold"}).json()
    assert holds["count"] == 1
    assert error_of(buyer_client.get("/api/v1/ledger/", {"reason": "gift"})) == (
        400,
        "invalid",
        "reason",
    )
    other = other_client.get("/api/v1/ledger/").json()
    assert [e["reason"] for e in other["results"]] == ["deposit"]
    assert Entry.objects.count() > body["count"]
