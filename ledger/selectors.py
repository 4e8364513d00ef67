"""Ledger reads scoped to one organisation (PRODUCT.md §5.2)."""

from decimal import Decimal

from django.db.models import Q, QuerySet

from accounts.models import Organisation

from .models import Account, Entry

ORG_KINDS = (Account.Kind.WALLET, Account.Kind.PAYABLE, Account.Kind.CLAIMS)


def organisation_balances(*, organisation: Organisation) -> dict[str, Decimal]:
    """Balances in CNY of the organisation's wallet, payable and claims accounts, keyed by kind;
    an account not yet opened counts as 0.00. Reads only (opens no account)."""
    found = dict(
        Account.objects.filter(organisation=organisation, kind__in=ORG_KINDS).values_list(
            "kind", "balance"
        )
    )
    return {kind: found.get(kind, Decimal("0.00")) for kind in ORG_KINDS}


def entry_list(*, organisation: Organisation) -> QuerySet[Entry]:
    """Ledger entries on the organisation's own accounts (wallet, payable, claims) and on its
    vouchers' accounts, newest first, with their transaction and account joined."""
    own = Q(account__organisation=organisation, account__kind__in=ORG_KINDS) | Q(
        account__kind=Account.Kind.VOUCHER, account__voucher__owner=organisation
    )
    return (
        Entry.objects.filter(own)
        .select_related("transaction", "account")
        .order_by("-transaction__created_at", "-id")
    )
