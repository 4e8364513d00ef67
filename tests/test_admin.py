"""Operator admin (PRODUCT.md §6.4): every page renders, actions go through the services."""

from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import Organisation
from ledger.models import Account
from ledger.services import voucher_account
from marketplace.models import Hub, Offer, Reservation, Site
from marketplace.services import reservation_create
from tests.factories import (
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    SiteFactory,
    site_form,
)
from vouchers.models import CatalogueEntry, Programme, Voucher, VoucherApplication
from vouchers.services import voucher_application_submit, voucher_issue

pytestmark = pytest.mark.django_db


@pytest.fixture
def market(buyer, offer, voucher):  # type: ignore[no-untyped-def]
    """Reference data plus a reservation paid partly by voucher, so every list has rows."""
    call_command("load_reference", stdout=None)
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    reservation = reservation_create(
        demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start
    )
    voucher_application_submit(buyer=buyer, programme=voucher.programme, amount=Decimal("500.00"))
    return reservation


def _admin_url(model_admin: admin.ModelAdmin, view: str, *args: object) -> str:
    opts = model_admin.model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


def test_every_changelist_add_and_change_page_renders(operator_client, operator, market, rf):
    request = rf.get("/admin/")
    request.user = operator
    checked = 0
    for model, model_admin in admin.site._registry.items():
        response = operator_client.get(_admin_url(model_admin, "changelist"))
        assert response.status_code == 200, (model, response.status_code)
        if model_admin.has_add_permission(request):
            response = operator_client.get(_admin_url(model_admin, "add"))
            assert response.status_code == 200, (model, "add", response.status_code)
        obj = model._default_manager.first()
        if obj is not None:
            response = operator_client.get(_admin_url(model_admin, "change", obj.pk))
            assert response.status_code == 200, (model, "change", response.status_code)
        checked += 1
    for required in (
        "accounts.user",
        "accounts.organisation",
        "accounts.membership",
        "marketplace.hub",
        "marketplace.cluster",
        "marketplace.hublatency",
        "marketplace.site",
        "marketplace.accelerator",
        "marketplace.offer",
        "marketplace.demand",
        "marketplace.reservation",
        "marketplace.interhubtrade",
        "marketplace.matchingcycle",
        "vouchers.programme",
        "vouchers.catalogueentry",
        "vouchers.voucherapplication",
        "vouchers.voucher",
        "vouchers.reimbursementclaim",
        "ledger.account",
        "ledger.transaction",
        "ledger.entry",
    ):
        assert required in {m._meta.label_lower for m in admin.site._registry}, required
    assert checked == len(admin.site._registry)


def test_ledger_is_read_only_for_operators(operator, rf):
    request = rf.get("/admin/")
    request.user = operator
    ledger_models: list[Any] = [m for m in admin.site._registry if m._meta.app_label == "ledger"]
    for model in (Account, *ledger_models):
        model_admin = admin.site._registry[model]
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_change_permission(request)
        assert not model_admin.has_delete_permission(request)


def test_approve_application_action_issues_a_voucher(operator_client, buyer, programme):
    # given a submitted application for ¥2,000
    application = voucher_application_submit(
        buyer=buyer, programme=programme, amount=Decimal("2000.00")
    )
    # when the operator runs the approve action on it
    response = operator_client.post(
        reverse("admin:vouchers_voucherapplication_changelist"),
        {"action": "approve_applications", "_selected_action": [str(application.pk)]},
        follow=True,
    )
    # then a ¥2,000 voucher is issued to the buyer from the programme's budget
    assert response.status_code == 200
    application.refresh_from_db()
    assert application.status == VoucherApplication.Status.APPROVED
    voucher = Voucher.objects.get(application=application)
    assert (voucher.owner_id, voucher.face_value) == (buyer.pk, Decimal("2000.00"))
    assert voucher_account(voucher.pk).balance == Decimal("2000.00")
    assert "1 approved." in response.content.decode()


