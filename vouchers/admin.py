"""Operator admin for voucher programmes, catalogues, applications, vouchers and claims (§5.6).

Programmes are data an operator edits, except the annual budget once funded (the budget account
holds it). Catalogue entries and applications change status only through their services
(actions); vouchers and reimbursement claims are made by services and are read-only here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse

from ledger.models import Account
from marketplace.admin_utils import ReadOnlyAdminMixin, run_service_action

from .models import (
    CatalogueEntry,
    Programme,
    ProgrammeUsage,
    ReimbursementClaim,
    ShareTier,
    Statement,
    Voucher,
    VoucherApplication,
)
from .selectors import statement_csv
from .services import (
    catalogue_entry_approve,
    catalogue_entry_suspend,
    programme_fund,
    statement_mark_paid,
    statements_issue_due,
    voucher_application_approve,
    voucher_application_reject,
)


def _balance_subquery(**filters: Any) -> Subquery:
    return Subquery(Account.objects.filter(**filters).values("balance")[:1])


class CatalogueEntryInline(admin.TabularInline):
    model = CatalogueEntry
    extra = 0
    fields = ("provider", "year", "status")
    readonly_fields = ("status",)
    autocomplete_fields = ("provider",)


@admin.register(ShareTier)
class ShareTierAdmin(admin.ModelAdmin):
    """Higher shares where a programme defines them (domestic accelerators, startups): data,
    so a new city's tiers need no code."""

    list_display = ("programme", "name", "max_share", "domestic_accelerator")
    list_filter = ("programme",)
    fields = ("programme", "name", "max_share", "domestic_accelerator", "accelerators", "buyers")
    autocomplete_fields = ("buyers",)
    filter_horizontal = ("accelerators",)


@admin.register(Programme)
class ProgrammeAdmin(admin.ModelAdmin):
    """Programmes with their budget left (the programme budget account's balance, CNY)."""

    list_display = (
        "code",
        "name",
        "issuer_city",
        "effective_from",
        "effective_until",
        "annual_budget",
        "budget_left",
        "max_share",
        "buyer_annual_cap",
        "redemption_mode",
    )
    list_filter = ("issuer_city", "redemption_mode")
    search_fields = ("code", "name", "issuer_city")
    filter_horizontal = ("hubs", "clusters", "sites")
    inlines = (CatalogueEntryInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Programme]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _budget_left=_balance_subquery(
                    kind=Account.Kind.PROGRAMME, programme=OuterRef("pk")
                )
            )
        )

    @admin.display(description="budget left (CNY)", ordering="_budget_left")
    def budget_left(self, obj: Programme) -> Decimal | None:
        return getattr(obj, "_budget_left", None)

    def get_readonly_fields(
        self, request: HttpRequest, obj: Programme | None = None
    ) -> tuple[str, ...]:
        # The annual budget was posted to the ledger when the programme was created.
        return ("annual_budget",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: Programme, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if not change:
                programme_fund(obj)


@admin.register(CatalogueEntry)
class CatalogueEntryAdmin(admin.ModelAdmin):
    list_display = ("provider", "programme", "year", "status")
    list_filter = ("status", "programme", "year")
    search_fields = ("provider__name", "provider__credit_code", "programme__code")
    list_select_related = ("provider", "programme")
    readonly_fields = ("status",)
    autocomplete_fields = ("provider",)
    actions = ("approve_entries", "suspend_entries")

    @admin.action(description="Suspend selected catalogue entries")
    def suspend_entries(self, request: HttpRequest, queryset: QuerySet[CatalogueEntry]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda entry: catalogue_entry_suspend(entry_id=entry.pk),
            "suspended",
        )

    @admin.action(description="Approve selected catalogue entries")
    def approve_entries(self, request: HttpRequest, queryset: QuerySet[CatalogueEntry]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda entry: catalogue_entry_approve(entry_id=entry.pk),
            "approved",
        )


@admin.register(VoucherApplication)
class VoucherApplicationAdmin(admin.ModelAdmin):
    """Applications come from buyers (API/web); operators approve or reject them."""

    list_display = ("id", "buyer", "programme", "amount", "status", "created_at", "decided_at")
    list_filter = ("status", "programme")
    search_fields = ("id", "buyer__name", "buyer__credit_code", "purpose")
    list_select_related = ("buyer", "programme")
    readonly_fields = (
        "programme",
        "buyer",
        "amount",
        "purpose",
        "status",
        "decision_note",
        "created_at",
        "decided_at",
    )
    date_hierarchy = "created_at"
    actions = ("approve_applications", "reject_applications")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Approve selected applications and issue their vouchers")
    def approve_applications(
        self, request: HttpRequest, queryset: QuerySet[VoucherApplication]
    ) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda app: voucher_application_approve(application_id=app.pk),
            "approved",
        )

    @admin.action(description="Reject selected applications")
    def reject_applications(
        self, request: HttpRequest, queryset: QuerySet[VoucherApplication]
    ) -> None:
        note = f"rejected by {request.user}"
        run_service_action(
            self,
            request,
            queryset,
            lambda app: voucher_application_reject(application_id=app.pk, note=note),
            "rejected",
        )


