"""Ledger invariants (PRODUCT.md §5.2, §5.5), checked by ``manage.py ledger_audit``."""

from decimal import Decimal

from django.db.models import Count, F, Q, Sum

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
    for txn_id, total, n in (
        Entry.objects.values("transaction_id").annotate(total=Sum("amount"), n=Count("id"))
        .filter(~Q(total=0) | Q(n__lt=2)).values_list("transaction_id", "total", "n")
    ):
        problems.append(f"transaction {txn_id} unbalanced: sum {total} over {n} entries")
    empty = Transaction.objects.filter(entries__isnull=True).count()
    if empty:
        problems.append(f"{empty} transactions without entries")
    grand = Entry.objects.aggregate(s=Sum("amount"))["s"] or Decimal(0)
    if grand != 0:
        problems.append(f"all entries sum to {grand}, not 0")

    sums = dict(Entry.objects.values("account_id").annotate(s=Sum("amount"))
                .values_list("account_id", "s"))
    for account in Account.objects.all():
        derived = sums.get(account.pk, Decimal(0))
        if account.balance != derived:
            problems.append(f"account {account} cached {account.balance} ≠ entries {derived}")
        if not account.allow_negative and derived < 0:
            problems.append(f"account {account} negative: {derived}")

    held = Reservation.objects.filter(
        status__in=["held", "confirmed", "active", "completed"]
    ).aggregate(s=Sum("bill"))["s"] or Decimal(0)
    escrow = sum((a.balance for a in Account.objects.filter(kind=Account.Kind.ESCROW)),
                 Decimal(0))
    if escrow != held:
        problems.append(f"escrow {escrow} ≠ bills of unsettled live reservations {held}")

    bad_parts = Reservation.objects.exclude(bill=F("voucher_part") + F("cash_part")).count()
    if bad_parts:
        problems.append(f"{bad_parts} reservations whose parts do not add up to the bill")

    for claim in ReimbursementClaim.objects.select_related("reservation"):
        if claim.amount > claim.reservation.voucher_part:
            problems.append(f"claim {claim.pk} exceeds the reservation's voucher part")

    for account in Account.objects.filter(kind=Account.Kind.VOUCHER).select_related("voucher"):
        if account.voucher is not None and account.balance > account.voucher.face_value:
            problems.append(f"voucher {account.voucher_id} balance above face value")
    return problems
