"""Provider console: a second admin site at /console/ scoped to the provider's organisation (§6.3).

Who gets in: an active user whose organisation (``accounts.selectors.organisation_of``) is a
provider or both, and not suspended. Django's staff flag is *not* required, so the site's and
the model admins' permission checks are based on that membership instead of model permissions.

What they see: only their own sites, offers and reservations (``get_queryset`` filters by the
provider; another provider's object is "does not exist"). Offers are created and edited through
``marketplace.services.offer_create`` / ``offer_update`` and change status through
``offer_set_status``; a rule that refuses becomes a form error or an error message. Reservations
are read-only here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.models import Organisation
from accounts.selectors import organisation_of
from vouchers.models import ReimbursementClaim

from .admin_utils import SiteMoveCheckedForm, run_service_action
from .errors import DomainError
from .models import Offer, Reservation, Site
from .services import (
    OFFER_FIELDS,
    offer_create,
    offer_peak_reserved,
    offer_set_status,
    offer_update,
)

_UNSET = object()


def console_organisation(request: HttpRequest) -> Organisation | None:
    """The provider organisation the request's user acts for, or ``None`` (no console access).

    Cached on the request: the admin asks for permissions many times per page.
    """
    cached = getattr(request, "_console_organisation", _UNSET)
    if cached is not _UNSET:
        return cached  # type: ignore[return-value]
    user = getattr(request, "user", None)
    organisation = None
    if user is not None and user.is_authenticated and user.is_active:
        organisation = _provider_of(user)
    request._console_organisation = organisation  # type: ignore[attr-defined]
    return organisation


def _provider_of(user: Any) -> Organisation | None:
    organisation = organisation_of(user)
    if organisation is None or not organisation.is_provider:
        return None
    if organisation.status == Organisation.Status.SUSPENDED:
        return None
    return organisation


class ConsoleAuthenticationForm(AuthenticationForm):
    """Log-in for providers: any active member of a provider organisation, staff or not."""

    def confirm_login_allowed(self, user: Any) -> None:
        super().confirm_login_allowed(user)
        if _provider_of(user) is None:
            raise ValidationError(
                _("This account does not act for an active provider organisation."),
                code="not_a_provider",
            )


class ProviderConsoleSite(AdminSite):
    site_header = _("Suanli Exchange — provider console")
    site_title = _("Provider console")
    index_title = _("Your capacity")
    login_form = ConsoleAuthenticationForm

    def has_permission(self, request: HttpRequest) -> bool:
        """Any active user of a provider organisation; the staff flag is not needed."""
        return console_organisation(request) is not None

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        organisation = console_organisation(request)
        if organisation is not None:
            context["site_header"] = f"{self.site_header}: {organisation.name}"
        return context


console_site = ProviderConsoleSite(name="console")


class ProviderScopedAdmin(admin.ModelAdmin):
    """A console model admin: rows of the user's provider organisation only.

    Permissions come from organisation membership, not Django model permissions: view and
    change for the provider's own objects, add when the user acts for a provider, never delete
    (sites and offers are protected by reservations; an offer is withdrawn instead).
    """

    provider_field = "provider"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        organisation = console_organisation(request)
        queryset = super().get_queryset(request)
        if organisation is None:
            return queryset.none()
        return queryset.filter(**{self.provider_field: organisation})

    def _owns(self, request: HttpRequest, obj: Model | None) -> bool:
        organisation = console_organisation(request)
        if organisation is None:
            return False
        return obj is None or getattr(obj, f"{self.provider_field}_id") == organisation.pk

    def has_module_permission(self, request: HttpRequest) -> bool:
        return console_organisation(request) is not None

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self._owns(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self._owns(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return console_organisation(request) is not None

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


# --- Sites -----------------------------------------------------------------------------------


class ConsoleSiteForm(SiteMoveCheckedForm):
    class Meta:
        model = Site
        fields = ("code", "name", "city", "metro_area", "hub", "cluster")

    def clean(self) -> dict[str, Any]:
        super().clean()  # also switches on the unique check of ``code``
        data = self.cleaned_data
        hub, cluster = data.get("hub"), data.get("cluster")
        if hub is not None and cluster is not None and cluster.hub_id != hub.pk:
            self.add_error("cluster", _("This cluster belongs to another hub."))
        return data


@admin.register(Site, site=console_site)
class ConsoleSiteAdmin(ProviderScopedAdmin):
    """The provider's own data centres. There is no site service: the provider is set here,
    from the logged-in user's organisation, never from the form."""

    form = ConsoleSiteForm
    list_display = ("code", "name", "city", "metro_area", "hub", "cluster")
    list_filter = ("hub",)
    search_fields = ("code", "name", "city")
    list_select_related = ("hub", "cluster")

    def save_model(self, request: HttpRequest, obj: Site, form: Any, change: bool) -> None:
        obj.provider = console_organisation(request)
        super().save_model(request, obj, form, change)


