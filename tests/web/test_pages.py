"""The SME web UI through Django's test client: every page renders, writes go through the
services (refusals change nothing), another organisation's rows are 404, both languages."""

import csv
import io
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.test import Client

from accounts.models import Membership, Organisation, User
from ledger.models import Account
from ledger.services import organisation_account
from marketplace.matching.cycle import matching_cycle_run
from marketplace.models import Demand, Reservation
from marketplace.services import reservation_create
from tests.factories import (
    DemandFactory,
    OfferFactory,
    SiteFactory,
    UserFactory,
    credit_code,
    next_hour,
)
from vouchers.models import VoucherApplication

pytestmark = pytest.mark.django_db
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _local(dt):  # type: ignore[no-untyped-def]
    return dt.astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")


def _book(buyer, offer, voucher=None, hours_ahead=48):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(
        buyer=buyer,
        voucher=voucher,
        earliest_start=next_hour(hours_ahead),
    )
    demand.accelerators.add(offer.accelerator)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


# --- Access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/dashboard/", "/offers/", "/demands/new/", "/vouchers/", "/statement/"]
)
def test_anonymous_is_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_another_buyers_reservation_and_demand_are_404(web, other_buyer, offer):
    # given a reservation and a demand of another SME
    r = _book(other_buyer, offer)
    # then neither shows, nor can be cancelled
    assert web.get(f"/reservations/{r.pk}/").status_code == 404
    assert web.get(f"/demands/{r.demand_id}/").status_code == 404
    assert web.post(f"/reservations/{r.pk}/cancel/").status_code == 404
    assert web.post(f"/demands/{r.demand_id}/cancel/").status_code == 404
    assert web.get("/reservations/not-a-uuid/").status_code == 404
    r.refresh_from_db()
    assert r.status == Reservation.Status.CONFIRMED


# --- Sign-up, login, password reset --------------------------------------------------------


def _signup_data(**over):  # type: ignore[no-untyped-def]
    site = SiteFactory.create(code="chengdu-home")
    data = {
        "username": "newsme",
        "email": "ops@newsme.example",
        "password1": "a-Long-pass-2026",
        "password2": "a-Long-pass-2026",
        "organisation_name": "New SME Ltd",
        "credit_code": credit_code(),
        "kind": "sme",
        "home_site": str(site.pk),
    }
    data.update(over)
    return data


def test_signup_registers_a_pending_organisation_and_logs_in(client):
    response = client.post("/signup/", _signup_data())
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    org = Organisation.objects.get(name="New SME Ltd")
    assert org.status == Organisation.Status.PENDING
    assert Membership.objects.get(organisation=org).user.username == "newsme"
    page = client.get("/dashboard/")
    assert "pending approval" in page.content.decode()


def test_signup_with_a_bad_credit_code_changes_nothing(client):
    data = _signup_data(credit_code="91510100000000001X")
    response = client.post("/signup/", data)
    assert response.status_code == 400
    assert response.context["form"].errors["credit_code"]
    assert not User.objects.filter(username="newsme").exists()
    assert not Organisation.objects.filter(name="New SME Ltd").exists()


def test_signup_with_a_taken_credit_code_names_the_field(client, buyer):
    response = client.post("/signup/", _signup_data(credit_code=buyer.credit_code))
    assert response.status_code == 400
    assert response.context["form"].errors["credit_code"] == ["already registered"]
    assert not User.objects.filter(username="newsme").exists()


