"""Voucher rules as data and their boundaries (PRODUCT.md §5.4, §5.6): the city programmes'
shares, caps and minimums, the eligible base of a bill, share tiers, and eligibility at the
moment of the hold (owner, expiry, programme window, catalogue, region, related parties)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.services import voucher_account
from marketplace.errors import Conflict, Unprocessable, ValidationFailed
from marketplace.services import reservation_create
from tests.factories import (
    AcceleratorFactory,
    CatalogueEntryFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    ProgrammeFactory,
    next_hour,
)
from vouchers.models import CatalogueEntry, ShareTier
from vouchers.services import (
    BillLine,
    catalogue_entry_approve,
    catalogue_entry_propose,
    catalogue_entry_suspend,
    programme_fund,
    voucher_issue,
    voucher_part_check,
    voucher_split,
)

pytestmark = pytest.mark.django_db


def split(voucher, buyer, offer, bill, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("at", timezone.now())
    return voucher_split(
        voucher, bill=bill, buyer=buyer, provider=offer.provider, site=offer.site, **kw
    )


@pytest.fixture
def big_voucher(programme, buyer):  # type: ignore[no-untyped-def]
    return voucher_issue(programme=programme, owner=buyer, face_value=Decimal("100000.00"))


def test_chengdu_2025_pays_at_most_60_000_of_a_100_000_bill_through_the_service(
    buyer, offer, big_voucher
):
    # 8 GPUs × 10 h × ¥1,250 = ¥100,000
    offer.price_per_gpu_hour = Decimal("1250.0000")
    offer.save()
    start = next_hour(2)
    demand = DemandFactory.create(
        buyer=buyer,
        voucher=big_voucher,
        gpu_count=8,
        duration_hours=10,
        earliest_start=start,
        latest_end=start + timedelta(hours=24),
        max_price_per_gpu_hour=Decimal("2000"),
    )
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=start)
    assert (r.bill, r.voucher_part, r.cash_part) == (
        Decimal("100000.00"),
        Decimal("60000.00"),
        Decimal("40000.00"),
    )
    assert ledger_audit() == []


def test_a_voucher_part_of_60_000_01_on_100_000_is_refused(buyer, big_voucher):
    lines = [BillLine("gpu_time", Decimal("100000.00"))]
    voucher_part_check(big_voucher, Decimal("60000.00"), buyer=buyer, lines=lines)
    with pytest.raises(Unprocessable) as refused:
        voucher_part_check(big_voucher, Decimal("60000.01"), buyer=buyer, lines=lines)
    assert (refused.value.code, refused.value.field) == ("voucher_share_exceeded", "voucher_part")


@pytest.fixture
def beijing(provider):  # type: ignore[no-untyped-def]
    programme = ProgrammeFactory.create(
        code="beijing",
        issuer_city="Beijing",
        max_share=Decimal("0.20"),
        buyer_annual_cap=Decimal("2000000.00"),
        eligible_categories=["gpu_time"],
    )
    programme_fund(programme)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    return programme


def test_beijing_pays_20_percent_of_gpu_time_only_not_of_storage(buyer, offer, beijing):
    voucher = voucher_issue(programme=beijing, owner=buyer, face_value=Decimal("50000.00"))
    lines = [BillLine("gpu_time", Decimal("80000.00")), BillLine("storage", Decimal("20000.00"))]
    s = split(voucher, buyer, offer, Decimal("100000.00"), lines=lines)
    assert (s.voucher_part, s.cash_part) == (Decimal("16000.00"), Decimal("84000.00"))
    with pytest.raises(Unprocessable):
        voucher_part_check(voucher, Decimal("16000.01"), buyer=buyer, lines=lines)
    # the same bill under a programme that funds storage too: the base is the whole bill
    beijing.eligible_categories = ["gpu_time", "storage"]
    beijing.save()
    voucher.refresh_from_db()
    s = split(voucher, buyer, offer, Decimal("100000.00"), lines=lines)
    assert s.voucher_part == Decimal("20000.00")


def test_bill_lines_must_add_up_to_the_bill(buyer, offer, voucher):
    with pytest.raises(ValueError, match="add up"):
        split(voucher, buyer, offer, Decimal("10.00"), lines=[BillLine("gpu_time", Decimal("9"))])


def test_a_share_tier_for_domestic_accelerators_is_data(buyer, provider, site, programme, voucher):
    ascend = AcceleratorFactory.create(code="Ascend910B-64G", vendor="Huawei", is_domestic=True)
    domestic = OfferFactory.create(provider=provider, site=site, accelerator=ascend)
    foreign = OfferFactory.create(provider=provider, site=site)
    ShareTier.objects.create(
        programme=programme,
        name="domestic accelerators",
        max_share=Decimal("0.70"),
        domestic_accelerator=True,
    )
    bill = Decimal("100.00")
    assert split(voucher, buyer, domestic, bill, accelerator=ascend).voucher_part == Decimal("70")
    assert split(
        voucher, buyer, foreign, bill, accelerator=foreign.accelerator
    ).voucher_part == Decimal("60")


def test_a_startup_tier_applies_to_listed_buyers_only(buyer, other_buyer, offer, programme):
    tier = ShareTier.objects.create(programme=programme, name="startups", max_share=Decimal("0.80"))
    tier.buyers.add(buyer)
    mine = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.00"))
    theirs = voucher_issue(programme=programme, owner=other_buyer, face_value=Decimal("1000.00"))
    bill = Decimal("100.00")
    assert split(mine, buyer, offer, bill).voucher_part == Decimal("80.00")
    assert split(theirs, other_buyer, offer, bill).voucher_part == Decimal("60.00")


def test_qingyang_refuses_a_voucher_under_5000(buyer, provider):
    qingyang = ProgrammeFactory.create(
        code="qingyang", min_voucher_amount=Decimal("5000.00"), max_share=Decimal("0.3")
    )
    programme_fund(qingyang)
    with pytest.raises(ValidationFailed) as refused:
        voucher_issue(programme=qingyang, owner=buyer, face_value=Decimal("4999.99"))
    assert refused.value.code == "below_minimum"
    assert not qingyang.vouchers.exists()
    assert voucher_issue(programme=qingyang, owner=buyer, face_value=Decimal("5000.00"))


# --- Eligibility at the moment of the hold ---------------------------------------------------


def test_the_voucher_must_be_the_buyers_own(buyer, other_buyer, offer, voucher):
    s = split(voucher, other_buyer, offer, Decimal("80.00"))
    assert (s.voucher_part, s.note) == (0, "voucher_not_owned")


def test_a_voucher_works_until_the_end_of_its_last_valid_day_in_shanghai(
    buyer, provider, offer, programme, voucher
):
    last_moment = voucher.expires_at - timedelta(microseconds=1)
    CatalogueEntryFactory.create(
        programme=programme, provider=provider, year=last_moment.year
    )  # the catalogue is per year: approve the provider for the voucher's last year too
    assert split(voucher, buyer, offer, Decimal("80.00"), at=last_moment).voucher_part == 48
    s = split(voucher, buyer, offer, Decimal("80.00"), at=voucher.expires_at)
    assert (s.voucher_part, s.note) == (0, "voucher_expired")


def test_a_programme_pays_only_inside_its_effective_window(buyer, offer, programme, voucher):
    programme.effective_until = timezone.now().date() - timedelta(days=1)
    programme.save()
    voucher.refresh_from_db()
    s = split(voucher, buyer, offer, Decimal("80.00"))
    assert s.note == "programme_not_in_effect"
    with pytest.raises(ValidationFailed) as refused:
        voucher_issue(programme=programme, owner=buyer, face_value=Decimal("10.00"))
    assert refused.value.code == "programme_not_in_effect"


@pytest.mark.parametrize(
    ("status", "year_offset", "usable"),
    [
        ("approved", 0, True),
        ("proposed", 0, False),
        ("suspended", 0, False),
        ("approved", -1, False),  # approved last year only
    ],
)
def test_the_provider_must_be_approved_in_the_catalogue_for_the_year(
    status, year_offset, usable, buyer, offer, programme, voucher
):
    CatalogueEntry.objects.filter(programme=programme).update(
        status=status, year=timezone.now().year + year_offset
    )
    s = split(voucher, buyer, offer, Decimal("80.00"))
    assert (s.voucher_part > 0) is usable
    assert s.note == ("" if usable else "provider_not_in_catalogue")


def test_catalogue_lifecycle_proposed_approved_suspended(programme):
    provider = OrganisationFactory.create(kind="provider")
    entry = catalogue_entry_propose(programme=programme, provider=provider, year=2026)
    assert entry.status == "proposed"
    with pytest.raises(Conflict):
        catalogue_entry_propose(programme=programme, provider=provider, year=2026)
    assert catalogue_entry_approve(entry_id=entry.pk).status == "approved"
    with pytest.raises(Conflict) as again:
        catalogue_entry_approve(entry_id=entry.pk)
    assert again.value.code == "illegal_transition"
    assert catalogue_entry_suspend(entry_id=entry.pk).status == "suspended"
    assert catalogue_entry_approve(entry_id=entry.pk).status == "approved"
    with pytest.raises(ValidationFailed):
        catalogue_entry_propose(programme=programme, provider=OrganisationFactory.create(), year=1)


def test_the_site_must_be_in_the_programmes_region(buyer, offer, programme, voucher):
    programme.hubs.add(HubFactory.create(code="beijing-tianjin-hebei"))
    s = split(voucher, buyer, offer, Decimal("80.00"))
    assert s.note == "site_outside_region"
    programme.sites.add(offer.site)
    assert split(voucher, buyer, offer, Decimal("80.00")).voucher_part == 48


def test_related_organisations_get_no_voucher_part_and_the_reason_is_kept(
    buyer, provider, offer, voucher
):
    buyer.related.add(provider)
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert (r.voucher_part, r.cash_part, r.voucher_note) == (0, r.bill, "related_party")
    assert r.voucher is None
    assert voucher_account(voucher.pk).balance == Decimal("1000.00")


def test_one_reservation_carries_at_most_one_voucher(buyer, offer, voucher):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert r.voucher_id == voucher.pk
    assert r.hold.voucher_part == r.voucher_part  # one hold, one voucher leg
    assert r.transactions.get(reason="hold").entries.filter(account__kind="voucher").count() == 1


def test_vouchers_of_a_buyer_in_a_calendar_year_never_pass_the_cap(buyer, programme):
    programme.buyer_annual_cap = Decimal("5000000.00")
    programme.save()
    voucher_issue(programme=programme, owner=buyer, face_value=Decimal("4999999.99"))
    with pytest.raises(Unprocessable):
        voucher_issue(programme=programme, owner=buyer, face_value=Decimal("0.02"))
    voucher_issue(programme=programme, owner=buyer, face_value=Decimal("0.01"))
    # a new calendar year (Asia/Shanghai) starts a new cap
    next_year = timezone.now().replace(year=timezone.now().year + 1, month=1, day=1, hour=0)
    assert voucher_issue(
        programme=programme, owner=buyer, face_value=Decimal("1.00"), now=next_year
    )
    assert ledger_audit() == []