# --- Offers ----------------------------------------------------------------------------------


class ConsoleOfferForm(forms.ModelForm):
    """Offer form whose save *is* the service call, so a refused rule is a form error.

    ``offer_create``/``offer_update`` run once the form's own validation passed (the admin's
    change view wraps the request in a transaction, and the service in a savepoint, so a
    refusal leaves nothing behind). ``provider`` is set by ``ConsoleOfferAdmin.get_form``.
    """

    provider: Organisation | None = None

    class Meta:
        model = Offer
        fields = OFFER_FIELDS

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]
        if self.errors or self.provider is None:
            return
        values = {
            name: self.cleaned_data[name] for name in OFFER_FIELDS if name in self.cleaned_data
        }
        try:
            if self.instance._state.adding:
                self.instance = offer_create(provider=self.provider, **values)
            else:
                self.instance = offer_update(
                    offer_id=self.instance.pk, provider=self.provider, **values
                )
        except DomainError as exc:
            from web.errors import domain_message

            self.add_error(exc.field if exc.field in self.fields else None, domain_message(exc))


@admin.register(Offer, site=console_site)
class ConsoleOfferAdmin(ProviderScopedAdmin):
    """The provider's offers with capacity against the peak already reserved."""

    form = ConsoleOfferForm
    list_display = (
        "label",
        "site",
        "accelerator",
        "gpu_count",
        "peak_reserved",
        "price_per_gpu_hour",
        "available_from",
        "available_until",
        "status",
    )
    list_filter = ("status", "accelerator", ("site", admin.RelatedOnlyFieldListFilter))
    search_fields = ("site__code", "site__city", "accelerator__code")
    list_select_related = ("site", "accelerator")
    readonly_fields = ("status", "peak_reserved", "created_at", "updated_at")
    actions = ("activate_offers", "pause_offers", "withdraw_offers")
    save_as = False

    def get_form(
        self, request: HttpRequest, obj: Offer | None = None, change: bool = False, **kwargs: Any
    ) -> type[forms.ModelForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"provider": console_organisation(request)})

    def get_fields(self, request: HttpRequest, obj: Offer | None = None) -> tuple[str, ...]:
        return OFFER_FIELDS if obj is None else (*OFFER_FIELDS, "status", "peak_reserved")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "site":
            organisation = console_organisation(request)
            kwargs["queryset"] = Site.objects.filter(
                Q(provider=organisation) | Q(provider__isnull=True)
            ).select_related("hub")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: Offer, form: Any, change: bool) -> None:
        """Nothing to do: the form's validation already saved through the service."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # ``Offer.__str__`` names the model and the site (autocomplete, filters, messages).
        return super().get_queryset(request).select_related("site", "accelerator")

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        """The change list with each listed offer's peak reserved GPUs computed for the whole
        page in one query (``web.selectors.offers_peak_reserved``), not one per row."""
        from web.selectors import offers_peak_reserved

        changelist = super().get_changelist_instance(request)
        offers = list(changelist.result_list)
        peaks = offers_peak_reserved([o.pk for o in offers])
        for offer in offers:
            offer._peak_reserved = peaks[offer.pk]  # type: ignore[attr-defined]
        return changelist

    @admin.display(description=_("offer"))
    def label(self, obj: Offer) -> str:
        return f"{obj.gpu_count} x {obj.accelerator.code} @ {obj.site.code}"

    @admin.display(description=_("peak reserved / capacity (GPUs)"))
    def peak_reserved(self, obj: Offer) -> str:
        if obj.pk is None:
            return "—"
        peak = getattr(obj, "_peak_reserved", None)
        if peak is None:  # the change form: one offer
            peak = offer_peak_reserved(obj)
        return f"{peak} / {obj.gpu_count}"

    def _set_status(
        self, request: HttpRequest, queryset: QuerySet[Offer], status: str, verb: Any
    ) -> None:
        organisation = console_organisation(request)
        assert organisation is not None  # the site lets no one else in
        run_service_action(
            self,
            request,
            queryset,
            lambda offer: offer_set_status(offer_id=offer.pk, provider=organisation, status=status),
            str(verb),
        )

    @admin.action(description=_("Activate selected offers"))
    def activate_offers(self, request: HttpRequest, queryset: QuerySet[Offer]) -> None:
        self._set_status(request, queryset, Offer.Status.ACTIVE, _("activated"))

    @admin.action(description=_("Pause selected offers"))
    def pause_offers(self, request: HttpRequest, queryset: QuerySet[Offer]) -> None:
        self._set_status(request, queryset, Offer.Status.PAUSED, _("paused"))

    @admin.action(description=_("Withdraw selected offers"))
    def withdraw_offers(self, request: HttpRequest, queryset: QuerySet[Offer]) -> None:
        self._set_status(request, queryset, Offer.Status.WITHDRAWN, _("withdrawn"))


# --- Reservations ----------------------------------------------------------------------------


@admin.register(Reservation, site=console_site)
class ConsoleReservationAdmin(ProviderScopedAdmin):
    """Reservations on the provider's capacity: read-only (lifecycle services and the API)."""

    list_display = (
        "__str__",
        "buyer",
        "offer_summary",
        "start",
        "end",
        "gpu_count",
        "bill",
        "voucher_part",
        "cash_part",
        "status",
        "delivered_gpu_hours",
    )
    list_filter = ("status", "offer__accelerator")
    search_fields = ("id", "buyer__name")
    list_select_related = ("buyer", "offer__site", "offer__accelerator")
    date_hierarchy = "start"
    actions = None

    @admin.display(description=_("offer"))
    def offer_summary(self, obj: Reservation) -> str:
        return f"{obj.offer.accelerator.code} @ {obj.offer.site.code}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


