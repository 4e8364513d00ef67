"""The inter-hub trade matrix (exporting hub × importing hub: trades, GPU-hours, value CNY) in the
API (operators only) and in the operator admin."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from marketplace.models import InterHubTrade
from marketplace.services import reservation_create, wallet_deposit
from tests.factories import (
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    SiteFactory,
    UserFactory,
    next_hour,
)

pytestmark = pytest.mark.django_db
URL = "/api/v1/inter-hub-trades/matrix/"


@pytest.fixture
def trades(buyer, provider, site, accelerator):  # type: ignore[no-untyped-def]
    """Two bookings exported from Gansu to the buyer's hub (2 GPUs × 3 h and 4 × 2 at ¥10), one
    from the buyer's hub to Gansu (1 × 5 at ¥7.5) and one local booking (no trade)."""
    gansu = HubFactory.create(code="gansu", name="Gansu")
    qingyang = SiteFactory.create(
        code="qingyang", city="Qingyang", metro_area="Qingyang", hub=gansu
    )

    remote_buyer = OrganisationFactory.create(name="Gansu SME", home_site=qingyang)
    wallet_deposit(organisation=remote_buyer, amount=Decimal("1000.00"))
    start = next_hour(2)
    west = OfferFactory.create(provider=provider, site=qingyang, accelerator=accelerator)
    home = OfferFactory.create(
        provider=provider, site=site, accelerator=accelerator, price_per_gpu_hour=Decimal("7.5")
    )
    for who, offer, gpus, hours in (
        (buyer, west, 2, 3),
        (buyer, west, 4, 2),
        (remote_buyer, home, 1, 5),
        (buyer, home, 1, 1),
    ):
        demand = DemandFactory.create(
            buyer=who, gpu_count=gpus, duration_hours=hours, locality_limit="national"
        )
        reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=start)
    return gansu, site.hub


def _client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_operator_gets_the_matrix(trades):  # type: ignore[no-untyped-def]
    gansu, home = trades
    operator = User.objects.create_user("op", is_staff=True)
    response = _client(operator).get(URL)
    assert response.status_code == 200
    body = response.json()
    assert [h["code"] for h in body["hubs"]] == sorted([gansu.code, home.code])
    assert body["cells"] == sorted(
        [
            {
                "exporting_hub": gansu.code,
                "importing_hub": home.code,
                "trades": 2,
                "gpu_hours": 14,
                "value": "140.00",
            },
            {
                "exporting_hub": home.code,
                "importing_hub": gansu.code,
                "trades": 1,
                "gpu_hours": 5,
                "value": "37.50",
            },
        ],
        key=lambda c: (c["exporting_hub"], c["importing_hub"]),
    )
    assert (body["trades"], body["gpu_hours"], body["value"]) == (3, 19, "177.50")
    assert InterHubTrade.objects.count() == 3


def test_members_are_refused_and_anonymous_unauthenticated(trades, buyer):  # type: ignore[no-untyped-def]
    member = UserFactory.create(organisation=buyer)
    before = InterHubTrade.objects.count()
    response = _client(member).get(URL)
    assert response.status_code == 403
    assert response.json()["code"] == "not_operator"
    assert _client(None).get(URL).status_code == 401
    assert InterHubTrade.objects.count() == before


def test_empty_matrix(site):  # type: ignore[no-untyped-def]
    operator = User.objects.create_user("op", is_staff=True)
    body = _client(operator).get(URL).json()
    assert (body["cells"], body["trades"], body["gpu_hours"], body["value"]) == ([], 0, 0, "0.00")


def test_admin_matrix_page(trades, client):  # type: ignore[no-untyped-def]
    operator = User.objects.create_superuser("op", "op@suanli.example", "pw-Secret-123")
    client.force_login(operator)
    listing = client.get("/admin/marketplace/interhubtrade/")
    assert listing.status_code == 200
    assert b'id="trade-matrix-link"' in listing.content
    page = client.get("/admin/marketplace/interhubtrade/matrix/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="inter-hub-matrix"' in html
    assert html.count("2 · 14 · ") == 3  # the cell, its row total and its column total
    assert "3 · 19 · " in html  # the grand total
    client.logout()
    member = UserFactory.create(organisation=None)
    client.force_login(member)
    assert client.get("/admin/marketplace/interhubtrade/matrix/").status_code == 302
