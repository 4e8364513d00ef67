"""Money through a reservation's life (PRODUCT.md §5.3–§5.6): two-phase holds, refunds in the
original proportion, cancellation and platform fees in the ledger, both redemption modes,
reimbursement statements (reproducible, CSV, paid once), and a hold that outlives its voucher.
"""

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.holds import hold_void
from ledger.models import Account, Hold, Refund, Transaction
from ledger.services import organisation_account, programme_account, system_account
from marketplace.errors import Conflict
from marketplace.models import Reservation
from marketplace.services import (
    reservation_cancel,
    reservation_create,
    reservation_fail,
    reservation_report_usage,
    reservation_settle,
    reservations_advance,
    reservations_expire_unaccepted,
)
from tests.factories import DemandFactory, next_hour
from vouchers.models import ReimbursementClaim, Statement
from vouchers.selectors import statement_csv
from vouchers.services import statement_issue, statement_mark_paid, vouchers_lapse_expired

pytestmark = pytest.mark.django_db

# 4 GPUs × 2 h × ¥10 = ¥80.00; Chengdu 60 % → voucher ¥48.00, cash ¥32.00.
BILL, V, C = Decimal("80.00"), Decimal("48.00"), Decimal("32.00")


def bal(account: Account) -> Decimal:
    account.refresh_from_db()
    return account.balance


@pytest.fixture
def accounts(buyer, provider, voucher):  # type: ignore[no-untyped-def]
    from ledger.services import voucher_account

    return {
        "wallet": organisation_account(buyer, Account.Kind.WALLET),
        "voucher": voucher_account(voucher.pk),
        "payable": organisation_account(provider, Account.Kind.PAYABLE),
        "claims": organisation_account(provider, Account.Kind.CLAIMS),
        "buyer_claims": organisation_account(buyer, Account.Kind.CLAIMS),
        "escrow": system_account(Account.Kind.ESCROW),
        "fees": system_account(Account.Kind.FEES),
    }


def book(buyer, offer, voucher, *, hours_ahead: int = 1, **demand):  # type: ignore[no-untyped-def]
    start = next_hour(hours_ahead)
    d = DemandFactory.create(
        buyer=buyer,
        voucher=voucher,
        earliest_start=start,
        latest_end=start + timedelta(hours=24),
        **demand,
    )
    return reservation_create(demand_id=d.pk, offer_id=offer.pk, start=start)


def test_a_hold_is_pending_with_both_parts_in_escrow(buyer, offer, voucher, accounts):
    r = book(buyer, offer, voucher)
    assert (r.bill, r.voucher_part, r.cash_part) == (BILL, V, C)
    assert Hold.objects.get(reservation=r).status == Hold.Status.PENDING
    assert bal(accounts["escrow"]) == BILL
    assert bal(accounts["voucher"]) == Decimal("1000.00") - V
    assert bal(accounts["wallet"]) == Decimal("100000.00") - C
    assert ledger_audit() == []


def test_cancel_outside_the_fee_window_returns_everything(buyer, offer, voucher, accounts):
    r = book(buyer, offer, voucher, hours_ahead=30)
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    assert bal(accounts["voucher"]) == Decimal("1000.00")
    assert bal(accounts["wallet"]) == Decimal("100000.00")
    assert bal(accounts["escrow"]) == 0
    refund = Refund.objects.get()
    assert (refund.kind, refund.voucher_amount, refund.cash_amount) == ("cancellation", V, C)
    assert not Transaction.objects.filter(reason="cancel_fee").exists()
    assert ledger_audit() == []


@override_settings(CANCEL_FEE_RATE=Decimal("0.10"), PLATFORM_FEE_RATE=Decimal("0.05"))
def test_cancel_inside_the_fee_window_charges_the_fee_from_cash_in_the_ledger(
    buyer, offer, voucher, accounts
):
    r = book(buyer, offer, voucher, hours_ahead=2)
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    # fee 10 % of ¥80 = ¥8.00 from the cash side; platform keeps 5 % of it (¥0.40)
    fee_txn = Transaction.objects.get(reason="cancel_fee", reservation=r)
    assert {(e.account.kind, e.amount) for e in fee_txn.entries.select_related("account")} == {
        ("escrow", Decimal("-8.00")),
        ("payable", Decimal("7.60")),
        ("fees", Decimal("0.40")),
    }
    assert bal(accounts["voucher"]) == Decimal("1000.00")
    assert bal(accounts["wallet"]) == Decimal("100000.00") - Decimal("8.00")
    assert bal(accounts["escrow"]) == 0
    assert ledger_audit() == []


@override_settings(CANCEL_FEE_RATE=Decimal("0.00"))
def test_the_cancellation_fee_rate_is_configurable(buyer, offer, voucher, accounts):
    r = book(buyer, offer, voucher, hours_ahead=2)
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    assert bal(accounts["wallet"]) == Decimal("100000.00")
    assert not Transaction.objects.filter(reason="cancel_fee").exists()


