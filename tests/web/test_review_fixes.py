"""Defects found by the review of the web UI (issue 6): malformed ids, double submits, the live
quote, validation messages against the API's, provider-only organisations, far-off dates,
cancelled reservations, and Chinese messages for the services' refusals."""

import uuid
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.test import Client

from ledger.models import Account, IdempotencyKey
from ledger.services import organisation_account
from marketplace.errors import Conflict, NotFound, ValidationFailed
from marketplace.models import Demand, Reservation
from marketplace.services import (
    demand_cancel,
    offer_set_status,
    reservation_accept,
    reservation_cancel,
    reservation_create,
)
from tests.factories import DemandFactory, SiteFactory, credit_code, next_hour

pytestmark = pytest.mark.django_db
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _local(dt):  # type: ignore[no-untyped-def]
    return dt.astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")


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


def _api_demand(**over):  # type: ignore[no-untyped-def]
    start = next_hour(2)
    data = {
        "accelerators": ["A100-80G"],
        "gpu_count": 2,
        "duration_hours": 3,
        "earliest_start": start.isoformat(),
        "latest_end": (start + timedelta(hours=12)).isoformat(),
        "max_price_per_gpu_hour": "12.5",
    }
    data.update(over)
    return data


def _book(buyer, offer, hours_ahead=48):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(buyer=buyer, earliest_start=next_hour(hours_ahead))
    demand.accelerators.add(offer.accelerator)
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


# --- 1. Malformed ids are 404, never 500 ----------------------------------------------------


@pytest.mark.parametrize("bad", ["not-a-uuid", "123", "0" * 40])
def test_services_treat_a_malformed_id_as_not_found(buyer, provider, bad):
    with pytest.raises(NotFound):
        demand_cancel(demand_id=bad, buyer=buyer)
    with pytest.raises(NotFound):
        reservation_cancel(reservation_id=bad, buyer=buyer)
    with pytest.raises(NotFound):
        reservation_accept(reservation_id=bad, buyer=buyer)
    with pytest.raises(NotFound):
        offer_set_status(offer_id=bad, provider=provider, status="paused")


def test_cancelling_a_malformed_demand_id_is_404_in_the_ui_and_the_api(web, buyer_client, buyer):
    demand = DemandFactory.create(buyer=buyer)
    assert web.post("/demands/not-a-uuid/cancel/").status_code == 404
    assert web.post("/reservations/not-a-uuid/cancel/").status_code == 404
    assert web.post("/reservations/not-a-uuid/accept/").status_code == 404
    response = buyer_client.post("/api/v1/demands/not-a-uuid/cancel/")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    demand.refresh_from_db()
    assert demand.status == Demand.Status.OPEN


# --- 2. The demand form is idempotent ----------------------------------------------------------


def test_the_demand_form_carries_a_one_time_token(web, offer):
    page = web.get("/demands/new/")
    token = page.context["form"].initial["form_token"]
    assert isinstance(token, uuid.UUID)
    assert f'type="hidden" name="form_token" value="{token}"' in page.content.decode()
    # each form gets its own
    assert web.get("/demands/new/").context["form"].initial["form_token"] != token


def test_double_submit_posts_one_demand_and_leads_to_it(web, buyer, offer):
    data = {**_demand_data(), "form_token": str(uuid.uuid4()), "action": "post"}
    first = web.post("/demands/new/", data)
    second = web.post("/demands/new/", data)
    demand = Demand.objects.get(buyer=buyer)  # exactly one
    assert first.status_code == 302 and first["Location"] == f"/demands/{demand.pk}/"
    assert second.status_code == 302 and second["Location"] == f"/demands/{demand.pk}/"
    # a new form (a new token) posts a second demand
    web.post("/demands/new/", {**data, "form_token": str(uuid.uuid4())})
    assert Demand.objects.filter(buyer=buyer).count() == 2


