"""The operator dashboard in the admin: staff only, the numbers from the ledger, fixed queries."""

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from marketplace.services import reservation_cancel, reservation_create
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


def _budget_row(client: Client, programme_name: str) -> list[str]:
    body = client.get("/admin/dashboard/").content.decode()
    table = body.split('<table id="budgets">', 1)[1].split("</table>", 1)[0]
    for row in re.findall(r"<tr><th scope=\"row\">(.*?)</tr>", table):
        if row.startswith(programme_name + "<"):
            return re.findall(r'<td class="num">(.*?)</td>', row)
    raise AssertionError(f"no budget row for {programme_name}")


def test_used_this_year_follows_the_usage_counter_the_holds_are_checked_against(
    operator, buyer, offer, voucher
):
    name = voucher.programme.name
    annual, used, *_ = _budget_row(operator, name)
    assert used == "¥0.00"
    # a hold takes ¥48 of the voucher against this year's budget
    r = _book(buyer, offer, voucher, 2)
    assert _budget_row(operator, name)[:2] == [annual, "¥48.00"]
    # cancelled before it starts: the voucher part goes back, and so does the year's usage
    reservation_cancel(reservation_id=r.pk, buyer=buyer)
    assert _budget_row(operator, name)[:2] == [annual, "¥0.00"]


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


def test_each_section_shows_only_to_staff_who_may_view_what_it_sums(buyer, offer, voucher):
    from django.contrib.auth.models import Permission

    _book(buyer, offer, voucher, 2)
    # given staff holding only the view permission on inter-hub trades
    staff = User.objects.create_user("trade-watcher", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_interhubtrade"))
    client = Client()
    client.force_login(staff)
    body = client.get("/admin/dashboard/").content.decode()
    # then the trade matrix shows, and nothing it may not see (budgets, vouchers, disputes …)
    assert 'id="trade-matrix"' in body
    for section in ('id="budgets"', 'id="hub-days"', 'id="unserved"', 'id="disputes"'):
        assert section not in body
    assert "Vouchers by status" not in body and "¥1,000.00" not in body
    # and staff with no permission at all see no section, and are told why
    bare = User.objects.create_user("bare-staff", is_staff=True)
    client.force_login(bare)
    body = client.get("/admin/dashboard/").content.decode()
    assert 'id="trade-matrix"' not in body and 'id="budgets"' not in body
    assert "no permission to view any section" in body
