"""The offer search's rendered pages in the shared cache, and ``ETag``/``If-None-Match``.

``GET /api/v1/offers/`` is the API's busiest call and its answer is the same for everyone who
asks the same question: every caller sees all active offers; only the ``tier`` filter depends on
who asks (the caller's home site). So a rendered page (the exact JSON bytes DRF's
``JSONRenderer`` writes) is kept in the cache (Redis, shared by all web workers) under

* the canonical request: scheme and host (the ``next``/``previous`` links are absolute), path,
  and the query parameters sorted by name, each with its values in the order given;
* the caller's scope: the organisation's home site when ``tier`` is given, else the public
  scope (the home site's own hub, city and metro area are search data: writing them makes the
  pages stale);

and tagged with the offer search generation read *before* the page's rows were read
(``marketplace.search_generation``): a page is served only while that generation is current,
and every write that changes any search answer replaces it. Pages also expire after
``OFFER_SEARCH_CACHE_SECONDS``.

Only successful JSON pages are stored: a request whose input is refused (400, 404 past the last
page) stores nothing and is validated again on every call, so it is refused again with the same
problem details. A stored page was valid for its exact parameters, scope and generation, and its
validity depends on nothing else (unknown hub and accelerator codes are search data too).

Authentication, permissions and content negotiation run on every request as before (the token
query is the only query of a cache hit). Every JSON answer carries a strong ``ETag`` (SHA-256
of the body) and ``Cache-Control: private, no-cache``; ``If-None-Match`` with a matching tag (or
``*``) is a ``304 Not Modified`` without a body.
"""

import hashlib
import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotModified
from django.utils.cache import patch_vary_headers
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.models import Organisation
from accounts.tokens import PREAUTHENTICATED_ATTR, token_authenticate
from marketplace.search_generation import GENERATION_KEY, cache_seconds, current_generation, store

logger = logging.getLogger(__name__)

PAGE_KEY_PREFIX = "offer-search:page:"
JSON_MEDIA_TYPE = "application/json"
CACHE_CONTROL = "private, no-cache"


