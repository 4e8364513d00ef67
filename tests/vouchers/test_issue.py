"""Issuing vouchers: budget, per-buyer annual cap, minimum amount, expiry (PRODUCT.md §5.6)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from ledger.models import Account
from ledger.services import programme_account, voucher_account
from marketplace.errors import Conflict, Unprocessable, ValidationFailed
from tests.factories import OrganisationFactory, ProgrammeFactory
from vouchers.models import Voucher, VoucherApplication
from vouchers.services import (
    programme_fund,
    voucher_application_approve,
    voucher_application_submit,
    voucher_expiry,
    voucher_issue,
)

pytestmark = pytest.mark.django_db


def test_issue_moves_face_value_from_programme_budget_to_the_voucher(programme, buyer):
    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("2500.00"))
    assert voucher_account(voucher.pk).balance == Decimal("2500.00")
    assert programme_account(programme.pk).balance == Decimal("99997500.00")


def test_a_buyers_vouchers_in_a_year_never_pass_the_cap(programme, buyer):
    programme.buyer_annual_cap = Decimal("5000.00")
    programme.save()
    voucher_issue(programme=programme, owner=buyer, face_value=Decimal("4000.00"))
    with pytest.raises(Unprocessable) as refused:
        voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.01"))
    assert refused.value.code == "buyer_cap_exceeded"
    assert Voucher.objects.count() == 1
    voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.00"))
    assert Voucher.objects.count() == 2


def test_issue_never_overdraws_the_programme_budget(buyer, other_buyer):
    small = ProgrammeFactory.create(code="tiny", annual_budget=Decimal("1000.00"))
    programme_fund(small)
    voucher_issue(programme=small, owner=buyer, face_value=Decimal("600.00"))
    with pytest.raises(Unprocessable) as refused:
        voucher_issue(programme=small, owner=other_buyer, face_value=Decimal("400.01"))
    assert refused.value.code == "programme_budget_exhausted"
    assert Account.objects.get(kind="programme", programme=small).balance == Decimal("400.00")


def test_qingyang_refuses_an_application_under_the_minimum(buyer):
    qingyang = ProgrammeFactory.create(
        code="qingyang", min_voucher_amount=Decimal("5000.00"), max_share=Decimal("0.3")
    )
    with pytest.raises(ValidationFailed) as refused:
        voucher_application_submit(buyer=buyer, programme=qingyang, amount=Decimal("4999.99"))
    assert (refused.value.code, refused.value.field) == ("below_minimum", "amount")
    application = voucher_application_submit(
        buyer=buyer, programme=qingyang, amount=Decimal("5000.00")
    )
    assert application.status == "submitted"


def test_approving_twice_issues_one_voucher(programme, buyer):
    application = voucher_application_submit(
        buyer=buyer, programme=programme, amount=Decimal("100.00")
    )
    voucher_application_approve(application_id=application.pk)
    with pytest.raises(Exception, match="approved"):
        voucher_application_approve(application_id=application.pk)
    assert Voucher.objects.filter(application=application).count() == 1


def test_a_pending_organisation_may_apply_but_gets_no_voucher_until_approved(programme, site):
    # given an SME whose registration is still pending, applying for a voucher
    pending = OrganisationFactory.create(name="New SME", home_site=site, status="pending")
    application = voucher_application_submit(
        buyer=pending, programme=programme, amount=Decimal("100.00")
    )
    budget = programme_account(programme.pk).balance
    # when the operator approves the application before the organisation, then it is refused
    with pytest.raises(Conflict) as refused:
        voucher_application_approve(application_id=application.pk)
    assert refused.value.code == "organisation_not_approved"
    # and nothing changed: no voucher, the budget untouched, the application still submitted
    assert not Voucher.objects.exists()
    assert programme_account(programme.pk).balance == budget
    assert VoucherApplication.objects.get(pk=application.pk).status == "submitted"
    # once the organisation is approved, the same application issues its voucher
    pending.status = "approved"
    pending.save()
    voucher = voucher_application_approve(application_id=application.pk)
    assert voucher_account(voucher.pk).balance == Decimal("100.00")


def test_expiry_is_the_end_of_the_last_valid_day_in_shanghai(programme):
    # issued 2026-03-15 10:00 Shanghai, 12 months → valid through 2027-03-14 Shanghai,
    # i.e. until 2027-03-14 16:00 UTC
    issued = datetime(2026, 3, 15, 2, 0, tzinfo=UTC)
    assert voucher_expiry(programme, issued) == datetime(2027, 3, 14, 16, 0, tzinfo=UTC)
