"""Ledger invariants (PRODUCT.md §5.2, §5.5), checked by ``manage.py ledger_audit``."""

from collections import defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

from marketplace.models import Reservation
from vouchers.models import Programme, ProgrammeUsage, ReimbursementClaim, Statement, Voucher

from .models import Account, Entry, Hold, Refund, Transaction

LIVE = ("held", "confirmed", "active", "completed")
HOLD_STATUS_OF = {
    **dict.fromkeys(LIVE, Hold.Status.PENDING),
    "settled": Hold.Status.POSTED,
    **dict.fromkeys(("cancelled", "expired", "failed"), Hold.Status.VOIDED),
}


def ledger_audit() -> list[str]:
    """Return every broken invariant as a line of text; an empty list means the ledger is clean.

    Checks: each transaction balances to zero and has at least two entries; all entries sum to
    zero; each cached balance equals the sum of its entries; no account that must stay
    non-negative is negative; escrow equals the held parts of reservations not yet released or
    settled; each reservation's parts add up to its bill; each settled reservation's claim lines
    add up to the voucher part it kept (after refunds) and each claims account equals its
    claimant's unpaid lines; voucher balances never exceed their face value; each reservation
    has one hold in the state its status implies, escrow equals the pending holds, refunds
    never exceed what each part paid; each settled reservation has exactly one settlement
    transaction; vouchers issued by a programme in a year stay within its budget and a buyer's
    within the per-buyer cap; the programme usage counters equal the voucher parts of their
    holds less refunds and stay within budget and cap; each statement's total and count equal
    its claims, and a paid statement's transaction moved exactly its total.
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

    escrow = sum((a.balance for a in Account.objects.filter(kind=Account.Kind.ESCROW)), Decimal(0))

    bad_parts = sum(
        1
        for bill, v, c in Reservation.objects.values_list("bill", "voucher_part", "cash_part")
        if bill != v + c
    )
    if bad_parts:
        problems.append(f"{bad_parts} reservations whose parts do not add up to the bill")

    problems += _claims()

    for account in Account.objects.filter(
        kind=Account.Kind.VOUCHER, voucher__status="expired", balance__gt=0
    ):
        problems.append(f"expired voucher {account.voucher_id} still holds {account.balance}")

    for account in Account.objects.filter(kind=Account.Kind.VOUCHER).select_related("voucher"):
        if account.voucher is not None and account.balance > account.voucher.face_value:
            problems.append(f"voucher {account.voucher_id} balance above face value")
    problems += _holds_and_refunds(escrow)
    problems += _settlements()
    problems += _programme_limits()
    problems += _usage()
    problems += _statements()
    return problems


def _holds_and_refunds(escrow: Decimal) -> list[str]:
    problems: list[str] = []
    holds = {h.reservation_id: h for h in Hold.objects.all()}
    pending = live_bills = Decimal(0)
    for rid, status, bill, v, c in Reservation.objects.values_list(
        "pk", "status", "bill", "voucher_part", "cash_part"
    ):
        hold = holds.get(rid)
        if hold is None:
            problems.append(f"reservation {rid} has no payment hold")
            continue
        if hold.status != HOLD_STATUS_OF[status]:
            problems.append(f"reservation {rid} is {status} but its hold is {hold.status}")
        if hold.voucher_part != v or hold.cash_paid not in (c, bill):
            problems.append(f"reservation {rid}: hold parts differ from the reservation's")
        if hold.status == Hold.Status.PENDING:
            pending += hold.voucher_part + hold.cash_paid
        if status in LIVE:
            live_bills += bill + (v if hold.mode == "reimbursement" else 0)
    if pending != escrow:
        problems.append(f"escrow {escrow} ≠ pending holds {pending}")
    if live_bills != escrow:
        problems.append(f"escrow {escrow} ≠ bills of unsettled live reservations {live_bills}")
    refunded: dict[object, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for hold_id, v, c in Refund.objects.values_list("hold_id", "voucher_amount", "cash_amount"):
        refunded[hold_id][0] += v
        refunded[hold_id][1] += c
    for hold in holds.values():
        v, c = refunded.get(hold.pk, [Decimal(0), Decimal(0)])
        if (v, c) != (hold.refunded_voucher, hold.refunded_cash):
            problems.append(f"hold {hold.pk}: refund rows {v}+{c} ≠ counters")
        if v > hold.voucher_part or c > hold.cash_paid:
            problems.append(f"hold {hold.pk}: refunds exceed what was paid")
    return problems


def _settlements() -> list[str]:
    problems: list[str] = []
    count: dict[object, int] = defaultdict(int)
    for rid in Transaction.objects.filter(reason=Transaction.Reason.SETTLEMENT).values_list(
        "reservation_id", flat=True
    ):
        count[rid] += 1
    for rid, status, bill in Reservation.objects.values_list("pk", "status", "bill"):
        expected = 1 if status == "settled" and bill > 0 else 0
        if count.get(rid, 0) != expected:
            problems.append(
                f"reservation {rid} ({status}) has {count.get(rid, 0)} settlement transactions"
            )
    return problems


def _programme_limits() -> list[str]:
    problems: list[str] = []
    programmes: dict[object, Programme] = {p.pk: p for p in Programme.objects.all()}
    issued: dict[tuple[object, int], Decimal] = defaultdict(Decimal)
    by_buyer: dict[tuple[object, object, int], Decimal] = defaultdict(Decimal)
    for programme_id, owner_id, issued_at, face in Voucher.objects.values_list(
        "programme_id", "owner_id", "issued_at", "face_value"
    ):
        year = issued_at.astimezone(ZoneInfo(programmes[programme_id].time_zone)).year
        issued[programme_id, year] += face
        by_buyer[programme_id, owner_id, year] += face
    for (pid, year), total in issued.items():
        if total > programmes[pid].annual_budget:
            problems.append(f"programme {programmes[pid].code} issued {total} in {year}")
    for (pid, buyer_id, year), total in by_buyer.items():
        if total > programmes[pid].buyer_annual_cap:
            problems.append(f"buyer {buyer_id} got {total} from {programmes[pid].code} in {year}")
    return problems


def _claims() -> list[str]:
    """Claim lines against what each settled reservation's voucher part kept, and claims
    accounts against their claimants' unpaid lines."""
    problems: list[str] = []
    lines: dict[object, Decimal] = defaultdict(Decimal)
    redemptions: dict[object, int] = defaultdict(int)
    unpaid: dict[object, Decimal] = defaultdict(Decimal)
    for rid, kind, amount, claimant, status in ReimbursementClaim.objects.values_list(
        "reservation_id", "kind", "amount", "claimant_id", "status"
    ):
        lines[rid] += amount
        redemptions[rid] += kind == ReimbursementClaim.Kind.REDEMPTION
        if status == ReimbursementClaim.Status.OPEN:
            unpaid[claimant] += amount
    kept: dict[object, Decimal] = {
        rid: v - refunded
        for rid, v, refunded in Hold.objects.filter(
            status=Hold.Status.POSTED, voucher_part__gt=0
        ).values_list("reservation_id", "voucher_part", "refunded_voucher")
    }
    for reservation_id in set(lines) | set(kept):
        claimed = lines.get(reservation_id, Decimal(0))
        kept_v = kept.get(reservation_id, Decimal(0))
        if claimed != kept_v:
            problems.append(
                f"reservation {reservation_id}: claim lines {claimed} ≠ voucher part kept {kept_v}"
            )
        if redemptions.get(reservation_id, 0) > 1:
            problems.append(f"reservation {reservation_id} has several redemption claims")
    for account in Account.objects.filter(kind=Account.Kind.CLAIMS):
        if account.balance != unpaid.get(account.organisation_id, Decimal(0)):
            problems.append(
                f"claims account of {account.organisation_id} holds {account.balance} ≠ "
                f"its unpaid claim lines {unpaid.get(account.organisation_id, Decimal(0))}"
            )
    return problems


