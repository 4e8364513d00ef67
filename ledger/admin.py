"""Operator admin for the ledger (§5.2): entirely read-only — the ledger is append-only and
written only by ``ledger.services.transaction_post``."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from marketplace.admin_utils import ReadOnlyAdminMixin

from .models import Account, Entry, Transaction


@admin.register(Account)
class AccountAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "kind",
        "organisation",
        "programme",
        "voucher",
        "balance",
        "allow_negative",
    )
    list_filter = ("kind", "allow_negative")
    search_fields = ("id", "organisation__name", "programme__code", "voucher__id")
    # Voucher.__str__ reads its programme's code.
    list_select_related = ("organisation", "programme", "voucher__programme")


class EntryInline(admin.TabularInline):
    model = Entry
    extra = 0
    can_delete = False
    fields = ("account", "amount")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "created_at", "reason", "reservation", "voucher", "memo")
    list_filter = ("reason",)
    search_fields = ("id", "memo", "reservation__id", "voucher__id")
    list_select_related = ("reservation", "voucher__programme")
    date_hierarchy = "created_at"
    inlines = (EntryInline,)


@admin.register(Entry)
class EntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "transaction", "account", "amount")
    list_filter = ("account__kind", "transaction__reason")
    search_fields = ("transaction__id", "account__id", "account__organisation__name")
    list_select_related = ("transaction", "account")
