"""Accounts API: API tokens (create, list, revoke), organisation registration and the caller's
organisation."""

from django.contrib.auth import authenticate
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.services import organisation_register
from accounts.throttling import (
    LoginIPRateThrottle,
    login_check_locked,
    login_failed,
    login_succeeded,
)
from accounts.tokens import token_create, token_list, token_revoke
from marketplace.api.base import ERRORS, ID_PATH, OrgMixin, caller, object_id
from marketplace.errors import Conflict, ValidationFailed

from .serializers import (
    OrganisationRegisterInputSerializer,
    OrganisationSerializer,
    TokenInfoSerializer,
    TokenInputSerializer,
    TokenSerializer,
)


class TokenObtainApi(APIView):
    """Exchange a username and password for a new API token (the secret is in this response
    only; tokens are stored hashed). Wrong credentials are a 400 ``invalid_credentials``;
    ``LOGIN_MAX_FAILURES`` of them for one username from one IP lock that pair, and
    ``LOGIN_MAX_FAILURES_PER_USERNAME`` from all IPs lock the username, for
    ``LOGIN_LOCKOUT_SECONDS``: 429 ``login_locked`` with ``Retry-After``, even with the right
    password (``accounts.throttling``). Token requests are also
    rate-limited per IP (429 ``throttled``)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginIPRateThrottle]

    @extend_schema(
        request=TokenInputSerializer,
        responses={201: TokenSerializer, 400: ERRORS[400], 429: ERRORS[400]},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        serializer = TokenInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        ip = LoginIPRateThrottle().get_ident(request)
        login_check_locked(data["username"], ip)
        user = authenticate(
            request=request._request, username=data["username"], password=data["password"]
        )
        if user is None or not user.is_active:
            login_failed(data["username"], ip)
            raise ValidationFailed(
                "unable to log in with these credentials", code="invalid_credentials"
            )
        login_succeeded(data["username"], ip)
        token, secret = token_create(user=user, name=data["name"])
        token.token = secret  # type: ignore[attr-defined]  # shown once, never stored
        return Response(TokenSerializer(token).data, status=status.HTTP_201_CREATED)


class TokenListApi(APIView):
    """The caller's tokens that still authenticate (without their secrets), oldest first."""

    @extend_schema(responses={200: TokenInfoSerializer(many=True), **ERRORS})
    def get(self, request: Request) -> Response:
        return Response(TokenInfoSerializer(token_list(user=caller(request)), many=True).data)


@extend_schema(parameters=[ID_PATH])
class TokenRevokeApi(APIView):
    """Revoke one of the caller's tokens (it stops authenticating at once). 404 for another
    user's token or one already revoked."""

    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, id: str) -> Response:
        token_revoke(user=caller(request), token_id=object_id(id, "token"))
        return Response(status=status.HTTP_204_NO_CONTENT)


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
