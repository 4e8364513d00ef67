"""Ledger invariants (PRODUCT.md §5.2, §5.5), checked by ``manage.py ledger_audit``."""

from collections import defaultdict
from decimal import Decimal

from marketplace.models import Reservation
from vouchers.models import ReimbursementClaim

from .models import Account, Entry, Transaction


def ledger_audit() -> list[str]:
    """Return every broken invariant as a line of text; an empty list means the ledger is clean.

    Checks: each transaction balances to zero and has at least two entries; all entries sum to
    zero; each cached balance equals the sum of its entries; no account that must stay
    non-negative is negative; escrow equals the held parts of reservations not yet released or
    settled; each reservation's parts add up to its bill; each settled reservation's claim equals
    the voucher part it kept; voucher balances never exceed their face value.
    """
    problems: list[str] = []
    # Sums are taken in Python over exact Decimal values: SQLite (the embedded default) would
    # add them as binary floats in SQL.
    by_txn: dict[object, list[Decimal]] = defaultdict(list)
    by_account: dict[object, Decimal] = defaultdict(Decimal)
    for txn, account_id, amount in Entry.objects.values_list(
        "transaction_id", "account_id", "amount"
    ).iterator(chunk_size=5000):
        by_txn[txn].append(amount)
        by_account[account_id] += amount
    for txn_key, amounts in by_txn.items():
        if sum(amounts) != 0 or len(amounts) < 2:
            problems.append(
                f"transaction {txn_key} unbalanced: sum {sum(amounts)} over {len(amounts)} entries"
            )
    empty = Transaction.objects.filter(entries__isnull=True).count()
    if empty:
        problems.append(f"{empty} transactions without entries")
    grand = sum(by_account.values(), Decimal(0))
    if grand != 0:
        problems.append(f"all entries sum to {grand}, not 0")

    for account in Account.objects.all():
        derived = by_account.get(account.pk, Decimal(0))
        if account.balance != derived:
            problems.append(f"account {account} cached {account.balance} ≠ entries {derived}")
        if not account.allow_negative and derived < 0:
            problems.append(f"account {account} negative: {derived}")

    held = sum(
        Reservation.objects.filter(
            status__in=["held", "confirmed", "active", "completed"]
        ).values_list("bill", flat=True),
        Decimal(0),
    )
    escrow = sum((a.balance for a in Account.objects.filter(kind=Account.Kind.ESCROW)), Decimal(0))
    if escrow != held:
        problems.append(f"escrow {escrow} ≠ bills of unsettled live reservations {held}")

    bad_parts = sum(
        1
        for bill, v, c in Reservation.objects.values_list("bill", "voucher_part", "cash_part")
        if bill != v + c
    )
    if bad_parts:
        problems.append(f"{bad_parts} reservations whose parts do not add up to the bill")

    for claim in ReimbursementClaim.objects.select_related("reservation"):
        if claim.amount > claim.reservation.voucher_part:
            problems.append(f"claim {claim.pk} exceeds the reservation's voucher part")

    for account in Account.objects.filter(
        kind=Account.Kind.VOUCHER, voucher__status="expired", balance__gt=0
    ):
        problems.append(f"expired voucher {account.voucher_id} still holds {account.balance}")

    for account in Account.objects.filter(kind=Account.Kind.VOUCHER).select_related("voucher"):
        if account.voucher is not None and account.balance > account.voucher.face_value:
            problems.append(f"voucher {account.voucher_id} balance above face value")
    return problems