def page_key(request: HttpRequest | Request, organisation: Organisation | None) -> str:
    """The cache key of the page ``request`` (Django's or DRF's) asks for, in the caller's
    scope (see the module docstring): a SHA-256 of the canonical request and scope."""
    params = request.GET
    query = sorted((name, params.getlist(name)) for name in params)
    scope = "public"
    if "tier" in params:
        scope = f"home:{organisation.home_site_id if organisation is not None else None}"
    canonical = json.dumps(
        [request.scheme, request.get_host(), request.path, query, scope],
        separators=(",", ":"),
        default=str,
    )
    return PAGE_KEY_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` (RFC 9110 §13.1.2, weak comparison) against ``etag``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _answer(request: Request, body: bytes, etag: str) -> HttpResponse:
    if _matches(request.headers.get("If-None-Match"), etag):
        response: HttpResponse = HttpResponseNotModified()
    else:
        response = HttpResponse(body, content_type=JSON_MEDIA_TYPE)
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL
    return response


class SearchPage:
    """One offer search request's way through the cache: ``lookup()`` before the search (a
    response on a hit, else ``None``), ``respond(data)`` after it (renders, stores, answers).

    ``for_request`` gives ``None`` when the negotiated rendering is not plain JSON (the
    browsable API, ``application/json; indent=4``): that request takes DRF's usual way."""

    def __init__(self, request: Request, view: APIView, key: str | None) -> None:
        self.request = request
        self.view = view
        self.key = key
        self.generation: bytes | None = None

    @classmethod
    def for_request(
        cls, request: Request, view: APIView, organisation: Organisation | None
    ) -> "SearchPage | None":
        if type(request.accepted_renderer) is not JSONRenderer:
            return None
        if request.accepted_media_type != JSON_MEDIA_TYPE:
            return None
        key = page_key(request, organisation) if cache_seconds() > 0 else None
        return cls(request, view, key)

    def lookup(self) -> HttpResponse | None:
        """The stored page as a response (or a 304) when it carries the current generation;
        ``None`` otherwise, after noting the current generation for ``respond``. One round
        trip to the cache (the generation and the page together)."""
        if self.key is None:
            return None
        try:
            generation, stored = store().get_many([GENERATION_KEY, self.key])
            if generation is None:
                generation = current_generation()
        except Exception:  # the cache is down: search without it
            logger.exception("offer search cache lookup failed")
            self.key = None
            return None
        self.generation = generation
        if generation is not None and stored is not None:
            # stored: generation, ETag and body, the first two ended by a newline each
            stored_generation, etag, body = stored.split(b"\n", 2)
            if stored_generation == generation:
                return _answer(self.request, body, etag.decode())
        return None

    def respond(self, data: Any) -> HttpResponse:
        """``data`` (the paginated search) rendered as DRF would, stored under the generation
        read by ``lookup`` (before the rows were read), answered with its ``ETag``."""
        renderer = self.request.accepted_renderer
        body = renderer.render(
            data, self.request.accepted_media_type, self.view.get_renderer_context()
        )
        assert isinstance(body, bytes)  # JSONRenderer writes UTF-8 bytes
        etag = _etag(body)
        if self.key is not None and self.generation is not None:
            try:
                value = b"%s\n%s\n%s" % (self.generation, etag.encode(), body)
                store().set(self.key, value, timeout=cache_seconds())
            except Exception:
                logger.exception("offer search cache store failed")
        return _answer(self.request, body, etag)


# --- The lean way of a cache hit --------------------------------------------------------------

# Accept headers for which DRF's content negotiation picks ``JSONRenderer`` with exactly
# ``application/json`` (any other goes through DRF, which decides).
_PLAIN_JSON_ACCEPT = frozenset({"", "*/*", JSON_MEDIA_TYPE})


def _lean_hit(request: HttpRequest, headers: dict[str, str]) -> HttpResponse | None:
    """The stored page for a ``GET`` with a valid API token and a plain JSON ``Accept``, or
    ``None`` (then DRF handles the request as before). Authenticates exactly as
    ``HashedTokenAuthentication`` (``token_authenticate``: the token query, on every request)
    and leaves the result on the request, so a miss does not authenticate twice."""
    if request.method != "GET" or cache_seconds() <= 0:
        return None
    if request.headers.get("Accept", "").strip() not in _PLAIN_JSON_ACCEPT:
        return None
    if "format" in request.GET:  # DRF's format override (never a stored page: a 400)
        return None
    authorization = request.headers.get("Authorization", "")
    parts = authorization.split()
    if (
        not authorization.isascii()
        or len(parts) != 2
        or parts[0].lower() not in ("token", "bearer")
    ):
        return None  # anonymous, session or malformed: DRF answers
    try:
        user, token, organisation = token_authenticate(parts[1])
    except AuthenticationFailed:
        return None  # DRF answers the 401 (and looks the token up again)
    setattr(request, PREAUTHENTICATED_ATTR, (parts[1], user, token, organisation))
    key = page_key(request, organisation)
    try:
        generation, stored = store().get_many([GENERATION_KEY, key])
    except Exception:
        logger.exception("offer search cache lookup failed")
        return None
    if generation is None or stored is None:
        return None
    stored_generation, etag, body = stored.split(b"\n", 2)
    if stored_generation != generation:
        return None
    response = _answer(request, body, etag.decode())  # type: ignore[arg-type]
    # What DRF's finalize_response adds (APIView.default_response_headers).
    vary = headers.get("Vary")
    if vary is not None:
        patch_vary_headers(response, [v.strip() for v in vary.split(",")])
    for name, value in headers.items():
        if name != "Vary":
            response[name] = value
    return response


def lean_offer_search(drf_view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """``OfferListCreateApi.as_view()`` with a lean way for a cache hit in front of it: a plain
    JSON ``GET`` with an API token whose page is stored answers without DRF's request
    machinery (authentication as DRF's, then one cache round trip; the same bytes, status and
    headers as DRF's answer, ``Allow`` and ``Vary`` included). Everything else — other methods,
    session or no authentication, a refused token, other media types, a miss — goes to DRF
    unchanged. The wrapper carries the DRF view's attributes, so the OpenAPI schema and the
    permission matrix see the same view class."""
    view_class = drf_view.view_class  # type: ignore[attr-defined]
    instance = view_class(**drf_view.view_initkwargs)  # type: ignore[attr-defined]
    if hasattr(instance, "get") and not hasattr(instance, "head"):
        instance.head = instance.get  # as View.setup does for every request
    defaults = instance.default_response_headers

    @wraps(drf_view)
    def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        return _lean_hit(request, defaults) or drf_view(request, *args, **kwargs)

    return view
