"""Provider console after the review of issue 6: peak reserved for a page of offers in one
query, readable offer names without extra queries, and the console in Chinese."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from marketplace.models import Offer
from marketplace.services import offer_peak_reserved, reservation_create
from tests.factories import DemandFactory, OfferFactory, next_hour

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(provider_user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(provider_user)
    return client


def _book(buyer, offer, hours_ahead, gpus=2):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(
        buyer=buyer, earliest_start=next_hour(hours_ahead), gpu_count=gpus
    )
    demand.accelerators.add(offer.accelerator)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


def _changelist_queries(client: Client) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/console/marketplace/offer/")
    assert response.status_code == 200
    return len(ctx.captured_queries), response.content.decode()


def test_offer_list_query_count_does_not_grow_with_offers(
    console, buyer, provider, site, accelerator
):
    # given one offer with reservations
    first = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    _book(buyer, first, 2)
    one, _body = _changelist_queries(console)
    # when the provider has ten, each with overlapping reservations
    offers = [first]
    for i in range(9):
        offer = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
        _book(buyer, offer, 2 + i)
        _book(buyer, offer, 3 + i, gpus=3)  # overlaps the first for one hour: peak 5
        offers.append(offer)
    ten, body = _changelist_queries(console)
    # then the page costs the same number of queries
    assert ten == one
    # and each row shows the same peak as the service computes one by one
    for offer in offers:
        assert f"{offer_peak_reserved(offer)} / {offer.gpu_count}" in body
    assert body.count("5 / 8") == 9 and body.count("2 / 8") == 1


def test_offer_str_names_model_and_site_without_extra_queries(offer):
    offer = Offer.objects.select_related("site", "accelerator").get(pk=offer.pk)
    with CaptureQueriesContext(connection) as ctx:
        text = str(offer)
    assert len(ctx.captured_queries) == 0
    assert text == f"{offer.gpu_count}× A100-80G @ {offer.site.name} ({offer.site.city})"
    assert "-" * 4 not in text and str(offer.pk) not in text


def test_operator_reservation_list_query_count_is_fixed(buyer, offer, admin_client):
    _book(buyer, offer, 2)
    with CaptureQueriesContext(connection) as ctx:
        assert admin_client.get("/admin/marketplace/reservation/").status_code == 200
    few = len(ctx.captured_queries)
    for i in range(4):
        _book(buyer, offer, 4 + 2 * i)
    with CaptureQueriesContext(connection) as ctx:
        body = admin_client.get("/admin/marketplace/reservation/").content.decode()
    assert len(ctx.captured_queries) == few
    assert f"8× A100-80G @ {offer.site.name}" in body


def test_console_in_chinese(provider_user, offer):
    client = Client(headers={"accept-language": "zh-hans"})
    client.force_login(provider_user)
    index = client.get("/console/").content.decode()
    assert "服务商控制台" in index and "使用报告" in index
    offers = client.get("/console/marketplace/offer/").content.decode()
    assert "峰值已预订 / 容量（GPU）" in offers and "启用所选报价" in offers
    for path, word in [
        ("/console/usage/", "还没有已完成的预订。"),
        ("/console/payouts/", "应付余额："),
        ("/console/utilisation/", "每日已预订的 GPU 小时"),
    ]:
        assert word in client.get(path).content.decode(), path


def test_console_strings_are_in_the_translated_catalogue():
    from pathlib import Path

    from django.conf import settings

    po = Path(settings.BASE_DIR, "locale", "zh_Hans", "LC_MESSAGES", "django.po").read_text()
    for msgid in [
        "peak reserved / capacity (GPUs)",
        "Usage reports",
        "No completed reservations yet.",
        "This account does not act for an active provider organisation.",
    ]:
        block = po.split(f'msgid "{msgid}"\n', 1)[1].split("\n", 1)[0]
        assert block.startswith('msgstr "') and block != 'msgstr ""', msgid
