"""Demands through the API: post, list, detail, cancel; every refused input names its field.

Plain ``django_db`` (no ``transaction=True``): the matching task enqueued on commit never runs,
so these tests do not depend on the matcher.
"""

import pytest

from marketplace.models import Demand
from tests.api.conftest import error_of
from tests.factories import DemandFactory, next_hour

pytestmark = pytest.mark.django_db


def _body(**change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "accelerators": ["NVIDIA A100 80GB"],
        "gpu_count": 4,
        "duration_hours": 3,
        "earliest_start": next_hour(1).isoformat(),
        "latest_end": next_hour(25).isoformat(),
        "max_price_per_gpu_hour": "12.5",
        "locality_limit": "region",
    }
    body.update(change)
    return body


def test_post_demand_resolves_accelerators_and_starts_open(
    buyer_client, buyer, accelerator, voucher
):
    response = buyer_client.post("/api/v1/demands/", _body(voucher=str(voucher.pk)), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (
        body["status"],
        body["accelerators"],
        body["max_price_per_gpu_hour"],
        body["voucher"],
        body["origin_site"],
        body["single_site"],
        body["auto_accept"],
    ) == ("open", ["A100-80G"], "12.5000", str(voucher.pk), "chengdu-tianfu", True, True)
    demand = Demand.objects.get(pk=body["id"])
    assert (demand.buyer_id, demand.gpu_count, demand.duration_hours) == (buyer.pk, 4, 3)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        (
            {
                "earliest_start": next_hour(-72).isoformat(),
                "latest_end": next_hour(-48).isoformat(),
            },
            "window_in_past",
            "latest_end",
        ),
        (
            {"earliest_start": next_hour(10).isoformat(), "latest_end": next_hour(5).isoformat()},
            "window_invalid",
            "latest_end",
        ),
        ({"duration_hours": 30}, "window_too_short", "duration_hours"),
        ({"latest_end": "9999-12-31T23:00:00Z"}, "window_too_far", "latest_end"),
        ({"latest_end": next_hour(367 * 24).isoformat()}, "window_too_far", "latest_end"),
        ({"accelerators": ["GTX-1080"]}, "unknown_accelerator", "accelerators"),
        ({"max_price_per_gpu_hour": "NaN"}, "invalid", "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "Infinity"}, "invalid", "max_price_per_gpu_hour"),
        ({"max_price_per_gpu_hour": "12.12345"}, "invalid", "max_price_per_gpu_hour"),
        ({"gpu_count": 0}, "invalid", "gpu_count"),
        # 100,000 GPUs × 200 h × ¥60,000 would bill ¥1.2 × 10^12, more than the ledger stores
        (
            {
                "gpu_count": 100_000,
                "duration_hours": 200,
                "latest_end": next_hour(240).isoformat(),
                "max_price_per_gpu_hour": "60000",
            },
            "bill_too_large",
            "max_price_per_gpu_hour",
        ),
        ({"locality_limit": "planet"}, "invalid", "locality_limit"),
        ({"earliest_start": "tomorrow"}, "invalid", "earliest_start"),
        ({"priority": "high"}, "invalid", "priority"),
    ],
)
def test_bad_demand_is_400_naming_the_field_and_creates_nothing(
    buyer_client, accelerator, change, code, field
):
    response = buyer_client.post("/api/v1/demands/", _body(**change), format="json")
    assert error_of(response) == (400, code, field)
    assert Demand.objects.count() == 0


def test_demand_with_another_organisations_voucher_is_refused(other_client, accelerator, voucher):
    response = other_client.post("/api/v1/demands/", _body(voucher=str(voucher.pk)), format="json")
    assert error_of(response) == (404, "not_found", "voucher")
    assert Demand.objects.count() == 0


def test_provider_only_organisation_cannot_post_demands(provider_client, accelerator):
    response = provider_client.post("/api/v1/demands/", _body(), format="json")
    assert error_of(response) == (403, "not_a_buyer", None)
    assert Demand.objects.count() == 0


def test_list_shows_own_demands_filtered_by_status(buyer_client, buyer, other_buyer):
    mine = DemandFactory.create(buyer=buyer)
    cancelled = DemandFactory.create(buyer=buyer, status=Demand.Status.CANCELLED)
    DemandFactory.create(buyer=other_buyer)
    all_ids = [d["id"] for d in buyer_client.get("/api/v1/demands/").json()["results"]]
    assert all_ids == [str(mine.pk), str(cancelled.pk)]
    body = buyer_client.get("/api/v1/demands/", {"status": "cancelled"}).json()
    assert [d["id"] for d in body["results"]] == [str(cancelled.pk)]
    assert error_of(buyer_client.get("/api/v1/demands/", {"status": "lost"})) == (
        400,
        "invalid",
        "status",
    )


def test_detail_and_cancel_own_demand(buyer_client, buyer):
    demand = DemandFactory.create(buyer=buyer)
    assert buyer_client.get(f"/api/v1/demands/{demand.pk}/").json()["status"] == "open"
    response = buyer_client.post(f"/api/v1/demands/{demand.pk}/cancel/")
    assert response.json()["status"] == "cancelled"
    # cancelling again is an illegal transition
    assert error_of(buyer_client.post(f"/api/v1/demands/{demand.pk}/cancel/")) == (
        409,
        "illegal_transition",
        None,
    )


def test_another_organisations_demand_is_404(other_client, buyer):
    demand = DemandFactory.create(buyer=buyer)
    assert error_of(other_client.get(f"/api/v1/demands/{demand.pk}/"))[:2] == (404, "not_found")
    assert error_of(other_client.post(f"/api/v1/demands/{demand.pk}/cancel/"))[:2] == (
        404,
        "not_found",
    )
    demand.refresh_from_db()
    assert demand.status == Demand.Status.OPEN


def test_demands_need_an_organisation(orphan_client):
    assert error_of(orphan_client.get("/api/v1/demands/")) == (403, "no_organisation", None)
    response = orphan_client.post("/api/v1/demands/", _body(), format="json")
    assert error_of(response) == (403, "no_organisation", None)
