"""Public reference lists: hubs, sites, accelerators, programmes."""

import pytest

from tests.api.conftest import error_of
from tests.factories import HubFactory, SiteFactory

pytestmark = pytest.mark.django_db


def test_hubs_list_is_paginated_for_a_caller_without_organisation(orphan_client):
    HubFactory.create(code="gansu", name="Gansu")
    HubFactory.create(code="guizhou", name="Guizhou")
    response = orphan_client.get("/api/v1/hubs/")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [h["code"] for h in body["results"]] == ["gansu", "guizhou"]


def test_sites_filter_by_hub_code_and_city(buyer_client, site):
    # given a Chengdu site (fixture) and a Qingyang site in another hub
    SiteFactory.create(
        code="qingyang-1",
        city="Qingyang",
        metro_area="Qingyang",
        hub=HubFactory.create(code="gansu"),
    )
    # when filtering
    by_hub = buyer_client.get("/api/v1/sites/", {"hub": "gansu"}).json()
    by_city = buyer_client.get("/api/v1/sites/", {"city": "chengdu"}).json()
    # then each filter keeps only its sites
    assert [s["code"] for s in by_hub["results"]] == ["qingyang-1"]
    assert by_hub["results"][0]["hub"] == "gansu"
    assert [s["code"] for s in by_city["results"]] == ["chengdu-tianfu"]


def test_sites_unknown_hub_is_400_naming_hub(buyer_client, site):
    assert error_of(buyer_client.get("/api/v1/sites/", {"hub": "atlantis"})) == (
        400,
        "invalid",
        "hub",
    )


def test_accelerators_list(buyer_client, accelerator):
    body = buyer_client.get("/api/v1/accelerators/").json()
    assert [(a["code"], a["memory_gb"], a["bf16_tflops"]) for a in body["results"]] == [
        ("A100-80G", 80, "312.0")
    ]


def test_programmes_list_and_detail(buyer_client, programme):
    body = buyer_client.get("/api/v1/programmes/").json()
    assert [p["code"] for p in body["results"]] == ["chengdu-2025"]
    detail = buyer_client.get(f"/api/v1/programmes/{programme.pk}/").json()
    assert (detail["max_share"], detail["buyer_annual_cap"]) == ("0.6000", "5000000.00")


def test_programme_detail_unknown_or_malformed_id_is_json_404(buyer_client):
    assert error_of(buyer_client.get("/api/v1/programmes/7d1bb3c4-2d7e-4f55-9c65-4f0c5b0c0a11/"))[
        :2
    ] == (404, "not_found")
    assert error_of(buyer_client.get("/api/v1/programmes/not-a-uuid/"))[:2] == (404, "not_found")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"page": "0"}, "page"),
        ({"page": "x"}, "page"),
        ({"page_size": "-5"}, "page_size"),
        ({"page_size": "100000"}, "page_size"),
    ],
)
def test_bad_list_parameters_are_400_naming_them(buyer_client, params, field):
    for url in (
        "/api/v1/hubs/",
        "/api/v1/accelerators/",
        "/api/v1/programmes/",
        "/api/v1/vouchers/",
        "/api/v1/ledger/",
        "/api/v1/demands/",
        "/api/v1/reservations/",
        "/api/v1/offers/",
        "/api/v1/voucher-applications/",
    ):
        assert error_of(buyer_client.get(url, params)) == (400, "invalid", field), url