def _usage() -> list[str]:
    """Programme usage counters against the holds they count, and against the limits."""
    problems: list[str] = []
    programmes: dict[object, Programme] = {p.pk: p for p in Programme.objects.all()}
    derived: dict[tuple[object, int, object], Decimal] = defaultdict(Decimal)
    for programme_id, buyer_id, year, v, refunded in Hold.objects.filter(
        voucher_part__gt=0
    ).values_list(
        "reservation__voucher__programme_id",
        "reservation__buyer_id",
        "programme_year",
        "voucher_part",
        "refunded_voucher",
    ):
        if year is None:
            problems.append(f"a hold of programme {programme_id} counts in no programme year")
            continue
        derived[programme_id, year, None] += v - refunded
        derived[programme_id, year, buyer_id] += v - refunded
    cached: dict[tuple[object, int, object], Decimal] = {
        (p, y, b): used
        for p, y, b, used in ProgrammeUsage.objects.values_list(
            "programme_id", "year", "buyer_id", "used"
        )
    }
    for key in set(derived) | set(cached):
        programme, year_of, who = programmes[key[0]], key[1], key[2]
        used = cached.get(key, Decimal(0))
        if used != derived.get(key, Decimal(0)):
            problems.append(
                f"usage of {programme.code} {year_of} ({who or 'budget'}) cached {used} ≠ "
                f"holds {derived.get(key, Decimal(0))}"
            )
        limit = programme.annual_budget if who is None else programme.buyer_annual_cap
        if used > limit:
            problems.append(f"usage of {programme.code} {year_of} ({who or 'budget'}) > {limit}")
    return problems


def _statements() -> list[str]:
    problems: list[str] = []
    for statement in Statement.objects.prefetch_related("claims"):
        claims = list(statement.claims.all())
        total = sum((c.amount for c in claims), Decimal(0))
        if total != statement.total or len(claims) != statement.claim_count:
            problems.append(f"statement {statement.pk}: total/count differ from its claims")
        if statement.status == Statement.Status.PAID:
            if any(c.status != ReimbursementClaim.Status.PAID for c in claims):
                problems.append(f"statement {statement.pk} paid but a claim is open")
            moved = sum(
                (
                    -e.amount
                    for e in Entry.objects.filter(
                        transaction=statement.transaction, account__kind=Account.Kind.CLAIMS
                    )
                ),
                Decimal(0),
            )
            if moved != statement.total:
                problems.append(f"statement {statement.pk} paid {moved} ≠ total {statement.total}")
    return problems
