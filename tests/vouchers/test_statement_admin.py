"""Operators mark statements paid and download them as CSV from the admin (§6.4)."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.models import Transaction
from tests.factories import UserFactory, settled_reservation
from vouchers.models import Statement
from vouchers.services import statement_issue

pytestmark = pytest.mark.django_db


def _issued(buyer, provider, offer, voucher, programme) -> Statement:  # type: ignore[no-untyped-def]
    """The statement issued for ``provider`` over a settled reservation paid with ``voucher``."""
    settled_reservation(buyer, offer, voucher)
    return statement_issue(
        programme_id=programme.pk,
        provider_id=provider.pk,
        period_start=timezone.now().date(),
        now=timezone.now() + timedelta(days=95),
    )


def test_operator_marks_a_statement_paid_once_and_downloads_it(
    client, buyer, provider, offer, voucher, programme
):
    statement = _issued(buyer, provider, offer, voucher, programme)
    operator = UserFactory.create(username="op", is_staff=True, is_superuser=True)
    client.force_login(operator)
    url = "/admin/vouchers/statement/"
    csv = client.post(url, {"action": "download_csv", "_selected_action": [statement.pk]})
    assert csv.status_code == 200
    assert csv["Content-Type"].startswith("text/csv")
    assert csv.content.decode().splitlines()[-1].endswith(",48.00")
    for _ in range(2):
        client.post(url, {"action": "mark_paid", "_selected_action": [statement.pk]})
    assert Statement.objects.get().status == "paid"
    assert Transaction.objects.filter(reason="claim_paid").count() == 1
    assert ledger_audit() == []


def test_staff_who_may_only_view_statements_cannot_mark_them_paid(
    client, buyer, provider, offer, voucher, programme
):
    # given an issued statement and a staff user with the view permission on statements only
    statement = _issued(buyer, provider, offer, voucher, programme)
    viewer = UserFactory.create(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_statement"))
    client.force_login(viewer)
    url = "/admin/vouchers/statement/"
    page = client.get(url)
    # then the list shows, without the actions that change statements
    assert page.status_code == 200
    choices = [value for value, _ in page.context["action_form"].fields["action"].choices]
    assert "download_csv" in choices
    assert "mark_paid" not in choices and "issue_due" not in choices
    # and posting the action anyway changes nothing
    client.post(url, {"action": "mark_paid", "_selected_action": [statement.pk]})
    assert Statement.objects.get().status == "issued"
    assert not Transaction.objects.filter(reason="claim_paid").exists()
    # and with the change permission it may
    viewer.user_permissions.add(Permission.objects.get(codename="change_statement"))
    client.post(url, {"action": "mark_paid", "_selected_action": [statement.pk]})
    assert Statement.objects.get().status == "paid"
    assert ledger_audit() == []