def test_a_hold_is_voided_once_and_a_second_void_changes_nothing(buyer, offer, voucher, accounts):
    r = book(buyer, offer, voucher, hours_ahead=30)
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    with pytest.raises(Conflict) as again:
        reservation_cancel(reservation_id=r.pk, buyer=buyer)
    assert again.value.code == "illegal_transition"
    # even bypassing the status check, the hold's conditional UPDATE refuses a second void
    with pytest.raises(Conflict) as closed:
        hold_void(Reservation.objects.get(pk=r.pk), kind="cancellation")
    assert closed.value.code == "hold_closed"
    assert Refund.objects.count() == 1
    assert bal(accounts["wallet"]) == Decimal("100000.00")
    assert ledger_audit() == []


def test_provider_failure_returns_everything(buyer, provider, offer, voucher, accounts):
    r = book(buyer, offer, voucher)
    reservation_fail(reservation_id=r.pk, provider=provider)
    assert Refund.objects.get().kind == "provider_failure"
    assert (bal(accounts["wallet"]), bal(accounts["voucher"])) == (
        Decimal("100000.00"),
        Decimal("1000.00"),
    )
    assert ledger_audit() == []


def test_an_unaccepted_hold_expires_once(buyer, offer, voucher, accounts):
    r = book(buyer, offer, voucher, auto_accept=False)
    later = timezone.now() + timedelta(hours=1)
    assert reservations_expire_unaccepted(now=later) == 1
    assert reservations_expire_unaccepted(now=later) == 0
    assert Hold.objects.get(reservation=r).status == Hold.Status.VOIDED
    assert Refund.objects.get().kind == "expiry"
    assert ledger_audit() == []


def _run_to_end(r: Reservation) -> None:
    reservations_advance(now=r.start)


@pytest.mark.parametrize(
    ("delivered", "kind", "refund_v", "refund_c"),
    [
        (8, None, Decimal("0"), Decimal("0")),  # all delivered
        (4, "early_completion", Decimal("24.00"), Decimal("16.00")),  # 4 GPUs × 1 h of 2
        (5, "partial_delivery", Decimal("18.00"), Decimal("12.00")),  # ¥30 back, 48:32
        (0, "early_completion", V, C),
    ],
)
def test_settlement_refunds_undelivered_hours_in_the_original_proportion(
    delivered, kind, refund_v, refund_c, buyer, provider, offer, voucher, accounts
):
    r = book(buyer, offer, voucher)
    _run_to_end(r)
    reservation_report_usage(reservation_id=r.pk, provider=provider, delivered_gpu_hours=delivered)
    reservation_settle(reservation_id=r.pk)
    billable = Decimal(delivered) * Decimal("10.00")
    assert bal(accounts["voucher"]) == Decimal("1000.00") - V + refund_v
    assert bal(accounts["wallet"]) == Decimal("100000.00") - C + refund_c
    assert bal(accounts["payable"]) + bal(accounts["claims"]) == billable
    assert bal(accounts["claims"]) == V - refund_v
    refunds = list(Refund.objects.values_list("kind", "voucher_amount", "cash_amount"))
    assert refunds == ([] if kind is None else [(kind, refund_v, refund_c)])
    assert Hold.objects.get(reservation=r).status == Hold.Status.POSTED
    assert Transaction.objects.filter(reason="settlement", reservation=r).count() == 1
    assert ledger_audit() == []


@override_settings(PLATFORM_FEE_RATE=Decimal("0.03"))
def test_the_platform_fee_comes_from_the_cash_side_into_fee_revenue(
    buyer, provider, offer, voucher, accounts
):
    r = book(buyer, offer, voucher)
    _run_to_end(r)
    reservations_advance(now=r.end)
    reservation_settle(reservation_id=r.pk)
    assert bal(accounts["fees"]) == Decimal("2.40")  # 3 % of ¥80
    assert bal(accounts["payable"]) == C - Decimal("2.40")
    assert ledger_audit() == []


def test_settling_twice_posts_once(buyer, offer, voucher):
    r = book(buyer, offer, voucher)
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    reservation_settle(reservation_id=r.pk)
    with pytest.raises(Conflict):
        reservation_settle(reservation_id=r.pk)
    assert Transaction.objects.filter(reason="settlement").count() == 1
    assert ReimbursementClaim.objects.count() == 1


def test_a_hold_made_before_expiry_survives_it_and_the_balance_lapses_once(
    buyer, provider, offer, voucher, programme, accounts
):
    # given a hold made while the voucher was valid
    r = book(buyer, offer, voucher, hours_ahead=30)
    budget = bal(programme_account(programme.pk))
    # when the voucher expires and the daily task runs twice
    after = voucher.expires_at + timedelta(seconds=1)
    assert vouchers_lapse_expired(now=after) == 1
    assert vouchers_lapse_expired(now=after) == 0
    # then its unused balance went back to the programme once; the hold still stands
    assert bal(accounts["voucher"]) == 0
    assert bal(programme_account(programme.pk)) == budget + Decimal("1000.00") - V
    assert Hold.objects.get(reservation=r).status == Hold.Status.PENDING
    assert Reservation.objects.get(pk=r.pk).voucher_part == V
    # and a later cancellation returns the voucher part to the programme, not the dead voucher
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    assert bal(accounts["voucher"]) == 0
    assert bal(programme_account(programme.pk)) == budget + Decimal("1000.00")
    assert ledger_audit() == []


