"""Vouchers API: programmes (public), the caller's vouchers and voucher applications."""

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.api.base import ERRORS, ID_PATH, OrgMixin
from marketplace.api.filters import StrictFilterBackend
from marketplace.errors import NotFound
from vouchers import selectors
from vouchers.models import Voucher, VoucherApplication
from vouchers.services import voucher_application_submit

from .serializers import (
    ProgrammeSerializer,
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
    ``amount`` CNY; 400 naming ``amount`` below the programme's minimum, 400 ``not_a_buyer``
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
