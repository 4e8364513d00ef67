"""Regression tests for what the schemathesis run (``test_fuzz.py``) found."""

import pytest

from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/offers/?window_start=", "window_start"),
        ("/api/v1/offers/?accelerator=%20", "accelerator"),
        ("/api/v1/demands/?status=", "status"),
        ("/api/v1/reservations/?role=&status=", "role"),
        ("/api/v1/ledger/?account=", "account"),
        ("/api/v1/ledger/?reason=", "reason"),
        ("/api/v1/sites/?city=", "city"),
    ],
)
def test_an_empty_filter_value_is_a_400_not_an_unfiltered_list(buyer_client, url, field):
    status, code, named = error_of(buyer_client.get(url))
    assert (status, code, named) == (400, "invalid", field)


def test_an_empty_filter_value_on_provider_lists_is_a_400(provider_client):
    response = provider_client.get("/api/v1/provider/reimbursement-claims/?status=")
    assert error_of(response) == (400, "invalid", "status")


def test_offer_patch_documents_its_409(buyer_client):
    schema = buyer_client.get("/api/schema/", {"format": "json"}).json()
    assert "409" in schema["paths"]["/api/v1/offers/{id}/"]["patch"]["responses"]


@pytest.mark.parametrize("ordering", [",", "price,", ",-price", "price,,available_from"])
def test_an_empty_ordering_item_is_a_400(buyer_client, ordering):
    response = buyer_client.get("/api/v1/offers/", {"ordering": ordering})
    assert error_of(response) == (400, "invalid", "ordering")


def test_a_good_ordering_list_still_orders(buyer_client, offer):
    response = buyer_client.get("/api/v1/offers/", {"ordering": "-price,available_from"})
    assert response.status_code == 200