def test_a_refused_post_releases_the_token_for_the_corrected_form(web, buyer, offer):
    token = str(uuid.uuid4())
    start = next_hour(2)
    bad = _demand_data(latest_end=_local(start + timedelta(hours=2)), duration_hours="3")
    response = web.post("/demands/new/", {**bad, "form_token": token, "action": "post"})
    assert response.status_code == 400
    assert not Demand.objects.exists() and not IdempotencyKey.objects.exists()
    fixed = web.post("/demands/new/", {**_demand_data(), "form_token": token, "action": "post"})
    assert fixed.status_code == 302
    assert Demand.objects.filter(buyer=buyer).count() == 1


def test_a_token_is_the_users_own(web, buyer, offer, other_buyer):
    from tests.factories import UserFactory

    token = str(uuid.uuid4())
    data = {**_demand_data(), "form_token": token, "action": "post"}
    web.post("/demands/new/", data)
    other = Client()
    other.force_login(UserFactory.create(username="other", organisation=other_buyer))
    response = other.post("/demands/new/", data)
    assert response.status_code == 302
    assert Demand.objects.filter(buyer=other_buyer).count() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_double_submit_creates_one_demand(buyer_user, buyer, offer):
    import threading

    from django.db import connection

    data = {**_demand_data(), "form_token": str(uuid.uuid4()), "action": "post"}
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def submit() -> None:
        client = Client()
        client.force_login(buyer_user)
        barrier.wait()
        try:
            codes.append(client.post("/demands/new/", data).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [302] * 4
    assert Demand.objects.filter(buyer=buyer).count() == 1


# --- 5. The live quote refuses what posting refuses ---------------------------------------------


@pytest.mark.parametrize(
    ("over", "code", "field"),
    [
        ({"latest_end": "__before__"}, "window_invalid", "latest_end"),
        ({"earliest_start": "__half__"}, "not_whole_hour", "earliest_start"),
        ({"earliest_start": "__past__", "latest_end": "__past_end__"}, "window_in_past", None),
    ],
)
def test_live_quote_refuses_what_posting_refuses(web, buyer, offer, over, code, field):
    start = next_hour(2)
    values = {
        "__before__": _local(start - timedelta(hours=1)),
        "__half__": (start.astimezone(SHANGHAI) + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M"),
        "__past__": _local(start - timedelta(days=3)),
        "__past_end__": _local(start - timedelta(days=2)),
    }
    data = _demand_data(**{k: values[v] for k, v in over.items()})
    quote = web.post("/demands/quote/", data).content.decode()
    assert f'data-code="{code}"' in quote and "¥" not in quote
    posted = web.post("/demands/new/", {**data, "action": "post"})
    assert posted.status_code == 400
    assert not Demand.objects.exists()


def test_live_quote_refuses_a_price_over_the_limit(web, offer):
    data = _demand_data(max_price_per_gpu_hour="99999999.9999")
    quote = web.post("/demands/quote/", data).content.decode()
    assert "Ensure this value is less than or equal to 100000." in quote
    assert "quote-bill" not in quote


# --- 6. The same messages as the API ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "web_value", "api_value"),
    [
        ("max_price_per_gpu_hour", "NaN", "NaN"),
        ("max_price_per_gpu_hour", "abc", "abc"),
        ("max_price_per_gpu_hour", "-1", "-1"),
        ("max_price_per_gpu_hour", "0", "0"),
        ("max_price_per_gpu_hour", "1.23456", "1.23456"),
        ("max_price_per_gpu_hour", "99999999.9999", "99999999.9999"),
        ("gpu_count", "x", "x"),
        ("gpu_count", "0", 0),
        ("accelerators", "NOPE", ["NOPE"]),
    ],
)
def test_form_messages_are_the_apis(web, buyer_client, buyer, offer, field, web_value, api_value):
    response = web.post("/demands/new/", {**_demand_data(**{field: web_value}), "action": "post"})
    assert response.status_code == 400
    api = buyer_client.post("/api/v1/demands/", _api_demand(**{field: api_value}), format="json")
    assert api.status_code == 400
    body = api.json()
    api_messages = body.get("errors", {}).get(field) or [body["detail"]]
    assert response.context["form"].errors[field] == api_messages
    assert not Demand.objects.exists()


def test_unknown_accelerator_message_names_the_known_codes(web, offer):
    response = web.get("/offers/?accelerator=NOPE")
    assert response.status_code == 400
    assert response.context["form"].errors["accelerator"] == [
        "unknown accelerator 'NOPE'; known codes: A100-80G"
    ]
    # an alias resolves like through the API
    assert web.get("/offers/?accelerator=a100").status_code == 200


# --- 7. Provider-only organisations get the console -------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/dashboard/", "/demands/new/", "/offers/", "/vouchers/", "/statement/", "/reservations/"],
)
def test_a_provider_is_sent_to_the_console(provider_user, path):
    client = Client()
    client.force_login(provider_user)
    response = client.get(path)
    assert response.status_code == 302 and response["Location"] == "/console/"


