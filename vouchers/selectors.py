"""Voucher reads: programmes, a buyer's vouchers (with ledger balance) and applications."""

from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from accounts.models import Organisation
from ledger.models import Account
from marketplace.selectors import as_uuid

from .models import Programme, Voucher, VoucherApplication


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
