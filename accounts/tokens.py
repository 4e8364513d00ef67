"""Hashed API tokens: creation, lookup, revocation, and the DRF authentication class.

Clients send ``Authorization: Token <secret>`` (or ``Bearer <secret>``). The secret is never
stored; ``ApiToken.digest`` holds its SHA-256.
"""

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from marketplace.errors import NotFound
from marketplace.types import ObjectId

from .models import ApiToken, User

TOKEN_PREFIX = "sx_"  # noqa: S105  # a public marker, not a secret
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


class HashedTokenAuthentication(BaseAuthentication):
    """``Authorization: Token <secret>`` / ``Bearer <secret>`` against ``ApiToken`` digests."""

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
        token = (
            ApiToken.objects.select_related("user")
            .filter(digest=token_digest(secret), revoked_at__isnull=True)
            .first()
        )
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("invalid or revoked token")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

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
