"""The operator dashboard in the admin: staff only, the numbers from the ledger, fixed queries."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from marketplace.services import reservation_create
from tests.factories import DemandFactory, next_hour

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-Secret-123"))
    return client


def _book(buyer, offer, voucher, hours):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(buyer=buyer, voucher=voucher, earliest_start=next_hour(hours))
    demand.accelerators.add(offer.accelerator)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


def test_dashboard_numbers(operator, buyer, offer, voucher):
    _book(buyer, offer, voucher, 2)  # ¥80 bill, ¥48 from the voucher held
    DemandFactory.create(buyer=buyer, unmatched_reason="over_price")
    body = operator.get("/admin/dashboard/").content.decode()
    # issued ¥1,000, held ¥48, redeemed ¥0, left = ¥100 M budget − ¥1,000 issued
    assert "¥1,000.00" in body and "¥48.00" in body and "¥99,999,000.00" in body
    assert "every candidate offer is over your price limit" in body
    assert body.count("<svg viewBox") == 2
    assert voucher.face_value == Decimal("1000.00")


def test_dashboard_is_staff_only(buyer_user):
    client = Client()
    client.force_login(buyer_user)
    response = client.get("/admin/dashboard/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_dashboard_query_count_is_fixed(operator, buyer, offer, voucher):
    _book(buyer, offer, voucher, 2)
    with CaptureQueriesContext(connection) as ctx:
        operator.get("/admin/dashboard/")
    few = len(ctx.captured_queries)
    for hours in (5, 8, 11):
        _book(buyer, offer, voucher, hours)
    with CaptureQueriesContext(connection) as ctx:
        operator.get("/admin/dashboard/")
    assert len(ctx.captured_queries) == few
