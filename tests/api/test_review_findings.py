"""Inputs an independent review found accepted or crashing: each is now a 4xx naming the field,
and nothing changes."""

from decimal import Decimal

import pytest
from django.test import Client

from marketplace.models import Demand, Offer
from tests.api.conftest import error_of
from tests.factories import ProviderFactory, UserFactory, next_hour
from vouchers.models import VoucherApplication

pytestmark = pytest.mark.django_db


def _demand(**change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "accelerators": ["A100-80G"],
        "gpu_count": 2,
        "duration_hours": 2,
        "earliest_start": next_hour(1).isoformat(),
        "latest_end": next_hour(12).isoformat(),
        "max_price_per_gpu_hour": "12.5",
    }
    body.update(change)
    return body


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("earliest_start", "2030-01-01T08:00:00", "invalid"),  # naive: no offset
        ("latest_end", "2030-01-02T08:00:00", "invalid"),
        ("earliest_start", "２０３０-01-01T08:00:00Z", "invalid"),  # full-width digits
        ("latest_end", "2030-01-0٢T08:00:00Z", "invalid"),  # an Arabic-Indic 2
        ("earliest_start", "2030-01-01T08:30:00Z", "not_whole_hour"),
        ("latest_end", "2030-01-02T08:00:01Z", "not_whole_hour"),
    ],
)
def test_naive_or_fractional_hour_windows_are_refused(
    buyer_client, accelerator, field, value, code
):
    body = _demand(earliest_start="2030-01-01T00:00:00Z", latest_end="2030-01-03T00:00:00Z")
    body[field] = value
    response = buyer_client.post("/api/v1/demands/", body, format="json")
    assert error_of(response) == (400, code, field)
    assert not Demand.objects.exists()


def test_naive_window_filter_on_offer_search_is_refused(buyer_client, offer):
    response = buyer_client.get("/api/v1/offers/", {"window_start": "2030-01-01T00:00:00"})
    assert error_of(response)[::2] == (400, "window_start")


@pytest.mark.parametrize(
    "value",
    ["\uff12\uff10\uff13\uff10-01-01T00:00:00", "\uff12\uff10\uff13\uff10-01-01T00:00:00Z"],
)
def test_full_width_digits_in_the_offer_search_window_are_refused(buyer_client, offer, value):
    # full-width digits (which Django reads as a date) slipped past the offset rule as a 200
    response = buyer_client.get("/api/v1/offers/", {"window_start": value})
    assert error_of(response)[::2] == (400, "window_start")


@pytest.mark.parametrize("path", ["/api/v1/auth/token/", "/api/v1/demands/"])
def test_deeply_nested_json_is_a_400_not_a_500(buyer_client, path):
    body = "[" * 100_000 + "]" * 100_000
    response = buyer_client.post(path, body, content_type="application/json")
    assert error_of(response)[:2] == (400, "parse_error")
    assert not Demand.objects.exists()


def test_pending_provider_cannot_list_an_offer(site, accelerator):
    pending = ProviderFactory.create(status="pending", home_site=site)
    client = Client()
    client.force_login(UserFactory.create(username="pending-provider", organisation=pending))
    response = client.post(
        "/api/v1/offers/",
        {
            "site": str(site.pk),
            "accelerator": "A100-80G",
            "gpu_count": 4,
            "gpus_per_node": 4,
            "available_from": next_hour(1).isoformat(),
            "available_until": next_hour(48).isoformat(),
            "price_per_gpu_hour": "9.5",
        },
        content_type="application/json",
    )
    assert error_of(response) == (403, "organisation_not_approved", None)
    assert not Offer.objects.exists()


def test_voucher_application_above_the_buyer_cap_is_refused_at_once(buyer_client, programme):
    response = buyer_client.post(
        "/api/v1/voucher-applications/",
        {"programme": str(programme.pk), "amount": "999999999999.99"},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["field"] == "amount"
    assert not VoucherApplication.objects.exists()


def test_voucher_application_service_refuses_nan(buyer, programme):
    from marketplace.errors import ValidationFailed
    from vouchers.services import voucher_application_submit

    for bad in ("NaN", "Infinity", "abc", Decimal("-1")):
        with pytest.raises(ValidationFailed) as refused:
            voucher_application_submit(buyer=buyer, programme=programme, amount=bad)  # type: ignore[arg-type]
        assert refused.value.field == "amount"
    assert not VoucherApplication.objects.exists()
