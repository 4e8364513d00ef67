"""Query filters for list endpoints, validated strictly: an unknown parameter or a bad value is a
400 naming the parameter, never a silently unfiltered list (PRODUCT.md §6.1)."""

import copy
from collections.abc import Collection
from datetime import UTC, datetime, time
from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from django.http import QueryDict
from django.utils.dateparse import parse_date
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.selectors import request_organisation
from marketplace.api.fields import is_naive_iso, parse_iso
from marketplace.errors import ValidationFailed
from marketplace.models import (
    Demand,
    Hub,
    InterHubTrade,
    LocalityTier,
    Offer,
    Reservation,
    Site,
)
from marketplace.selectors import offers_within
from marketplace.services import MAX_GPUS, MAX_PRICE, accelerator_ids_resolve


class StrictFilterBackend(DjangoFilterBackend):
    """django-filter, plus: any query parameter other than the view's filters, ``page`` and
    ``page_size`` is refused with a 400 naming it, and so is a parameter given more than once
    or a filter given an empty value."""

    always_allowed = frozenset({"page", "page_size"})

    def filter_queryset(self, request: Request, queryset: QuerySet, view: APIView) -> QuerySet:
        allowed = set(self.always_allowed)
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None:
            allowed |= set(filterset_class.base_filters)
        # django-filter reads an empty value as "no filter"; a client that sends ``?status=``
        # meant something, so it is refused like any other bad value.
        problems = query_problems(
            request.query_params, allowed, blank=allowed - self.always_allowed
        )
        if problems:
            raise ValidationError(problems)
        return super().filter_queryset(request, queryset, view)


def query_problems(
    params: QueryDict,
    allowed: set[str],
    *,
    blank: Collection[str] = (),
) -> dict[str, list[str]]:
    """What is wrong with query ``params`` before any filter reads them, ``{name:
    [message]}``, the first kind found only: parameters not in ``allowed``; else parameters
    given more than once (django-filter would read the last value and silently drop the
    others); else empty values of the parameters in ``blank``. Shared by the API's
    ``StrictFilterBackend`` and the admin's matrix page."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        return {name: ["unknown query parameter"] for name in unknown}
    repeated = sorted(name for name, values in params.lists() if len(values) > 1)
    if repeated:
        return {name: ["give this parameter once"] for name in repeated}
    empty = sorted(
        name
        for name, values in params.lists()
        if name in blank and any(not value.strip() for value in values)
    )
    return {name: ["must not be empty"] for name in empty}


class _SharedFields(dict):  # type: ignore[type-arg]
    """A form's ``base_fields`` that its instances share instead of deep-copying (Django copies
    them so that a rendered form may change its own widgets; a filter form only validates, and
    form fields keep no state while cleaning)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "_SharedFields":
        return self


class StrictFilterSet(django_filters.FilterSet):
    """A FilterSet that costs less per request (offer search is the API's busiest call): its
    form class is built once per FilterSet class (django-filter builds a new class, with new
    fields, on every request), the form's fields are shared (``_SharedFields``), and its
    filters are copied shallowly (they are read-only after class creation; each copy only gets
    its ``parent``). None of the FilterSets here customises its form per instance."""

    _form_classes: dict[type, type[forms.Form]] = {}

    def __init__(
        self,
        data: Any = None,
        queryset: QuerySet | None = None,
        *,
        request: Any = None,
        prefix: str | None = None,
    ) -> None:
        # django-filter's ``BaseFilterSet.__init__`` (26.2), with copy.copy for deepcopy.
        if queryset is None:
            queryset = self._meta.model._default_manager.all()
        self.is_bound = data is not None
        self.data = data or QueryDict()
        self.queryset = queryset
        self.request = request
        self.form_prefix = prefix
        self.filters = {name: copy.copy(f) for name, f in self.base_filters.items()}
        for filter_ in self.filters.values():
            filter_.model = queryset.model
            filter_.parent = self
            if filter_.method is not None:  # rebind its FilterMethod to this copy
                filter_.method = filter_.method

    def get_form_class(self) -> type[forms.Form]:
        cls = type(self)
        cached = StrictFilterSet._form_classes.get(cls)
        if cached is not None:
            return cached
        fields = {name: f.field for name, f in self.filters.items()}
        form_class: type[forms.Form] = type(f"{cls.__name__}Form", (self._meta.form,), fields)
        form_class.base_fields = _SharedFields(form_class.base_fields)
        StrictFilterSet._form_classes[cls] = form_class
        return form_class


