"""OpenAPI post-processing: every error response is problem details.

drf-spectacular describes what each view declares; this hook makes the error side uniform and
complete. Every 4xx/5xx response is ``application/problem+json`` with the ``Problem`` schema, and
each operation lists the errors any request can meet here: 400 (bad input, unknown query
parameter), 401 (no or bad credentials, where authentication is required), 403 (wrong kind of
organisation, none at all), 404, 406 (unacceptable ``Accept``), 415 (unsupported body media type,
on operations with a body) and 429 (rate limit or login lock-out, with ``Retry-After``).
"""

from typing import Any

from .errors import PROBLEM_CONTENT_TYPE

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}

COMMON_ERRORS = {
    "400": "Bad input: the `field` member names the input at fault.",
    "403": "Not allowed for the caller's organisation (`no_organisation`, `not_a_provider`, …).",
    "404": "No such object, or one the caller may not see.",
    "406": "The `Accept` header asks for a media type the API cannot produce.",
    "429": "Rate limit or login lock-out; `Retry-After` gives the seconds to wait.",
}

EXAMPLE = {
    "type": "urn:suanli:problem:invalid",
    "title": "Bad Request",
    "status": 400,
    "detail": "invalid input: max_price",
    "code": "invalid",
    "field": "max_price",
    "errors": {"max_price": ["Ensure that there are no more than 4 decimal places."]},
}


def _tighten_decimals(node: Any) -> None:
    """drf-spectacular's decimal pattern ``^-?\\d{0,N}(?:\\.\\d{0,M})?$`` also matches "" and
    "-"; every decimal this API *takes* is a non-negative amount, so require a digit and no sign."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if node.get("format") == "decimal" and isinstance(pattern, str):
            node["pattern"] = pattern.replace("^-?\\d{0,", "^\\d{1,")
        for value in node.values():
            _tighten_decimals(value)
    elif isinstance(node, list):
        for value in node:
            _tighten_decimals(value)


def postprocess_problem_responses(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """A drf-spectacular ``POSTPROCESSING_HOOKS`` entry (see the module docstring)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, component in schemas.items():
        if name.endswith("Request"):  # inputs only (COMPONENT_SPLIT_REQUEST); outputs may be < 0
            _tighten_decimals(component)
    if "Problem" in schemas:
        schemas["Problem"]["example"] = EXAMPLE
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            responses = operation.setdefault("responses", {})
            wanted = dict(COMMON_ERRORS)
            if any(requirement for requirement in operation.get("security", [])):
                wanted["401"] = "Authentication required: no, unknown or revoked token."
            if "requestBody" in operation:
                wanted["415"] = "The body's media type is not JSON, form or multipart."
            for code, description in wanted.items():
                responses.setdefault(code, {"description": description})
            for code, response in responses.items():
                if int(code) >= 400:
                    response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_REF}}
                    if not response.get("description"):
                        response["description"] = "Problem details."
    return result


# --- OpenAPI links: which operation an object's id leads to ------------------------------------
# (producer path, method, status, where the id is in its body) -> the operations taking that id
# as their ``{id}``. Clients (and schemathesis's stateful fuzzing, tests/api/test_fuzz.py) follow
# them from a created or listed object to what can be done with it.
_DEMAND = ["/api/v1/demands/{id}/", "/api/v1/demands/{id}/explain/", "/api/v1/demands/{id}/cancel/"]
_OFFER = [
    "/api/v1/offers/{id}/",
    "/api/v1/offers/{id}/pause/",
    "/api/v1/offers/{id}/activate/",
    "/api/v1/offers/{id}/withdraw/",
]
_RESERVATION = [
    "/api/v1/reservations/{id}/",
    "/api/v1/reservations/{id}/accept/",
    "/api/v1/reservations/{id}/cancel/",
    "/api/v1/reservations/{id}/usage/",
]
_ONE = "$response.body#/id"
_FIRST = "$response.body#/results/0/id"
LINKS: list[tuple[str, str, str, str, list[str]]] = [
    ("/api/v1/demands/", "post", "201", _ONE, _DEMAND),
    ("/api/v1/demands/", "get", "200", _FIRST, _DEMAND),
    ("/api/v1/demands/{id}/", "get", "200", _ONE, _DEMAND),
    ("/api/v1/demands/{id}/cancel/", "post", "200", _ONE, _DEMAND),
    ("/api/v1/offers/", "post", "201", _ONE, _OFFER),
    ("/api/v1/offers/", "get", "200", _FIRST, _OFFER),
    ("/api/v1/offers/{id}/", "get", "200", _ONE, _OFFER),
    ("/api/v1/offers/{id}/", "patch", "200", _ONE, _OFFER),
    ("/api/v1/offers/{id}/pause/", "post", "200", _ONE, _OFFER),
    ("/api/v1/offers/{id}/activate/", "post", "200", _ONE, _OFFER),
    ("/api/v1/reservations/", "get", "200", _FIRST, _RESERVATION),
    ("/api/v1/reservations/", "get", "200", "$response.body#/results/0/offer", _OFFER),
    ("/api/v1/reservations/", "get", "200", "$response.body#/results/0/demand", _DEMAND),
    ("/api/v1/reservations/{id}/", "get", "200", "$response.body#/offer", _OFFER),
    ("/api/v1/reservations/{id}/", "get", "200", "$response.body#/demand", _DEMAND),
    ("/api/v1/reservations/{id}/", "get", "200", _ONE, _RESERVATION),
    ("/api/v1/vouchers/", "get", "200", _FIRST, ["/api/v1/vouchers/{id}/"]),
    ("/api/v1/programmes/", "get", "200", _FIRST, ["/api/v1/programmes/{id}/"]),
    ("/api/v1/voucher-applications/", "post", "201", _ONE, ["/api/v1/voucher-applications/{id}/"]),
    ("/api/v1/voucher-applications/", "get", "200", _FIRST, ["/api/v1/voucher-applications/{id}/"]),
]
_CONSUMER_METHODS = ("get", "post", "patch", "delete")


def postprocess_links(
    result: dict[str, Any], generator: Any, request: Any, public: bool
) -> dict[str, Any]:
    """A drf-spectacular ``POSTPROCESSING_HOOKS`` entry adding the OpenAPI ``links`` of
    ``LINKS`` to the producers' success responses (drf-spectacular has no links of its own).
    Consumers are named by ``operationId``, each link by it; paths or methods missing from this
    schema (a route removed) are skipped."""
    paths = result.get("paths", {})
    for path, method, status, expression, consumers in LINKS:
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links = response.setdefault("links", {})
        for consumer in consumers:
            for consumer_method in _CONSUMER_METHODS:
                operation = paths.get(consumer, {}).get(consumer_method)
                if operation is None or "operationId" not in operation:
                    continue
                name = operation["operationId"]
                links[name] = {
                    "operationId": name,
                    "parameters": {"path.id": expression},
                    "description": f"`id` of this response into `{consumer_method.upper()} "
                    f"{consumer}`.",
                }
    return result
