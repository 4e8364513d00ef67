"""Ledger writes: every money movement is one balanced transaction (§5.2)."""

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import IntegrityError, connection
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Organisation
from marketplace.errors import Unprocessable
from marketplace.types import ObjectId

from .models import Account, Entry, Transaction

if TYPE_CHECKING:
    from marketplace.models import Reservation
    from vouchers.models import Voucher

SYSTEM_KINDS = (Account.Kind.ESCROW, Account.Kind.FEES, Account.Kind.WORLD)
# Accounts many transactions touch at once (shared hot rows): their balances change last, just
# before COMMIT, so their row locks are held as briefly as possible. Every posting uses the same
# order — other accounts by pk, then these by pk — so two postings cannot deadlock.
HOT_KINDS = frozenset({*SYSTEM_KINDS, Account.Kind.PROGRAMME})


def system_account(kind: str) -> Account:
    """The single escrow, fee-revenue or outside-world account (created on first use)."""
    assert kind in SYSTEM_KINDS
    account, _ = Account.objects.get_or_create(
        kind=kind,
        organisation=None,
        voucher=None,
        programme=None,
        defaults={"allow_negative": kind == Account.Kind.WORLD},
    )
    return account


def organisation_account(organisation: Organisation, kind: str) -> Account:
    """An organisation's wallet, payable or claims account (created on first use). A claims
    account (a receivable from programmes) may go negative: voucher value refunded after its
    claim was paid, owed back and netted on the next statement."""
    assert kind in (Account.Kind.WALLET, Account.Kind.PAYABLE, Account.Kind.CLAIMS)
    account, _ = Account.objects.get_or_create(
        kind=kind,
        organisation=organisation,
        defaults={"allow_negative": kind == Account.Kind.CLAIMS},
    )
    return account


def programme_account(programme_id: ObjectId) -> Account:
    account, _ = Account.objects.get_or_create(
        kind=Account.Kind.PROGRAMME, programme_id=programme_id
    )
    return account


def voucher_account(voucher_id: ObjectId) -> Account:
    account, _ = Account.objects.get_or_create(kind=Account.Kind.VOUCHER, voucher_id=voucher_id)
    return account


def hold_accounts(
    buyer_id: ObjectId, voucher_id: ObjectId | None = None
) -> tuple[Account, Account, Account | None]:
    """``(escrow, buyer's wallet, voucher account or None)`` read in one query; any that does not
    exist yet is created (``system_account``/``organisation_account``/``voucher_account``)."""
    query = Q(kind=Account.Kind.ESCROW) | Q(kind=Account.Kind.WALLET, organisation_id=buyer_id)
    if voucher_id is not None:
        query |= Q(kind=Account.Kind.VOUCHER, voucher_id=voucher_id)
    found: dict[tuple[str, object], Account] = {
        (a.kind, a.organisation_id or a.voucher_id): a for a in Account.objects.filter(query)
    }
    escrow = found.get((Account.Kind.ESCROW, None)) or system_account(Account.Kind.ESCROW)
    wallet = found.get((Account.Kind.WALLET, buyer_id))
    if wallet is None:
        wallet, _ = Account.objects.get_or_create(
            kind=Account.Kind.WALLET, organisation_id=buyer_id
        )
    voucher = None
    if voucher_id is not None:
        voucher = found.get((Account.Kind.VOUCHER, voucher_id)) or voucher_account(voucher_id)
    return escrow, wallet, voucher


Leg = tuple[Account, Decimal]


def _posting_order(leg: "Leg") -> tuple[bool, str]:
    return (leg[0].kind in HOT_KINDS, str(leg[0].pk))


def transaction_post(
    reason: str,
    legs: Sequence[Leg],
    *,
    reservation: "Reservation | None" = None,
    voucher: "Voucher | None" = None,
    memo: str = "",
    before_hot: "Callable[[], None] | None" = None,
) -> Transaction | None:
    """Post one balanced transaction. ``legs`` are ``(account, amount CNY)``; zero legs are
    dropped; the amounts must sum to zero. Returns ``None`` when every leg is zero.

    Must run inside the caller's atomic block. Balances change by conditional updates
    (``balance = balance + x``; the database's CHECK constraint refuses a negative wallet,
    voucher, escrow or programme balance, which surfaces as
    ``Unprocessable(code="insufficient_funds")``) in one fixed order: the accounts of the
    parties by pk, then the shared hot accounts (``HOT_KINDS``: escrow, fees, world, programme
    budgets) by pk, last. On PostgreSQL the transaction row, its entries and the first balance
    change go in one statement, so a two-leg posting is two round trips. ``before_hot`` runs
    between the two groups (a hold locks and checks its programme there: ``ledger.holds``).
    """
    legs = [(a, Decimal(x)) for a, x in legs if Decimal(x) != 0]
    if not legs:
        return None
    if sum(x for _, x in legs) != 0:
        raise ValueError(f"unbalanced transaction {reason}: {legs}")
    ordered = sorted(legs, key=_posting_order)
    txn = Transaction(reason=reason, reservation=reservation, voucher=voucher, memo=memo[:200])
    try:
        if connection.vendor == "postgresql":
            _insert_with_first_leg(txn, legs, ordered[0])
            ordered = ordered[1:]
        else:
            txn.save(force_insert=True)
            Entry.objects.bulk_create(Entry(transaction=txn, account=a, amount=x) for a, x in legs)
    except IntegrityError as exc:
        raise _insufficient(ordered[0][0]) from exc
    for account, amount in ordered:
        if before_hot is not None and account.kind in HOT_KINDS:
            before_hot()
            before_hot = None
        try:
            _apply(account, amount)
        except IntegrityError as exc:
            # The enclosing atomic block rolls back as this error leaves it.
            raise _insufficient(account) from exc
    if before_hot is not None:
        before_hot()
    return txn


