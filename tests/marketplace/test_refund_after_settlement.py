"""Refunds of a settled reservation (§5.5; issue 3): an operator's decision on a dispute or a
service-level credit returns value to the voucher and the wallet in the original proportion,
never more than each part still has paid; the voucher value leaves the programme's usage and
becomes a negative claim line, so statements stay equal to their lines — a refund after the
original line's statement was paid lowers the next statement."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.models import Account, Hold, Refund, Transaction
from ledger.services import organisation_account, programme_account, voucher_account
from marketplace.errors import Conflict, ValidationFailed
from marketplace.models import Dispute
from marketplace.services import (
    dispute_decide,
    dispute_open,
    reservation_create,
    reservation_refund,
)
from tests.factories import DemandFactory, next_hour, settled_reservation
from vouchers.models import ProgrammeUsage, ReimbursementClaim, Statement
from vouchers.services import (
    statement_issue,
    statement_mark_paid,
    statements_issue_due,
    vouchers_lapse_expired,
)

pytestmark = pytest.mark.django_db

# 4 GPUs × 2 h × ¥10 = ¥80.00; Chengdu 60 % → voucher ¥48.00, cash ¥32.00.
BILL, V, C = Decimal("80.00"), Decimal("48.00"), Decimal("32.00")


def balance(account: Account) -> Decimal:
    account.refresh_from_db()
    return account.balance


def budget_used(programme) -> Decimal:  # type: ignore[no-untyped-def]
    return ProgrammeUsage.objects.get(programme=programme, buyer__isnull=True).used


def test_a_refund_returns_value_in_the_original_proportion(
    buyer, provider, offer, voucher, programme
):
    # given a settled ¥80 reservation (¥48 voucher, ¥32 cash)
    r = settled_reservation(buyer, offer, voucher)
    wallet = organisation_account(buyer, Account.Kind.WALLET)
    payable = organisation_account(provider, Account.Kind.PAYABLE)
    claims = organisation_account(provider, Account.Kind.CLAIMS)
    before = {a: balance(a) for a in (wallet, payable, claims, voucher_account(voucher.pk))}
    assert budget_used(programme) == V
    # when an operator refunds ¥40 of it after a dispute
    refund = reservation_refund(reservation_id=r.pk, amount=Decimal("40.00"), memo="SLA missed")
    # then ¥24 goes back to the voucher and ¥16 to the wallet (48:32), from the provider's claim
    # and payable, in one refund transaction
    assert (refund.kind, refund.voucher_amount, refund.cash_amount) == (
        "dispute",
        Decimal("24.00"),
        Decimal("16.00"),
    )
    assert balance(wallet) - before[wallet] == Decimal("16.00")
    assert balance(payable) - before[payable] == Decimal("-16.00")
    assert balance(claims) - before[claims] == Decimal("-24.00")
    voucher_acc = voucher_account(voucher.pk)
    assert balance(voucher_acc) - before[voucher_acc] == Decimal("24.00")
    assert Transaction.objects.filter(reservation=r, reason="refund").count() == 1
    # and the voucher value leaves the programme's usage and the provider's claim lines
    assert budget_used(programme) == Decimal("24.00")
    adjustment = ReimbursementClaim.objects.get(kind="adjustment")
    assert (adjustment.amount, adjustment.refund_id, adjustment.claimant_id) == (
        Decimal("-24.00"),
        refund.pk,
        provider.pk,
    )
    hold = Hold.objects.get(reservation=r)
    assert (hold.refunded_voucher, hold.refunded_cash) == (Decimal("24.00"), Decimal("16.00"))
    assert ledger_audit() == []


def test_refunds_never_pass_what_each_part_still_paid(buyer, offer, voucher):
    r = settled_reservation(buyer, offer, voucher)
    reservation_refund(reservation_id=r.pk, amount=Decimal("50.00"), kind="sla_credit")
    rows_before = Refund.objects.count()
    with pytest.raises(Conflict) as over:
        reservation_refund(reservation_id=r.pk, amount=Decimal("30.01"))
    assert (over.value.code, over.value.field) == ("refund_exceeds_paid", "amount")
    assert Refund.objects.count() == rows_before  # nothing changed
    last = reservation_refund(reservation_id=r.pk, amount=Decimal("30.00"))
    assert (last.voucher_amount, last.cash_amount) == (Decimal("18.00"), Decimal("12.00"))
    with pytest.raises(Conflict):
        reservation_refund(reservation_id=r.pk, amount=Decimal("0.01"))
    hold = Hold.objects.get(reservation=r)
    assert (hold.refunded_voucher, hold.refunded_cash) == (V, C)
    assert ledger_audit() == []


def test_a_fen_goes_to_cash_and_parts_always_add_up(buyer, offer, voucher):
    r = settled_reservation(buyer, offer, voucher)
    refunds = [reservation_refund(reservation_id=r.pk, amount=Decimal("0.01")) for _ in range(3)]
    # 60 % of a fen floors to nothing: each fen is cash, and each refund adds up to its amount
    assert [(x.voucher_amount, x.cash_amount) for x in refunds] == [
        (Decimal("0.00"), Decimal("0.01"))
    ] * 3
    assert ledger_audit() == []


def test_a_partly_delivered_reservation_refunds_at_most_what_was_billed(buyer, offer, voucher):
    # given 4 of 8 GPU-hours delivered: ¥40 billed, ¥24 + ¥16 refunded at settlement
    r = settled_reservation(buyer, offer, voucher, delivered=4)
    with pytest.raises(Conflict):
        reservation_refund(reservation_id=r.pk, amount=Decimal("40.01"))
    refund = reservation_refund(reservation_id=r.pk, amount=Decimal("40.00"))
    assert (refund.voucher_amount, refund.cash_amount) == (Decimal("24.00"), Decimal("16.00"))
    hold = Hold.objects.get(reservation=r)
    assert (hold.refunded_voucher, hold.refunded_cash) == (V, C)
    assert ledger_audit() == []


def test_reimbursement_mode_refunds_cash_and_lowers_the_buyers_claim(
    buyer, provider, offer, voucher, programme
):
    programme.redemption_mode = "reimbursement"
    programme.save()
    r = settled_reservation(buyer, offer, voucher)
    wallet = organisation_account(buyer, Account.Kind.WALLET)
    buyer_claims = organisation_account(buyer, Account.Kind.CLAIMS)
    payable = organisation_account(provider, Account.Kind.PAYABLE)
    before = (balance(wallet), balance(buyer_claims), balance(payable))
    refund = reservation_refund(reservation_id=r.pk, amount=Decimal("20.00"))
    # the buyer paid the whole bill in cash: all ¥20 comes back as cash from the provider, and
    # the voucher share (¥12) goes back to the voucher off the buyer's claim on the programme
    assert (refund.voucher_amount, refund.cash_amount) == (Decimal("12.00"), Decimal("20.00"))
    assert balance(wallet) - before[0] == Decimal("20.00")
    assert balance(buyer_claims) - before[1] == Decimal("-12.00")
    assert balance(payable) - before[2] == Decimal("-20.00")
    assert ReimbursementClaim.objects.get(kind="adjustment").claimant_id == buyer.pk
    assert ledger_audit() == []


def test_a_refund_after_the_statement_was_paid_lowers_the_next_statement(
    buyer, provider, offer, voucher, programme
):
    # given a settled reservation whose claim was listed on a paid statement
    r = settled_reservation(buyer, offer, voucher)
    today = timezone.now().date()
    later = timezone.now() + timedelta(days=40)
    first = statement_issue(
        programme_id=programme.pk, provider_id=provider.pk, period_start=today, now=later
    )
    statement_mark_paid(statement_id=first.pk)
    claims = organisation_account(provider, Account.Kind.CLAIMS)
    payable = organisation_account(provider, Account.Kind.PAYABLE)
    assert balance(claims) == 0
    # when ¥40 of it is refunded
    reservation_refund(reservation_id=r.pk, amount=Decimal("40.00"))
    # then the provider owes the programme the ¥24 it was already reimbursed (its claims
    # receivable goes negative) and the paid statement is untouched
    assert balance(claims) == Decimal("-24.00")
    assert Statement.objects.get(pk=first.pk).total == V
    assert ledger_audit() == []
    # and the next statement issued carries the negative line; paying it settles the debt
    assert statements_issue_due(now=later + timedelta(days=40)) == 1
    second = Statement.objects.exclude(pk=first.pk).get()
    assert (second.total, second.claim_count) == (Decimal("-24.00"), 1)
    payable_before = balance(payable)
    statement_mark_paid(statement_id=second.pk)
    assert balance(claims) == 0
    assert balance(payable) == payable_before - Decimal("24.00")
    assert ledger_audit() == []


def test_a_refund_to_a_lapsed_voucher_goes_back_to_the_programme(buyer, offer, voucher, programme):
    r = settled_reservation(buyer, offer, voucher)
    vouchers_lapse_expired(now=voucher.expires_at + timedelta(seconds=1))
    budget = programme_account(programme.pk)
    before = balance(budget)
    refund = reservation_refund(reservation_id=r.pk, amount=Decimal("80.00"))
    assert refund.voucher_amount == V
    assert balance(budget) - before == V
    assert balance(voucher_account(voucher.pk)) == 0
    assert ledger_audit() == []


def test_only_a_settled_reservation_is_refunded_so_and_bad_input_is_named(buyer, offer, voucher):
    start = next_hour(1)
    demand = DemandFactory.create(buyer=buyer, voucher=voucher, earliest_start=start)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=start)
    with pytest.raises(Conflict) as not_settled:
        reservation_refund(reservation_id=r.pk, amount=Decimal("1.00"))
    assert not_settled.value.code == "not_settled"
    for amount, field in ((Decimal("0"), "amount"), (Decimal("1.001"), "amount")):
        with pytest.raises(ValidationFailed) as bad:
            reservation_refund(reservation_id=r.pk, amount=amount)
        assert bad.value.field == field
    with pytest.raises(ValidationFailed) as kind:
        reservation_refund(reservation_id=r.pk, amount=Decimal("1.00"), kind="cancellation")
    assert kind.value.field == "kind"
    assert not Refund.objects.exists()


def test_a_dispute_resolved_with_a_refund_refunds_in_the_same_transaction(
    buyer, provider, offer, voucher
):
    r = settled_reservation(buyer, offer, voucher)
    dispute = dispute_open(reservation_id=r.pk, organisation=buyer, reason="half the GPUs idle")
    with pytest.raises(ValidationFailed):
        dispute_decide(dispute_id=dispute.pk, outcome="rejected", refund=Decimal("10.00"))
    with pytest.raises(Conflict):  # more than was paid: the dispute stays open
        dispute_decide(dispute_id=dispute.pk, outcome="resolved", refund=Decimal("80.01"))
    assert Dispute.objects.get(pk=dispute.pk).status == "open"
    dispute_decide(dispute_id=dispute.pk, outcome="resolved", refund=Decimal("10.00"))
    refund = Refund.objects.get(kind="dispute")
    assert (refund.voucher_amount, refund.cash_amount, refund.memo) == (
        Decimal("6.00"),
        Decimal("4.00"),
        f"dispute {dispute.pk}",
    )
    assert Dispute.objects.get(pk=dispute.pk).status == "resolved"
    assert ledger_audit() == []


def _refund_action(client, disputes, **form):  # type: ignore[no-untyped-def]
    data = {"action": "resolve_with_refund", "_selected_action": [str(d.pk) for d in disputes]}
    if form:
        data |= {"apply": "1", **form}
    return client.post("/admin/marketplace/dispute/", data, follow=True)


def test_an_operator_resolves_a_dispute_with_a_refund_from_the_admin(
    operator_client, buyer, offer, voucher
):
    r = settled_reservation(buyer, offer, voucher)
    dispute = dispute_open(reservation_id=r.pk, organisation=buyer, reason="half the GPUs idle")
    second = settled_reservation(buyer, offer, voucher, hours_ahead=4)
    other = dispute_open(reservation_id=second.pk, organisation=buyer, reason="late start")
    # the action asks for one dispute only
    page = _refund_action(operator_client, [dispute, other]).content.decode()
    assert "Choose exactly one dispute to refund." in page
    assert Dispute.objects.get(pk=dispute.pk).status == "open"
    assert not Refund.objects.exists()
    # the intermediate page shows the bill and asks the amount
    page = _refund_action(operator_client, [dispute]).content.decode()
    assert 'name="amount"' in page and "¥80.00" in page
    # more than was paid: the form says so and nothing changes
    page = _refund_action(operator_client, [dispute], amount="80.01", note="").content.decode()
    assert "at most 80.00 CNY is left to refund" in page
    assert Dispute.objects.get(pk=dispute.pk).status == "open"
    assert not Refund.objects.exists()
    # a bad amount is the form's own error
    page = _refund_action(operator_client, [dispute], amount="-1", note="").content.decode()
    assert "Ensure this value is greater than or equal to 0.01." in page
    assert Dispute.objects.get(pk=dispute.pk).status == "open"
    assert not Refund.objects.exists()
    # ¥10: resolved, refunded 60:40 like the bill, with the operator's note
    page = _refund_action(
        operator_client, [dispute], amount="10.00", note="credited for idle GPUs"
    ).content.decode()
    assert f"Dispute {dispute.pk}: resolved with a refund of ¥10.00." in page
    dispute.refresh_from_db()
    assert (dispute.status, dispute.resolution) == ("resolved", "credited for idle GPUs")
    refund = Refund.objects.get(kind="dispute")
    assert (refund.voucher_amount, refund.cash_amount) == (Decimal("6.00"), Decimal("4.00"))
    assert Dispute.objects.get(pk=other.pk).status == "open"
    assert ledger_audit() == []
