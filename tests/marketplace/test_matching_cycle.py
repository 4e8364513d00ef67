"""A matching cycle against the database: reservations, holds, inter-hub trades."""

from decimal import Decimal

import pytest

from ledger.audit import ledger_audit
from marketplace.matching.cycle import matching_cycle_run
from marketplace.models import Demand, InterHubTrade, Reservation
from tests.factories import DemandFactory, HubFactory, OfferFactory, SiteFactory
from vouchers.services import programme_fund

pytestmark = pytest.mark.django_db


def test_cycle_books_locally_then_docks_to_another_hub(buyer, offer, provider, accelerator):
    # given a local offer of 8 GPUs and an offer in another hub, and two 8-GPU demands
    gansu = HubFactory.create(code="gansu")
    qingyang = SiteFactory.create(
        code="qingyang-dc", city="Qingyang", metro_area="Qingyang", hub=gansu
    )
    remote = OfferFactory.create(provider=provider, site=qingyang, accelerator=accelerator)
    first = DemandFactory.create(buyer=buyer, gpu_count=8, max_price_per_gpu_hour="30")
    first.latest_end = first.earliest_start + (first.latest_end - first.earliest_start) / 12
    first.save()
    second = DemandFactory.create(
        buyer=buyer,
        gpu_count=8,
        earliest_start=first.earliest_start,
        latest_end=first.latest_end,
        max_price_per_gpu_hour="20",
    )
    # when the buyer's hub runs a cycle
    cycle = matching_cycle_run(buyer.home_site.hub_id)
    # then the higher bid is served locally and the other docks to Gansu as an inter-hub trade
    assert cycle is not None and cycle.reservations_made == 2
    local = Reservation.objects.get(demand=first)
    docked = Reservation.objects.get(demand=second)
    assert (local.offer, local.locality_tier) == (offer, "city")
    assert (docked.offer, docked.locality_tier) == (remote, "national")
    trade = InterHubTrade.objects.get()
    assert (trade.reservation, trade.exporting_hub, trade.importing_hub, trade.gpu_hours) == (
        docked,
        gansu,
        buyer.home_site.hub,
        16,
    )
    assert ledger_audit() == []


def test_unmatched_demand_keeps_its_reason(buyer, offer):
    demand = DemandFactory.create(buyer=buyer, max_price_per_gpu_hour="1")
    demand.accelerators.add(offer.accelerator)
    matching_cycle_run(buyer.home_site.hub_id)
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == (Demand.Status.OPEN, "over_price")
    assert not Reservation.objects.exists()


def test_wallet_short_drops_the_pair_and_keeps_the_demand_open(buyer, offer, other_buyer):
    # given a buyer with no money in the wallet (everything withdrawn into a big booking)
    poor = DemandFactory.create(
        buyer=other_buyer, gpu_count=8, duration_hours=24, max_price_per_gpu_hour="2000"
    )
    offer.price_per_gpu_hour = 1000
    offer.save()
    matching_cycle_run(buyer.home_site.hub_id)
    poor.refresh_from_db()
    assert (poor.status, poor.unmatched_reason) == (Demand.Status.OPEN, "insufficient_funds")
    assert not Reservation.objects.exists()
    assert ledger_audit() == []


def test_snapshot_vouchers_carry_what_the_services_say(buyer, other_buyer, provider, programme):
    # given two programmes, one limited to a hub and a site with a small buyer cap, vouchers of
    # two buyers on each, some of each programme's budget and one buyer's cap already used, and
    # an open demand paying with each voucher
    from django.utils import timezone

    from marketplace.matching.cycle import snapshot_load
    from tests.factories import CatalogueEntryFactory, ProgrammeFactory
    from vouchers.services import programme_limits_left, programme_year, voucher_issue
    from vouchers.usage import usage_book

    scoped = ProgrammeFactory.create(code="scoped", buyer_annual_cap=Decimal("700.00"))
    programme_fund(scoped)
    CatalogueEntryFactory.create(programme=scoped, provider=provider)
    far = HubFactory.create(code="gansu")
    scoped.hubs.add(far)
    scoped.sites.add(buyer.home_site)
    now = timezone.now()
    face = {programme.pk: Decimal("1000.00"), scoped.pk: Decimal("500.00")}
    vouchers = [
        voucher_issue(programme=p, owner=b, face_value=face[p.pk])
        for p in (programme, scoped)
        for b in (buyer, other_buyer)
    ]
    years = {p.pk: programme_year(p, now) for p in (programme, scoped)}
    assert usage_book({(scoped.pk, buyer.pk): Decimal("250.00")}, years)
    assert usage_book({(programme.pk, other_buyer.pk): Decimal("40.00")}, years)
    demands = {str(DemandFactory.create(buyer=v.owner, voucher=v).pk): v for v in vouchers}
    # when the cycle loads its snapshot
    snaps, _ = snapshot_load(buyer.home_site.hub, now)
    # then each demand's voucher is what the one-voucher services give: balance, budget and
    # cap left, the approved providers and the programme's region
    assert {d.id for d in snaps} == set(demands)
    for snap in snaps:
        v, got = demands[snap.id], snap.voucher
        assert got is not None
        budget_left, cap_left = programme_limits_left(v.programme, v.owner, now)
        assert got.available == min(face[v.programme_id], budget_left, cap_left)
        assert got.providers == frozenset({str(provider.pk)})
        assert got.hubs == frozenset(str(h) for h in v.programme.hubs.values_list("pk", flat=True))
        assert got.sites == frozenset(
            str(s) for s in v.programme.sites.values_list("pk", flat=True)
        )
        assert got.clusters == frozenset()
    assert min(s.voucher.available for s in snaps if s.voucher) == Decimal("450.00")