def test_login_and_password_reset_by_mail(client, buyer_user):
    buyer_user.email = "me@buyer.example"
    buyer_user.save()
    response = client.post("/login/", {"username": "buyer", "password": "pw-Secret-123"})
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    client.post("/logout/")
    response = client.post("/password-reset/", {"email": "me@buyer.example"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/password-reset/" in line)
    path = link.split("testserver", 1)[1]
    form_page = client.get(path, follow=True)
    assert form_page.status_code == 200
    set_url = form_page.redirect_chain[-1][0]
    done = client.post(
        set_url, {"new_password1": "Brand-new-pass-9", "new_password2": "Brand-new-pass-9"}
    )
    assert done.status_code == 302
    buyer_user.refresh_from_db()
    assert buyer_user.check_password("Brand-new-pass-9")


# --- Dashboard -----------------------------------------------------------------------------


def test_dashboard_shows_wallet_vouchers_demands_reservations_and_chart(web, buyer, offer, voucher):
    r = _book(buyer, offer, voucher)
    DemandFactory.create(buyer=buyer)
    body = web.get("/dashboard/").content.decode()
    # wallet: ¥100,000 less the ¥32 cash part, with thousands separators
    assert "¥99,968.00" in body
    # voucher: ¥1,000 less the ¥48 voucher part
    assert "¥952.00" in body and "Chengdu compute vouchers 2025" in body
    assert f"/reservations/{r.pk}/" in body
    assert "<svg" in body and "voucher" in body


def test_wallet_deposit_from_the_dashboard(web, buyer):
    web.post("/wallet/deposit/", {"amount": "250.50"})
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100250.50")
    response = web.post("/wallet/deposit/", {"amount": "-5"}, follow=True)
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100250.50")
    assert "error" in response.content.decode()


# --- Offers ----------------------------------------------------------------------------------


def test_offer_search_filters_and_sorts(web, offer):
    body = web.get("/offers/?accelerator=A100-80G&max_price=10&sort=-price").content.decode()
    assert "A100-80G" in body and "¥10.0000" in body
    assert "1 offer" in web.get("/offers/?min_gpus=8").content.decode()
    assert "0 offers" in web.get("/offers/?min_gpus=9").content.decode()
    assert "0 offers" in web.get("/offers/?max_price=9.99").content.decode()


@pytest.mark.parametrize(
    "query", ["accelerator=NOPE", "max_price=abc", "min_gpus=0", "sort=bogus", "tier=moon"]
)
def test_offer_search_bad_filter_is_400_naming_the_field(web, offer, query):
    response = web.get(f"/offers/?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.context["form"].errors
    assert response.context["page"] is None


# --- Demand form -----------------------------------------------------------------------------


def _demand_data(**over):  # type: ignore[no-untyped-def]
    start = next_hour(2)
    data = {
        "accelerators": ["A100-80G"],
        "gpu_count": "2",
        "duration_hours": "3",
        "earliest_start": _local(start),
        "latest_end": _local(start + timedelta(hours=12)),
        "max_price_per_gpu_hour": "12.5",
        "locality_limit": "national",
        "split": "none",
        "auto_accept": "on",
    }
    data.update(over)
    return data


def test_post_demand_without_javascript(web, buyer, offer):
    response = web.post("/demands/new/", {**_demand_data(), "action": "post"})
    demand = Demand.objects.get(buyer=buyer)
    assert response.status_code == 302 and response["Location"] == f"/demands/{demand.pk}/"
    assert (demand.gpu_count, demand.duration_hours) == (2, 3)
    # the form's local time (Asia/Shanghai) is stored as the UTC instant
    assert demand.earliest_start == next_hour(2)
    assert [a.code for a in demand.accelerators.all()] == ["A100-80G"]


def test_post_a_split_demand_and_see_its_parts(web, web_zh, buyer, provider, site, accelerator):
    # given two 8-GPU offers at the home site
    for _ in range(2):
        OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    # when a 16-GPU demand is posted allowing a split at one site in parts of at least 8
    data = _demand_data(gpu_count="16", split="site", min_gpus_per_part="8")
    response = web.post("/demands/new/", {**data, "action": "post"})
    demand = Demand.objects.get(buyer=buyer)
    assert response.status_code == 302
    assert (demand.gpu_count, demand.split, demand.min_gpus_per_part) == (16, "site", 8)
    matching_cycle_run(buyer.home_site.hub_id)
    # then the demand page shows the choice and one row per part, 8 GPUs each
    page = web.get(f"/demands/{demand.pk}/").content.decode()
    assert "yes, across offers at one site · at least 8 GPUs per part" in page
    assert page.count('<td class="num">8</td>') == 2
    # and in Chinese
    zh = web_zh.get(f"/demands/{demand.pk}/").content.decode()
    assert "是：在同一站点的多个报价之间拆分 · 每部分至少 8 个 GPU" in zh


def test_a_split_part_minimum_over_the_gpus_is_a_form_error(web, buyer, offer):
    data = _demand_data(split="hub", min_gpus_per_part="3")
    response = web.post("/demands/new/", {**data, "action": "post"})
    assert response.status_code == 400
    assert response.context["form"].errors["min_gpus_per_part"] == ["must be at most gpu_count"]
    assert not Demand.objects.filter(buyer=buyer).exists()


def test_refused_demand_shows_the_service_message_and_creates_nothing(web, buyer, offer):
    start = next_hour(2)
    data = _demand_data(latest_end=_local(start + timedelta(hours=2)), duration_hours="3")
    response = web.post("/demands/new/", {**data, "action": "post"})
    assert response.status_code == 400
    # the same message and field as the API (marketplace.services.demand_check)
    assert response.context["form"].errors["duration_hours"] == ["window cannot hold the duration"]
    assert not Demand.objects.filter(buyer=buyer).exists()


def test_pending_organisation_cannot_post(web, buyer, offer):
    Organisation.objects.filter(pk=buyer.pk).update(status="pending")
    response = web.post("/demands/new/", {**_demand_data(), "action": "post"})
    assert response.status_code == 400
    assert "organisation is not approved" in response.content.decode()
    assert not Demand.objects.filter(buyer=buyer).exists()


def test_live_quote_splits_the_bill_and_says_why_a_voucher_does_not_apply(
    web, buyer, offer, voucher
):
    # 2 GPUs × 3 h × ¥10 = ¥60; 60 % voucher share = ¥36
    data = {**_demand_data(), "voucher": str(voucher.pk)}
    body = web.post("/demands/quote/", data).content.decode()
    assert "¥60.00" in body and "¥36.00" in body and "¥24.00" in body
    # without JavaScript the "Show quote" button renders the same quote into the page
    page = web.post("/demands/new/", {**data, "action": "quote"}).content.decode()
    assert "¥36.00" in page
    assert not Demand.objects.exists()
    # a provider outside the programme's catalogue: no voucher part, and the reason shown
    voucher.programme.catalogue.all().delete()
    body = web.post("/demands/quote/", data).content.decode()
    assert "¥0.00" in body and "catalogue" in body


def test_live_quote_without_a_fitting_offer(web, offer):
    body = web.post("/demands/quote/", _demand_data(max_price_per_gpu_hour="1")).content.decode()
    assert "No active offer fits" in body


# --- Demand and reservation detail, cancel ----------------------------------------------------


def test_demand_detail_explains_why_no_match(web, buyer):
    demand = DemandFactory.create(buyer=buyer, unmatched_reason="over_price")
    body = web.get(f"/demands/{demand.pk}/").content.decode()
    assert "every candidate offer is over your price limit" in body


def test_demand_detail_counts_blocked_offers_and_names_the_near_miss(web, web_zh, buyer, offer):
    # the only offer costs ¥10/GPU-hour; the demand's limit is ¥5: blocked by price, and the
    # cheapest offer over the limit is named with how far over it is (the engine's explain)
    demand = DemandFactory.create(
        buyer=buyer, max_price_per_gpu_hour=Decimal("5.0000"), gpu_count=1
    )
    body = web.get(f"/demands/{demand.pk}/").content.decode()
    assert "1 active offer considered." in body
    assert 'id="why-blocked"' in body
    assert '<td>over your price limit</td><td class="num">1</td>' in body
    assert "at ¥10.0000 per GPU-hour (¥5.0000 over)" in body
    zh = web_zh.get(f"/demands/{demand.pk}/").content.decode()
    assert "超出您的限价" in zh and "考虑了 1 个有效报价" in zh


def test_reservation_detail_has_timeline_and_bill(web, buyer, offer, voucher):
    r = _book(buyer, offer, voucher)
    body = web.get(f"/reservations/{r.pk}/").content.decode()
    assert "¥80.00" in body and "¥48.00" in body and "¥32.00" in body
    assert body.count("<li><time") == 2  # held → confirmed


def test_cancel_shows_the_fee_then_cancels(web, buyer, offer):
    # a reservation starting within the 24 h fee window: 10 % of ¥80 = ¥8.00
    r = _book(buyer, offer, hours_ahead=3)
    wallet = organisation_account(buyer, Account.Kind.WALLET)
    before = wallet.balance
    page = web.get(f"/reservations/{r.pk}/cancel/").content.decode()
    assert 'id="cancel-fee">¥8.00' in page
    r.refresh_from_db()
    assert r.status == Reservation.Status.CONFIRMED  # showing the fee changes nothing
    response = web.post(f"/reservations/{r.pk}/cancel/")
    assert response.status_code == 302
    r.refresh_from_db()
    wallet.refresh_from_db()
    assert r.status == Reservation.Status.CANCELLED
    assert wallet.balance == before + Decimal("72.00")
    # cancelling twice is refused with the service's message, nothing moves
    again = web.post(f"/reservations/{r.pk}/cancel/", follow=True).content.decode()
    assert "cannot become cancelled" in again
    wallet.refresh_from_db()
    assert wallet.balance == before + Decimal("72.00")


# --- Vouchers, statement ---------------------------------------------------------------------


def test_voucher_application(web, buyer, programme):
    response = web.post("/vouchers/", {"programme": str(programme.pk), "amount": "5000.00"})
    assert response.status_code == 302
    application = VoucherApplication.objects.get(buyer=buyer)
    assert application.amount == Decimal("5000.00")
    assert "submitted" in web.get("/vouchers/").content.decode()
    bad = web.post("/vouchers/", {"programme": str(programme.pk), "amount": "0"})
    assert bad.status_code == 400
    assert VoucherApplication.objects.filter(buyer=buyer).count() == 1


def test_statement_csv(web, buyer, offer, voucher):
    _book(buyer, offer, voucher)
    response = web.get("/statement.csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert rows[0][0] == "time_asia_shanghai"
    amounts = sorted(Decimal(row[6]) for row in rows[1:])
    # the hold (−¥48 voucher, −¥32 wallet), the voucher issue (+¥1,000), the deposit
    assert amounts == [
        Decimal("-48.00"),
        Decimal("-32.00"),
        Decimal("1000.00"),
        Decimal("100000.00"),
    ]
    assert rows[1][0].endswith("+08:00")


# --- Languages -------------------------------------------------------------------------------


def test_chinese_pages(web_zh, buyer, offer, voucher):
    r = _book(buyer, offer, voucher)
    assert "钱包" in web_zh.get("/dashboard/").content.decode()
    assert "账单" in web_zh.get(f"/reservations/{r.pk}/").content.decode()
    assert "发布需求" in web_zh.get("/demands/new/").content.decode()


def test_language_switch_persists(web):
    response = web.post("/i18n/setlang/", {"language": "zh-hans", "next": "/dashboard/"})
    assert response.status_code == 302
    assert "钱包" in web.get("/dashboard/").content.decode()


# --- Fixed query counts ----------------------------------------------------------------------


def _queries(client: Client, path: str) -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        assert client.get(path).status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize(
    "path",
    ["/dashboard/", "/offers/", "/reservations/", "/vouchers/", "/statement/", "/demands/new/"],
)
def test_page_query_count_does_not_grow_with_rows(web, buyer, offer, voucher, path):
    _book(buyer, offer, voucher, hours_ahead=30)
    DemandFactory.create(buyer=buyer)
    few = _queries(web, path)
    for i in range(4):
        _book(buyer, offer, voucher, hours_ahead=40 + 3 * i)
        DemandFactory.create(buyer=buyer)
    assert _queries(web, path) == few
    assert few <= 16


def test_detail_page_query_counts_are_fixed(web, buyer, offer, voucher):
    r = _book(buyer, offer, voucher)
    for path, limit in [
        (f"/reservations/{r.pk}/", 10),
        (f"/reservations/{r.pk}/cancel/", 8),
        (f"/demands/{r.demand_id}/", 10),
    ]:
        assert _queries(web, path) <= limit, path


def test_user_without_organisation_is_sent_to_signup():
    client = Client()
    client.force_login(UserFactory.create(username="lonely"))
    assert client.get("/dashboard/")["Location"] == "/signup/"


def test_every_string_of_the_catalogue_is_translated():
    from pathlib import Path

    from django.conf import settings

    po = Path(settings.BASE_DIR, "locale", "zh_Hans", "LC_MESSAGES", "django.po").read_text()
    blocks = po.split("\n\n")[1:]
    assert len(blocks) > 200
    assert 'msgstr ""\n' not in po.split("\n\n", 1)[1] + "\n"
    assert "#, fuzzy" not in po
    mo = Path(settings.BASE_DIR, "locale", "zh_Hans", "LC_MESSAGES", "django.mo")
    assert mo.stat().st_size > 5000
