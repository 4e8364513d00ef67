"""Operator admin for the market (PRODUCT.md §6.4).

Reference data (hubs, clusters, latencies, sites, accelerators) is editable. Offers, demands,
reservations and what matching records are made by services; here they are read-only, and the
only writes are actions that call those services (an offer's status via ``offer_set_status``).
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .admin_utils import ReadOnlyAdminMixin, run_service_action
from .models import (
    Accelerator,
    Cluster,
    Demand,
    Dispute,
    Hub,
    HubLatency,
    InterHubTrade,
    MatchingCycle,
    Offer,
    Reservation,
    ReservationEvent,
    Site,
)
from .services import dispute_decide, offer_set_status


class ClusterInline(admin.TabularInline):
    model = Cluster
    extra = 0
    fields = ("code", "name", "name_zh")


@admin.register(Hub)
class HubAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "name_zh", "is_west", "matching_policy")
    list_filter = ("is_west", "matching_policy")
    search_fields = ("code", "name", "name_zh")
    inlines = (ClusterInline,)


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "name_zh", "hub")
    list_filter = ("hub",)
    search_fields = ("code", "name", "name_zh", "hub__name")
    list_select_related = ("hub",)


@admin.register(HubLatency)
class HubLatencyAdmin(admin.ModelAdmin):
    list_display = ("from_hub", "to_hub", "latency_ms")
    list_filter = ("from_hub", "to_hub")
    search_fields = ("from_hub__code", "to_hub__code")
    list_select_related = ("from_hub", "to_hub")
    ordering = ("from_hub__code", "to_hub__code")


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "city", "metro_area", "hub", "cluster", "provider")
    list_filter = ("hub", "cluster", ("provider", admin.EmptyFieldListFilter))
    search_fields = ("code", "name", "city", "metro_area", "provider__name")
    list_select_related = ("hub", "cluster", "provider")
    autocomplete_fields = ("provider",)


@admin.register(Accelerator)
class AcceleratorAdmin(admin.ModelAdmin):
    list_display = ("code", "vendor", "memory_gb", "bf16_tflops", "interconnect", "is_domestic")
    list_filter = ("vendor", "is_domestic", "interconnect")
    search_fields = ("code", "vendor", "note", "aliases")


@admin.register(Offer)
class OfferAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Offers are listed by providers (console, API); operators watch and pause/withdraw them."""

    list_display = (
        "id",
        "provider",
        "site",
        "accelerator",
        "gpu_count",
        "price_per_gpu_hour",
        "available_from",
        "available_until",
        "status",
    )
    list_filter = ("status", "accelerator", "site__hub")
    search_fields = ("id", "provider__name", "site__code", "site__city", "accelerator__code")
    list_select_related = ("provider", "site", "accelerator")
    date_hierarchy = "available_from"
    actions = ("pause_offers", "withdraw_offers")

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet[Offer], status: str, verb: str
    ) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda offer: offer_set_status(
                offer_id=offer.pk, provider=offer.provider, status=status
            ),
            verb,
        )

    @admin.action(description="Pause selected offers")
    def pause_offers(self, request: HttpRequest, queryset: QuerySet[Offer]) -> None:
        self._set_status(request, queryset, Offer.Status.PAUSED, "paused")

    @admin.action(description="Withdraw selected offers")
    def withdraw_offers(self, request: HttpRequest, queryset: QuerySet[Offer]) -> None:
        self._set_status(request, queryset, Offer.Status.WITHDRAWN, "withdrawn")

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Actions need change permission to be offered; the form itself stays read-only
        # because every field is listed in ``get_readonly_fields``.
        return super(ReadOnlyAdminMixin, self).has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in Offer._meta.fields]


@admin.register(Demand)
class DemandAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "buyer",
        "origin_site",
        "gpu_count",
        "duration_hours",
        "earliest_start",
        "latest_end",
        "max_price_per_gpu_hour",
        "locality_limit",
        "split",
        "status",
        "unmatched_reason",
    )
    list_filter = ("status", "locality_limit", "split", "origin_site__hub", "unmatched_reason")
    search_fields = ("id", "buyer__name", "origin_site__code")
    list_select_related = ("buyer", "origin_site")
    date_hierarchy = "created_at"