def test_refused_action_shows_an_error_and_changes_nothing(operator_client, buyer, programme):
    # given a buyer ¥1,000 short of the annual cap (¥5 M in the Chengdu 2025 programme) and an
    # application for ¥1,000.01
    voucher_issue(programme=programme, owner=buyer, face_value=Decimal("4999000.00"))
    application = voucher_application_submit(
        buyer=buyer, programme=programme, amount=Decimal("1000.01")
    )
    # when the operator tries to approve it
    response = operator_client.post(
        reverse("admin:vouchers_voucherapplication_changelist"),
        {"action": "approve_applications", "_selected_action": [str(application.pk)]},
        follow=True,
    )
    # then the page shows the rule's message, and nothing was issued
    assert response.status_code == 200
    messages = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert len(messages) == 1 and messages[0][0] == "error"
    assert "annual cap" in messages[0][1]
    application.refresh_from_db()
    assert application.status == VoucherApplication.Status.SUBMITTED
    assert not Voucher.objects.filter(application=application).exists()


def test_reject_action_rejects(operator_client, buyer, programme):
    application = voucher_application_submit(
        buyer=buyer, programme=programme, amount=Decimal("100.00")
    )
    operator_client.post(
        reverse("admin:vouchers_voucherapplication_changelist"),
        {"action": "reject_applications", "_selected_action": [str(application.pk)]},
    )
    application.refresh_from_db()
    assert application.status == VoucherApplication.Status.REJECTED
    assert not Voucher.objects.exists()


def test_organisation_actions_use_the_service(operator_client):
    pending = OrganisationFactory.create(status=Organisation.Status.PENDING)
    url = reverse("admin:accounts_organisation_changelist")
    response = operator_client.post(
        url, {"action": "approve_organisations", "_selected_action": [str(pending.pk)]}, follow=True
    )
    assert [m.level_tag for m in response.context["messages"]] == ["success"]
    pending.refresh_from_db()
    assert pending.status == Organisation.Status.APPROVED
    # approving again is refused by the service (illegal transition) and shown as an error
    response = operator_client.post(
        url, {"action": "approve_organisations", "_selected_action": [str(pending.pk)]}, follow=True
    )
    assert [m.level_tag for m in response.context["messages"]] == ["error"]
    operator_client.post(
        url, {"action": "suspend_organisations", "_selected_action": [str(pending.pk)]}
    )
    pending.refresh_from_db()
    assert pending.status == Organisation.Status.SUSPENDED


def test_approve_catalogue_entry_action(operator_client, programme, provider):
    entry = CatalogueEntry.objects.get(programme=programme, provider=provider)
    CatalogueEntry.objects.filter(pk=entry.pk).update(status=CatalogueEntry.Status.PROPOSED)
    operator_client.post(
        reverse("admin:vouchers_catalogueentry_changelist"),
        {"action": "approve_entries", "_selected_action": [str(entry.pk)]},
    )
    entry.refresh_from_db()
    assert entry.status == CatalogueEntry.Status.APPROVED


def test_offer_pause_action_uses_the_service(operator_client, offer):
    operator_client.post(
        reverse("admin:marketplace_offer_changelist"),
        {"action": "pause_offers", "_selected_action": [str(offer.pk)]},
    )
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED


