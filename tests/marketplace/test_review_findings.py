"""Rules an independent review found enforced on one path only."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.models import Account
from ledger.services import programme_account, voucher_account
from marketplace.errors import Conflict
from marketplace.matching.cycle import matching_cycle_run
from marketplace.models import Demand, Reservation
from marketplace.services import reservation_accept, reservation_cancel, reservation_create
from tests.factories import DemandFactory
from vouchers.models import Voucher
from vouchers.services import voucher_issue, vouchers_lapse_expired

pytestmark = pytest.mark.django_db


def test_offers_of_a_provider_that_is_not_approved_are_never_matched(buyer, offer, provider):
    demand = DemandFactory.create(buyer=buyer)
    provider.status = "suspended"
    provider.save()
    matching_cycle_run(buyer.home_site.hub_id)
    assert not Reservation.objects.exists()
    with pytest.raises(Conflict) as refused:
        reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert refused.value.code == "provider_not_approved"
    demand.refresh_from_db()
    assert demand.status == Demand.Status.OPEN


def test_accept_after_the_ttl_expires_the_hold_and_is_a_409(buyer, offer, settings):
    demand = DemandFactory.create(buyer=buyer, auto_accept=False)
    held = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    wallet = Account.objects.get(kind="wallet", organisation=buyer)
    assert wallet.balance == Decimal("99920.00")
    late = timezone.now() + settings.ACCEPT_TTL + timedelta(seconds=1)
    with pytest.raises(Conflict) as refused:
        reservation_accept(reservation_id=held.pk, buyer=buyer, now=late)
    assert refused.value.code == "accept_ttl_passed"
    held.refresh_from_db()
    demand.refresh_from_db()
    wallet.refresh_from_db()
    assert (held.status, demand.status, wallet.balance) == ("expired", "open", Decimal("100000.00"))
    assert ledger_audit() == []


def test_value_released_to_a_lapsed_voucher_returns_to_the_programme(buyer, offer, programme):
    # given a ¥500 voucher that pays ¥48 of a reservation, then lapses (unused ¥452 returns)
    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("500.00"))
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    booked = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert booked.voucher_part == Decimal("48.00")
    budget_before = programme_account(programme.pk).balance
    assert vouchers_lapse_expired(now=voucher.expires_at) == 1
    assert programme_account(programme.pk).balance == budget_before + Decimal("452.00")
    # when the reservation is cancelled after the lapse
    reservation_cancel(reservation_id=booked.pk, buyer=buyer, now=timezone.now())
    # then the voucher's ¥48 goes to the programme too, not back to the dead voucher
    assert voucher_account(voucher.pk).balance == Decimal("0.00")
    assert programme_account(programme.pk).balance == budget_before + Decimal("500.00")
    assert Voucher.objects.get(pk=voucher.pk).status == Voucher.Status.EXPIRED
    assert ledger_audit() == []


def test_audit_flags_value_stranded_on_an_expired_voucher(voucher):
    Voucher.objects.filter(pk=voucher.pk).update(status=Voucher.Status.EXPIRED)
    assert any("expired voucher" in p for p in ledger_audit())
