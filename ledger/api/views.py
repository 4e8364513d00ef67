"""Ledger API: the caller's wallet, deposits and ledger entries (PRODUCT.md §5.2, §6.1)."""

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ledger.models import Account, Entry, Transaction
from ledger.selectors import ORG_KINDS, entry_list, organisation_balances
from marketplace.api.base import ERRORS, IDEMPOTENCY_HEADER, OrgMixin, idempotent
from marketplace.api.filters import StrictFilterBackend
from marketplace.services import wallet_deposit

from .serializers import (
    DepositInputSerializer,
    DepositSerializer,
    EntrySerializer,
    WalletSerializer,
)


class EntryFilter(django_filters.FilterSet):
    """``reason`` of the transaction; ``account`` kind (wallet, payable, claims, voucher)."""

    reason = django_filters.ChoiceFilter(
        field_name="transaction__reason", choices=Transaction.Reason.choices
    )
    account = django_filters.ChoiceFilter(
        field_name="account__kind",
        choices=[(k, Account.Kind(k).label) for k in (*ORG_KINDS, Account.Kind.VOUCHER)],
    )

    class Meta:
        model = Entry
        fields: list[str] = []


def _wallet(organisation: object) -> dict[str, object]:
    found = organisation_balances(organisation=organisation)  # type: ignore[arg-type]
    return {
        "currency": "CNY",
        "balance": found[Account.Kind.WALLET],
        "payable": found[Account.Kind.PAYABLE],
        "claims": found[Account.Kind.CLAIMS],
    }


class WalletApi(OrgMixin, APIView):
    """The caller's cash wallet balance and provider balances, in CNY."""

    @extend_schema(responses={200: WalletSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response(WalletSerializer(_wallet(self.org)).data)


class DepositApi(OrgMixin, APIView):
    """Fund the caller's wallet with ``amount`` CNY (test/demo funding). 403 ``not_a_buyer`` for
    a provider-only organisation. Accepts ``Idempotency-Key``."""

    @extend_schema(
        request=DepositInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: DepositSerializer, 422: ERRORS[400], **ERRORS},
    )
    @idempotent
    def post(self, request: Request) -> Response:
        serializer = DepositInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        amount = serializer.validated_data["amount"]
        txn = wallet_deposit(organisation=self.org, amount=amount)
        body = {"transaction": txn.pk, "amount": amount, "balance": _wallet(self.org)["balance"]}
        return Response(DepositSerializer(body).data, status=status.HTTP_201_CREATED)


class EntryListApi(OrgMixin, generics.ListAPIView):
    """Ledger entries on the caller's wallet, payable, claims and voucher accounts, newest
    first. Filters: ``reason``, ``account``."""

    serializer_class = EntrySerializer
    queryset = Entry.objects.none()  # schema introspection only; see get_queryset
    filterset_class = EntryFilter
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return entry_list(organisation=self.org)
