"""Accounts API: token login, organisation registration and the caller's organisation."""

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.services import organisation_register
from marketplace.api.base import ERRORS, OrgMixin, caller
from marketplace.errors import Conflict, ValidationFailed

from .serializers import (
    OrganisationRegisterInputSerializer,
    OrganisationSerializer,
    TokenInputSerializer,
    TokenSerializer,
)


class TokenObtainApi(APIView):
    """Exchange a username and password for an API token. Wrong credentials are a 400
    ``invalid_credentials``."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=TokenInputSerializer, responses={200: TokenSerializer, 400: ERRORS[400]}, auth=[]
    )
    def post(self, request: Request) -> Response:
        serializer = TokenInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(request=request._request, **serializer.validated_data)
        if user is None or not user.is_active:
            raise ValidationFailed(
                "unable to log in with these credentials", code="invalid_credentials"
            )
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


class OrganisationRegisterApi(OrgMixin, APIView):
    """Register the caller's organisation (status ``pending``) with the caller as its
    administrator. 400 naming ``credit_code`` for a code that fails GB 32100-2015 or is taken;
    409 ``already_member`` when the caller already belongs to an organisation."""

    organisation_required = False

    @extend_schema(
        request=OrganisationRegisterInputSerializer,
        responses={201: OrganisationSerializer, 409: ERRORS[400], **ERRORS},
    )
    def post(self, request: Request) -> Response:
        if self.organisation is not None:
            raise Conflict("you already belong to an organisation", code="already_member")
        serializer = OrganisationRegisterInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        organisation = organisation_register(user=caller(request), **serializer.validated_data)
        return Response(OrganisationSerializer(organisation).data, status=status.HTTP_201_CREATED)


class OrganisationMeApi(OrgMixin, APIView):
    """The organisation the caller acts for (403 ``no_organisation`` when none)."""

    @extend_schema(responses={200: OrganisationSerializer, **ERRORS})
    def get(self, request: Request) -> Response:
        return Response(OrganisationSerializer(self.org).data)