def _settled(buyer, offer, voucher):  # type: ignore[no-untyped-def]
    r = book(buyer, offer, voucher)
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    return reservation_settle(reservation_id=r.pk)


def test_point_of_sale_statement_is_reproducible_exported_and_paid_once(
    buyer, provider, offer, voucher, programme, accounts
):
    first = _settled(buyer, offer, voucher)
    second = _settled(buyer, offer, voucher)
    claim = ReimbursementClaim.objects.get(reservation=first)
    assert (claim.claimant_id, claim.mode, claim.amount) == (provider.pk, "point_of_sale", V)
    today = timezone.localtime(timezone.now(), timezone.get_fixed_timezone(480)).date()
    with pytest.raises(Conflict) as early:
        statement_issue(programme_id=programme.pk, provider_id=provider.pk, period_start=today)
    assert early.value.code == "period_not_over"
    assert not Statement.objects.exists()
    next_month = timezone.now() + timedelta(days=32)
    statement = statement_issue(
        programme_id=programme.pk, provider_id=provider.pk, period_start=today, now=next_month
    )
    assert (statement.total, statement.claim_count) == (2 * V, 2)
    assert statement.period_start == date(today.year, today.month, 1)
    again = statement_issue(
        programme_id=programme.pk, provider_id=provider.pk, period_start=today, now=next_month
    )
    assert (again.pk, again.total) == (statement.pk, statement.total)
    csv = statement_csv(statement=statement)
    lines = csv.splitlines()
    assert lines[0].startswith("claim,reservation,settled_at_utc")
    assert {line.split(",")[1] for line in lines[1:3]} == {str(first.pk), str(second.pk)}
    assert lines[-1].endswith(",96.00")
    assert csv == statement_csv(statement=Statement.objects.get(pk=statement.pk))
    payable_before = bal(accounts["payable"])
    statement_mark_paid(statement_id=statement.pk)
    with pytest.raises(Conflict) as twice:
        statement_mark_paid(statement_id=statement.pk)
    assert twice.value.code == "already_paid"
    assert bal(accounts["claims"]) == 0
    assert bal(accounts["payable"]) == payable_before + 2 * V
    assert Transaction.objects.filter(reason="claim_paid").count() == 1
    assert set(ReimbursementClaim.objects.values_list("status", flat=True)) == {"paid"}
    assert ledger_audit() == []


def test_reimbursement_mode_buyer_pays_in_full_and_is_repaid(
    buyer, provider, offer, voucher, programme, accounts
):
    programme.redemption_mode = "reimbursement"
    programme.save()
    r = book(buyer, offer, voucher)
    assert bal(accounts["wallet"]) == Decimal("100000.00") - BILL  # the whole bill in cash
    assert bal(accounts["voucher"]) == Decimal("1000.00") - V  # the voucher value reserved
    assert ledger_audit() == []
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    reservation_settle(reservation_id=r.pk)
    claim = ReimbursementClaim.objects.get()
    assert (claim.claimant_id, claim.mode, claim.amount) == (buyer.pk, "reimbursement", V)
    assert bal(accounts["payable"]) == BILL  # the provider is paid in full, no claim of its own
    assert bal(accounts["claims"]) == 0
    assert bal(accounts["buyer_claims"]) == V
    statement = statement_issue(
        programme_id=programme.pk,
        provider_id=provider.pk,
        period_start=timezone.now().date(),
        now=timezone.now() + timedelta(days=95),
    )
    statement_mark_paid(statement_id=statement.pk)
    # repaid: the buyer's net cash is the same as at the point of sale
    assert bal(accounts["wallet"]) == Decimal("100000.00") - C
    assert bal(accounts["buyer_claims"]) == 0
    assert ledger_audit() == []


def test_reimbursement_mode_partial_delivery_returns_all_undelivered_value(
    buyer, provider, offer, voucher, programme, accounts
):
    programme.redemption_mode = "reimbursement"
    programme.save()
    r = book(buyer, offer, voucher)
    reservations_advance(now=r.start)
    reservation_report_usage(reservation_id=r.pk, provider=provider, delivered_gpu_hours=5)
    reservation_settle(reservation_id=r.pk)
    # ¥30 undelivered: ¥18 voucher value back to the voucher, and the buyer's ¥30 cash back
    assert bal(accounts["voucher"]) == Decimal("1000.00") - V + Decimal("18.00")
    assert bal(accounts["wallet"]) == Decimal("100000.00") - BILL + Decimal("30.00")
    assert bal(accounts["buyer_claims"]) == Decimal("30.00")
    assert bal(accounts["payable"]) == Decimal("50.00")
    assert ledger_audit() == []