@admin.register(Voucher)
class VoucherAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Vouchers with their live balance (the voucher account's balance, CNY)."""

    list_display = (
        "id",
        "owner",
        "programme",
        "face_value",
        "balance",
        "issued_at",
        "expires_at",
        "status",
    )
    list_filter = ("status", "programme")
    search_fields = ("id", "owner__name", "owner__credit_code", "programme__code")
    list_select_related = ("owner", "programme")
    date_hierarchy = "issued_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Voucher]:
        return (
            super()
            .get_queryset(request)
            .annotate(_balance=_balance_subquery(kind=Account.Kind.VOUCHER, voucher=OuterRef("pk")))
        )

    @admin.display(description="balance (CNY)", ordering="_balance")
    def balance(self, obj: Voucher) -> Decimal | None:
        return getattr(obj, "_balance", None)


@admin.register(ReimbursementClaim)
class ReimbursementClaimAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "provider",
        "programme",
        "reservation",
        "kind",
        "amount",
        "status",
        "created_at",
        "paid_at",
    )
    list_filter = ("status", "kind", "programme")
    search_fields = ("id", "provider__name", "reservation__id")
    list_select_related = ("provider", "programme", "reservation")
    date_hierarchy = "created_at"


@admin.register(ProgrammeUsage)
class ProgrammeUsageAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Budget and buyer-cap use per programme year (CNY): counters the holds keep, read-only."""

    list_display = ("programme", "year", "buyer", "used")
    list_filter = ("programme", "year")
    search_fields = ("programme__code", "buyer__name", "buyer__credit_code")
    list_select_related = ("programme", "buyer")


@admin.register(Statement)
class StatementAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Reimbursement statements (§5.6): issued by the daily task (or the action), marked paid by
    an operator (one ledger transaction), downloadable as CSV."""

    list_display = (
        "programme",
        "provider",
        "period_start",
        "period_end",
        "claim_count",
        "total",
        "status",
        "paid_at",
    )
    list_filter = ("status", "programme")
    search_fields = ("provider__name", "provider__credit_code", "programme__code")
    list_select_related = ("programme", "provider")
    actions = ("issue_due", "mark_paid", "download_csv")

    def has_settle_permission(self, request: HttpRequest) -> bool:
        """Issuing and marking paid change statements: the change permission on statements,
        as the API's mark-paid asks (``operator_permissions("vouchers.change_statement")``);
        the view permission only shows them (this admin is read-only otherwise)."""
        return bool(request.user.has_perm("vouchers.change_statement"))

    @admin.action(description="Issue every statement whose period is over", permissions=["settle"])
    def issue_due(self, request: HttpRequest, queryset: QuerySet[Statement]) -> None:
        self.message_user(request, f"{statements_issue_due()} statements issued")

    @admin.action(
        description="Mark selected statements paid (posts the ledger transaction)",
        permissions=["settle"],
    )
    def mark_paid(self, request: HttpRequest, queryset: QuerySet[Statement]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda statement: statement_mark_paid(statement_id=statement.pk),
            "marked paid",
        )

    @admin.action(description="Download selected statements as CSV")
    def download_csv(self, request: HttpRequest, queryset: QuerySet[Statement]) -> HttpResponse:
        body = "".join(statement_csv(statement=s) for s in queryset.order_by("period_start", "pk"))
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="statements.csv"'
        return response
