"""Vouchers API: programmes (public), the caller's vouchers and voucher applications, and
reimbursement statements (providers: their own; operators: all, and mark paid)."""

import re
from datetime import date
from typing import Any

import django_filters
from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, generics, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organisation
from marketplace.api.base import (
    ERRORS,
    ID_PATH,
    IDEMPOTENCY_HEADER,
    OrgMixin,
    idempotent,
    operator_may,
    operator_permissions,
)
from marketplace.api.filters import StrictFilterBackend
from marketplace.errors import NotFound, PermissionDenied, ValidationFailed
from vouchers import selectors
from vouchers.models import Programme, Statement, Voucher, VoucherApplication
from vouchers.services import statement_mark_paid, voucher_application_submit

from .serializers import (
    ProgrammeSerializer,
    StatementDetailSerializer,
    StatementSerializer,
    VoucherApplicationInputSerializer,
    VoucherApplicationSerializer,
    VoucherSerializer,
)


class ProgrammeListApi(OrgMixin, generics.ListAPIView):
    """Voucher programmes (any authenticated caller)."""

    organisation_required = False
    serializer_class = ProgrammeSerializer
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return selectors.programme_list()


@extend_schema(parameters=[ID_PATH])
class ProgrammeDetailApi(OrgMixin, APIView):
    """One voucher programme."""

    organisation_required = False

    @extend_schema(responses={200: ProgrammeSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        programme = selectors.programme_get(programme_id=id)
        if programme is None:
            raise NotFound("no such programme", field="programme")
        return Response(ProgrammeSerializer(programme).data)


class VoucherListApi(OrgMixin, generics.ListAPIView):
    """The caller's vouchers with their current balance (CNY) and expiry (UTC)."""

    serializer_class = VoucherSerializer
    queryset = Voucher.objects.none()  # schema introspection only; see get_queryset
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return selectors.voucher_list(owner=self.org)


@extend_schema(parameters=[ID_PATH])
class VoucherDetailApi(OrgMixin, APIView):
    """One of the caller's vouchers (404 for another organisation's)."""

    @extend_schema(responses={200: VoucherSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        voucher = selectors.voucher_get(owner=self.org, voucher_id=id)
        if voucher is None:
            raise NotFound("no such voucher", field="voucher")
        return Response(VoucherSerializer(voucher).data)


class VoucherApplicationListCreateApi(OrgMixin, generics.ListAPIView):
    """``GET``: the caller's applications, newest first. ``POST``: apply for a voucher of
    ``amount`` CNY; 400 naming ``amount`` below the programme's minimum, 403 ``not_a_buyer``
    for a provider-only organisation."""

    serializer_class = VoucherApplicationSerializer
    queryset = VoucherApplication.objects.none()  # schema introspection only
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return selectors.voucher_application_list(buyer=self.org)

    @extend_schema(
        request=VoucherApplicationInputSerializer,
        responses={201: VoucherApplicationSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        serializer = VoucherApplicationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        application = voucher_application_submit(buyer=self.org, **serializer.validated_data)
        return Response(
            VoucherApplicationSerializer(application).data, status=status.HTTP_201_CREATED
        )


@extend_schema(parameters=[ID_PATH])
class VoucherApplicationDetailApi(OrgMixin, APIView):
    """One of the caller's voucher applications."""

    @extend_schema(responses={200: VoucherApplicationSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        application = selectors.voucher_application_get(buyer=self.org, application_id=id)
        if application is None:
            raise NotFound("no such voucher application", field="voucher_application")
        return Response(VoucherApplicationSerializer(application).data)


# --- Reimbursement statements (issue 3) -----------------------------------------------------

# Years 0001-9999: ``datetime.date`` has no year 0.
# ASCII digits only (``\d`` also matches Arabic-Indic and full-width digits), the whole value
# (``fullmatch``: no trailing newline), and no year 0.
PERIOD = re.compile(r"(?!0000)([0-9]{4})-(0[1-9]|1[0-2])")


class StatementFilter(django_filters.FilterSet):
    """``programme`` (code; unknown = 400), ``status`` (``issued`` or ``paid``), ``period``
    (``YYYY-MM``: the statements whose period holds that month — a quarterly statement matches
    each of its three months)."""

    programme = django_filters.ModelChoiceFilter(
        queryset=Programme.objects.all(), to_field_name="code"
    )
    status = django_filters.ChoiceFilter(choices=Statement.Status.choices)
    period = django_filters.CharFilter(method="filter_period", max_length=7)

    class Meta:
        model = Statement
        fields: list[str] = []

    def filter_period(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        match = PERIOD.fullmatch(value)
        if match is None:
            raise ValidationFailed("a month as YYYY-MM", field="period")
        month = date(int(match[1]), int(match[2]), 1)
        return queryset.filter(period_start__lte=month, period_end__gt=month)


class StatementAccessMixin(OrgMixin):
    """Statements are read by operators (staff with the view permission on statements, as in
    the admin: all of them) and by the providers they pay (their own; a staff member of a
    provider without that permission too); other staff get 403 ``not_operator``, anyone else
    403 ``not_a_provider`` (or ``no_organisation``)."""

    organisation_required = False

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if operator_may(request.user, "vouchers.view_statement"):
            return
        if self.organisation is None and request.user.is_staff:
            raise PermissionDenied("operators only", code="not_operator")
        if self.organisation is None:
            raise exceptions.PermissionDenied(
                "you do not belong to an organisation", code="no_organisation"
            )
        if not self.organisation.is_provider:
            raise exceptions.PermissionDenied(
                "statements are for the providers they pay", code="not_a_provider"
            )

    @property
    def provider_scope(self) -> Organisation | None:
        """The provider whose statements the caller sees; ``None`` for an operator (all)."""
        if operator_may(self.request.user, "vouchers.view_statement"):  # type: ignore[attr-defined]
            return None
        return self.organisation  # type: ignore[attr-defined]

    def statement(self, statement_id: str) -> Statement:
        found = selectors.statement_get(provider=self.provider_scope, statement_id=statement_id)
        if found is None:
            raise NotFound("no such statement", field="statement")
        return found


class StatementListApi(StatementAccessMixin, generics.ListAPIView):
    """Reimbursement statements, newest period first: the caller's own (a provider) or all (an
    operator). Filters: ``programme`` (code), ``period`` (``YYYY-MM``), ``status``."""

    serializer_class = StatementSerializer
    filterset_class = StatementFilter
    queryset = Statement.objects.none()  # schema introspection only; see get_queryset
    filter_backends = [StrictFilterBackend]

    def get_queryset(self) -> QuerySet:
        return selectors.statement_list(provider=self.provider_scope)


@extend_schema(parameters=[ID_PATH])
class StatementDetailApi(StatementAccessMixin, APIView):
    """One statement with its lines (404 for another provider's)."""

    @extend_schema(responses={200: StatementDetailSerializer, **ERRORS})
    def get(self, request: Request, id: str) -> Response:
        return Response(StatementDetailSerializer(self.statement(id)).data)


class CsvRenderer(BaseRenderer):
    """``text/csv`` for the statement download. The download view answers with the CSV itself;
    an error rendered here is still the one problem-details JSON body."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: Any = None, context: Any = None) -> Any:
        if isinstance(data, str):
            return data.encode()
        return JSONRenderer().render(data)


class CsvNegotiation(BaseContentNegotiation):
    """The download answers CSV (or a problem-details error) whatever the client accepts, and
    takes no ``?format=`` override."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


@extend_schema(parameters=[ID_PATH])
class StatementCsvApi(StatementAccessMixin, APIView):
    """One statement as CSV (``text/csv``, UTF-8; ``STATEMENT_API_CSV_COLUMNS``, amounts CNY,
    times UTC, a final ``total`` row): the same statement always gives the same bytes."""

    renderer_classes = [CsvRenderer]
    content_negotiation_class = CsvNegotiation

    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="The statement's lines as CSV, then the total."
            ),
            **ERRORS,
        }
    )
    def get(self, request: Request, id: str) -> HttpResponse:
        statement = self.statement(id)
        response = HttpResponse(
            selectors.statement_csv(statement=statement, for_api=True),
            content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = (
            f'attachment; filename="statement-{statement.programme.code}-'
            f'{statement.period_start:%Y-%m}.csv"'
        )
        return response


@extend_schema(parameters=[ID_PATH, IDEMPOTENCY_HEADER])
class StatementMarkPaidApi(StatementAccessMixin, APIView):
    """An operator marks a statement paid: one ledger transaction moves each line's amount from
    its claimant's claims to the provider's payable (``point_of_sale``) or the buyer's wallet
    (``reimbursement``). 403 ``not_operator`` for everyone else; 409 ``already_paid`` the second
    time; 422 ``insufficient_funds`` when a negative statement's claimant cannot pay back.
    Accepts ``Idempotency-Key`` (a retry with it replays the first 200)."""

    permission_classes = operator_permissions("vouchers.change_statement")

    @extend_schema(
        request=None,
        responses={200: StatementDetailSerializer, 409: ERRORS[400], 422: ERRORS[400], **ERRORS},
    )
    @idempotent
    def post(self, request: Request, id: str) -> Response:
        statement = statement_mark_paid(statement_id=self.statement(id).pk)
        return Response(StatementDetailSerializer(self.statement(str(statement.pk))).data)
