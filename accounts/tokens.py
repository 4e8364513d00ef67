"""Hashed API tokens: creation, lookup, revocation, and the DRF authentication class.

Clients send ``Authorization: Token <secret>`` (or ``Bearer <secret>``). The secret is never
stored; ``ApiToken.digest`` holds its SHA-256.
"""

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from marketplace.errors import NotFound
from marketplace.prepared import PreparedQuery
from marketplace.types import ObjectId

from .models import ApiToken, Membership, Organisation, User
from .selectors import REQUEST_ORGANISATION_ATTR

TOKEN_PREFIX = "sx_"  # noqa: S105  # a public marker, not a secret
# Where a view that authenticated the request's token itself before handing it to DRF (the
# offer search's lean way, marketplace.api.search_cache) leaves ``(secret, user, token,
# organisation)``: ``HashedTokenAuthentication`` uses it instead of a second lookup.
PREAUTHENTICATED_ATTR = "_suanli_token_authenticated"
# ``last_used_at`` is written at most this often per token (a write per request would cost).
LAST_USED_RESOLUTION = timedelta(minutes=5)


def token_digest(secret: str) -> str:
    """SHA-256 hex digest of a token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


@transaction.atomic
def token_create(*, user: User, name: str = "") -> tuple[ApiToken, str]:
    """A new token for ``user``; returns the stored row and the secret (shown only now)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name, prefix=secret[:10], digest=token_digest(secret)
    )
    return token, secret


def token_list(*, user: User) -> "list[ApiToken]":
    """The user's tokens that still authenticate, oldest first."""
    return list(ApiToken.objects.filter(user=user, revoked_at__isnull=True).order_by("created_at"))


@transaction.atomic
def token_revoke(*, user: User, token_id: ObjectId) -> ApiToken:
    """Revoke one of the user's tokens. ``NotFound`` for another user's or a revoked token."""
    try:
        token = ApiToken.objects.select_for_update().get(
            pk=token_id, user=user, revoked_at__isnull=True
        )
    except (ApiToken.DoesNotExist, ValueError) as exc:
        raise NotFound("no such token", field="token") from exc
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    return token


def _token_membership(digest: str) -> "QuerySet[Membership]":
    """The first membership (by id) of the user of the live token ``digest``, with the user,
    the organisation and its home site joined and the token's columns annotated."""
    return (
        Membership.objects.filter(
            user__api_tokens__digest=digest, user__api_tokens__revoked_at__isnull=True
        )
        .select_related("user", "organisation__home_site")
        .annotate(
            token_id=F("user__api_tokens__id"),
            token_name=F("user__api_tokens__name"),
            token_prefix=F("user__api_tokens__prefix"),
            token_created_at=F("user__api_tokens__created_at"),
            token_last_used_at=F("user__api_tokens__last_used_at"),
        )
        .order_by("pk")[:1]
    )


# Every API request runs it: compiled once (marketplace.prepared), not per request.
_TOKEN_MEMBERSHIP = PreparedQuery(_token_membership)


def token_authenticate(secret: str) -> tuple[User, ApiToken, Organisation | None]:
    """``(user, token, organisation)`` for a token secret: the active user behind it, the token,
    and the organisation the user acts for (first membership, as ``organisation_of``; ``None``
    without one) with its home site joined — in one query for a member of an organisation.

    Nothing is cached between calls: a revoked token or a deactivated user is refused on the
    very next request. Raises ``AuthenticationFailed`` for an unknown or revoked token or an
    inactive user. ``last_used_at`` is written at most every ``LAST_USED_RESOLUTION``.
    """
    digest = token_digest(secret)
    membership = _TOKEN_MEMBERSHIP.first(digest)
    if membership is not None:
        user = membership.user
        row = membership.__dict__  # the token's annotated columns
        token = ApiToken(
            id=row["token_id"],
            user=user,
            name=row["token_name"],
            prefix=row["token_prefix"],
            digest=digest,
            created_at=row["token_created_at"],
            last_used_at=row["token_last_used_at"],
            revoked_at=None,
        )
        organisation: Organisation | None = membership.organisation
    else:  # a user of no organisation (the API then refuses most things with a 403)
        found = (
            ApiToken.objects.select_related("user")
            .filter(digest=digest, revoked_at__isnull=True)
            .first()
        )
        if found is None:
            raise exceptions.AuthenticationFailed("invalid or revoked token")
        token, user, organisation = found, found.user, None
    if not user.is_active:
        raise exceptions.AuthenticationFailed("invalid or revoked token")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return user, token, organisation


class HashedTokenAuthentication(BaseAuthentication):
    """``Authorization: Token <secret>`` / ``Bearer <secret>`` against ``ApiToken`` digests
    (``token_authenticate``); the caller's organisation found on the way is kept on the request
    for ``accounts.selectors.request_organisation``."""

    keywords = (b"token", b"bearer")

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in self.keywords:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("malformed Authorization header")
        try:
            secret = parts[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("malformed token") from exc
        done = getattr(request._request, PREAUTHENTICATED_ATTR, None)
        if done is not None and done[0] == secret:  # this request's token, looked up already
            user, token, organisation = done[1:]
        else:
            user, token, organisation = token_authenticate(secret)
        setattr(request, REQUEST_ORGANISATION_ATTR, organisation)
        return user, token

    def authenticate_header(self, request: Request) -> str:
        return "Token"


class HashedTokenScheme(OpenApiAuthenticationExtension):
    """How ``HashedTokenAuthentication`` appears in the OpenAPI schema."""

    target_class = "accounts.tokens.HashedTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <secret>` (or `Bearer <secret>`); get one from "
            "`POST /api/v1/auth/token/`.",
        }