# --- Reimbursement claims, usage, payouts, utilisation (read-only) ----------------------------


@admin.register(ReimbursementClaim, site=console_site)
class ConsoleClaimAdmin(ProviderScopedAdmin):
    """The provider's reimbursement claims on programmes (voucher parts of settled
    reservations): read-only; operators issue statements and mark them paid."""

    list_display = ("created_at", "programme", "reservation", "amount", "status", "paid_at")
    list_filter = ("status", "programme")
    list_select_related = ("programme", "reservation")
    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def _console_page(template: str, build: Any) -> Any:
    """A read-only console page: the provider's rows from ``build(organisation, request)``."""

    def view(request: HttpRequest) -> TemplateResponse:
        organisation = console_organisation(request)
        assert organisation is not None  # admin_view lets no one else in
        context = {**console_site.each_context(request), **build(organisation, request)}
        return TemplateResponse(request, template, context)

    return console_site.admin_view(view)


def _usage(organisation: Organisation, request: HttpRequest) -> dict[str, Any]:
    from web.selectors import provider_usage

    return {"title": _("Usage reports"), "rows": provider_usage(provider=organisation)[:500]}


def _payouts(organisation: Organisation, request: HttpRequest) -> dict[str, Any]:
    from ledger.selectors import organisation_balances
    from web.selectors import provider_payouts

    balances = organisation_balances(organisation=organisation)
    return {
        "title": _("Payouts"),
        "rows": provider_payouts(provider=organisation)[:500],
        "payable": balances["payable"],
        "claims": balances["claims"],
    }


def _utilisation(organisation: Organisation, request: HttpRequest) -> dict[str, Any]:
    from zoneinfo import ZoneInfo

    from django.utils import timezone

    from web.charts import bar_chart
    from web.selectors import provider_utilisation

    days = 14
    today = timezone.localtime(timezone.now(), ZoneInfo("Asia/Shanghai")).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    rows = provider_utilisation(provider=organisation, day_from=today, days=days)
    charts = [
        (
            u,
            bar_chart(
                f"{u.offer.accelerator.code} @ {u.offer.site.code}",
                u.days,
                [
                    (gettext("reserved GPU-hours"), "s0", u.reserved_gpu_hours),
                    (
                        gettext("free GPU-hours"),
                        "s2",
                        [Decimal(u.capacity_gpu_hours) - v for v in u.reserved_gpu_hours],
                    ),
                ],
                unit=gettext("GPU-hours"),
            ),
        )
        for u in rows
    ]
    return {"title": _("Utilisation per offer"), "charts": charts, "days": days}


def _console_urls(original: Any) -> Any:
    def get_urls() -> list[Any]:
        from django.urls import path

        return [
            path("usage/", _console_page("console/usage.html", _usage), name="usage"),
            path("payouts/", _console_page("console/payouts.html", _payouts), name="payouts"),
            path(
                "utilisation/",
                _console_page("console/utilisation.html", _utilisation),
                name="utilisation",
            ),
            *original(),
        ]

    return get_urls


console_site.get_urls = _console_urls(console_site.get_urls)  # type: ignore[method-assign]
console_site.index_template = "console/index.html"
