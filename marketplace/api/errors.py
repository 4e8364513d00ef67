"""One error shape for the whole API: RFC 9457 problem details.

Every error under ``/api/`` is ``application/problem+json``::

    {"type": "urn:suanli:problem:<code>", "title": "<HTTP reason phrase>", "status": <int>,
     "detail": "<human text>", "code": "<stable machine code>", "field": "<input>" | null,
     "errors": {"<field>": ["<message>", ...]}}

``type``, ``title``, ``status`` and ``detail`` are RFC 9457's members; ``code``, ``field`` (the
first input at fault) and ``errors`` (every input at fault) are this API's extension members.
``type`` is a URN built from ``code``, so it is stable for a given code; ``title`` is the HTTP
reason phrase of ``status``. The same shape comes from DRF views (``exception_handler``) and from
Django itself for paths under ``/api/`` (``handler404``/``handler500`` etc. in the root URLconf:
unknown routes, uncaught exceptions), so no HTML error page is ever served there.
"""

import json
from http import HTTPStatus
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from marketplace.errors import DomainError

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:suanli:problem:"


def problem(
    status_code: int,
    code: str,
    detail: str,
    *,
    field: str | None = None,
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The problem-details body for an error (see the module docstring for its members)."""
    try:
        title = HTTPStatus(status_code).phrase
    except ValueError:
        title = "Error"
    return {
        "type": f"{PROBLEM_TYPE_PREFIX}{code}",
        "title": title,
        "status": status_code,
        "detail": detail,
        "code": code,
        "field": field,
        "errors": errors if errors is not None else ({field: [detail]} if field else {}),
    }


def _first_field(errors: Any) -> str | None:
    if isinstance(errors, dict):
        for key in errors:
            return None if key == "non_field_errors" else str(key)
    return None


def _messages(errors: Any) -> Any:
    """DRF's nested error detail as plain strings, lists and dicts."""
    if isinstance(errors, dict):
        return {str(key): _messages(value) for key, value in errors.items()}
    if isinstance(errors, list):
        return [_messages(item) for item in errors]
    return str(errors)


def _problem_response(data: dict[str, Any], response: Response | None = None) -> Response:
    if response is None:
        response = Response(data, status=data["status"])
    else:
        response.data = data
    response.content_type = PROBLEM_CONTENT_TYPE
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's ``EXCEPTION_HANDLER``: every refused request as problem details.

    ``DomainError`` keeps its status, code and field; DRF validation errors are 400 ``invalid``
    naming the first field; a database ``IntegrityError`` (a constraint caught a race) is 409
    ``conflict``; other DRF errors keep their status and code (``not_authenticated``,
    ``permission_denied``, ``throttled`` with ``Retry-After``, ``method_not_allowed``, …).
    """
    if isinstance(exc, DomainError):
        return _problem_response(problem(exc.status, exc.code, exc.message, field=exc.field))
    if isinstance(exc, IntegrityError):
        return _problem_response(
            problem(
                status.HTTP_409_CONFLICT, "conflict", "the change conflicts with the current state"
            )
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
        data = problem(
            response.status_code,
            "invalid",
            "invalid input" + (f": {field}" if field else ""),
            field=field,
            errors=_messages(errors),
        )
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        data = problem(response.status_code, code, str(exc.detail))
    else:  # pragma: no cover - DRF only handles APIException subclasses
        return response
    return _problem_response(data, response)


# --- Django-level handlers (root URLconf) --------------------------------------------------


def _plain_problem(request: HttpRequest, status_code: int, code: str, detail: str) -> HttpResponse:
    return HttpResponse(
        json.dumps(problem(status_code, code, detail)),
        status=status_code,
        content_type=PROBLEM_CONTENT_TYPE,
    )


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from django.views import defaults

    if is_api_path(request):
        return _plain_problem(request, 400, "bad_request", "the request is malformed")
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from django.views import defaults

    if is_api_path(request):
        return _plain_problem(request, 403, "permission_denied", "permission denied")
    return defaults.permission_denied(request, exception)  # type: ignore[arg-type]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from django.views import defaults

    if is_api_path(request):
        return _plain_problem(request, 404, "not_found", "no such resource")
    return defaults.page_not_found(request, exception)  # type: ignore[arg-type]


def handler500(request: HttpRequest) -> HttpResponse:
    from django.views import defaults

    if is_api_path(request):
        return _plain_problem(request, 500, "server_error", "internal error; it was logged")
    return defaults.server_error(request)
