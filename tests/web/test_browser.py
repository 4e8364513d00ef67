"""End to end in a real browser (the system Chromium through Playwright) against a live
server, the test PostgreSQL database, Redis and a real Celery worker process.

A provider lists an offer in the console; an SME signs up; an operator approves the
organisation and a voucher application in the admin; the SME funds its wallet, watches the
live quote, posts a demand; the worker matches it; the SME sees the bill split, switches to
Chinese and cancels with the fee shown first. Screenshots of each main page go to
``artifacts/screenshots/`` (ignored by git).
"""

import os
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import Browser, Page, expect, sync_playwright

from accounts.models import Organisation, User
from marketplace.models import Demand, Offer, Reservation
from tests.factories import UserFactory, next_hour
from tests.marketplace.test_real_worker import worker_queue  # noqa: F401 - fixture
from vouchers.models import VoucherApplication

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"
TIMEOUT_MS = 60_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (done by .ci/run)")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # plain synchronous code between browser steps.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
            # The connection the test's own ORM calls used (with Playwright's sync API running)
            # outlived pytest-django's teardown, which then could not drop the test database
            # ("1 other session"; that session's last query was the test's own). Closing the
            # connections here, before that teardown, leaves none behind.
            connections.close_all()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _login(page: Page, url: str, username: str, password: str) -> None:
    page.goto(url)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.locator("form [type=submit]").last.click()


def _admin_action(page: Page, url: str, pk: object, action: str) -> None:
    page.goto(url)
    page.check(f"input[name='_selected_action'][value='{pk}']")
    page.select_option("select[name='action']", action)
    page.click("button[name='index']")
    expect(page.locator("ul.messagelist li.success")).to_be_visible()


