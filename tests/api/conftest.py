"""Fixtures for API tests: clients for each side of the permission matrix."""

import uuid

import pytest
from rest_framework.test import APIClient

from marketplace.services import reservation_create
from tests.factories import DemandFactory, UserFactory


@pytest.fixture(autouse=True)
def fresh_cache(settings):  # type: ignore[no-untyped-def]
    """Each test gets its own cache key space (rate-limit counters, login lock-outs) in the
    shared Redis, so tests neither throttle nor lock each other out."""
    caches = {name: dict(conf) for name, conf in settings.CACHES.items()}
    caches["default"]["KEY_PREFIX"] = f"{caches['default'].get('KEY_PREFIX', '')}:{uuid.uuid4()}"
    settings.CACHES = caches


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


@pytest.fixture
def other_client(other_buyer) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(UserFactory.create(username="other", organisation=other_buyer))
    return client


@pytest.fixture
def orphan_client() -> APIClient:
    """An authenticated user who belongs to no organisation."""
    client = APIClient()
    client.force_authenticate(UserFactory.create(username="orphan"))
    return client


@pytest.fixture
def reservation(buyer, offer):  # type: ignore[no-untyped-def]
    """A confirmed reservation: 4 GPUs x 2 h at CNY 10 = CNY 80, paid in cash."""
    demand = DemandFactory.create(buyer=buyer)
    demand.accelerators.add(offer.accelerator)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


@pytest.fixture
def held_reservation(buyer, offer):  # type: ignore[no-untyped-def]
    """A held (not auto-accepted) reservation."""
    demand = DemandFactory.create(buyer=buyer, auto_accept=False)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "field", "errors"}


def error_of(response) -> tuple[int, str, str | None]:  # type: ignore[no-untyped-def]
    """``(status, code, field)`` of an error response in the one error shape: RFC 9457
    problem details (``application/problem+json``) with ``code``, ``field`` and ``errors``."""
    assert response["Content-Type"] == "application/problem+json", response["Content-Type"]
    body = response.json()
    assert set(body) == PROBLEM_MEMBERS, body
    assert body["status"] == response.status_code, body
    assert body["type"] == f"urn:suanli:problem:{body['code']}", body
    if body["field"] is not None:
        assert body["field"] in body["errors"], body
    return response.status_code, body["code"], body["field"]
