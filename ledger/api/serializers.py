"""Ledger API serializers. Amounts in CNY (2 places), times UTC."""

from rest_framework import serializers

from ledger.models import Entry
from marketplace.api.base import StrictSerializer


class WalletSerializer(serializers.Serializer):
    """Balances in CNY: ``balance`` is the cash wallet (buyers); ``payable`` and ``claims`` what
    the platform and voucher programmes owe a provider."""

    currency = serializers.CharField()
    balance = serializers.DecimalField(max_digits=16, decimal_places=2)
    payable = serializers.DecimalField(max_digits=16, decimal_places=2)
    claims = serializers.DecimalField(max_digits=16, decimal_places=2)


class DepositInputSerializer(StrictSerializer):
    """``amount`` CNY to add to the wallet (positive, ≤ 2 places; test/demo funding)."""

    amount = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=0)


class DepositSerializer(serializers.Serializer):
    """The deposit's ledger transaction and the wallet balance after it (CNY)."""

    transaction = serializers.UUIDField()
    amount = serializers.DecimalField(max_digits=12, decimal_places=2)
    balance = serializers.DecimalField(max_digits=16, decimal_places=2)


class EntrySerializer(serializers.ModelSerializer):
    """One ledger entry on the caller's accounts: ``amount`` CNY added (negative = taken) to
    ``account`` (``wallet``, ``payable``, ``claims`` or ``voucher``)."""

    transaction = serializers.UUIDField(source="transaction_id", read_only=True)
    reason = serializers.CharField(source="transaction.reason", read_only=True)
    memo = serializers.CharField(source="transaction.memo", read_only=True)
    reservation = serializers.UUIDField(
        source="transaction.reservation_id", read_only=True, allow_null=True
    )
    account = serializers.CharField(source="account.kind", read_only=True)
    voucher = serializers.UUIDField(source="account.voucher_id", read_only=True, allow_null=True)
    created_at = serializers.DateTimeField(source="transaction.created_at", read_only=True)

    class Meta:
        model = Entry
        fields = [
            "id",
            "transaction",
            "reason",
            "memo",
            "reservation",
            "account",
            "voucher",
            "amount",
            "created_at",
        ]
