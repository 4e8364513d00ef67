"""Building blocks shared by every API view: the caller's organisation, strict input
serializers, UUID path ids, and ``Idempotency-Key`` replay (PRODUCT.md §6.1)."""

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.db import IntegrityError, transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Organisation, User
from accounts.selectors import request_organisation
from ledger.models import IdempotencyKey
from marketplace.errors import Conflict, NotFound, Unprocessable, ValidationFailed
from marketplace.selectors import as_uuid

ID_PATH = OpenApiParameter(
    "id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The object's UUID."
)
# A key is 1-255 visible ASCII characters (no spaces): the header's schema and the check agree.
IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    OpenApiParameter.HEADER,
    required=False,
    description="1 to 255 visible ASCII characters (no spaces). The same key and body replay "
    "the first successful response; the same key with another body is a 422 "
    "`idempotency_key_reused`.",
)


class ProblemSerializer(serializers.Serializer):
    """The one error shape of the API: RFC 9457 problem details (``application/problem+json``)
    with this API's ``code``, ``field`` and ``errors`` members (see ``marketplace.api.errors``)."""

    type = serializers.CharField(help_text="URN naming the problem: `urn:suanli:problem:<code>`.")
    title = serializers.CharField(help_text="The HTTP reason phrase of `status`.")
    status = serializers.IntegerField(help_text="The HTTP status code.")
    detail = serializers.CharField(help_text="Human-readable explanation of this occurrence.")
    code = serializers.CharField(
        help_text="Stable machine-readable code, e.g. `invalid`, `not_found`, `illegal_transition`."
    )
    field = serializers.CharField(allow_null=True, help_text="The first input at fault, if any.")
    errors = serializers.DictField(  # type: ignore[assignment]  # a field, not .errors
        child=serializers.JSONField(),
        help_text="Every input at fault, by name, with its messages.",
    )


ErrorSerializer = ProblemSerializer  # the name views used before problem details

ERRORS = {
    400: ProblemSerializer,
    401: ProblemSerializer,
    403: ProblemSerializer,
    404: ProblemSerializer,
}


class StrictSerializer(serializers.Serializer):
    """An input serializer that refuses fields it does not know (a typo is a 400 naming the
    field, not a silently ignored value)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)


def caller(request: Request) -> User:
    """The authenticated user behind a request (views here all require authentication)."""
    user = request.user
    assert isinstance(user, User)
    return user


def object_id(raw: object, field: str) -> uuid.UUID:
    """The UUID in a URL, or ``NotFound`` naming ``field`` (a malformed id is just not there)."""
    pk = as_uuid(raw)
    if pk is None:
        raise NotFound(f"no such {field}", field=field)
    return pk


class OrgMixin:
    """Resolves the caller's organisation after authentication as ``self.organisation``
    (``request_organisation``: found with the token, or looked up once for the request).

    With ``organisation_required`` (the default) a caller without one gets a 403
    ``no_organisation``; public reference views set it to ``False``.
    """

    organisation_required = True
    organisation: Organisation | None = None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        self.organisation = request_organisation(request)
        if self.organisation_required and self.organisation is None:
            raise exceptions.PermissionDenied(
                "you do not belong to an organisation", code="no_organisation"
            )

    @property
    def org(self) -> Organisation:
        """The caller's organisation where it is required (never ``None`` there)."""
        assert self.organisation is not None
        return self.organisation


def operator_may(user: Any, permission: str) -> bool:
    """Whether ``user`` acts as an operator with ``permission`` (``app.codename``): staff
    holding the Django permission the admin asks for the same data (superusers hold all), so
    the API, the admin and its dashboard keep one rule for operators."""
    return bool(user.is_staff and user.has_perm(permission))


class _OperatorPermission(BasePermission):
    permission = ""
    message = "operators only"
    code = "not_operator"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return operator_may(request.user, self.permission)


def operator_permissions(permission: str) -> list[type[BasePermission]]:
    """``permission_classes`` of a view only operators holding ``permission`` may use: 401
    for an anonymous caller, 403 ``not_operator`` for anyone else, checked before the view
    runs — and again when an ``Idempotency-Key`` replays a stored response (``idempotent``
    re-checks the view's permission classes), so a permission taken away is not replayed."""
    operators = type(f"Operators_{permission}", (_OperatorPermission,), {"permission": permission})
    return [IsAuthenticated, operators]


# --- Idempotency-Key -----------------------------------------------------------------------


def _fingerprint(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, default=str, separators=(",", ":"))
    raw = f"{request.method}\n{request.path}\n{body}".encode()
    return hashlib.sha256(raw).hexdigest()


def _owner(view: APIView, request: Request) -> str:
    """The key's scope: the caller's organisation *and* user, so two people of one company
    never replay each other's responses and a key means nothing outside its organisation."""
    organisation = getattr(view, "organisation", None)
    user = f"user:{request.user.pk}"
    return f"org:{organisation.pk}/{user}" if organisation is not None else user


Handler = Callable[..., Response]


def idempotent(handler: Handler) -> Handler:
    """Make a write handler honour the ``Idempotency-Key`` header (PRODUCT.md §6.1).

    The key is claimed first in its own short transaction (a unique row per caller and key),
    then the handler runs its services, then the response is stored. A retry with the same key
    and the same method, path and body replays the stored response (header
    ``Idempotent-Replayed: true``); another body is a 422 ``idempotency_key_reused``; a retry
    while the first is still running is a 409 ``idempotency_key_in_progress``. A refused or
    failed request (4xx, 5xx) stores nothing (services are atomic), so its key is released for
    a retry. Keys are scoped to the caller's organisation and user and kept at least
    ``IDEMPOTENCY_KEY_TTL`` (7 days; ``ledger.services.idempotency_keys_prune``).
    """

    @wraps(handler)
    def wrapper(view: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return handler(view, request, *args, **kwargs)
        if IDEMPOTENCY_KEY.fullmatch(key) is None:
            raise ValidationFailed(
                "must be 1-255 visible ASCII characters, no spaces",
                code="invalid_idempotency_key",
                field="Idempotency-Key",
            )
        owner, fingerprint = _owner(view, request), _fingerprint(request)
        try:
            with transaction.atomic():
                record = IdempotencyKey.objects.create(
                    owner=owner, key=key, fingerprint=fingerprint
                )
        except IntegrityError:
            first = IdempotencyKey.objects.get(owner=owner, key=key)
            if first.fingerprint != fingerprint:
                raise Unprocessable(
                    "this Idempotency-Key was used with another request",
                    code="idempotency_key_reused",
                    field="Idempotency-Key",
                ) from None
            if first.status_code is None:
                raise Conflict(
                    "the first request with this Idempotency-Key is still running",
                    code="idempotency_key_in_progress",
                    field="Idempotency-Key",
                ) from None
            # Authentication and the organisation were checked again by ``initial`` on this
            # request; check the view's permissions again too before replaying.
            view.check_permissions(request)
            replay = Response(first.response_body, status=first.status_code)
            replay["Idempotent-Replayed"] = "true"
            return replay
        try:
            response = handler(view, request, *args, **kwargs)
        except BaseException:
            IdempotencyKey.objects.filter(pk=record.pk).delete()
            raise
        if not 200 <= response.status_code < 300:
            IdempotencyKey.objects.filter(pk=record.pk).delete()
            return response
        body = json.loads(JSONRenderer().render(response.data) or b"null")
        IdempotencyKey.objects.filter(pk=record.pk).update(
            status_code=response.status_code, response_body=body
        )
        return response

    return wrapper