@pytest.mark.worker
@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_sme_journey_in_a_real_browser(
    browser,
    live_server,
    worker_queue,  # noqa: F811 - the fixture imported above
    site,
    provider,
    accelerator,
    programme,
):
    UserFactory.create(username="provider", organisation=provider)
    User.objects.create_superuser("operator", "op@suanli.example", "pw-Secret-123")
    context = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    base = live_server.url

    # A provider lists 8 × A100-80G at ¥10/GPU-hour in the console (times in UTC there).
    _login(page, f"{base}/console/login/", "provider", "pw-Secret-123")
    page.goto(f"{base}/console/marketplace/offer/add/")
    start, until = next_hour(0), next_hour(24 * 7)
    page.select_option("#id_site", str(site.pk))
    page.select_option("#id_accelerator", str(accelerator.pk))
    page.fill("#id_gpu_count", "8")
    page.fill("#id_available_from_0", start.strftime("%Y-%m-%d"))
    page.fill("#id_available_from_1", start.strftime("%H:%M:%S"))
    page.fill("#id_available_until_0", until.strftime("%Y-%m-%d"))
    page.fill("#id_available_until_1", until.strftime("%H:%M:%S"))
    page.fill("#id_price_per_gpu_hour", "10")
    page.click("input[name='_save']")
    expect(page.locator("ul.messagelist li.success")).to_be_visible()
    offer = Offer.objects.get(provider=provider)
    assert (offer.gpu_count, offer.price_per_gpu_hour, offer.status) == (
        8,
        Decimal("10.0000"),
        "active",
    )
    _shot(page, "console-offers-en")
    page.goto(f"{base}/console/usage/")
    _shot(page, "console-usage-en")
    context.clear_cookies()

    # An SME signs up (English).
    page.goto(f"{base}/signup/")
    _shot(page, "signup-en")
    from tests.factories import credit_code

    page.fill("#id_username", "sme-owner")
    page.fill("#id_email", "owner@sme.example")
    page.fill("#id_password1", "a-Long-pass-2026")
    page.fill("#id_password2", "a-Long-pass-2026")
    page.fill("#id_organisation_name", "Tianfu AI Lab")
    page.fill("#id_credit_code", credit_code())
    page.select_option("#id_home_site", str(site.pk))
    page.click("button[type=submit]:has-text('Sign up')")
    expect(page.locator(".notice")).to_contain_text("pending approval")
    org = Organisation.objects.get(name="Tianfu AI Lab")
    assert org.status == "pending"

    # It applies for a ¥1,000 voucher.
    page.goto(f"{base}/vouchers/")
    page.select_option("#id_programme", str(programme.pk))
    page.fill("#id_amount", "1000")
    page.click("button:has-text('Apply')")
    expect(page.locator(".application-status")).to_contain_text("submitted")
    application = VoucherApplication.objects.get(buyer=org)

    # An operator approves the organisation and the application in the admin.
    operator = browser.new_context(locale="en-GB")
    operator.set_default_timeout(TIMEOUT_MS)
    admin = operator.new_page()
    _login(admin, f"{base}/admin/login/", "operator", "pw-Secret-123")
    _admin_action(admin, f"{base}/admin/accounts/organisation/", org.pk, "approve_organisations")
    _admin_action(
        admin, f"{base}/admin/vouchers/voucherapplication/", application.pk, "approve_applications"
    )
    admin.goto(f"{base}/admin/dashboard/")
    expect(admin.locator("#budgets")).to_contain_text("¥1,000.00")
    _shot(admin, "admin-dashboard-en")
    operator.close()
    org.refresh_from_db()
    assert org.status == "approved"

    # The SME funds its wallet and sees its voucher on the dashboard.
    page.goto(f"{base}/dashboard/")
    page.fill("#id_amount", "5000")
    page.click("button:has-text('Fund wallet')")
    expect(page.locator("#wallet-balance")).to_have_text("¥5,000.00")
    expect(page.locator("#vouchers-h + table")).to_contain_text("¥1,000.00")

    # It fills in a demand; the live quote (htmx) shows the bill split before posting.
    page.goto(f"{base}/offers/?accelerator=A100-80G")
    expect(page.locator("main table")).to_contain_text("¥10.0000")
    _shot(page, "offers-en")
    page.goto(f"{base}/demands/new/")
    page.check("input[value='A100-80G']")
    page.fill("#id_gpu_count", "2")
    page.fill("#id_duration_hours", "3")
    page.fill("#id_max_price_per_gpu_hour", "12.5")
    page.select_option("#id_voucher", index=1)
    # 2 GPUs × 3 h × ¥10 = ¥60: 60 % from the voucher, the rest cash
    expect(page.locator("#quote-bill")).to_have_text("¥60.00")
    expect(page.locator("#quote-voucher")).to_have_text("¥36.00")
    expect(page.locator("#quote-cash")).to_have_text("¥24.00")
    _shot(page, "demand-form-en")
    page.click("button[value='post']")

    # The real worker matches it; the demand page updates itself (htmx polling).
    expect(page.locator("#demand-status-value")).to_have_attribute(
        "data-status", "reserved", timeout=TIMEOUT_MS
    )
    demand = Demand.objects.get(buyer=org)
    reservation = Reservation.objects.get(demand=demand)
    assert (reservation.bill, reservation.voucher_part, reservation.cash_part) == (
        Decimal("60.00"),
        Decimal("36.00"),
        Decimal("24.00"),
    )
    _shot(page, "demand-detail-en")
    page.click(f"a[href='/reservations/{reservation.pk}/']")
    expect(page.locator("#bill-total")).to_have_text("¥60.00")
    expect(page.locator("#bill-voucher")).to_have_text("¥36.00")
    expect(page.locator("#bill-cash")).to_have_text("¥24.00")
    _shot(page, "reservation-en")

    # Switch to Chinese: the same pages, translated.
    page.select_option("#language", "zh-hans")
    page.click("form.lang button")
    expect(page.locator("h1")).to_have_text("预订")
    expect(page.locator("#reservation-status")).to_have_text("已确认")
    _shot(page, "reservation-zh")
    page.goto(f"{base}/dashboard/")
    expect(page.locator("#wallet-h")).to_have_text("钱包")
    expect(page.locator("#wallet-balance")).to_have_text("¥4,976.00")
    _shot(page, "dashboard-zh")
    page.goto(f"{base}/demands/new/")
    _shot(page, "demand-form-zh")
    page.goto(f"{base}/statement/")
    _shot(page, "statement-zh")

    # Cancel: the fee (10 % inside the 24 h window, from cash) is shown before confirming.
    page.goto(f"{base}/reservations/{reservation.pk}/cancel/")
    expect(page.locator("#cancel-fee")).to_have_text("¥6.00")
    _shot(page, "cancel-zh")
    page.click("button.danger")
    expect(page.locator("#reservation-status")).to_have_attribute("data-status", "cancelled")
    page.goto(f"{base}/dashboard/")
    # ¥4,976 + ¥24 cash back − ¥6 fee
    expect(page.locator("#wallet-balance")).to_have_text("¥4,994.00")
    context.close()
    assert demand.created_at <= reservation.created_at < demand.created_at + timedelta(minutes=2)
