"""Operator admin for the market (PRODUCT.md §6.4).

Reference data (hubs, clusters, latencies, sites, accelerators) is editable. Offers, demands,
reservations and what matching records are made by services; here they are read-only, and the
only writes are actions that call those services (an offer's status via ``offer_set_status``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from .admin_utils import ReadOnlyAdminMixin, SiteMoveCheckedForm, run_service_action
from .errors import DomainError
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
from .selectors import hub_list
from .services import dispute_decide, offer_set_status


class ClusterInline(admin.TabularInline):
    model = Cluster
    extra = 0
    fields = ("code", "name", "name_zh")


@admin.register(Hub)
class HubAdmin(admin.ModelAdmin):
    """Hubs, where the operator sets each hub's matching policy (``greedy`` or ``optimal``,
    PRODUCT.md §4.2) and ``matching_time_limit`` (whole seconds, 1 to 120: the model's
    validators refuse anything else on the form, and a CHECK constraint in the database).
    A saved hub keeps its code: it names the hub's matching queue (``match.<code>``, which the
    workers subscribed to at start) and is the key ``load_reference`` matches its row by, so a
    renamed hub would go unmatched and come back as a second hub at the next load."""

    list_display = ("code", "name", "name_zh", "is_west", "matching_policy")
    list_filter = ("is_west", "matching_policy")
    search_fields = ("code", "name", "name_zh")
    inlines = (ClusterInline,)

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), *(["code"] if obj else [])]


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


class SiteAdminForm(SiteMoveCheckedForm):
    """The operator's site form: a site that reservations are at or come from keeps its hub,
    city and metro area (``site_move_check``), as in the provider console."""

    class Meta:
        model = Site
        fields = ("code", "name", "city", "metro_area", "hub", "cluster", "provider")


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    form = SiteAdminForm
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
        "pairs_chosen",
        "reservations_made",
        "write_refusals",
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
    actions = ("resolve_disputes", "reject_disputes", "resolve_with_refund")

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

    @admin.action(description="Resolve one dispute with a refund…")
    def resolve_with_refund(
        self, request: HttpRequest, queryset: QuerySet[Dispute]
    ) -> TemplateResponse | None:
        """An intermediate page asks the amount (CNY) and a note, then calls
        ``dispute_decide(outcome="resolved", refund=…)``: the refund goes back in the original
        voucher:cash proportion in the same transaction (``reservation_refund``). A refusal
        (not settled, more than was paid, dispute no longer open) is shown on the form and
        changes nothing."""
        if queryset.count() != 1:
            self.message_user(
                request, "Choose exactly one dispute to refund.", level=messages.ERROR
            )
            return None
        dispute = queryset.get()
        form = DisputeRefundForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                dispute_decide(
                    dispute_id=dispute.pk,
                    outcome=Dispute.Status.RESOLVED,
                    operator=request.user if request.user.is_authenticated else None,  # type: ignore[arg-type]
                    resolution=form.cleaned_data["note"]
                    or f"resolved with a refund by operator {request.user}",
                    refund=form.cleaned_data["amount"],
                )
            except DomainError as exc:
                form.add_error("amount" if exc.field == "amount" else None, exc.message)
            else:
                self.message_user(
                    request,
                    f"Dispute {dispute.pk}: resolved with a refund of "
                    f"¥{form.cleaned_data['amount']}.",
                    level=messages.SUCCESS,
                )
                return None
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Resolve with a refund",
            "dispute": dispute,
            "reservation": dispute.reservation,
            "form": form,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/marketplace/dispute/refund.html", context)

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Actions need change permission; every field stays read-only.
        return super(ReadOnlyAdminMixin, self).has_change_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: object = None) -> list[str]:
        return [f.name for f in Dispute._meta.fields]


class DisputeRefundForm(forms.Form):
    """The refund of a dispute resolved in the operator's favour of the buyer: ``amount`` CNY,
    at most 2 decimal places, more than zero (the service checks it against what was paid)."""

    amount = forms.DecimalField(
        label="Refund (CNY)", min_value=Decimal("0.01"), max_digits=14, decimal_places=2
    )
    note = forms.CharField(label="Resolution note", max_length=200, required=False)


# --- Inter-hub trade matrix (appended by issue 4) ------------------------------------------


class InterHubTradeMatrixAdmin(InterHubTradeAdmin):
    """The trade changelist plus ``matrix/``: exporting hub (rows) × importing hub (columns),
    each cell trades · GPU-hours · value CNY, with row and column totals, counted as
    ``web.selectors.trade_matrix`` counts them. Staff with the view permission on inter-hub
    trades only (``PermissionDenied``, a 403, otherwise). Takes the API's filters as query
    parameters (``InterHubTradeFilter``: ``exporting_hub``, ``importing_hub``,
    ``booked_after``, ``booked_before``) from a GET form above the table; a bad value, an
    unknown parameter or one given twice shows the message on a 400 page without the table;
    an empty field filters nothing (the form sends every field)."""

    change_list_template = "admin/marketplace/interhubtrade/change_list.html"

    def get_urls(self):  # type: ignore[no-untyped-def]
        from django.urls import path

        matrix = path(
            "matrix/",
            self.admin_site.admin_view(self.matrix_view),
            name="marketplace_interhubtrade_matrix",
        )
        return [matrix, *super().get_urls()]

    def matrix_view(self, request: HttpRequest) -> TemplateResponse:
        from django.core.exceptions import PermissionDenied

        from web.selectors import trade_matrix

        from .api.filters import InterHubTradeFilter, query_problems

        if not self.has_view_permission(request):
            raise PermissionDenied
        filterset = InterHubTradeFilter(request.GET, queryset=InterHubTrade.objects.all())
        # the API's checks, but for empty values: the page's form sends every field
        errors = [
            (name, message)
            for name, messages_ in query_problems(request.GET, set(filterset.base_filters)).items()
            for message in messages_
        ]
        if not errors and not filterset.is_valid():
            errors += [
                (name, message)
                for name, messages_ in filterset.errors.items()
                for message in messages_
            ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Inter-hub trade matrix",
            "opts": self.model._meta,
            "filters": {name: request.GET.get(name, "") for name in filterset.base_filters},
            "errors": errors,
        }
        if errors:
            context["hubs"] = list(hub_list())
            return TemplateResponse(
                request, "admin/marketplace/interhubtrade/matrix.html", context, status=400
            )
        hubs, cells = trade_matrix(filterset.qs)
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
        context.update(hubs=hubs, rows=rows, column_totals=column_totals, total=total)
        return TemplateResponse(request, "admin/marketplace/interhubtrade/matrix.html", context)


admin.site.unregister(InterHubTrade)
admin.site.register(InterHubTrade, InterHubTradeMatrixAdmin)
