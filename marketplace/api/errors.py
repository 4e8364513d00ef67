"""One JSON error shape for the whole API.

``{"code": "<stable machine code>", "detail": "<human text>", "field": "<input>" | null,
"errors": {"<field>": ["..."]}}`` with the HTTP status of the error.
"""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import IntegrityError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from marketplace.errors import DomainError


def _first_field(errors: Any) -> str | None:
    if isinstance(errors, dict):
        for key in errors:
            return None if key == "non_field_errors" else str(key)
    return None


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        return Response(
            {
                "code": exc.code,
                "detail": exc.message,
                "field": exc.field,
                "errors": {exc.field: [exc.message]} if exc.field else {},
            },
            status=exc.status,
        )
    if isinstance(exc, IntegrityError):
        return Response(
            {
                "code": "conflict",
                "detail": "the change conflicts with the current state",
                "field": None,
                "errors": {},
            },
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors: Any = (
            exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        )
        field = _first_field(errors)
        response.data = {
            "code": "invalid",
            "detail": "invalid input" + (f": {field}" if field else ""),
            "field": field,
            "errors": errors,
        }
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        response.data = {"code": code, "detail": str(exc.detail), "field": None, "errors": {}}
    return response
