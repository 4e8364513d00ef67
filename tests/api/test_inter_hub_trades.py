"""The inter-hub trade matrix (exporting hub × importing hub: trades, GPU-hours, value CNY) in the
API (operators only) and in the operator admin: what counts (booked, delivered, nothing for a
cancelled, expired or failed reservation), the filters, refused parameters, permissions."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from accounts.models import User
from ledger.models import Hold
from marketplace.models import Hub, InterHubTrade, Reservation, Site
from marketplace.money import bill_amount
from marketplace.services import (
    reservation_cancel,
    reservation_create,
    reservation_fail,
    reservation_refund,
    reservation_report_usage,
    reservation_settle,
    reservations_advance,
    reservations_expire_unaccepted,
    wallet_deposit,
)
from tests.api.conftest import error_of
from tests.factories import (
    CatalogueEntryFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    ProgrammeFactory,
    SiteFactory,
    UserFactory,
    next_hour,
)
from vouchers.services import programme_fund, voucher_issue

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


def _matrix_operator() -> User:
    """Staff with the view permission on inter-hub trades (what the matrix asks for)."""
    operator, _ = User.objects.get_or_create(username="op", defaults={"is_staff": True})
    operator.user_permissions.add(Permission.objects.get(codename="view_interhubtrade"))
    return User.objects.get(pk=operator.pk)  # a fresh instance: no cached permissions


def _client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def test_operator_gets_the_matrix(trades):  # type: ignore[no-untyped-def]
    gansu, home = trades
    operator = _matrix_operator()
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


def test_members_are_refused_and_anonymous_unauthenticated(trades, buyer, provider):  # type: ignore[no-untyped-def]
    before = InterHubTrade.objects.count()
    for organisation in (buyer, provider):
        member = UserFactory.create(organisation=organisation)
        # refused before the parameters are read: a bad one does not turn the 403 into a 400
        for query in ("", "?exporting_hub=bogus"):
            assert error_of(_client(member).get(URL + query)) == (403, "not_operator", None)
    assert error_of(_client(None).get(URL))[:2] == (401, "not_authenticated")
    assert InterHubTrade.objects.count() == before


def test_empty_matrix(site):  # type: ignore[no-untyped-def]
    operator = _matrix_operator()
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


def _operator() -> APIClient:
    return _client(_matrix_operator())


def _cells(body: dict) -> dict[tuple[str, str], tuple[int, int, str]]:  # type: ignore[type-arg]
    return {
        (c["exporting_hub"], c["importing_hub"]): (c["trades"], c["gpu_hours"], c["value"])
        for c in body["cells"]
    }


def _gansu_reservation(gpu_hours: int) -> Reservation:
    trade = InterHubTrade.objects.get(exporting_hub__code="gansu", gpu_hours=gpu_hours)
    return trade.reservation


@pytest.mark.parametrize("how", ["cancel", "fail"])
def test_a_cancelled_or_failed_reservation_leaves_the_matrix(trades, buyer, how):  # type: ignore[no-untyped-def]
    gansu, home = trades
    reservation = _gansu_reservation(6)  # 2 GPUs × 3 h at ¥10 from Gansu
    if how == "cancel":
        reservation_cancel(reservation_id=reservation.pk, buyer=buyer)
    else:
        reservation_fail(reservation_id=reservation.pk, provider=reservation.provider)
    body = _operator().get(URL).json()
    assert _cells(body) == {
        (gansu.code, home.code): (1, 8, "80.00"),
        (home.code, gansu.code): (1, 5, "37.50"),
    }
    assert (body["trades"], body["gpu_hours"], body["value"]) == (2, 13, "117.50")
    assert InterHubTrade.objects.count() == 3  # the trade row stays; it is not counted


def test_an_expired_reservation_leaves_the_matrix(trades, buyer):  # type: ignore[no-untyped-def]
    gansu, home = trades
    west = InterHubTrade.objects.filter(exporting_hub=gansu).first().reservation.offer  # type: ignore[union-attr]
    demand = DemandFactory.create(
        buyer=buyer, gpu_count=1, duration_hours=1, locality_limit="national", auto_accept=False
    )
    held = reservation_create(demand_id=demand.pk, offer_id=west.pk, start=next_hour(2))
    assert held.status == Reservation.Status.HELD
    assert _cells(_operator().get(URL).json())[(gansu.code, home.code)] == (3, 15, "150.00")
    assert reservations_expire_unaccepted(now=held.created_at + timedelta(hours=1)) == 1
    body = _operator().get(URL).json()
    assert _cells(body)[(gansu.code, home.code)] == (2, 14, "140.00")
    assert (body["trades"], body["gpu_hours"], body["value"]) == (3, 19, "177.50")


@pytest.mark.parametrize(
    ("delivered", "gpu_hours", "value"),
    [
        # 1 × ¥7.4250 = ¥7.425: half-up to ¥7.43 (half-even or a binary float gives ¥7.42)
        (1, 1, "7.43"),
        (0, 0, "0.00"),
        (3, 3, "22.28"),  # all delivered: the bill, 3 × ¥7.4250 = ¥22.275 → ¥22.28
    ],
)
def test_a_short_delivery_counts_the_delivered_hours_and_billable_value(  # type: ignore[no-untyped-def]
    trades, buyer, provider, accelerator, delivered, gpu_hours, value
):
    gansu, home = trades
    offer = OfferFactory.create(
        provider=provider,
        site=Site.objects.get(code="qingyang"),
        accelerator=accelerator,
        price_per_gpu_hour=Decimal("7.4250"),
    )
    demand = DemandFactory.create(
        buyer=buyer, gpu_count=1, duration_hours=3, locality_limit="national"
    )
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=next_hour(2))
    assert r.bill == Decimal("22.28")
    assert reservations_advance(now=r.start)[0] == 5  # it and the fixture's four at that start
    reservation_report_usage(reservation_id=r.pk, provider=provider, delivered_gpu_hours=delivered)

    completed = _cells(_operator().get(URL).json())[(gansu.code, home.code)]
    assert completed == (3, 14 + gpu_hours, str(Decimal("140.00") + Decimal(value)))
    settled = reservation_settle(reservation_id=r.pk)
    body = _operator().get(URL).json()
    assert _cells(body)[(gansu.code, home.code)] == completed
    # the value counted is what settlement billed: the bill less the undelivered refund
    hold = Hold.objects.get(reservation=settled)
    billed = settled.bill - hold.refunded_voucher - hold.refunded_cash
    assert billed == Decimal(value) == bill_amount(1, delivered, offer.price_per_gpu_hour)
    assert (body["trades"], body["gpu_hours"]) == (4, 19 + gpu_hours)
    assert body["value"] == str(Decimal("177.50") + Decimal(value))


def test_refunds_after_settlement_are_taken_off_the_value(trades, buyer):  # type: ignore[no-untyped-def]
    # given the 2 GPU × 3 h Gansu booking (¥60.00) delivered in full and settled
    gansu, home = trades
    r = _gansu_reservation(6)
    assert reservations_advance(now=r.start)[0] == 4
    reservations_advance(now=r.end)
    settled = reservation_settle(reservation_id=r.pk)
    assert _cells(_operator().get(URL).json())[(gansu.code, home.code)] == (2, 14, "140.00")
    # when an operator refunds ¥12.34 of it on a dispute, then ¥5.00 as a service-level credit
    reservation_refund(reservation_id=settled.pk, amount=Decimal("12.34"))
    reservation_refund(reservation_id=settled.pk, amount=Decimal("5.00"), kind="sla_credit")
    # then the trade's value is what the buyer kept paying; its GPU-hours were delivered
    body = _operator().get(URL).json()
    assert _cells(body)[(gansu.code, home.code)] == (2, 14, "122.66")
    assert (body["trades"], body["gpu_hours"], body["value"]) == (3, 19, "160.16")
    hold = Hold.objects.get(reservation=settled)
    assert hold.refunded_voucher + hold.refunded_cash == Decimal("17.34")


@pytest.mark.parametrize("mode", ["point_of_sale", "reimbursement"])
def test_a_refund_of_a_voucher_paid_trade_takes_off_exactly_the_refund(  # type: ignore[no-untyped-def]
    trades, buyer, provider, accelerator, mode
):
    # given a Gansu booking paid partly with a voucher of a programme in ``mode``, settled
    gansu, home = trades
    programme = ProgrammeFactory.create(redemption_mode=mode)
    programme_fund(programme)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.00"))
    offer = OfferFactory.create(
        provider=provider, site=Site.objects.get(code="qingyang"), accelerator=accelerator
    )
    demand = DemandFactory.create(
        buyer=buyer, gpu_count=2, duration_hours=3, locality_limit="national", voucher=voucher
    )
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=next_hour(2))
    assert r.voucher_part > 0
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    reservation_settle(reservation_id=r.pk)
    before = Decimal(_cells(_operator().get(URL).json())[(gansu.code, home.code)][2])
    # when an operator refunds ¥12.34 of it on a dispute
    reservation_refund(reservation_id=r.pk, amount=Decimal("12.34"))
    # then the trade's value drops by the refund, whichever way the voucher redeems
    after = Decimal(_cells(_operator().get(URL).json())[(gansu.code, home.code)][2])
    assert before - after == Decimal("12.34")


def test_filters_by_hub(trades):  # type: ignore[no-untyped-def]
    gansu, home = trades
    client = _operator()
    body = client.get(URL, {"exporting_hub": gansu.code}).json()
    assert _cells(body) == {(gansu.code, home.code): (2, 14, "140.00")}
    assert [h["code"] for h in body["hubs"]] == sorted([gansu.code, home.code])  # every hub
    body = client.get(URL, {"importing_hub": gansu.code}).json()
    assert _cells(body) == {(home.code, gansu.code): (1, 5, "37.50")}
    body = client.get(URL, {"exporting_hub": gansu.code, "importing_hub": gansu.code}).json()
    assert (body["cells"], body["trades"], body["value"]) == ([], 0, "0.00")


def test_filters_by_when_booked(trades):  # type: ignore[no-untyped-def]
    InterHubTrade.objects.filter(gpu_hours=6).update(
        created_at=datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    )
    InterHubTrade.objects.filter(gpu_hours=8).update(
        created_at=datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    )
    InterHubTrade.objects.filter(gpu_hours=5).update(
        created_at=datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    )
    client = _operator()

    def totals(**query: str) -> tuple[int, int, str]:
        response = client.get(URL, query)
        assert response.status_code == 200, response.content
        body = response.json()
        return body["trades"], body["gpu_hours"], body["value"]

    assert totals(booked_after="2026-12-01") == (2, 13, "117.50")  # a date: 00:00 UTC, inclusive
    assert totals(booked_before="2026-12-01") == (1, 6, "60.00")  # exclusive
    assert totals(booked_after="2026-12-01", booked_before="2026-12-02") == (1, 8, "80.00")
    # an offset is converted: 08:00 in Shanghai is 00:00 UTC
    assert totals(booked_after="2026-12-01T08:00:00+08:00") == (2, 13, "117.50")
    assert totals(booked_after="2026-12-01T00:00:01Z") == (1, 5, "37.50")
    assert totals(booked_before="2026-11-30T23:00:00Z") == (0, 0, "0.00")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("exporting_hub=bogus", "exporting_hub"),
        ("importing_hub=bogus", "importing_hub"),
        ("exporting_hub=", "exporting_hub"),
        ("booked_after=notadate", "booked_after"),
        ("booked_after=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-12-01", "booked_after"),  # ２０２６
        ("booked_before=2026-12-01T08:00:00%D9%A0Z", "booked_before"),  # an Arabic-Indic 0
        ("booked_before=2026-02-30", "booked_before"),
        ("booked_before=2026-13-01T00:00:00Z", "booked_before"),
        ("booked_after=2026-12-01T08:00:00", "booked_after"),  # no offset
        ("booked_after=0001-01-01T00:00:00%2B01:00", "booked_after"),  # before year 1 in UTC
        ("booked_after=2026-12-02&booked_before=2026-12-01", "booked_before"),
        ("booked_after=2026-12-01&booked_before=2026-12-01", "booked_before"),
        ("booked_after=2026-12-01&booked_after=2026-12-02", "booked_after"),
        ("page=abc", "page"),
        ("page_size=10", "page_size"),
        ("from=notadate", "from"),
        ("hub=gansu", "hub"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(trades, query, field):  # type: ignore[no-untyped-def]
    response = _operator().get(f"{URL}?{query}")
    assert error_of(response) == (400, "invalid", field)


def test_an_unknown_parameter_says_so(trades):  # type: ignore[no-untyped-def]
    body = _operator().get(URL, {"from": "2026-12-01"}).json()
    assert body["errors"] == {"from": ["unknown query parameter"]}


def test_the_schema_documents_the_filters(anon_client):  # type: ignore[no-untyped-def]
    schema = anon_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    parameters = schema["paths"][URL]["get"]["parameters"]
    assert {p["name"]: p["in"] for p in parameters} == {
        "exporting_hub": "query",
        "importing_hub": "query",
        "booked_after": "query",
        "booked_before": "query",
    }


ADMIN_MATRIX = "/admin/marketplace/interhubtrade/matrix/"


def _staff(client, *permissions: str) -> User:  # type: ignore[no-untyped-def]
    user = User.objects.create_user(f"staff-{'-'.join(permissions)}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    client.force_login(user)
    return user


def test_admin_matrix_needs_the_view_permission(trades, client):  # type: ignore[no-untyped-def]
    _staff(client)
    assert client.get("/admin/marketplace/interhubtrade/").status_code == 403
    assert client.get(ADMIN_MATRIX).status_code == 403
    client.logout()
    _staff(client, "view_interhubtrade")
    assert client.get("/admin/marketplace/interhubtrade/").status_code == 200
    page = client.get(ADMIN_MATRIX)
    assert page.status_code == 200
    assert "3 · 19 · " in page.content.decode()


def test_admin_matrix_filters(trades, client):  # type: ignore[no-untyped-def]
    gansu, _ = trades
    _staff(client, "view_interhubtrade")
    cancelled = _gansu_reservation(8)
    reservation_cancel(reservation_id=cancelled.pk, buyer=cancelled.buyer)
    page = client.get(ADMIN_MATRIX, {"exporting_hub": gansu.code, "booked_after": "2000-01-01"})
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="matrix-filters"' in html
    assert f'<option value="{gansu.code}" selected>' in html
    # only the Gansu → home trade of 6 GPU-hours (the other was cancelled); the home → Gansu
    # trade is filtered out
    assert '<td class="num" id="matrix-total">1 · 6 · ' in html
    assert html.count("1 · 6 · ") == 4  # the cell, its row and column totals, the grand total
    assert "1 · 5 · " not in html
    # the form submitted as it first shows (every field empty) filters nothing
    empty = {"exporting_hub": "", "importing_hub": "", "booked_after": "", "booked_before": ""}
    page = client.get(ADMIN_MATRIX, empty)
    assert page.status_code == 200
    assert '<td class="num" id="matrix-total">2 · 11 · ' in page.content.decode()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"exporting_hub": "bogus"}, "exporting_hub: Select a valid choice."),
        ({"booked_after": "notadate"}, "booked_after: enter an ISO 8601 date"),
        ({"booked_before": "2026-12-01T00:00:00"}, "booked_before: must include a time zone"),
        ({"page": "abc"}, "page: unknown query parameter"),
        ({"importing_hub": ["gansu", "gansu"]}, "importing_hub: give this parameter once"),
    ],
)
def test_admin_matrix_bad_filters_show_a_message(trades, client, query, message):  # type: ignore[no-untyped-def]
    _staff(client, "view_interhubtrade")
    page = client.get(ADMIN_MATRIX, query)
    assert page.status_code == 400
    html = page.content.decode()
    assert 'id="matrix-errors"' in html
    assert message in html
    assert 'id="inter-hub-matrix"' not in html  # no unfiltered matrix shown as if filtered
    assert Hub.objects.count() == 2


def test_the_api_matrix_asks_the_admins_view_permission(trades):  # type: ignore[no-untyped-def]
    # given staff without the view permission on inter-hub trades: refused, as by the admin
    staff = User.objects.create_user("staff-no-perm", is_staff=True)
    assert error_of(_client(staff).get(URL)) == (403, "not_operator", None)
    # and with it, or as a superuser, the matrix
    assert _client(_matrix_operator()).get(URL).status_code == 200
    root = User.objects.create_superuser("root", "root@suanli.example", "pw-Secret-123")
    assert _client(root).get(URL).status_code == 200
