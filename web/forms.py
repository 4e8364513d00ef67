"""Forms of the web UI. Rules live in the services: a form only parses input, and a
``DomainError`` from a service becomes an error on the field it names (same message as the API).
"""

from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.utils.translation import gettext_lazy as _

from accounts.models import Organisation, User
from marketplace.errors import DomainError
from marketplace.models import Accelerator, Hub, Site
from vouchers.models import Programme, Voucher

DATETIME_INPUT = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]

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
    form.add_error(target, forms.ValidationError(exc.message, code=exc.code))


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
    home_site = forms.ModelChoiceField(
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

    accelerators = forms.ModelMultipleChoiceField(
        label=_("Acceptable accelerator models"),
        queryset=Accelerator.objects.order_by("code"),
        to_field_name="code",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None ticked: any model with the minimum memory below."),
    )
    min_memory_gb = forms.IntegerField(
        label=_("Minimum memory (GB)"), required=False, min_value=1, max_value=10_000
    )
    gpu_count = forms.IntegerField(label=_("GPUs"), min_value=1, initial=1)
    duration_hours = forms.IntegerField(label=_("Duration (hours)"), min_value=1, initial=1)
    earliest_start = forms.DateTimeField(
        label=_("Earliest start"), widget=DATETIME_INPUT, input_formats=DATETIME_FORMATS
    )
    latest_end = forms.DateTimeField(
        label=_("Latest end"), widget=DATETIME_INPUT, input_formats=DATETIME_FORMATS
    )
    max_price_per_gpu_hour = forms.DecimalField(
        label=_("Maximum price per GPU-hour (¥)"),
        min_value=Decimal("0.0001"),
        decimal_places=4,
        max_digits=12,
    )
    locality_limit = forms.ChoiceField(
        label=_("How far from your home site"), choices=TIER_CHOICES, initial="national"
    )
    single_site = forms.BooleanField(label=_("All GPUs at one site"), required=False, initial=True)
    voucher = forms.ModelChoiceField(
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
        data["accelerators"] = [a.code for a in data.get("accelerators") or []]
        return data


class DemandQuoteForm(DemandForm):
    """The demand form for a live quote: every field optional, so a half-filled form quotes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False


class OfferSearchForm(forms.Form):
    """Offer search filters; a bad value is a form error (the page answers 400), never ignored."""

    accelerator = forms.ModelChoiceField(
        label=_("Accelerator"),
        queryset=Accelerator.objects.order_by("code"),
        to_field_name="code",
        required=False,
        empty_label=_("any"),
    )
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
    start = forms.DateTimeField(
        label=_("Available from"),
        required=False,
        widget=DATETIME_INPUT,
        input_formats=DATETIME_FORMATS,
    )
    end = forms.DateTimeField(
        label=_("Available until"),
        required=False,
        widget=DATETIME_INPUT,
        input_formats=DATETIME_FORMATS,
    )
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

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and end <= start:
            self.add_error("end", _("Must be after “available from”."))
        return data


class VoucherApplicationForm(forms.Form):
    programme = forms.ModelChoiceField(
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