def test_a_provider_cannot_post_a_demand_through_the_ui(provider_user, provider, offer):
    client = Client()
    client.force_login(provider_user)
    response = client.post("/demands/new/", {**_demand_data(), "action": "post"})
    assert response.status_code == 302 and response["Location"] == "/console/"
    assert not Demand.objects.exists()


# --- 8. Dates in a sane range -------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["start=0001-01-01T00:00", "end=9999-12-31T23:59", "start=1999-12-31T23:00"]
)
def test_offer_search_far_off_dates_are_a_form_error(web, offer, query):
    response = web.get(f"/offers/?{query}")
    assert response.status_code == 400
    field = query.split("=")[0]
    assert response.context["form"].errors[field] == ["Enter a date between 2000 and 2100."]


def test_demand_form_far_off_dates_are_a_form_error(web, buyer, offer):
    data = _demand_data(earliest_start="0001-01-01T00:00")
    response = web.post("/demands/new/", {**data, "action": "post"})
    assert response.status_code == 400
    assert response.context["form"].errors["earliest_start"]
    quote = web.post("/demands/quote/", data)
    assert quote.status_code == 200 and "2000" in quote.content.decode()
    assert not Demand.objects.exists()


def test_full_width_digits_in_a_date_are_a_form_error_as_in_the_api(web, buyer, offer):
    # Django reads "２０３０-01-01 08:00" as a date; the API refuses it, so the pages do too
    response = web.get("/offers/", {"start": "\uff12\uff10\uff13\uff10-01-01T08:00"})
    assert response.status_code == 400 and response.context["form"].errors["start"]
    data = _demand_data(earliest_start="\uff12\uff10\uff13\uff10-01-01T08:00")
    response = web.post("/demands/new/", {**data, "action": "post"})
    assert response.status_code == 400 and response.context["form"].errors["earliest_start"]
    assert not Demand.objects.exists()


# --- 9. Cancelled reservations ------------------------------------------------------------------


def test_cancel_page_of_a_cancelled_reservation_has_no_button(web, buyer, offer):
    r = _book(buyer, offer, hours_ahead=3)  # inside the fee window: ¥8.00 of ¥80
    assert web.post(f"/reservations/{r.pk}/cancel/").status_code == 302
    page = web.get(f"/reservations/{r.pk}/cancel/").content.decode()
    assert "already cancelled" in page
    assert "Confirm cancellation" not in page and "cancel-fee" not in page


def test_detail_of_a_cancelled_reservation_shows_fee_and_refund(web, buyer, offer):
    r = _book(buyer, offer, hours_ahead=3)
    wallet_before = organisation_account(buyer, Account.Kind.WALLET).balance
    web.post(f"/reservations/{r.pk}/cancel/")
    r.refresh_from_db()
    assert r.status == Reservation.Status.CANCELLED
    body = web.get(f"/reservations/{r.pk}/").content.decode()
    assert 'id="fee-charged">¥8.00' in body
    assert 'id="refund-cash">¥72.00' in body
    assert 'id="refund-voucher">¥0.00' in body
    assert organisation_account(buyer, Account.Kind.WALLET).balance == wallet_before + Decimal(
        "72.00"
    )


# --- 10. Sign-up with a malformed home site -------------------------------------------------------


