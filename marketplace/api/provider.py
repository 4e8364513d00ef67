"""The provider's side of the API, under ``/api/v1/provider/``: its own sites, usage reports,
payouts and reimbursement claims (read-only lists scoped to the caller's organisation).

Offers (create, update, pause, activate, withdraw) and reservations on the provider's capacity
(``?role=provider``, usage reports through ``POST /reservations/{id}/usage/``) live with the
market views. A caller whose organisation is not a provider gets 403 ``not_a_provider``.
"""

import django_filters
from django.db.models import QuerySet
from rest_framework import exceptions, generics, serializers
from rest_framework.request import Request

from ledger.models import Entry
from marketplace import selectors
from marketplace.models import ReservationEvent, Site
from vouchers.models import ReimbursementClaim

from .base import OrgMixin
from .filters import StrictFilterBackend, StrictFilterSet
from .serializers import SiteSerializer, amount_field


class ProviderOnlyMixin(OrgMixin):
    """Refuse callers whose organisation does not sell capacity (403 ``not_a_provider``)."""

    def initial(self, request: Request, *args: object, **kwargs: object) -> None:
        super().initial(request, *args, **kwargs)
        if not self.org.is_provider:
            raise exceptions.PermissionDenied(
                "only providers have this view", code="not_a_provider"
            )


class ProviderListApi(ProviderOnlyMixin, generics.ListAPIView):
    filter_backends = [StrictFilterBackend]


class ProviderSiteListApi(ProviderListApi):
    """The caller's own data centres (reference sites are in ``/sites/``)."""

    serializer_class = SiteSerializer
    queryset = Site.objects.none()  # schema introspection only

    def get_queryset(self) -> QuerySet:
        return selectors.provider_site_list(provider=self.org)


class UsageReportSerializer(serializers.ModelSerializer):
    """The completion of one reservation the provider sells: ``delivered_gpu_hours`` of its
    ``gpu_hours`` were delivered over ``[start, end)`` (UTC). ``reported_by_provider`` is true
    when the provider reported usage (``POST /reservations/{id}/usage/``), false when the
    reservation ran to its end and counted as fully delivered."""

    reservation = serializers.UUIDField(source="reservation_id", read_only=True)
    offer = serializers.UUIDField(source="reservation.offer_id", read_only=True)
    start = serializers.DateTimeField(source="reservation.start", read_only=True)
    end = serializers.DateTimeField(source="reservation.end", read_only=True)
    gpu_count = serializers.IntegerField(source="reservation.gpu_count", read_only=True)
    gpu_hours = serializers.IntegerField(source="reservation.gpu_hours", read_only=True)
    delivered_gpu_hours = serializers.IntegerField(
        source="reservation.delivered_gpu_hours", read_only=True, allow_null=True
    )
    reported_by_provider = serializers.SerializerMethodField()
    reported_at = serializers.DateTimeField(source="at", read_only=True)

    class Meta:
        model = ReservationEvent
        fields = [
            "reservation",
            "offer",
            "start",
            "end",
            "gpu_count",
            "gpu_hours",
            "delivered_gpu_hours",
            "reported_by_provider",
            "reported_at",
        ]

    def get_reported_by_provider(self, event: ReservationEvent) -> bool:
        return event.actor_id is not None


class UsageReportListApi(ProviderListApi):
    """Usage reports on the caller's reservations, newest first."""

    serializer_class = UsageReportSerializer
    queryset = ReservationEvent.objects.none()  # schema introspection only

    def get_queryset(self) -> QuerySet:
        return selectors.provider_usage_report_list(provider=self.org)


class PayoutSerializer(serializers.Serializer):
    """A payout of ``amount`` CNY from the provider's payable balance to its bank account."""

    transaction = serializers.UUIDField(source="transaction_id")
    amount = amount_field(help_text="CNY paid out (positive).")
    memo = serializers.CharField(source="transaction.memo")
    created_at = serializers.DateTimeField(source="transaction.created_at")

    def to_representation(self, instance: object) -> dict:
        data = super().to_representation(instance)
        data["amount"] = f"{-instance.amount:.2f}"  # type: ignore[attr-defined]
        return data


class PayoutListApi(ProviderListApi):
    """Payouts to the caller, newest first."""

    serializer_class = PayoutSerializer
    queryset = Entry.objects.none()  # schema introspection only

    def get_queryset(self) -> QuerySet:
        return selectors.provider_payout_list(provider=self.org)


class ClaimFilter(StrictFilterSet):
    """``status`` of the claim (``open`` or ``paid``)."""

    status = django_filters.ChoiceFilter(choices=ReimbursementClaim.Status.choices)

    class Meta:
        model = ReimbursementClaim
        fields: list[str] = []


class ReimbursementClaimSerializer(serializers.ModelSerializer):
    """A claim on ``programme`` (code) for the voucher part (``amount`` CNY) of one settled
    reservation; ``paid_at`` (UTC) once the programme paid it."""

    programme = serializers.SlugRelatedField(slug_field="code", read_only=True)  # type: ignore[var-annotated]
    reservation = serializers.UUIDField(source="reservation_id", read_only=True)
    amount = amount_field(read_only=True)

    class Meta:
        model = ReimbursementClaim
        fields = ["id", "programme", "reservation", "amount", "status", "created_at", "paid_at"]


class ReimbursementClaimListApi(ProviderListApi):
    """The caller's reimbursement claims, newest first. Filter: ``status``."""

    serializer_class = ReimbursementClaimSerializer
    filterset_class = ClaimFilter
    queryset = ReimbursementClaim.objects.none()  # schema introspection only

    def get_queryset(self) -> QuerySet:
        return selectors.provider_claim_list(provider=self.org)
