"""Vouchers API serializers. Money in CNY (2 places), times UTC."""

from __future__ import annotations

from rest_framework import serializers

from marketplace.api.base import StrictSerializer
from vouchers.models import (
    Programme,
    ReimbursementClaim,
    Statement,
    Voucher,
    VoucherApplication,
)


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


class StatementLineSerializer(serializers.ModelSerializer):
    """One line of a statement: a ``redemption`` (the voucher part of a settled reservation,
    ``amount`` > 0) or an ``adjustment`` (voucher value refunded after settlement, ``amount``
    < 0), CNY; ``claimant`` is who is repaid — the provider (``point_of_sale``) or the buyer
    (``reimbursement``), by credit code; ``created_at`` (UTC) dates the line."""

    reservation = serializers.UUIDField(source="reservation_id", read_only=True)
    claimant = serializers.CharField(source="claimant.credit_code", read_only=True)
    claimant_name = serializers.CharField(source="claimant.name", read_only=True)
    amount = serializers.DecimalField(max_digits=14, decimal_places=2, read_only=True)

    class Meta:
        model = ReimbursementClaim
        fields = [
            "id",
            "kind",
            "reservation",
            "claimant",
            "claimant_name",
            "mode",
            "amount",
            "status",
            "created_at",
            "paid_at",
        ]


class StatementSerializer(serializers.ModelSerializer):
    """A reimbursement statement of one programme (code), provider and period
    ``[period_start, period_end)`` (dates in the programme's time zone): ``total`` CNY over
    ``claim_count`` lines (negative when refunds after settlement outweigh redemptions),
    ``issued`` or ``paid`` (``paid_at`` UTC)."""

    programme: serializers.SlugRelatedField[Programme] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    programme_name = serializers.CharField(source="programme.name", read_only=True)
    provider = serializers.UUIDField(source="provider_id", read_only=True)
    provider_name = serializers.CharField(source="provider.name", read_only=True)
    total = serializers.DecimalField(max_digits=16, decimal_places=2, read_only=True)

    class Meta:
        model = Statement
        fields = [
            "id",
            "programme",
            "programme_name",
            "provider",
            "provider_name",
            "period_start",
            "period_end",
            "total",
            "claim_count",
            "status",
            "issued_at",
            "paid_at",
        ]


class StatementDetailSerializer(StatementSerializer):
    """A statement with its ``lines`` (creation time, then id: the CSV's order)."""

    lines = StatementLineSerializer(source="claims", many=True, read_only=True)

    class Meta(StatementSerializer.Meta):
        fields = [*StatementSerializer.Meta.fields, "lines"]
