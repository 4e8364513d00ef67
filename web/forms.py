"""Forms of the web UI. Rules live in the services: a form only parses input, and a
``DomainError`` from a service becomes an error on the field it names (same message as the API).
"""

from datetime import datetime
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers
from rest_framework.exceptions import ValidationError as DrfValidationError

from accounts.models import Organisation, User
from marketplace.api.serializers import price_field
from marketplace.errors import DomainError
from marketplace.models import Accelerator, Hub, Site
from marketplace.selectors import as_uuid
from marketplace.services import MAX_GPUS, MAX_HOURS, accelerators_resolve
from vouchers.models import Programme, Voucher

from .errors import domain_message

DATETIME_INPUT = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]

SPLIT_CHOICES = [
    ("none", _("no: all GPUs on one offer")),
    ("site", _("yes, across offers at one site")),
    ("hub", _("yes, across sites of one hub")),
]

TIER_CHOICES = [
    ("city", _("same city")),
    ("metro", _("same metropolitan area")),
    ("region", _("same hub region")),
    ("national", _("any hub")),
]


def add_domain_error(
    form: forms.BaseForm, exc: DomainError, aliases: dict[str, str] | None = None
) -> None:
    """Attach a service's refusal to the field it names (or to the form), with its code."""
    field = (aliases or {}).get(exc.field or "", exc.field)
    target = field if field in form.fields else None
    form.add_error(target, forms.ValidationError(domain_message(exc), code=exc.code))


# --- Fields that defer to the API's parsing and the services' rules --------------------------


class ApiField(forms.Field):
    """A form field parsed by the API's own serializer field, so a bad value gets the API's
    message (and DRF's translation of it), e.g. "A valid number is required." for ``NaN``."""

    def __init__(self, api_field: serializers.Field, **kwargs: Any) -> None:
        self.api_field = api_field
        kwargs.setdefault("widget", forms.TextInput(attrs={"inputmode": "decimal"}))
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> Any:
        if value in self.empty_values:
            return None
        try:
            return self.api_field.run_validation(value.strip() if isinstance(value, str) else value)
        except DrfValidationError as exc:
            detail = exc.detail if isinstance(exc.detail, list) else [exc.detail]
            raise forms.ValidationError([str(d) for d in detail]) from exc


class AcceleratorsField(forms.MultipleChoiceField):
    """Accelerator names resolved by ``marketplace.services.accelerators_resolve`` (codes or
    aliases): an unknown name gets the service's message, as through the API. Cleans to the
    catalogue codes."""

    widget = forms.CheckboxSelectMultiple

    def valid_value(self, value: str) -> bool:
        return True  # the service decides, below

    def clean(self, value: Any) -> list[str]:
        names = super().clean(value)
        try:
            return [a.code for a in accelerators_resolve(names)]
        except DomainError as exc:
            raise forms.ValidationError(domain_message(exc), code=exc.code) from exc


class AcceleratorField(forms.ChoiceField):
    """One accelerator name resolved like ``AcceleratorsField``; cleans to the ``Accelerator``."""

    def valid_value(self, value: str) -> bool:
        return True

    def clean(self, value: Any) -> Accelerator | None:
        name = super().clean(value)
        if not name:
            return None
        try:
            return accelerators_resolve([name], field="accelerator")[0]
        except DomainError as exc:
            raise forms.ValidationError(domain_message(exc), code=exc.code) from exc


def accelerator_choices() -> list[tuple[str, str]]:
    return [
        (code, code) for code in Accelerator.objects.order_by("code").values_list("code", flat=True)
    ]


class UUIDModelChoiceField(forms.ModelChoiceField):
    """A choice by UUID primary key: a malformed id is the ordinary "not one of the choices"
    error, not Django's raw "… is not a valid UUID"."""

    def to_python(self, value: Any) -> Any:
        if value not in self.empty_values and as_uuid(value) is None:
            raise forms.ValidationError(
                self.error_messages["invalid_choice"], code="invalid_choice"
            )
        return super().to_python(value)