def test_adding_a_programme_funds_its_budget(operator_client):
    response = operator_client.post(
        reverse("admin:vouchers_programme_add"),
        {
            "code": "test-city",
            "name": "Test city vouchers",
            "issuer_city": "Test",
            "effective_from": "2025-01-01",
            "annual_budget": "1000000.00",
            "max_share": "0.5",
            "buyer_annual_cap": "10000.00",
            "min_voucher_amount": "0",
            "validity_months": "12",
            "redemption_mode": "point_of_sale",
            "statement_period": "monthly",
            "time_zone": "Asia/Shanghai",
            "catalogue-TOTAL_FORMS": "0",
            "catalogue-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    programme = Programme.objects.get(code="test-city")
    account = Account.objects.get(kind=Account.Kind.PROGRAMME, programme=programme)
    assert account.balance == Decimal("1000000.00")


@pytest.mark.parametrize(
    "url_name",
    [
        "admin:marketplace_reservation_changelist",
        "admin:ledger_entry_changelist",
        "admin:ledger_account_changelist",
        "admin:vouchers_voucher_changelist",
        "admin:marketplace_offer_changelist",
    ],
)
def test_changelist_queries_do_not_grow_with_rows(operator_client, market, buyer, offer, url_name):
    # given the page's query count with the market fixture's rows
    with CaptureQueriesContext(connection) as first:
        operator_client.get(reverse(url_name))
    # when more rows of every kind exist
    for _ in range(3):
        demand = DemandFactory.create(buyer=buyer, gpu_count=1, duration_hours=1)
        reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    assert Reservation.objects.count() == 4
    with CaptureQueriesContext(connection) as second:
        response = operator_client.get(reverse(url_name))
    # then the page still takes the same number of queries
    assert response.status_code == 200
    assert len(second) == len(first)


@pytest.mark.parametrize(
    ("limit", "valid"), [("0", False), ("1", True), ("120", True), ("121", False)]
)
def test_hub_matching_time_limit_is_one_to_120_seconds(operator, rf, limit, valid):
    # given a hub on the optimal policy, edited through the operator admin's form
    hub = HubFactory.create(code="gansu", matching_policy="optimal")
    request = rf.get("/admin/")
    request.user = operator
    form_class = admin.site._registry[Hub].get_form(request, hub)
    data = {
        "code": hub.code,
        "name": hub.name,
        "name_zh": "",
        "matching_policy": "optimal",
        "matching_time_limit": limit,
    }
    form = form_class(data=data, instance=hub)
    # then 0 s is refused on the field (optimal would stop before greedy's first demand), and
    # so is more than 120 s (the Celery task's soft limit, 240 s, would cut the cycle off)
    assert form.is_valid() is valid
    if not valid:
        assert list(form.errors) == ["matching_time_limit"]
        hub.refresh_from_db()
        assert hub.matching_time_limit == 10


def test_operator_cannot_move_a_site_a_reservation_is_at_or_comes_from(
    operator_client, buyer, provider, accelerator
):
    # given a reservation from the buyer's home site in Chengdu to an offer at a site in
    # Qingyang (another hub: it recorded an inter-hub trade between the two)
    home = buyer.home_site
    remote = SiteFactory.create(code="qingyang-dc", city="Qingyang", metro_area="Qingyang")
    offer = OfferFactory.create(provider=provider, site=remote, accelerator=accelerator)
    demand = DemandFactory.create(buyer=buyer, gpu_count=4, locality_limit="national")
    reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    elsewhere = HubFactory.create(code="guizhou")
    for site in (remote, home):
        before = (site.hub_id, site.city, site.metro_area)
        url = reverse("admin:marketplace_site_change", args=[site.pk])
        for field, value in [("hub", str(elsewhere.pk)), ("city", "Gui'an"), ("metro_area", "X")]:
            # when the operator moves it
            response = operator_client.post(url, site_form(site, **{field: value}))
            # then the form says why and the site stays where the reservation was made
            assert response.status_code == 200, (site.code, field)
            assert response.context["adminform"].form.errors == {
                field: [f"the site has reservations; its {field} cannot change"]
            }
            site.refresh_from_db()
            assert (site.hub_id, site.city, site.metro_area) == before
        # while its name may still change
        assert operator_client.post(url, site_form(site, name="Renamed")).status_code == 302
        assert Site.objects.get(pk=site.pk).name == "Renamed"


def test_the_database_refuses_a_matching_time_limit_past_120_seconds():
    # given a hub; when a write past the form sets 121 s, then the CHECK constraint refuses it
    hub = HubFactory.create(code="gansu")
    with pytest.raises(IntegrityError), transaction.atomic():
        Hub.objects.filter(pk=hub.pk).update(matching_time_limit=121)
    hub.refresh_from_db()
    assert hub.matching_time_limit == 10
