"""Ledger writes in bulk: many balanced transactions posted with a fixed number of statements
(§5.2), for the matcher's bulk write path (``marketplace.matching.bulk``).

``ledger.services.transaction_post`` posts one transaction in two or three statements. Posting
N transactions here costs, whatever N is: one COPY of the transaction rows and one of their
entries (``marketplace.bulkrows.rows_insert``; ``bulk_create`` on SQLite), one balance UPDATE
for all the parties' accounts (wallets, vouchers, …) and one for the shared hot accounts
(``HOT_KINDS``: escrow, fees, …), last. Each account's balance changes once, by the sum of its
legs; the database's CHECK constraints still refuse a negative wallet, voucher or escrow
balance, the entries' foreign keys are checked at COMMIT, and ledger entries stay immutable
(the PostgreSQL trigger refuses UPDATE and DELETE, not inserts).
"""

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from django.db import IntegrityError, connection
from django.utils import timezone

from marketplace.bulkrows import rows_insert
from marketplace.errors import Unprocessable
from marketplace.ids import ordered_uuid
from marketplace.types import ObjectId

from .models import Account, Entry, Transaction
from .services import HOT_KINDS, Leg

TRANSACTION_FIELDS = ("id", "reason", "reservation_id", "voucher_id", "memo", "created_at")
ENTRY_FIELDS = ("transaction_id", "account_id", "amount")


@dataclass(frozen=True)
class Posting:
    """One transaction to post: ``legs`` are ``(account, amount CNY)`` summing to zero (zero
    legs are dropped, as ``transaction_post`` drops them)."""

    reason: str
    legs: Sequence[Leg]
    reservation_id: ObjectId | None = None
    voucher_id: ObjectId | None = None
    memo: str = ""


def transactions_post_bulk(
    postings: Sequence[Posting],
    *,
    parties_locked: bool = False,
    before_hot: Callable[[], None] | None = None,
) -> list[UUID | None]:
    """Post every posting as its own balanced transaction, inside the caller's atomic block.

    Returns, for each posting in order, its transaction's id (``None`` when all its legs are
    zero: no transaction, as ``transaction_post``). Raises ``ValueError`` for an unbalanced
    posting (nothing is written then) and ``Unprocessable(code="insufficient_funds")`` when an
    account would go below zero (the caller's atomic block must roll back; the batch writer
    checks funds beforehand under its row locks, so this is the database's last guard).

    Lock order: the parties' accounts (every account not in ``HOT_KINDS``) change first, then
    the hot ones. With ``parties_locked`` the caller already holds the parties' row locks
    (``SELECT … FOR UPDATE`` by pk); otherwise they are taken here, by pk, before any change.
    Several hot accounts are likewise locked by pk first; one is just updated, last.
    ``before_hot`` runs between the two groups (the batch writer locks and checks its
    programmes there, as ``transaction_post``'s ``before_hot``).
    """
    ids: list[UUID | None] = []
    txn_rows: list[tuple[object, ...]] = []
    entry_rows: list[tuple[object, ...]] = []
    delta: dict[UUID, Decimal] = defaultdict(Decimal)
    accounts: dict[UUID, Account] = {}
    for posting in postings:
        legs = [(a, Decimal(x)) for a, x in posting.legs if Decimal(x) != 0]
        if not legs:
            ids.append(None)
            continue
        if sum(x for _, x in legs) != 0:
            raise ValueError(f"unbalanced transaction {posting.reason}: {legs}")
        txn_id = ordered_uuid()
        ids.append(txn_id)
        txn_rows.append(
            (txn_id, posting.reason, posting.reservation_id, posting.voucher_id, posting.memo[:200])
        )
        for account, amount in legs:
            entry_rows.append((txn_id, account.pk, amount))
            delta[account.pk] += amount
            accounts[account.pk] = account
    if not txn_rows:
        if before_hot is not None:
            before_hot()
        return ids
    now = timezone.now()
    rows_insert(Transaction, TRANSACTION_FIELDS, [(*row, now) for row in txn_rows])
    rows_insert(Entry, ENTRY_FIELDS, entry_rows)
    changed = {pk: x for pk, x in delta.items() if x != 0}
    parties = {pk: x for pk, x in changed.items() if accounts[pk].kind not in HOT_KINDS}
    hot = {pk: x for pk, x in changed.items() if accounts[pk].kind in HOT_KINDS}
    if parties and not parties_locked:
        _lock(parties)
    _apply_many(parties, accounts)
    if before_hot is not None:
        before_hot()
    if len(hot) > 1:
        _lock(hot)
    _apply_many(hot, accounts)
    return ids


def _lock(changes: dict[UUID, Decimal]) -> None:
    list(
        Account.objects.select_for_update()
        .filter(pk__in=list(changes))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def _apply_many(changes: dict[UUID, Decimal], accounts: dict[UUID, Account]) -> None:
    """Add ``changes[pk]`` CNY to each account's balance: one statement on PostgreSQL."""
    if not changes:
        return
    ids = sorted(changes, key=str)
    if connection.vendor == "postgresql":
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE ledger_account AS a SET balance = a.balance + v.x "
                    "FROM unnest(%s::uuid[], %s::numeric[]) AS v(id, x) WHERE a.id = v.id",
                    [ids, [changes[pk] for pk in ids]],
                )
                updated = cursor.rowcount
        except IntegrityError as exc:
            raise _insufficient(None) from exc
        if updated != len(ids):
            raise Account.DoesNotExist(f"{len(ids) - updated} ledger accounts are missing")
        return
    # SQLite adds decimals as binary floats: read, add in Python, write back (it serialises
    # writers, so the read-modify-write cannot interleave), refusing a negative result as the
    # CHECK would.
    current = dict(Account.objects.filter(pk__in=ids).values_list("pk", "balance"))
    if len(current) != len(ids):
        raise Account.DoesNotExist(f"{len(ids) - len(current)} ledger accounts are missing")
    rows = []
    for pk in ids:
        account = accounts[pk]
        new = current[pk] + changes[pk]
        if new < 0 and not account.allow_negative:
            raise _insufficient(account)
        rows.append(Account(pk=pk, balance=new))
    Account.objects.bulk_update(rows, ["balance"])


def _insufficient(account: Account | None) -> Unprocessable:
    # One statement changes many rows: PostgreSQL names the constraint, not the row.
    what = account.get_kind_display() if account is not None else "a ledger"
    return Unprocessable(f"{what} balance would go below zero", code="insufficient_funds")
