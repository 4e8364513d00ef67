"""Ledger writes: every money movement is one balanced transaction (§5.2)."""

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from django.db import IntegrityError, connection
from django.db.models import F

from accounts.models import Organisation
from marketplace.errors import Unprocessable
from marketplace.types import ObjectId

from .models import Account, Entry, Transaction

if TYPE_CHECKING:
    from marketplace.models import Reservation
    from vouchers.models import Voucher

SYSTEM_KINDS = (Account.Kind.ESCROW, Account.Kind.FEES, Account.Kind.WORLD)


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
    """An organisation's wallet, payable or claims account (created on first use)."""
    assert kind in (Account.Kind.WALLET, Account.Kind.PAYABLE, Account.Kind.CLAIMS)
    account, _ = Account.objects.get_or_create(kind=kind, organisation=organisation)
    return account


def programme_account(programme_id: ObjectId) -> Account:
    account, _ = Account.objects.get_or_create(
        kind=Account.Kind.PROGRAMME, programme_id=programme_id
    )
    return account


def voucher_account(voucher_id: ObjectId) -> Account:
    account, _ = Account.objects.get_or_create(kind=Account.Kind.VOUCHER, voucher_id=voucher_id)
    return account


Leg = tuple[Account, Decimal]


def transaction_post(
    reason: str,
    legs: Sequence[Leg],
    *,
    reservation: "Reservation | None" = None,
    voucher: "Voucher | None" = None,
    memo: str = "",
) -> Transaction | None:
    """Post one balanced transaction. ``legs`` are ``(account, amount CNY)``; zero legs are
    dropped; the amounts must sum to zero. Returns ``None`` when every leg is zero.

    Must run inside the caller's atomic block. Balances change with ``F()`` in a fixed account
    order, so the database's CHECK constraint refuses a negative wallet, voucher, escrow or
    programme balance; that surfaces as ``Unprocessable(code="insufficient_funds")``.
    """
    legs = [(a, Decimal(x)) for a, x in legs if Decimal(x) != 0]
    if not legs:
        return None
    if sum(x for _, x in legs) != 0:
        raise ValueError(f"unbalanced transaction {reason}: {legs}")
    txn = Transaction.objects.create(
        reason=reason, reservation=reservation, voucher=voucher, memo=memo[:200]
    )
    Entry.objects.bulk_create(Entry(transaction=txn, account=a, amount=x) for a, x in legs)
    for account, amount in sorted(legs, key=lambda leg: str(leg[0].pk)):
        try:
            _apply(account, amount)
        except IntegrityError as exc:
            # The enclosing atomic block rolls back as this error leaves it.
            raise Unprocessable(
                f"{account.get_kind_display()} balance would go below zero",
                code="insufficient_funds",
            ) from exc
    return txn


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