FIRST_YEAR, LAST_YEAR = 2000, 2100


class BoundedDateTimeField(forms.DateTimeField):
    """A local date and time (Asia/Shanghai on the UI's pages) between the years 2000 and 2100:
    a far-off date is a form error, never an overflow deeper down (SQLite, time zone maths)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", DATETIME_INPUT)
        kwargs.setdefault("input_formats", DATETIME_FORMATS)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> datetime | None:
        if isinstance(value, str) and not value.isascii():
            # Django's parsers read full-width and Arabic-Indic digits; the API refuses them
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        try:
            result = super().to_python(value)
        except OverflowError as exc:
            raise self._out_of_range() from exc
        if result is not None and not FIRST_YEAR <= result.year < LAST_YEAR:
            raise self._out_of_range()
        return result

    def _out_of_range(self) -> forms.ValidationError:
        return forms.ValidationError(
            _("Enter a date between %(first)s and %(last)s."),
            code="out_of_range",
            params={"first": FIRST_YEAR, "last": LAST_YEAR},
        )


class SignupForm(UserCreationForm):
    """A person and the organisation they register (status pending until an operator approves)."""

    email = forms.EmailField(label=_("E-mail"), help_text=_("For password reset."))
    organisation_name = forms.CharField(label=_("Organisation name"), max_length=200)
    credit_code = forms.CharField(
        label=_("Unified social credit code"),
        max_length=18,
        min_length=18,
        help_text=_("18 characters (GB 32100-2015); the check character is verified."),
    )
    kind = forms.ChoiceField(
        label=_("Organisation kind"),
        choices=[
            (Organisation.Kind.SME, _("SME (buyer)")),
            (Organisation.Kind.PROVIDER, _("provider")),
            (Organisation.Kind.BOTH, _("provider and buyer")),
        ],
        initial=Organisation.Kind.SME,
    )
    home_site = UUIDModelChoiceField(
        label=_("Home site"),
        queryset=Site.objects.filter(provider__isnull=True).select_related("hub"),
        help_text=_("Where you use compute from: locality is counted from here."),
    )

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["username"].label = _("User name")
        self.fields["password1"].label = _("Password")
        self.fields["password2"].label = _("Password again")
        self.fields["username"].help_text = ""
        self.fields["password1"].help_text = _("At least 8 characters, not a common password.")
        self.fields["password2"].help_text = ""


class DemandForm(forms.Form):
    """The fields of ``marketplace.services.demand_create``; times in Asia/Shanghai."""

    form_token = forms.UUIDField(widget=forms.HiddenInput, required=False)
    accelerators = AcceleratorsField(
        label=_("Acceptable accelerator models"),
        required=False,
        help_text=_("None ticked: any model with the minimum memory below."),
    )
    min_memory_gb = ApiField(
        serializers.IntegerField(min_value=1, max_value=10_000),
        label=_("Minimum memory (GB)"),
        required=False,
        widget=forms.NumberInput,
    )
    gpu_count = ApiField(
        serializers.IntegerField(min_value=1, max_value=MAX_GPUS),
        label=_("GPUs"),
        initial=1,
        widget=forms.NumberInput,
    )
    duration_hours = ApiField(
        serializers.IntegerField(min_value=1, max_value=MAX_HOURS),
        label=_("Duration (hours)"),
        initial=1,
        widget=forms.NumberInput,
    )
    earliest_start = BoundedDateTimeField(label=_("Earliest start"))
    latest_end = BoundedDateTimeField(label=_("Latest end"))
    # The API's price field (0 ≤ price ≤ 100000, ≤ 4 places), then the service's rules.
    max_price_per_gpu_hour = ApiField(price_field(), label=_("Maximum price per GPU-hour (¥)"))
    locality_limit = forms.ChoiceField(
        label=_("How far from your home site"), choices=TIER_CHOICES, initial="national"
    )
    split = forms.ChoiceField(
        label=_("Split across offers"),
        choices=SPLIT_CHOICES,
        initial="none",
        required=False,
        help_text=_(
            "For data-parallel jobs. The demand is served only when all its GPUs are placed, "
            "every part over the same hours, one reservation per offer."
        ),
    )
    min_gpus_per_part = ApiField(
        serializers.IntegerField(min_value=1, max_value=MAX_GPUS),
        label=_("Fewest GPUs per part"),
        initial=1,
        required=False,
        widget=forms.NumberInput,
        help_text=_("For example 8 for whole 8-GPU nodes."),
    )
    voucher = UUIDModelChoiceField(
        label=_("Pay with voucher"),
        queryset=Voucher.objects.none(),
        required=False,
        empty_label=_("no voucher"),
    )
    auto_accept = forms.BooleanField(
        label=_("Accept a match automatically"), required=False, initial=True
    )

    def __init__(self, *args: Any, buyer: Organisation, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["accelerators"].choices = accelerator_choices  # type: ignore[attr-defined]
        self.fields["voucher"].queryset = (  # type: ignore[attr-defined]
            Voucher.objects.filter(owner=buyer, status=Voucher.Status.ACTIVE)
            .select_related("programme")
            .order_by("issued_at", "id")
        )
        self.fields["voucher"].label_from_instance = (  # type: ignore[attr-defined]
            lambda v: f"{v.programme.name} · {v.face_value:,.2f} ({str(v.pk)[:8]})"
        )

    def service_fields(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data.pop("form_token", None)
        data["accelerators"] = list(data.get("accelerators") or [])
        data["split"] = data.get("split") or "none"
        if data.get("min_gpus_per_part") is None:
            data["min_gpus_per_part"] = 1
        return data


class DemandQuoteForm(DemandForm):
    """The demand form for a live quote: every field optional, so a half-filled form quotes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False


