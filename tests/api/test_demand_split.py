"""Partial fills through the API: ``split`` and ``min_gpus_per_part`` on a demand (with the
deprecated ``single_site`` still understood), the parts on the demand's detail, and the split
reach in ``explain``."""

import pytest

from marketplace.matching.cycle import matching_cycle_run
from marketplace.models import Demand
from tests.api.conftest import error_of
from tests.factories import OfferFactory, next_hour

pytestmark = pytest.mark.django_db


def _body(**change: object) -> dict[str, object]:
    body: dict[str, object] = {
        "accelerators": ["A100-80G"],
        "gpu_count": 16,
        "duration_hours": 3,
        "earliest_start": next_hour(1).isoformat(),
        "latest_end": next_hour(25).isoformat(),
        "max_price_per_gpu_hour": "20",
    }
    body.update(change)
    return body


def test_post_a_split_demand(buyer_client, accelerator):
    response = buyer_client.post(
        "/api/v1/demands/", _body(split="site", min_gpus_per_part=8), format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["split"], body["min_gpus_per_part"], body["single_site"]) == ("site", 8, True)
    demand = Demand.objects.get(pk=body["id"])
    assert (demand.split, demand.min_gpus_per_part) == ("site", 8)


def test_a_demand_does_not_split_by_default(buyer_client, accelerator):
    body = buyer_client.post("/api/v1/demands/", _body(), format="json").json()
    assert (body["split"], body["min_gpus_per_part"], body["single_site"]) == ("none", 1, True)


@pytest.mark.parametrize(("single_site", "split"), [(True, "none"), (False, "hub")])
def test_the_deprecated_single_site_still_means_what_it_said(
    buyer_client, accelerator, single_site, split
):
    response = buyer_client.post("/api/v1/demands/", _body(single_site=single_site), format="json")
    assert response.status_code == 201, response.json()
    assert (response.json()["split"], response.json()["single_site"]) == (split, single_site)


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"single_site": True, "split": "hub"}, "invalid", "single_site"),
        ({"single_site": False, "split": "site"}, "invalid", "single_site"),
        ({"split": "anywhere"}, "invalid", "split"),
        ({"split": None}, "invalid", "split"),
        ({"min_gpus_per_part": 0}, "invalid", "min_gpus_per_part"),
        ({"min_gpus_per_part": "eight"}, "invalid", "min_gpus_per_part"),
        ({"min_gpus_per_part": 17}, "min_part_too_large", "min_gpus_per_part"),
    ],
)
def test_bad_split_input_is_a_400_naming_the_field(buyer_client, accelerator, change, code, field):
    response = buyer_client.post("/api/v1/demands/", _body(**change), format="json")
    assert error_of(response) == (400, code, field)
    assert not Demand.objects.exists()


def test_the_detail_shows_the_parts_of_a_served_split_demand(
    buyer_client, other_client, buyer, provider, site, accelerator
):
    # given two 8-GPU offers at the home site and a 16-GPU site-split demand, matched
    offers = [
        OfferFactory.create(provider=provider, site=site, accelerator=accelerator) for _ in range(2)
    ]
    demand_id = buyer_client.post("/api/v1/demands/", _body(split="site"), format="json").json()[
        "id"
    ]
    matching_cycle_run(buyer.home_site.hub_id)
    # when the buyer reads the demand
    response = buyer_client.get(f"/api/v1/demands/{demand_id}/")
    # then it shows one part per offer, 8 GPUs each over the same hours, adding up to the demand
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "reserved"
    parts = body["parts"]
    assert sorted((p["offer"], p["gpu_count"], p["site"]) for p in parts) == sorted(
        (str(o.pk), 8, "chengdu-tianfu") for o in offers
    )
    assert {(p["start"], p["end"], p["status"], p["bill"]) for p in parts} == {
        (parts[0]["start"], parts[0]["end"], "confirmed", "240.00")
    }
    # and another organisation cannot see it
    assert error_of(other_client.get(f"/api/v1/demands/{demand_id}/"))[:2] == (404, "not_found")


def test_explain_tells_how_many_gpus_the_best_site_holds_together(
    buyer_client, buyer, provider, site, accelerator
):
    # given 8 + 4 GPUs at the home site and a 16-GPU site-split demand that cannot be served
    OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    OfferFactory.create(provider=provider, site=site, accelerator=accelerator, gpu_count=4)
    demand_id = buyer_client.post("/api/v1/demands/", _body(split="site"), format="json").json()[
        "id"
    ]
    matching_cycle_run(buyer.home_site.hub_id)
    # when the buyer asks why
    response = buyer_client.get(f"/api/v1/demands/{demand_id}/explain/")
    # then the split block names the site and the 12 of 16 GPUs it holds together
    assert response.status_code == 200, response.json()
    split = response.json()["split"]
    assert (split["scope"], split["min_gpus_per_part"], split["gpus_needed"]) == ("site", 1, 16)
    assert [(g["group"], g["offers"], g["gpus_together"]) for g in split["groups"]] == [
        ("chengdu-tianfu", 2, 12)
    ]
    assert split["groups"][0]["start"] == next_hour(1).isoformat().replace("+00:00", "Z")


def test_explain_has_no_split_block_for_a_whole_demand(buyer_client, buyer, offer):
    demand_id = buyer_client.post("/api/v1/demands/", _body(), format="json").json()["id"]
    response = buyer_client.get(f"/api/v1/demands/{demand_id}/explain/")
    assert response.status_code == 200 and response.json()["split"] is None