def accounts_lock(
    accounts: Iterable[Account], *, before_hot: Callable[[], None] | None = None
) -> None:
    """Lock ``accounts`` (``FOR NO KEY UPDATE``, as a balance change does) in the posting order
    of ``transaction_post`` — the parties' accounts by pk, then ``before_hot`` (a programme's
    usage change), then the shared hot accounts by pk — for a service that posts several
    transactions in one database transaction (a release with a cancellation fee), so that
    together they still lock in the one order every posting uses. Inside the caller's atomic
    block; on SQLite (which serialises writers) only ``before_hot`` runs."""
    unique = {a.pk: a for a in accounts}
    postgres = connection.vendor == "postgresql"

    def lock(hot: bool) -> None:
        ids = [pk for pk, a in unique.items() if (a.kind in HOT_KINDS) == hot]
        if postgres and ids:
            list(
                Account.objects.select_for_update(no_key=True)
                .filter(pk__in=ids)
                .order_by("pk")
                .values_list("pk", flat=True)
            )

    lock(hot=False)
    if before_hot is not None:
        before_hot()
    lock(hot=True)


def _insufficient(account: Account) -> Unprocessable:
    return Unprocessable(
        f"{account.get_kind_display()} balance would go below zero", code="insufficient_funds"
    )


def _insert_with_first_leg(txn: Transaction, legs: Sequence[Leg], first: Leg) -> None:
    """PostgreSQL: insert ``txn`` and its entries and apply ``first``'s balance change in one
    statement (a data-modifying CTE; the entries' foreign keys are checked at COMMIT)."""
    txn.created_at = timezone.now()
    account, amount = first
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH t AS (INSERT INTO ledger_transaction "
            "(id, reason, reservation_id, voucher_id, memo, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s)), "
            "e AS (INSERT INTO ledger_entry (transaction_id, account_id, amount) "
            "SELECT %s, a, x FROM unnest(%s::uuid[], %s::numeric[]) AS l(a, x)) "
            "UPDATE ledger_account SET balance = balance + %s WHERE id = %s",
            [
                txn.pk,
                txn.reason,
                txn.reservation_id,
                txn.voucher_id,
                txn.memo,
                txn.created_at,
                txn.pk,
                [a.pk for a, _ in legs],
                [x for _, x in legs],
                amount,
                account.pk,
            ],
        )
    txn._state.adding = False
    txn._state.db = "default"


def _apply(account: Account, amount: Decimal) -> None:
    if connection.vendor == "postgresql":
        # Exact NUMERIC arithmetic in one statement; the CHECK refuses a negative result.
        Account.objects.filter(pk=account.pk).update(balance=F("balance") + amount)
        return
    # SQLite does decimal arithmetic in binary floating point, so add in Python instead.
    # (SQLite serialises writers, so the read-modify-write cannot interleave.)
    current = Account.objects.filter(pk=account.pk).values_list("balance", flat=True).get()
    new = current + amount
    if new < 0 and not account.allow_negative:
        raise IntegrityError("CHECK constraint failed: account_nonneg")
    Account.objects.filter(pk=account.pk).update(balance=new)


def balances(accounts: Iterable[Account]) -> dict[object, Decimal]:
    """Cached balances of ``accounts`` by primary key, read fresh from the database."""
    ids = [a.pk for a in accounts]
    return dict(Account.objects.filter(pk__in=ids).values_list("pk", "balance"))


def idempotency_keys_prune(*, now: datetime | None = None) -> int:
    """Delete stored ``Idempotency-Key`` responses older than ``IDEMPOTENCY_KEY_TTL`` (at least
    7 days, PRODUCT.md §6.1). Safe to run twice. Returns the number deleted."""
    from django.conf import settings
    from django.utils import timezone

    from .models import IdempotencyKey

    ttl = max(settings.IDEMPOTENCY_KEY_TTL, timedelta(days=7))
    deleted, _ = IdempotencyKey.objects.filter(
        created_at__lt=(now or timezone.now()) - ttl
    ).delete()
    return deleted
