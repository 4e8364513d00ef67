"""ledger_audit finds every broken invariant; the command exits non-zero on one."""

from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from ledger.audit import ledger_audit
from ledger.models import Account, Entry
from marketplace.services import reservation_create
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def booked(buyer, offer, voucher):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


def test_clean_ledger_passes_and_the_command_says_so(booked, capsys):
    assert ledger_audit() == []
    call_command("ledger_audit")
    assert "clean" in capsys.readouterr().out


def test_a_cached_balance_that_drifts_from_its_entries_is_caught(booked, buyer):
    Account.objects.filter(kind="wallet", organisation=buyer).update(balance=Decimal("1.00"))
    problems = ledger_audit()
    assert any("cached 1.00" in p for p in problems)
    with pytest.raises(CommandError):
        call_command("ledger_audit")


def test_an_unbalanced_transaction_is_caught(booked):
    entry = Entry.objects.filter(transaction__reason="hold").first()
    assert entry is not None
    Entry.objects.create(transaction=entry.transaction, account=entry.account, amount="0.01")
    Account.objects.filter(pk=entry.account_id).update(balance=entry.account.balance)
    assert any("unbalanced" in p for p in ledger_audit())


def test_escrow_that_does_not_match_live_reservations_is_caught(booked):
    booked.bill = Decimal("79.99")
    booked.cash_part = Decimal("31.99")
    booked.save()
    assert any("escrow" in p for p in ledger_audit())
