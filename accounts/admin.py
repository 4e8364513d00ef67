"""Operator admin for users, organisations and memberships (PRODUCT.md §6.4).

Organisation status changes only through ``accounts.services.organisation_set_status`` (actions).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from marketplace.admin_utils import run_service_action

from .models import Membership, Organisation, User
from .services import organisation_set_status


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ("user", "organisation")


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Django's user admin with the organisations a person acts for."""

    list_display = (
        "username",
        "email",
        "first_name",
        "last_name",
        "is_staff",
        "is_active",
        "date_joined",
    )
    inlines = (MembershipInline,)


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    """Organisations by unified social credit code; approve/suspend through the service."""

    list_display = ("name", "credit_code", "kind", "status", "home_site", "created_at")
    list_filter = ("status", "kind")
    search_fields = ("name", "credit_code")
    list_select_related = ("home_site",)
    readonly_fields = ("status", "created_at")
    autocomplete_fields = ("home_site",)
    filter_horizontal = ("related",)
    inlines = (MembershipInline,)
    actions = ("approve_organisations", "suspend_organisations")

    @admin.action(description="Approve selected organisations")
    def approve_organisations(self, request: HttpRequest, queryset: QuerySet[Organisation]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda org: organisation_set_status(
                organisation_id=org.pk, status=Organisation.Status.APPROVED
            ),
            "approved",
        )

    @admin.action(description="Suspend selected organisations")
    def suspend_organisations(self, request: HttpRequest, queryset: QuerySet[Organisation]) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda org: organisation_set_status(
                organisation_id=org.pk, status=Organisation.Status.SUSPENDED
            ),
            "suspended",
        )


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "organisation", "role")
    list_filter = ("role",)
    search_fields = (
        "user__username",
        "user__email",
        "organisation__name",
        "organisation__credit_code",
    )
    list_select_related = ("user", "organisation")
    autocomplete_fields = ("user", "organisation")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).select_related("user", "organisation")