def test_signup_with_a_malformed_home_site_is_a_normal_field_error(client):
    SiteFactory.create(code="chengdu-home")
    data = {
        "username": "newsme",
        "email": "ops@newsme.example",
        "password1": "a-Long-pass-2026",
        "password2": "a-Long-pass-2026",
        "organisation_name": "New SME Ltd",
        "credit_code": credit_code(),
        "kind": "sme",
        "home_site": "not-a-uuid",
    }
    response = client.post("/signup/", data)
    assert response.status_code == 400
    assert response.context["form"].errors["home_site"] == [
        "Select a valid choice. That choice is not one of the available choices."
    ]


# --- 4. Refusals in Chinese ---------------------------------------------------------------------


def test_domain_messages_are_translated_and_keep_english_as_the_service_says():
    from django.utils import translation

    from web.errors import domain_message

    cases = [
        ValidationFailed("must be at most 100000", field="x"),
        ValidationFailed("window already passed", code="window_in_past"),
        ValidationFailed(
            "must be a whole UTC hour (reservations use whole-hour intervals)",
            code="not_whole_hour",
        ),
        ValidationFailed("must be after earliest_start", code="window_invalid"),
        Conflict("reservation is cancelled, cannot become cancelled", code="illegal_transition"),
        Conflict("demand is matched", code="illegal_transition"),
        ValidationFailed("only buyers post demands", code="not_a_buyer"),
        ValidationFailed(
            "check character does not match (GB 32100-2015)", code="invalid_credit_code"
        ),
        ValidationFailed("already registered", code="duplicate_credit_code"),
        ValidationFailed(
            "Buyer cash wallet balance would go below zero", code="insufficient_funds"
        ),
        ValidationFailed(
            "unknown accelerator 'NOPE'; known codes: A100-80G", code="unknown_accelerator"
        ),
        Conflict("no free capacity for the whole window", code="capacity_exhausted"),
        Conflict("the time to accept has passed", code="accept_ttl_passed"),
        ValidationFailed("the programme is not in effect", code="programme_not_in_effect"),
        ValidationFailed(
            "below the programme's minimum voucher amount ¥100.00", code="below_minimum"
        ),
        ValidationFailed(
            "above the programme's per-buyer annual cap ¥50000.00", code="buyer_cap_exceeded"
        ),
        ValidationFailed(
            "the bill would be more than ¥999,999,999,999.99, the most a bill can hold",
            code="bill_too_large",
        ),
        ValidationFailed("the offer lists 8 GPUs", code="more_than_offered"),
        NotFound("no such demand", field="demand"),
    ]
    with translation.override("en"):
        assert [domain_message(e) for e in cases[:-1]] == [e.message for e in cases[:-1]]
    with translation.override("zh-hans"):
        zh = [domain_message(e) for e in cases]
    for exc, text in zip(cases, zh, strict=True):
        assert text != exc.message, exc.message
        assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
    assert "100000" in zh[0] and "NOPE" in zh[10] and "已取消" in zh[4]
    assert "¥999,999,999,999.99" in zh[-3] and "8 块" in zh[-2]
    # an unknown code keeps the service's message
    with translation.override("zh-hans"):
        assert domain_message(Conflict("odd", code="brand_new")) == "odd"


def test_refusals_on_chinese_pages_are_chinese(web_zh, buyer, offer, programme):
    start = next_hour(2)
    data = _demand_data(latest_end=_local(start + timedelta(hours=2)), duration_hours="3")
    response = web_zh.post("/demands/new/", {**data, "action": "post"})
    assert response.context["form"].errors["duration_hours"] == ["时间窗口容纳不下所需时长"]
    r = _book(buyer, offer, hours_ahead=30)
    web_zh.post(f"/reservations/{r.pk}/cancel/")
    again = web_zh.post(f"/reservations/{r.pk}/cancel/", follow=True).content.decode()
    assert "cannot become" not in again and "预订当前为“已取消”，无法变为“已取消”" in again
    bad = web_zh.post("/demands/new/", {**_demand_data(accelerators=["NOPE"]), "action": "post"})
    assert bad.context["form"].errors["accelerators"][0].startswith("未知的加速卡型号 'NOPE'")
