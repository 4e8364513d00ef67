"""The one error shape (RFC 9457 problem details, also from Django under /api/), strict input on
filters, pagination, create and partial update, and read-only fields."""

import json
from decimal import Decimal

import pytest
from django.test import RequestFactory

from marketplace.api.errors import handler404, handler500
from marketplace.models import Demand, Offer
from tests.api.conftest import PROBLEM_MEMBERS, error_of
from tests.factories import next_hour

pytestmark = pytest.mark.django_db


def test_unknown_api_route_is_problem_json_not_html(buyer_client):
    response = buyer_client.get("/api/v1/no-such-thing/")
    assert error_of(response) == (404, "not_found", None)


def test_method_not_allowed_is_problem_json(buyer_client):
    response = buyer_client.delete("/api/v1/hubs/")
    assert error_of(response) == (405, "method_not_allowed", None)


def test_malformed_json_is_400_problem(buyer_client):
    response = buyer_client.post(
        "/api/v1/demands/", data="{not json", content_type="application/json"
    )
    assert error_of(response)[:2] == (400, "parse_error")
    assert Demand.objects.count() == 0


def test_django_handlers_answer_problem_json_under_api_and_html_elsewhere():
    api = RequestFactory().get("/api/v1/offers/")
    for response, status in ((handler500(api), 500), (handler404(api, None), 404)):
        assert response["Content-Type"] == "application/problem+json"
        body = json.loads(response.content)
        assert set(body) == PROBLEM_MEMBERS and body["status"] == status
    page = handler404(RequestFactory().get("/console/nope/"), None)
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"page": "0"}, "page"),
        ({"page": "-1"}, "page"),
        ({"page_size": "-5"}, "page_size"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "100000"}, "page_size"),
        ({"page_size": "1e3"}, "page_size"),
        ({"max_price": "1e400"}, "max_price"),
        ({"max_price": "-1"}, "max_price"),
        ({"max_price": "-Infinity"}, "max_price"),
        ({"min_gpus": "NaN"}, "min_gpus"),
        ({"window_start": "2026-02-30T00:00:00Z"}, "window_start"),
        ({"accelerator": "A100-80G,H9000"}, "accelerator"),
        ({"hub": "chengdu-chongqing", "hubb": "x"}, "hubb"),
    ],
)
def test_bad_list_parameters_are_400_naming_them(buyer_client, offer, params, field):
    assert error_of(buyer_client.get("/api/v1/offers/", params))[0::2] == (400, field)


@pytest.mark.parametrize("url", ["/api/v1/demands/", "/api/v1/reservations/", "/api/v1/ledger/"])
def test_misspelled_filter_is_400_on_every_list(buyer_client, url):
    assert error_of(buyer_client.get(url, {"statuss": "open"}))[0::2] == (400, "statuss")


def _demand(accelerator) -> dict:  # type: ignore[no-untyped-def]
    return {
        "accelerators": [accelerator.code],
        "gpu_count": 2,
        "duration_hours": 2,
        "earliest_start": next_hour(1).isoformat(),
        "latest_end": next_hour(12).isoformat(),
        "max_price_per_gpu_hour": "20",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_price_per_gpu_hour": "NaN"}, "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "Infinity"}, "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "1e400"}, "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "-5"}, "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "1.23456"}, "max_price_per_gpu_hour"),
        ({"gpu_count": "RAW:1e400"}, "gpu_count"),
        ({"max_price_per_gpu_hour": "RAW:1e400"}, "max_price_per_gpu_hour"),
        ({"duration_hours": "RAW:NaN"}, None),  # not JSON at all: 400 parse_error
        ({"earliest_start": "2026-02-30T00:00:00Z"}, "earliest_start"),
        ({"latest_end": next_hour(-48).isoformat()}, "latest_end"),
        ({"accelerators": ["H9000"]}, "accelerators"),
        ({"voucher": "not-a-uuid"}, "voucher"),
        ({"status": "matched"}, "status"),
        ({"buyer": "00000000-0000-0000-0000-000000000000"}, "buyer"),
    ],
)
def test_bad_demand_is_400_naming_the_field_and_creates_nothing(
    buyer_client, accelerator, change, field
):
    # "RAW:…" values go into the JSON text as bare numbers (1e400 is valid JSON, then infinite)
    text = json.dumps(_demand(accelerator) | change)
    for value in change.values():
        if isinstance(value, str) and value.startswith("RAW:"):
            text = text.replace(json.dumps(value), value[4:])
    response = buyer_client.post("/api/v1/demands/", text, content_type="application/json")
    assert error_of(response)[0::2] == (400, field)
    assert Demand.objects.count() == 0


def test_demand_end_before_start_is_400(buyer_client, accelerator):
    body = _demand(accelerator) | {
        "earliest_start": next_hour(10).isoformat(),
        "latest_end": next_hour(5).isoformat(),
    }
    status, _, field = error_of(buyer_client.post("/api/v1/demands/", body, format="json"))
    assert (status, field) == (400, "latest_end")
    assert Demand.objects.count() == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price_per_gpu_hour": "-1"}, "price_per_gpu_hour"),
        ({"price_per_gpu_hour": "0.00001"}, "price_per_gpu_hour"),
        ({"price_per_gpu_hour": "Infinity"}, "price_per_gpu_hour"),
        ({"available_until": "2026-13-01T00:00:00Z"}, "available_until"),
        ({"available_until": next_hour(-100).isoformat()}, "available_until"),
        ({"gpu_count": -5}, "gpu_count"),
        ({"status": "withdrawn"}, "status"),
        ({"provider": "00000000-0000-0000-0000-000000000000"}, "provider"),
        ({"accelerator": "A100-80G"}, "accelerator"),
    ],
)
def test_partial_update_follows_the_create_rules_and_changes_nothing(
    provider_client, offer, change, field
):
    before = Offer.objects.filter(pk=offer.pk).values().get()
    response = provider_client.patch(f"/api/v1/offers/{offer.pk}/", change, format="json")
    assert error_of(response)[0::2] == (400, field)
    assert Offer.objects.filter(pk=offer.pk).values().get() == before


def test_price_change_after_match_leaves_the_reservation_price(provider_client, offer, reservation):
    response = provider_client.patch(
        f"/api/v1/offers/{offer.pk}/", {"price_per_gpu_hour": "99"}, format="json"
    )
    assert response.status_code == 200
    reservation.refresh_from_db()
    assert (reservation.price_per_gpu_hour, reservation.bill) == (
        Decimal("10.0000"),
        Decimal("80.00"),
    )


def test_read_only_programme_and_voucher_cannot_be_written(buyer_client, voucher):
    for url in (f"/api/v1/vouchers/{voucher.pk}/", f"/api/v1/programmes/{voucher.programme_id}/"):
        response = buyer_client.patch(url, {"balance": "1000000", "max_share": "1"}, format="json")
        assert error_of(response)[:2] == (405, "method_not_allowed")
    voucher.refresh_from_db()
    assert voucher.programme.max_share < 1
