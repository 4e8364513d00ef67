"""Fixtures for API tests: clients for each side of the permission matrix."""

import pytest
from rest_framework.test import APIClient

from marketplace.services import reservation_create
from tests.factories import DemandFactory, UserFactory


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


def error_of(response) -> tuple[int, str, str | None]:  # type: ignore[no-untyped-def]
    """``(status, code, field)`` of an error response in the one error shape."""
    body = response.json()
    assert set(body) == {"code", "detail", "field", "errors"}, body
    return response.status_code, body["code"], body["field"]
