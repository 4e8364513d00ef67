"""Quotes give the bill line by line (issue 3): each category with its voucher-eligible part as
the programme's data defines it, the lines adding up exactly to the bill and its parts; extra
lines (storage, network, software) are validated strictly."""

from decimal import Decimal

import pytest

from tests.api.conftest import error_of
from tests.factories import CatalogueEntryFactory, OfferFactory, ProgrammeFactory
from vouchers.services import programme_fund, voucher_issue

pytestmark = pytest.mark.django_db

URL = "/api/v1/quotes/"


def _sum(lines, key):  # type: ignore[no-untyped-def]
    return sum((Decimal(line[key]) for line in lines), Decimal(0))


def test_a_cash_quote_is_one_gpu_time_line(buyer_client, offer):
    body = buyer_client.post(URL, {"offer": str(offer.pk), "gpu_count": 4, "hours": 2}).json()
    assert body["lines"] == [
        {
            "category": "gpu_time",
            "amount": "80.00",
            "eligible": False,
            "voucher_part": "0.00",
            "cash_part": "80.00",
        }
    ]


def test_beijing_pays_20_percent_of_gpu_time_and_nothing_of_storage(
    buyer, provider, site, accelerator, buyer_client
):
    # given Beijing (20 %, compute only) and ¥80,000 of GPU time plus ¥20,000 of storage
    beijing = ProgrammeFactory.create(
        code="beijing",
        max_share=Decimal("0.2000"),
        buyer_annual_cap=Decimal("2000000.00"),
        eligible_categories=["gpu_time"],
    )
    programme_fund(beijing)
    CatalogueEntryFactory.create(programme=beijing, provider=provider)
    voucher = voucher_issue(programme=beijing, owner=buyer, face_value=Decimal("50000.00"))
    offer = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    body = buyer_client.post(
        URL,
        {
            "offer": str(offer.pk),
            "gpu_count": 8,
            "hours": 1000,
            "voucher": str(voucher.pk),
            "extra_lines": [{"category": "storage", "amount": "20000.00"}],
        },
        format="json",
    ).json()
    # then the voucher pays ¥16,000, all of it on the GPU-time line, and the lines add up
    assert (body["bill"], body["voucher_part"], body["cash_part"]) == (
        "100000.00",
        "16000.00",
        "84000.00",
    )
    assert [(x["category"], x["eligible"], x["voucher_part"]) for x in body["lines"]] == [
        ("gpu_time", True, "16000.00"),
        ("storage", False, "0.00"),
    ]
    assert _sum(body["lines"], "amount") == Decimal(body["bill"])
    assert _sum(body["lines"], "voucher_part") == Decimal(body["voucher_part"])
    assert _sum(body["lines"], "cash_part") == Decimal(body["cash_part"])


def test_a_programme_funding_storage_spreads_the_voucher_over_both_lines(
    buyer, provider, site, accelerator, buyer_client
):
    programme = ProgrammeFactory.create(
        code="both", max_share=Decimal("0.3000"), eligible_categories=["gpu_time", "storage"]
    )
    programme_fund(programme)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.00"))
    offer = OfferFactory.create(
        provider=provider, site=site, accelerator=accelerator, price_per_gpu_hour=Decimal("100.01")
    )
    body = buyer_client.post(
        URL,
        {
            "offer": str(offer.pk),
            "gpu_count": 1,
            "hours": 1,
            "voucher": str(voucher.pk),
            "extra_lines": [{"category": "storage", "amount": "33.33"}],
        },
        format="json",
    ).json()
    # 30 % of ¥133.34 = ¥40.00: ¥30.00 on GPU time, ¥10.00 on storage (largest remainder)
    assert body["voucher_part"] == "40.00"
    assert [(x["category"], x["voucher_part"], x["cash_part"]) for x in body["lines"]] == [
        ("gpu_time", "30.00", "70.01"),
        ("storage", "10.00", "23.33"),
    ]


@pytest.mark.parametrize(
    "lines",
    [
        [{"category": "gpu_time", "amount": "1.00"}],
        [{"category": "cooling", "amount": "1.00"}],
        [{"category": "storage", "amount": "0.00"}],
        [{"category": "storage", "amount": "1.001"}],
        [{"category": "storage", "amount": "1.00", "note": "x"}],
        [{"category": "storage", "amount": "1.00"}, {"category": "storage", "amount": "2.00"}],
        "storage",
    ],
)
def test_bad_extra_lines_are_a_400_naming_the_field(buyer_client, offer, lines):
    response = buyer_client.post(
        URL,
        {"offer": str(offer.pk), "gpu_count": 1, "hours": 1, "extra_lines": lines},
        format="json",
    )
    status, _, field = error_of(response)
    assert (status, field) == (400, "extra_lines")


def test_a_quote_for_more_gpus_than_the_offer_lists_is_400_naming_gpu_count(buyer_client, offer):
    response = buyer_client.post(URL, {"offer": str(offer.pk), "gpu_count": 9, "hours": 2})
    assert error_of(response) == (400, "more_than_offered", "gpu_count")


def _offer_of_100k_gpus(provider, site, accelerator, price: Decimal):  # type: ignore[no-untyped-def]
    return OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=accelerator,
        gpu_count=100_000,
        price_per_gpu_hour=price,
    )


def test_a_quote_billing_more_than_the_ledger_stores_is_400_naming_hours(
    buyer_client, provider, site, accelerator
):
    # 100,000 GPUs × 8,000 h × ¥2,000 = ¥1.6 × 10^12, over the ¥999,999,999,999.99 a bill holds
    huge = _offer_of_100k_gpus(provider, site, accelerator, Decimal("2000"))
    response = buyer_client.post(URL, {"offer": str(huge.pk), "gpu_count": 100_000, "hours": 8000})
    assert error_of(response) == (400, "bill_too_large", "hours")
    ok = buyer_client.post(URL, {"offer": str(huge.pk), "gpu_count": 100_000, "hours": 4000})
    assert ok.status_code == 200, ok.json()
    assert ok.json()["bill"] == "800000000000.00"


def test_extra_lines_carrying_the_bill_past_what_it_holds_are_400_naming_extra_lines(
    buyer_client, provider, site, accelerator
):
    # given GPU time just under the ¥999,999,999,999.99 a bill holds: 100,000 GPUs × 100 h ×
    # ¥99,999.9999 = ¥999,999,999,000.00
    huge = _offer_of_100k_gpus(provider, site, accelerator, Decimal("99999.9999"))
    body = {"offer": str(huge.pk), "gpu_count": 100_000, "hours": 100}
    # when ¥1,000 of storage would carry the whole bill one fen past it
    response = buyer_client.post(
        URL,
        {**body, "extra_lines": [{"category": "storage", "amount": "1000.00"}]},
        format="json",
    )
    # then the quote is refused naming the extra lines (not a 500 writing out the bill)
    assert error_of(response) == (400, "bill_too_large", "extra_lines")
    # while ¥999.99 of storage still fits, to the fen
    ok = buyer_client.post(
        URL,
        {**body, "extra_lines": [{"category": "storage", "amount": "999.99"}]},
        format="json",
    )
    assert ok.status_code == 200, ok.json()
    assert ok.json()["bill"] == "999999999999.99"
