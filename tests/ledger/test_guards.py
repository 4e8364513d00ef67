"""The database guards the money invariants itself (PRODUCT.md §5.2): CHECK constraints refuse
a negative wallet, voucher or programme balance even for raw SQL, ledger rows are immutable,
and no money table has a float column."""

from decimal import Decimal
from typing import Any

import pytest
from django.apps import apps
from django.db import IntegrityError, connection, models, transaction

from ledger.audit import ledger_audit
from ledger.models import Account, Entry, Transaction
from ledger.services import organisation_account, programme_account, voucher_account
from marketplace.services import reservation_create
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db

CHECK_VIOLATION = "23514"


def _raw_update(sql: str, params: list[Any]) -> str:
    """Run one raw statement in a savepoint; return the SQLSTATE it failed with."""
    with pytest.raises(IntegrityError) as refused, transaction.atomic(), connection.cursor() as c:
        c.execute(sql, params)
    return refused.value.__cause__.sqlstate  # type: ignore[union-attr]


@pytest.mark.parametrize("which", ["wallet", "voucher", "programme"])
def test_raw_sql_cannot_make_a_balance_negative(which, buyer, programme, voucher):
    account = {
        "wallet": lambda: organisation_account(buyer, Account.Kind.WALLET),
        "voucher": lambda: voucher_account(voucher.pk),
        "programme": lambda: programme_account(programme.pk),
    }[which]()
    before = account.balance
    state = _raw_update(
        "UPDATE ledger_account SET balance = balance - %s - 0.01 WHERE id = %s",
        [before, account.pk],
    )
    assert state == CHECK_VIOLATION
    account.refresh_from_db()
    assert account.balance == before


def test_raw_sql_cannot_let_a_wallet_go_negative_by_flipping_its_flag(buyer):
    wallet = organisation_account(buyer, Account.Kind.WALLET)
    state = _raw_update(
        "UPDATE ledger_account SET allow_negative = true, balance = -1 WHERE id = %s",
        [wallet.pk],
    )
    assert state == CHECK_VIOLATION
    wallet.refresh_from_db()
    assert (wallet.allow_negative, wallet.balance) == (False, Decimal("100000.00"))


def test_reservation_parts_cannot_be_negative_in_raw_sql(buyer, offer):
    demand = DemandFactory.create(buyer=buyer)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    state = _raw_update("UPDATE marketplace_reservation SET cash_part = -1 WHERE id = %s", [r.pk])
    assert state == CHECK_VIOLATION


def test_hold_refunds_cannot_pass_what_was_paid_in_raw_sql(buyer, offer, voucher):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert (r.voucher_part, r.cash_part) == (Decimal("48.00"), Decimal("32.00"))
    state = _raw_update(
        "UPDATE ledger_hold SET refunded_voucher = voucher_part + 0.01 WHERE reservation_id = %s",
        [r.pk],
    )
    assert state == CHECK_VIOLATION
    assert ledger_audit() == []


@pytest.mark.parametrize("statement", ["UPDATE ledger_entry SET amount = amount + 1", "DELETE"])
def test_ledger_entries_cannot_be_updated_or_deleted(statement, buyer):
    entry = Entry.objects.get(account__organisation=buyer)
    sql = (
        "DELETE FROM ledger_entry WHERE id = %s"
        if statement == "DELETE"
        else f"{statement} WHERE id = %s"
    )
    with (
        pytest.raises(IntegrityError, match="immutable"),
        transaction.atomic(),
        connection.cursor() as c,
    ):
        c.execute(sql, [entry.pk])
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        Entry.objects.filter(pk=entry.pk).update(amount=Decimal("1.00"))
    entry.refresh_from_db()
    assert entry.amount == Decimal("100000.00")


def test_ledger_transactions_cannot_be_rewritten(buyer):
    txn = Transaction.objects.get(entries__account__organisation=buyer)
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        Transaction.objects.filter(pk=txn.pk).update(reason="refund")
    with (
        pytest.raises(IntegrityError, match="immutable"),
        transaction.atomic(),
        connection.cursor() as c,
    ):
        c.execute("DELETE FROM ledger_transaction WHERE id = %s", [txn.pk])
    txn.refresh_from_db()
    assert txn.reason == "deposit"


MONEY_APPS = ("ledger", "vouchers")
MONEY_MODELS = ("marketplace.Offer", "marketplace.Demand", "marketplace.Reservation")


def test_no_money_model_has_a_float_field():
    models_ = [m for a in MONEY_APPS for m in apps.get_app_config(a).get_models()]
    models_ += [apps.get_model(name) for name in MONEY_MODELS]
    floats = [
        f"{m._meta.label}.{f.name}"
        for m in models_
        for f in m._meta.get_fields()
        if isinstance(f, models.FloatField)
    ]
    assert floats == []


def test_no_money_table_has_a_float_column_in_the_database():
    with connection.cursor() as c:
        c.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' AND data_type IN ('real', 'double precision') "
            "AND (table_name LIKE 'ledger\\_%%' OR table_name LIKE 'vouchers\\_%%' "
            "OR table_name IN ('marketplace_offer', 'marketplace_demand', "
            "'marketplace_reservation', 'marketplace_interhubtrade'))"
        )
        assert c.fetchall() == []
