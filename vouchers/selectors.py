"""Voucher reads: programmes, a buyer's vouchers (with ledger balance) and applications."""

import csv
import io

from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from accounts.models import Organisation
from ledger.models import Account
from marketplace.selectors import as_uuid

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


def statement_csv(*, statement: Statement) -> str:
    """The statement as CSV (UTF-8 text): one row per claim (``STATEMENT_CSV_COLUMNS``, amounts
    CNY to the fen, times UTC ISO 8601), then a ``total`` row. The same statement always gives
    the same bytes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_CSV_COLUMNS)
    for claim in statement_claims(statement=statement):
        writer.writerow(
            [
                claim.pk,
                claim.reservation_id,
                claim.created_at.isoformat(),
                claim.claimant.credit_code,
                claim.claimant.name,
                claim.mode,
                claim.voucher_id,
                f"{claim.amount:.2f}",
            ]
        )
    writer.writerow(["total", "", "", "", "", "", "", f"{statement.total:.2f}"])
    return out.getvalue()
