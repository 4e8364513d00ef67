"""Vouchers API serializers. Money in CNY (2 places), times UTC."""

from __future__ import annotations

from rest_framework import serializers

from marketplace.api.base import StrictSerializer
from vouchers.models import Programme, Voucher, VoucherApplication


class ProgrammeSerializer(serializers.ModelSerializer):
    """A voucher programme: ``annual_budget`` and ``buyer_annual_cap`` in CNY, ``max_share`` the
    fraction (0-1] of a bill a voucher may pay, ``validity_months`` of an issued voucher."""

    class Meta:
        model = Programme
        fields = [
            "id",
            "code",
            "name",
            "issuer_city",
            "effective_from",
            "effective_until",
            "annual_budget",
            "max_share",
            "buyer_annual_cap",
            "min_voucher_amount",
            "validity_months",
            "redemption_mode",
            "statement_period",
            "time_zone",
        ]


class VoucherSerializer(serializers.ModelSerializer):
    """A voucher of the caller: ``face_value`` and ``balance`` (its ledger account now) in CNY;
    ``expires_at`` is the end of its last valid day (Asia/Shanghai) as UTC."""

    programme: serializers.SlugRelatedField[Programme] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    programme_name = serializers.CharField(source="programme.name", read_only=True)
    balance = serializers.DecimalField(
        source="current_balance", max_digits=16, decimal_places=2, read_only=True
    )

    class Meta:
        model = Voucher
        fields = [
            "id",
            "programme",
            "programme_name",
            "face_value",
            "balance",
            "issued_at",
            "expires_at",
            "status",
        ]


class VoucherApplicationInputSerializer(StrictSerializer):
    """Apply to ``programme`` (UUID) for a voucher of ``amount`` CNY (≤ 2 places)."""

    programme = serializers.PrimaryKeyRelatedField(queryset=Programme.objects.all())
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, min_value=0)
    purpose = serializers.CharField(max_length=300, allow_blank=True, default="")


class VoucherApplicationSerializer(serializers.ModelSerializer):
    """A voucher application and its decision."""

    programme: serializers.SlugRelatedField[Programme] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )

    class Meta:
        model = VoucherApplication
        fields = [
            "id",
            "programme",
            "amount",
            "purpose",
            "status",
            "decision_note",
            "created_at",
            "decided_at",
        ]
