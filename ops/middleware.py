"""HTTP middleware: request id, request latency metric, database timeouts as 503."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from . import metrics
from .context import REQUEST_ID_HEADER, request_id_from, request_id_var

logger = logging.getLogger("ops.http")

Handler = Callable[[HttpRequest], HttpResponse]


class RequestIdMiddleware:
    """Takes the caller's ``X-Request-ID`` (or makes one), keeps it for the logs of the request
    and of the tasks it enqueues, and returns it in the response header of the same name."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        rid = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        token = request_id_var.set(rid)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = rid
        return response


class MetricsMiddleware:
    """Observes every request's latency (seconds) by method, route pattern and status class."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        t0 = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else "unmatched"
        metrics.REQUEST_LATENCY.labels(
            method=request.method or "", route=route, status=f"{response.status_code // 100}xx"
        ).observe(time.perf_counter() - t0)
        return response


class DatabaseBusyMiddleware:
    """A statement or lock timeout (or a lost database connection) during a request becomes a
    503 ``database_busy`` problem-details body (as the API's errors) with ``Retry-After``: the
    request was rolled back by its service's transaction and may be retried. Without it such a
    request would be a bare 500."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError):
            return None
        logger.warning("database busy on %s %s: %s", request.method, request.path, exception)
        from marketplace.api.errors import PROBLEM_CONTENT_TYPE, problem

        body = problem(
            503,
            "database_busy",
            "the database did not answer in time; nothing was changed, retry",
        )
        response = JsonResponse(body, status=503, content_type=PROBLEM_CONTENT_TYPE)
        response["Retry-After"] = "2"
        return response