class ReservationEventInline(admin.TabularInline):
    model = ReservationEvent
    extra = 0
    can_delete = False
    fields = ("at", "from_status", "to_status", "actor", "note")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Reservations change only through their lifecycle services; the event trail is inline."""

    list_display = (
        "id",
        "buyer",
        "provider",
        "offer",
        "start",
        "end",
        "gpu_count",
        "bill",
        "voucher_part",
        "cash_part",
        "locality_tier",
        "status",
    )
    list_filter = ("status", "locality_tier", "offer__site__hub")
    search_fields = ("id", "buyer__name", "provider__name", "offer__site__code")
    list_select_related = ("buyer", "provider", "offer__site", "offer__accelerator")
    date_hierarchy = "start"
    inlines = (ReservationEventInline,)


@admin.register(ReservationEvent)
class ReservationEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("at", "reservation", "from_status", "to_status", "actor", "note")
    list_filter = ("to_status", "from_status")
    search_fields = ("reservation__id", "note")
    list_select_related = ("reservation", "actor")


@admin.register(InterHubTrade)
class InterHubTradeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "reservation",
        "exporting_hub",
        "importing_hub",
        "gpu_hours",
        "value",
        "created_at",
    )
    list_filter = ("exporting_hub", "importing_hub")
    search_fields = ("reservation__id",)
    list_select_related = ("reservation", "exporting_hub", "importing_hub")


@admin.register(MatchingCycle)
class MatchingCycleAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "started_at",
        "hub",
        "policy",
        "seconds",
        "demands_considered",
        "offers_considered",
        "reservations_made",
    )
    list_filter = ("hub", "policy")
    search_fields = ("hub__code",)
    list_select_related = ("hub",)
    date_hierarchy = "started_at"


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Disputes are opened by the parties (web UI); operators decide them with the actions,
    which call ``dispute_decide`` (the note records who decided)."""

    list_display = ("id", "reservation", "opened_by", "status", "created_at", "resolved_at")
    list_filter = ("status",)
    search_fields = ("id", "reservation__id", "opened_by__name", "reason")
    list_select_related = (
        "opened_by",
        "reservation__offer__site",
        "reservation__offer__accelerator",
    )
    actions = ("resolve_disputes", "reject_disputes")

    def _decide(self, request: HttpRequest, queryset: QuerySet[Dispute], outcome: str) -> None:
        run_service_action(
            self,
            request,
            queryset,
            lambda dispute: dispute_decide(
                dispute_id=dispute.pk,
                outcome=outcome,
                operator=request.user if request.user.is_authenticated else None,  # type: ignore[arg-type]
                resolution=f"{outcome} by operator {request.user}",
            ),
            outcome,
        )

    @admin.action(description="Resolve selected disputes")
    def resolve_disputes(self, request: HttpRequest, queryset: QuerySet[Dispute]) -> None:
        self._decide(request, queryset, Dispute.Status.RESOLVED)

    @admin.action(description="Reject selected disputes")
    def reject_disputes(self, request: HttpRequest, queryset: QuerySet[Dispute]) -> None:
        self._decide(request, queryset, Dispute.Status.REJECTED)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Actions need change permission; every field stays read-only.
        return super(ReadOnlyAdminMixin, self).has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in Dispute._meta.fields]


# --- Inter-hub trade matrix (appended by issue 4) ------------------------------------------


class InterHubTradeMatrixAdmin(InterHubTradeAdmin):
    """The trade changelist plus ``matrix/``: exporting hub (rows) × importing hub (columns),
    each cell trades · GPU-hours · value CNY, with row and column totals (staff only)."""

    change_list_template = "admin/marketplace/interhubtrade/change_list.html"

    def get_urls(self):  # type: ignore[no-untyped-def]
        from django.urls import path

        matrix = path(
            "matrix/",
            self.admin_site.admin_view(self.matrix_view),
            name="marketplace_interhubtrade_matrix",
        )
        return [matrix, *super().get_urls()]

    def matrix_view(self, request):  # type: ignore[no-untyped-def]
        from decimal import Decimal

        from django.template.response import TemplateResponse

        from web.selectors import trade_matrix

        hubs, cells = trade_matrix()
        zero = (0, Decimal("0.00"), 0)

        def add(
            a: tuple[int, Decimal, int], b: tuple[int, Decimal, int]
        ) -> tuple[int, Decimal, int]:
            return (a[0] + b[0], a[1] + b[1], a[2] + b[2])

        rows = []
        column_totals = [zero] * len(hubs)
        total = zero
        for exp in hubs:
            row = [cells.get((exp.pk, imp.pk)) for imp in hubs]
            row_total = zero
            for i, cell in enumerate(row):
                if cell is not None:
                    row_total = add(row_total, cell)
                    column_totals[i] = add(column_totals[i], cell)
            total = add(total, row_total)
            rows.append((exp, row, row_total))
        context = {
            **self.admin_site.each_context(request),
            "title": "Inter-hub trade matrix",
            "opts": self.model._meta,
            "hubs": hubs,
            "rows": rows,
            "column_totals": column_totals,
            "total": total,
        }
        return TemplateResponse(request, "admin/marketplace/interhubtrade/matrix.html", context)


admin.site.unregister(InterHubTrade)
admin.site.register(InterHubTrade, InterHubTradeMatrixAdmin)
