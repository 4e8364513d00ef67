"""Voucher reads: programmes, a buyer's vouchers (with ledger balance) and applications."""

import csv
import io

from django.db.models import DecimalField, OuterRef, Prefetch, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from accounts.models import Organisation
from ledger.models import Account
from marketplace.selectors import as_uuid
from marketplace.spreadsheet import cell_text

from .models import Programme, ReimbursementClaim, Statement, Voucher, VoucherApplication

STATEMENT_CSV_COLUMNS = (
    "claim",
    "reservation",
    "settled_at_utc",
    "claimant_credit_code",
    "claimant",
    "mode",
    "voucher",
    "amount_cny",
)
# Redemption lines are dated at settlement; adjustment lines (negative: voucher value refunded
# after settlement) when the refund was made. ``kind`` tells them apart in the API's CSV, which
# leaves out the voucher (the buyer's own object).
STATEMENT_API_CSV_COLUMNS = (
    "claim",
    "kind",
    "reservation",
    "dated_at_utc",
    "claimant_credit_code",
    "claimant",
    "mode",
    "amount_cny",
)


def programme_list() -> QuerySet[Programme]:
    """All voucher programmes, by code (public reference data)."""
    return Programme.objects.order_by("code")


def programme_get(*, programme_id: object) -> Programme | None:
    pk = as_uuid(programme_id)
    return None if pk is None else programme_list().filter(pk=pk).first()


def voucher_list(*, owner: Organisation) -> QuerySet[Voucher]:
    """The owner's vouchers with ``current_balance`` (CNY) read from each voucher's ledger
    account (0.00 before its account exists), and the programme joined."""
    balance = Account.objects.filter(kind=Account.Kind.VOUCHER, voucher=OuterRef("pk")).values(
        "balance"
    )[:1]
    return (
        Voucher.objects.filter(owner=owner)
        .select_related("programme")
        .annotate(
            current_balance=Coalesce(
                Subquery(balance),
                Value(0),
                output_field=DecimalField(max_digits=16, decimal_places=2),
            )
        )
        .order_by("issued_at", "id")
    )


def voucher_get(*, owner: Organisation, voucher_id: object) -> Voucher | None:
    """One of the owner's vouchers, or ``None`` (also for another organisation's id)."""
    pk = as_uuid(voucher_id)
    return None if pk is None else voucher_list(owner=owner).filter(pk=pk).first()


def voucher_application_list(*, buyer: Organisation) -> QuerySet[VoucherApplication]:
    """The buyer's voucher applications, newest first."""
    return (
        VoucherApplication.objects.filter(buyer=buyer)
        .select_related("programme")
        .order_by("-created_at", "id")
    )


def voucher_application_get(
    *, buyer: Organisation, application_id: object
) -> VoucherApplication | None:
    pk = as_uuid(application_id)
    return None if pk is None else voucher_application_list(buyer=buyer).filter(pk=pk).first()


def statement_claims(*, statement: Statement) -> QuerySet[ReimbursementClaim]:
    """The claims a statement lists, in a stable order (creation time, then id)."""
    return statement.claims.select_related("claimant").order_by("created_at", "id")


def statement_csv(*, statement: Statement, for_api: bool = False) -> str:
    """The statement as CSV (UTF-8 text): one row per claim line (``STATEMENT_CSV_COLUMNS`` for
    the operator's admin, ``STATEMENT_API_CSV_COLUMNS`` with ``for_api``: with the line's kind
    and without the buyer's voucher), amounts CNY to the fen, times UTC ISO 8601, then a
    ``total`` row. Names are written through ``cell_text`` (no spreadsheet formulas). The same
    statement always gives the same bytes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = STATEMENT_API_CSV_COLUMNS if for_api else STATEMENT_CSV_COLUMNS
    writer.writerow(columns)
    for claim in statement_claims(statement=statement):
        values = {
            "claim": claim.pk,
            "kind": claim.kind,
            "reservation": claim.reservation_id,
            "settled_at_utc": claim.created_at.isoformat(),
            "dated_at_utc": claim.created_at.isoformat(),
            "claimant_credit_code": claim.claimant.credit_code,
            "claimant": cell_text(claim.claimant.name),
            "mode": claim.mode,
            "voucher": claim.voucher_id,
            "amount_cny": f"{claim.amount:.2f}",
        }
        writer.writerow([values[c] for c in columns])
    writer.writerow(["total", *[""] * (len(columns) - 2), f"{statement.total:.2f}"])
    return out.getvalue()


def statement_list(*, provider: Organisation | None) -> QuerySet[Statement]:
    """Reimbursement statements, newest period first: a provider's own (``provider``), or every
    one for an operator (``provider=None``), with programme and provider joined."""
    statements = Statement.objects.select_related("programme", "provider")
    if provider is not None:
        statements = statements.filter(provider=provider)
    return statements.order_by("-period_start", "programme__code", "id")


def statement_get(*, provider: Organisation | None, statement_id: object) -> Statement | None:
    """One statement the caller may see (``statement_list``) with its lines and their claimants
    prefetched, or ``None`` (also for another provider's id or a malformed one)."""
    pk = as_uuid(statement_id)
    if pk is None:
        return None
    return (
        statement_list(provider=provider)
        .prefetch_related(
            Prefetch(
                "claims",
                queryset=ReimbursementClaim.objects.select_related("claimant").order_by(
                    "created_at", "id"
                ),
            )
        )
        .filter(pk=pk)
        .first()
    )
