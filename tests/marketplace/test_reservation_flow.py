"""Reservation lifecycle through the services, with the ledger checked at each step."""

from decimal import Decimal

import pytest

from ledger.models import Account
from ledger.services import organisation_account, system_account, voucher_account
from marketplace.errors import Conflict
from marketplace.models import Demand, Reservation
from marketplace.services import (
    reservation_cancel,
    reservation_create,
    reservation_report_usage,
    reservation_settle,
    reservations_advance,
)
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db


def _balance(account: Account) -> Decimal:
    account.refresh_from_db()
    return account.balance


def test_hold_splits_bill_between_voucher_and_wallet(buyer, offer, voucher):
    # given a demand for 4 GPUs × 2 h at ¥10/GPU-hour paid with a ¥1,000 voucher (60 % share)
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    demand.accelerators.add(offer.accelerator)
    # when it is booked
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    # then the ¥80 bill is ¥48 voucher + ¥32 cash, all in escrow, and the demand is reserved
    assert (r.bill, r.voucher_part, r.cash_part) == (
        Decimal("80.00"),
        Decimal("48.00"),
        Decimal("32.00"),
    )
    assert r.status == Reservation.Status.CONFIRMED
    assert _balance(voucher_account(voucher.pk)) == Decimal("952.00")
    assert _balance(organisation_account(buyer, Account.Kind.WALLET)) == Decimal("99968.00")
    assert _balance(system_account(Account.Kind.ESCROW)) == Decimal("80.00")
    demand.refresh_from_db()
    assert demand.status == Demand.Status.RESERVED


def test_partial_delivery_refunds_in_proportion(buyer, offer, voucher, provider):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher, gpu_count=1, duration_hours=3)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert (r.voucher_part, r.cash_part) == (Decimal("18.00"), Decimal("12.00"))
    reservations_advance(now=r.start)
    reservation_report_usage(reservation_id=r.pk, provider=provider, delivered_gpu_hours=1)
    reservation_settle(reservation_id=r.pk)
    # ¥10 billable; ¥20 refunded as ¥12 voucher + ¥8 cash
    assert _balance(voucher_account(voucher.pk)) == Decimal("994.00")
    assert _balance(organisation_account(buyer, Account.Kind.WALLET)) == Decimal("99996.00")
    assert _balance(organisation_account(provider, Account.Kind.PAYABLE)) == Decimal("4.00")
    assert _balance(organisation_account(provider, Account.Kind.CLAIMS)) == Decimal("6.00")
    assert _balance(system_account(Account.Kind.ESCROW)) == Decimal("0.00")
    with pytest.raises(Conflict):
        reservation_settle(reservation_id=r.pk)


def test_cancel_before_start_returns_everything_outside_fee_window(buyer, offer, settings):
    settings.CANCEL_FEE_WINDOW = settings.CANCEL_FEE_WINDOW * 0
    demand = DemandFactory.create(buyer=buyer)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    assert _balance(organisation_account(buyer, Account.Kind.WALLET)) == Decimal("100000.00")
    assert _balance(system_account(Account.Kind.ESCROW)) == Decimal("0.00")