class IntegerFilter(django_filters.NumberFilter):
    field_class = forms.IntegerField


class HubCodeFilter(django_filters.ModelChoiceFilter):
    """A hub given by its code; an unknown code is a 400."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("queryset", Hub.objects.all())
        kwargs.setdefault("to_field_name", "code")
        super().__init__(**kwargs)


class SiteFilter(StrictFilterSet):
    """``hub`` (hub code), ``city`` (case-insensitive)."""

    hub = HubCodeFilter(field_name="hub")
    city = django_filters.CharFilter(field_name="city", lookup_expr="iexact", max_length=60)

    class Meta:
        model = Site
        fields: list[str] = []


class OfferFilter(StrictFilterSet):
    """Offer search (PRODUCT.md §6.1).

    ``accelerator``: catalogue codes or aliases, comma-separated (unknown = 400);
    ``hub``: hub code of the offer's site; ``tier``: within ``city``/``metro``/``region``/
    ``national`` of the caller's home site; ``max_price``: CNY per GPU-hour (≤ 4 places);
    ``min_gpus``; ``window_start``/``window_end``: UTC, the offer is available over the whole
    window; ``ordering``: ``price``, ``-price``, ``available_from``, ``-available_from``.
    """

    accelerator = django_filters.CharFilter(method="filter_accelerator", max_length=400)
    hub = HubCodeFilter(field_name="site__hub")
    tier = django_filters.ChoiceFilter(choices=LocalityTier.choices, method="filter_tier")
    max_price = django_filters.NumberFilter(
        field_name="price_per_gpu_hour",
        lookup_expr="lte",
        max_digits=12,
        decimal_places=4,
        min_value=0,
        max_value=MAX_PRICE,
    )
    min_gpus = IntegerFilter(
        field_name="gpu_count", lookup_expr="gte", min_value=1, max_value=MAX_GPUS
    )
    window_start = django_filters.IsoDateTimeFilter(field_name="available_from", lookup_expr="lte")
    window_end = django_filters.IsoDateTimeFilter(field_name="available_until", lookup_expr="gte")
    ordering = django_filters.OrderingFilter(
        fields=(("price_per_gpu_hour", "price"), ("available_from", "available_from"))
    )

    class Meta:
        model = Offer
        fields: list[str] = []

    def is_valid(self) -> bool:
        valid = super().is_valid()
        ordering = self.data.get("ordering")
        if ordering is not None and not all(part.strip() for part in ordering.split(",")):
            # django-filter skips empty items (``?ordering=,``): a client meant something
            self.form.add_error("ordering", "every comma-separated item must be a field")
            valid = False
        for name in ("window_start", "window_end"):
            raw = self.data.get(name)
            if raw and not str(raw).isascii():  # Django reads full-width digits as a date
                self.form.add_error(name, "enter an ISO 8601 date-time with an offset")
                valid = False
            elif name in self.form.cleaned_data and is_naive_iso(raw):
                self.form.add_error(name, "must include a time zone offset, e.g. Z")
                valid = False
        return valid and range_ordered(self.form, "window_start", "window_end")

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        data = self.form.cleaned_data
        # An offer with only one side of the window given must still cover that instant.
        if data.get("window_start") is not None and data.get("window_end") is None:
            queryset = queryset.filter(available_until__gt=data["window_start"])
        if data.get("window_end") is not None and data.get("window_start") is None:
            queryset = queryset.filter(available_from__lt=data["window_end"])
        return queryset

    def filter_accelerator(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        names = [part for part in (p.strip() for p in value.split(",")) if part]
        if not names:
            raise ValidationFailed(
                "give at least one accelerator code",
                code="unknown_accelerator",
                field="accelerator",
            )
        return queryset.filter(accelerator__in=accelerator_ids_resolve(names, field="accelerator"))

    def filter_tier(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        organisation = request_organisation(self.request) if self.request else None
        home = organisation.home_site if organisation is not None else None
        if home is None:
            raise ValidationFailed(
                "tier needs an organisation with a home site", code="no_home_site", field="tier"
            )
        return queryset.filter(offers_within(value, home.city, home.metro_area, home.hub_id))


class DemandFilter(StrictFilterSet):
    """``status`` of the demand."""

    status = django_filters.ChoiceFilter(choices=Demand.Status.choices)

    class Meta:
        model = Demand
        fields: list[str] = []


class ReservationFilter(StrictFilterSet):
    """``status``; ``role``: ``buyer`` (own purchases) or ``provider`` (own sales)."""

    status = django_filters.ChoiceFilter(choices=Reservation.Status.choices)
    role = django_filters.ChoiceFilter(
        choices=(("buyer", "Buyer"), ("provider", "Provider")), method="filter_role"
    )

    class Meta:
        model = Reservation
        fields: list[str] = []

    def filter_role(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        organisation = request_organisation(self.request) if self.request else None
        return queryset.filter(**{value: organisation})


# --- Inter-hub trade matrix -----------------------------------------------------------------


def range_ordered(form: forms.Form, lower: str, upper: str) -> bool:
    """Whether the cleaned ``upper`` bound of ``form`` comes after its ``lower`` one (either
    may be absent); otherwise the error is added on ``upper`` (a 400 naming it)."""
    start, end = form.cleaned_data.get(lower), form.cleaned_data.get(upper)
    if start is not None and end is not None and end <= start:
        form.add_error(upper, f"must be after {lower}")
        return False
    return True


class UtcInstantField(forms.Field):
    """An ISO 8601 date-time with an offset (``2026-12-01T08:00:00Z``, ``…+08:00``) or a date
    (``2026-12-01``: 00:00 UTC that day), cleaned to an aware UTC ``datetime``. A date-time
    without an offset is refused (code ``naive_datetime``), as everywhere in the API."""

    default_error_messages = {
        "invalid": "enter an ISO 8601 date (2026-12-01) or date-time with an offset "
        "(2026-12-01T08:00:00Z)",
        "naive_datetime": "must include a time zone offset, e.g. Z",
    }

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        raw = str(value).strip()
        if not raw.isascii():  # Django's parsers read full-width and other Unicode digits
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        try:
            day = parse_date(raw)
            if day is not None:
                return datetime.combine(day, time.min, tzinfo=UTC)
        except ValueError:  # a date-shaped string naming no day (2026-02-30)
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None
        instant = parse_iso(raw)
        if instant is None:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        if instant.tzinfo is None:
            raise forms.ValidationError(
                self.error_messages["naive_datetime"], code="naive_datetime"
            )
        try:
            return instant.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 lies before year 1 in UTC
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None


class UtcInstantFilter(django_filters.Filter):
    field_class = UtcInstantField


class InterHubTradeFilter(StrictFilterSet):
    """Which inter-hub trades the matrix counts: ``exporting_hub`` and ``importing_hub`` (hub
    codes; an unknown code is a 400), ``booked_after`` (inclusive) and ``booked_before``
    (exclusive): when the trade was booked (its reservation made), UTC, an ISO 8601 date-time
    with an offset or a date (00:00 UTC). ``booked_before`` must be after ``booked_after``."""

    exporting_hub = HubCodeFilter(field_name="exporting_hub", help_text="hub code")
    importing_hub = HubCodeFilter(field_name="importing_hub", help_text="hub code")
    booked_after = UtcInstantFilter(
        field_name="created_at",
        lookup_expr="gte",
        help_text="booked at or after (UTC): ISO 8601 date-time with an offset, or a date",
    )
    booked_before = UtcInstantFilter(
        field_name="created_at",
        lookup_expr="lt",
        help_text="booked before (UTC): ISO 8601 date-time with an offset, or a date",
    )

    class Meta:
        model = InterHubTrade
        fields: list[str] = []

    def is_valid(self) -> bool:
        valid = super().is_valid()
        return valid and range_ordered(self.form, "booked_after", "booked_before")


class MatrixFilterBackend(StrictFilterBackend):
    """``StrictFilterBackend`` for a response that is one object, not a page: ``page`` and
    ``page_size`` are unknown parameters there too."""

    always_allowed = frozenset()
