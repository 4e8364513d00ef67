"""Bulk posting (``ledger.bulk.transactions_post_bulk``) and bulk rows (``marketplace.bulkrows``):
balanced transactions with their entries, one balance UPDATE per account group whatever the
number of postings, the CHECK constraints and the entries' immutability still in force."""

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from ledger.audit import ledger_audit
from ledger.bulk import Posting, transactions_post_bulk
from ledger.models import Account, Entry, Transaction
from ledger.services import organisation_account, system_account
from marketplace.bulkrows import rows_insert
from marketplace.errors import Unprocessable
from marketplace.models import Hub
from tests.factories import HubFactory, OrganisationFactory

pytestmark = pytest.mark.django_db


def _wallets(n: int, amount: str = "100.00") -> list[Account]:
    from marketplace.services import wallet_deposit

    wallets = []
    for _ in range(n):
        org = OrganisationFactory.create()
        wallet_deposit(organisation=org, amount=Decimal(amount))
        wallets.append(organisation_account(org, Account.Kind.WALLET))
    return wallets


def _balances(accounts: list[Account]) -> list[Decimal]:
    return [Account.objects.get(pk=a.pk).balance for a in accounts]


def _statements(postings: list[Posting]) -> int:
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        transactions_post_bulk(postings)
    return len([q for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]])


def test_postings_become_balanced_transactions_and_each_balance_changes_by_its_legs():
    # given three funded wallets and the fee-revenue account (a hot account)
    wallets = _wallets(3)
    fees = system_account(Account.Kind.FEES)
    fees_before = fees.balance
    # when five transfers move money from them into fee revenue, one with a zero leg
    amounts = [Decimal("10.00"), Decimal("2.50"), Decimal("0.01"), Decimal("7.00"), Decimal(0)]
    postings = [
        Posting("deposit", [(fees, x), (wallets[i % 3], -x)], memo=f"move {i}")
        for i, x in enumerate(amounts)
    ]
    with transaction.atomic():
        ids = transactions_post_bulk(postings)
    # then each non-zero posting is one transaction of two entries summing to zero
    assert ids[4] is None
    made_ids = [i for i in ids if i is not None]
    made = Transaction.objects.filter(pk__in=made_ids)
    assert sorted(t.memo for t in made) == ["move 0", "move 1", "move 2", "move 3"]
    for txn_id, x in zip(made_ids, amounts[:4], strict=True):
        assert sorted(
            Entry.objects.filter(transaction_id=txn_id).values_list("amount", flat=True)
        ) == [
            -x,
            x,
        ]
    # and the balances moved by the sum of each account's legs
    assert _balances(wallets) == [Decimal("83.00"), Decimal("97.50"), Decimal("99.99")]
    fees.refresh_from_db()
    assert fees.balance - fees_before == Decimal("19.51")
    assert ledger_audit() == []


def test_the_statements_do_not_grow_with_the_number_of_postings():
    # given accounts for a few postings and for many
    few, many = _wallets(2), _wallets(20)
    fees = system_account(Account.Kind.FEES)

    def moves(wallets: list[Account]) -> list[Posting]:
        return [Posting("deposit", [(fees, Decimal(1)), (w, Decimal(-1))]) for w in wallets * 3]

    # when 6 and 60 transactions are posted in one go, then they take the same statements:
    # COPY transactions, COPY entries, lock the parties, UPDATE parties, UPDATE fee revenue
    assert _statements(moves(few)) == _statements(moves(many)) == 5
    assert ledger_audit() == []


def test_an_unbalanced_posting_is_refused_and_nothing_is_written():
    (wallet,) = _wallets(1)
    fees = system_account(Account.Kind.FEES)
    before = Transaction.objects.count()
    with pytest.raises(ValueError, match="unbalanced"), transaction.atomic():
        transactions_post_bulk(
            [
                Posting("deposit", [(fees, Decimal(1)), (wallet, Decimal(-1))]),
                Posting("deposit", [(fees, Decimal(2)), (wallet, Decimal(-1))]),
            ]
        )
    assert Transaction.objects.count() == before
    assert _balances([wallet]) == [Decimal("100.00")]


def test_the_check_constraint_still_refuses_a_negative_wallet():
    # given two wallets, one of which cannot cover its leg
    rich, poor = _wallets(2)  # ¥100 each
    fees = system_account(Account.Kind.FEES)
    before = Transaction.objects.count()
    # when a batch would take ¥100.01 from one of them
    with pytest.raises(Unprocessable) as refused, transaction.atomic():
        transactions_post_bulk(
            [
                Posting("deposit", [(fees, Decimal("5")), (rich, Decimal("-5"))]),
                Posting("deposit", [(fees, Decimal("100.01")), (poor, Decimal("-100.01"))]),
            ]
        )
    # then the database refused it (insufficient funds) and the whole batch rolled back
    assert refused.value.code == "insufficient_funds"
    assert isinstance(refused.value.__cause__, IntegrityError)
    assert Transaction.objects.count() == before
    assert _balances([rich, poor]) == [Decimal("100.00"), Decimal("100.00")]
    assert ledger_audit() == []


def test_entries_written_in_bulk_are_immutable():
    (wallet,) = _wallets(1)
    fees = system_account(Account.Kind.FEES)
    with transaction.atomic():
        (txn_id,) = transactions_post_bulk(
            [Posting("deposit", [(fees, Decimal(3)), (wallet, Decimal(-3))])]
        )
    assert txn_id is not None
    entry = Entry.objects.filter(transaction_id=txn_id).first()
    assert entry is not None
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        Entry.objects.filter(pk=entry.pk).update(amount=Decimal("1.00"))
    with pytest.raises(IntegrityError, match="immutable"), transaction.atomic():
        Transaction.objects.filter(pk=txn_id).update(memo="rewritten")


def test_bulk_rows_must_give_every_field_and_are_seen_as_one_statement():
    # given hub rows with every concrete field, and rows that leave one out
    fields = tuple(f.attname for f in Hub._meta.concrete_fields)
    hubs = [HubFactory.build(code=f"bulk-{i}") for i in range(3)]
    rows = [tuple(getattr(h, f) for f in fields) for h in hubs]
    with pytest.raises(ValueError, match=r"must give \['name'"):
        rows_insert(Hub, ("id", "code"), [("x", "y")])
    with pytest.raises(ValueError, match="no concrete fields"):
        rows_insert(Hub, (*fields, "nope"), [(*rows[0], 1)])
    # when the rows are inserted, then it is one statement (visible to query capture)
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        assert rows_insert(Hub, fields, rows) == 3
    assert len([q for q in queries.captured_queries if "marketplace_hub" in q["sql"]]) == 1
    assert sorted(Hub.objects.filter(code__startswith="bulk-").values_list("code", flat=True)) == [
        "bulk-0",
        "bulk-1",
        "bulk-2",
    ]
    # and a violated constraint (the same primary key again) is Django's IntegrityError
    with pytest.raises(IntegrityError), transaction.atomic():
        rows_insert(Hub, fields, rows[:1])