class OfferSearchForm(forms.Form):
    """Offer search filters; a bad value is a form error (the page answers 400), never ignored."""

    accelerator = AcceleratorField(label=_("Accelerator"), required=False)
    hub = forms.ModelChoiceField(
        label=_("Hub"),
        queryset=Hub.objects.order_by("code"),
        to_field_name="code",
        required=False,
        empty_label=_("any"),
    )
    tier = forms.ChoiceField(
        label=_("Within"), choices=[("", _("any distance")), *TIER_CHOICES[:3]], required=False
    )
    max_price = forms.DecimalField(
        label=_("Maximum price per GPU-hour (¥)"),
        required=False,
        min_value=Decimal("0"),
        max_digits=12,
        decimal_places=4,
    )
    min_gpus = forms.IntegerField(label=_("At least GPUs"), required=False, min_value=1)
    start = BoundedDateTimeField(label=_("Available from"), required=False)
    end = BoundedDateTimeField(label=_("Available until"), required=False)
    sort = forms.ChoiceField(
        label=_("Sort by"),
        choices=[
            ("price", _("price, lowest first")),
            ("-price", _("price, highest first")),
            ("gpus", _("most GPUs first")),
            ("start", _("earliest availability first")),
        ],
        required=False,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["accelerator"].choices = lambda: [  # type: ignore[attr-defined]
            ("", _("any")),
            *accelerator_choices(),
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            self.add_error("end", _("Must be after “available from”."))
        return data


class VoucherApplicationForm(forms.Form):
    programme = UUIDModelChoiceField(
        label=_("Programme"), queryset=Programme.objects.order_by("code")
    )
    amount = forms.DecimalField(
        label=_("Amount (¥)"), min_value=Decimal("0.01"), max_digits=14, decimal_places=2
    )
    purpose = forms.CharField(label=_("Purpose"), max_length=300, required=False)


class DepositForm(forms.Form):
    amount = forms.DecimalField(
        label=_("Amount (¥)"), min_value=Decimal("0.01"), max_digits=14, decimal_places=2
    )
