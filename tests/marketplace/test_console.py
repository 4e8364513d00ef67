"""Provider console at /console/ (PRODUCT.md §6.3): scoped to the provider's organisation."""

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Organisation
from marketplace.models import Offer, Reservation, Site
from marketplace.services import reservation_create, wallet_deposit
from tests.factories import (
    AcceleratorFactory,
    ClusterFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    ProviderFactory,
    SiteFactory,
    UserFactory,
    next_hour,
    site_form,
)

pytestmark = pytest.mark.django_db

PASSWORD = "pw-Secret-123"  # tests.factories.UserFactory's password


def _reserve(offer: Offer, **demand: object) -> Reservation:
    """A reservation on ``offer`` of a new demand (``DemandFactory`` with ``demand``) at the
    demand's earliest start."""
    d = DemandFactory.create(**demand)
    return reservation_create(demand_id=d.pk, offer_id=offer.pk, start=d.earliest_start)


@pytest.fixture
def console(provider_user) -> Client:  # type: ignore[no-untyped-def]
    """A browser logged in to the console through its own log-in form."""
    client = Client()
    response = client.post(
        "/console/login/?next=/console/", {"username": provider_user.username, "password": PASSWORD}
    )
    assert response.status_code == 302 and response["Location"] == "/console/"
    return client


@pytest.fixture
def other_offer(site, accelerator) -> Offer:  # type: ignore[no-untyped-def]
    other = ProviderFactory.create(name="Other Provider", home_site=site)
    own_site = SiteFactory.create(code="other-dc", provider=other)
    return OfferFactory.create(provider=other, site=own_site, accelerator=accelerator, gpu_count=16)


def _offer_form(site: Site, accelerator_id: object, **overrides: object) -> dict[str, object]:
    start, end = next_hour(0), next_hour(24 * 30)
    data: dict[str, object] = {
        "site": str(site.pk),
        "accelerator": str(accelerator_id),
        "gpu_count": "32",
        "gpus_per_node": "8",
        "interconnect": "NVLink",
        "available_from_0": start.strftime("%Y-%m-%d"),
        "available_from_1": start.strftime("%H:%M:%S"),
        "available_until_0": end.strftime("%Y-%m-%d"),
        "available_until_1": end.strftime("%H:%M:%S"),
        "price_per_gpu_hour": "12.5000",
        "min_duration_hours": "1",
    }
    data.update(overrides)
    return data


def test_provider_without_staff_flag_logs_in_and_sees_own_offers(
    console, provider_user, offer, other_offer
):
    assert not provider_user.is_staff
    # the index lists the provider's models
    index = console.get("/console/")
    assert index.status_code == 200
    assert b"/console/marketplace/offer/" in index.content
    # the offer list holds its own offer and not the other provider's
    response = console.get("/console/marketplace/offer/")
    assert response.status_code == 200
    shown = list(response.context["cl"].result_list)
    assert shown == [offer]
    assert str(other_offer.pk).encode() not in response.content
    assert b"0 / 8" in response.content  # peak reserved / capacity


def test_other_providers_objects_are_not_reachable(console, other_offer):
    # another provider's offer change page is "does not exist": redirected to the index
    response = console.get(f"/console/marketplace/offer/{other_offer.pk}/change/")
    assert response.status_code == 302 and response["Location"] == "/console/"
    # and a post to it changes nothing
    console.post(
        f"/console/marketplace/offer/{other_offer.pk}/change/",
        _offer_form(other_offer.site, other_offer.accelerator_id, gpu_count="1"),
    )
    other_offer.refresh_from_db()
    assert other_offer.gpu_count == 16
    # nor are its sites listed
    response = console.get("/console/marketplace/site/")
    assert list(response.context["cl"].result_list) == []


def test_provider_creates_an_offer_through_the_add_form(console, provider, site, accelerator):
    # when the provider submits the add form at a reference site
    response = console.post("/console/marketplace/offer/add/", _offer_form(site, accelerator.pk))
    # then an active offer of its own exists, made by the service
    assert response.status_code == 302, response.context["adminform"].form.errors
    created = Offer.objects.get()
    assert (
        created.provider_id,
        created.site_id,
        created.gpu_count,
        str(created.price_per_gpu_hour),
        created.status,
    ) == (provider.pk, site.pk, 32, "12.5000", Offer.Status.ACTIVE)


def test_site_choices_are_own_and_reference_sites(console, provider, site, other_offer):
    own = SiteFactory.create(code="own-dc", provider=provider)
    response = console.get("/console/marketplace/offer/add/")
    choices = set(response.context["adminform"].form.fields["site"].queryset)
    assert own in choices and site in choices
    assert other_offer.site not in choices
    # and posting another provider's site is refused, nothing created
    response = console.post(
        "/console/marketplace/offer/add/", _offer_form(other_offer.site, other_offer.accelerator_id)
    )
    assert response.status_code == 200
    assert "site" in response.context["adminform"].form.errors
    assert not Offer.objects.filter(provider=provider).exists()


def test_service_refusal_is_a_form_error(console, provider, site, accelerator):
    # a window that is already over is refused by offer_create (code window_in_past)
    past_start, past_end = next_hour(-48), next_hour(-24)
    response = console.post(
        "/console/marketplace/offer/add/",
        _offer_form(
            site,
            accelerator.pk,
            available_from_0=past_start.strftime("%Y-%m-%d"),
            available_from_1=past_start.strftime("%H:%M:%S"),
            available_until_0=past_end.strftime("%Y-%m-%d"),
            available_until_1=past_end.strftime("%H:%M:%S"),
        ),
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"available_until": ["window already over"]}
    assert not Offer.objects.exists()


def test_capacity_below_reserved_is_refused_on_edit(console, buyer, offer):
    # given 4 GPUs reserved on the provider's 8-GPU offer
    _reserve(offer, buyer=buyer, gpu_count=4)
    # when the provider lowers the capacity to 2
    response = console.post(
        f"/console/marketplace/offer/{offer.pk}/change/",
        _offer_form(offer.site, offer.accelerator_id, gpu_count="2"),
    )
    # then the form says why and the offer keeps its capacity
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "gpu_count": ["capacity below what is already reserved"]
    }
    offer.refresh_from_db()
    assert offer.gpu_count == 8
    # while 6 is accepted through offer_update
    response = console.post(
        f"/console/marketplace/offer/{offer.pk}/change/",
        _offer_form(offer.site, offer.accelerator_id, gpu_count="6"),
    )
    assert response.status_code == 302
    offer.refresh_from_db()
    assert offer.gpu_count == 6


def test_reservations_are_listed_read_only(console, buyer, offer):
    demand = DemandFactory.create(buyer=buyer, gpu_count=2)
    reservation = reservation_create(
        demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start
    )
    response = console.get("/console/marketplace/reservation/")
    assert list(response.context["cl"].result_list) == [reservation]
    page = console.get(f"/console/marketplace/reservation/{reservation.pk}/change/")
    assert page.status_code == 200
    assert not page.context["has_change_permission"]
    assert console.get("/console/marketplace/reservation/add/").status_code == 403
    # a post does not change it
    console.post(
        f"/console/marketplace/reservation/{reservation.pk}/change/",
        {"status": "cancelled", "gpu_count": "1"},
    )
    reservation.refresh_from_db()
    assert (reservation.status, reservation.gpu_count) == (Reservation.Status.CONFIRMED, 2)


def test_offer_status_actions_call_the_service(console, offer):
    response = console.post(
        "/console/marketplace/offer/",
        {"action": "pause_offers", "_selected_action": [str(offer.pk)]},
        follow=True,
    )
    offer.refresh_from_db()
    assert offer.status == Offer.Status.PAUSED
    # an illegal transition (paused -> paused) is an error message, not a 500
    response = console.post(
        "/console/marketplace/offer/",
        {"action": "pause_offers", "_selected_action": [str(offer.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert [m.level_tag for m in response.context["messages"]] == ["error"]


def test_provider_registers_a_site_of_its_own(console, provider, site):
    response = console.post(
        "/console/marketplace/site/add/",
        {
            "code": "provider-dc-1",
            "name": "Provider DC 1",
            "city": "Chengdu",
            "metro_area": "Chengdu",
            "hub": str(site.hub_id),
            "cluster": "",
        },
    )
    assert response.status_code == 302
    assert Site.objects.get(code="provider-dc-1").provider_id == provider.pk


def test_sme_user_gets_no_access(buyer_user, offer):
    client = Client()
    # the log-in form refuses an SME's user
    response = client.post(
        "/console/login/", {"username": buyer_user.username, "password": PASSWORD}
    )
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    # and a session made elsewhere does not open the console either
    client.force_login(buyer_user)
    for url in (
        "/console/",
        "/console/marketplace/offer/",
        f"/console/marketplace/offer/{offer.pk}/change/",
    ):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/console/login/"), (
            url
        )


def test_suspended_provider_gets_no_access(provider, provider_user, offer):
    Organisation.objects.filter(pk=provider.pk).update(status=Organisation.Status.SUSPENDED)
    client = Client()
    client.force_login(provider_user)
    assert client.get("/console/marketplace/offer/").status_code == 302


def test_operator_admin_user_without_organisation_gets_no_access():
    staff = UserFactory.create(username="staffer", is_staff=True)
    client = Client()
    client.force_login(staff)
    response = client.get("/console/")
    assert response.status_code == 302


def test_site_form_checks_code_and_cluster(console, provider, site):
    other_hub_cluster = ClusterFactory.create(code="elsewhere", hub=HubFactory.create(code="gansu"))
    response = console.post(
        "/console/marketplace/site/add/",
        {
            "code": site.code,
            "name": "Copy",
            "city": "Chengdu",
            "metro_area": "Chengdu",
            "hub": str(site.hub_id),
            "cluster": str(other_hub_cluster.pk),
        },
    )
    assert response.status_code == 200
    assert set(response.context["adminform"].form.errors) == {"code", "cluster"}
    assert not Site.objects.filter(provider=provider).exists()


def test_changelist_filters_do_not_reveal_other_providers_sites(console, offer, other_offer):
    # given another provider's offer at a private site of its own
    private = SiteFactory.create(
        code="rival-private-dc", name="Rival Private DC", provider=other_offer.provider
    )
    other_offer.site = private
    other_offer.save()
    # when our provider opens the offer list with its filters
    page = console.get(reverse("console:marketplace_offer_changelist")).content.decode()
    # then only sites our provider's own offers use appear in the site filter
    assert "Rival Private DC" not in page
    assert offer.site.name in page


def test_site_and_model_of_a_reserved_offer_cannot_change_on_edit(console, buyer, offer):
    # given a reservation on the provider's offer, and another site and model it could choose
    demand = DemandFactory.create(buyer=buyer, gpu_count=4)
    demand.accelerators.add(offer.accelerator)
    reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    reserved = (offer.site_id, offer.accelerator_id, 8)
    own_site = SiteFactory.create(code="own-dc", provider=offer.provider, hub=offer.site.hub)
    other_model = AcceleratorFactory.create(code="H20-96G")
    for field, form in [
        ("site", _offer_form(own_site, offer.accelerator_id, gpu_count="8")),
        ("accelerator", _offer_form(offer.site, other_model.pk, gpu_count="8")),
    ]:
        # when the provider moves the offer or changes its model
        response = console.post(f"/console/marketplace/offer/{offer.pk}/change/", form)
        # then the form says why and the offer (so the reservation) is what was reserved
        assert response.status_code == 200, field
        assert response.context["adminform"].form.errors == {
            field: [f"the offer has reservations; its {field} cannot change"]
        }
        offer.refresh_from_db()
        assert (offer.site_id, offer.accelerator_id, offer.gpu_count) == reserved
    # while an offer without reservations may still be moved
    spare = OfferFactory.create(provider=offer.provider, site=offer.site, accelerator=other_model)
    response = console.post(
        f"/console/marketplace/offer/{spare.pk}/change/", _offer_form(own_site, other_model.pk)
    )
    assert response.status_code == 302
    spare.refresh_from_db()
    assert spare.site_id == own_site.pk


def test_a_site_with_reservations_keeps_its_hub_city_and_metro_area(console, buyer, offer):
    # given the provider's own site with a reservation on an offer there
    own = SiteFactory.create(
        code="own-dc", provider=offer.provider, hub=offer.site.hub, city="Chengdu"
    )
    Offer.objects.filter(pk=offer.pk).update(site=own)
    _reserve(offer, buyer=buyer, gpu_count=4, locality_limit="national")
    far = HubFactory.create(code="gansu")
    url = f"/console/marketplace/site/{own.pk}/change/"
    for field, value in [("hub", str(far.pk)), ("city", "Qingyang"), ("metro_area", "Qingyang")]:
        # when the provider moves it
        response = console.post(url, site_form(own, **{field: value}))
        # then the form says why and the site stays where its reservation was made
        assert response.status_code == 200, field
        assert response.context["adminform"].form.errors == {
            field: [f"the site has reservations; its {field} cannot change"]
        }
        own.refresh_from_db()
        assert (own.hub_id, own.city, own.metro_area) == (offer.site.hub_id, "Chengdu", "Chengdu")
    # while its name may still change, and a site without reservations may move
    assert console.post(url, site_form(own, name="Renamed DC")).status_code == 302
    assert Site.objects.get(pk=own.pk).name == "Renamed DC"
    spare = SiteFactory.create(code="spare-dc", provider=offer.provider, hub=offer.site.hub)
    response = console.post(
        f"/console/marketplace/site/{spare.pk}/change/", site_form(spare, hub=str(far.pk))
    )
    assert response.status_code == 302
    assert Site.objects.get(pk=spare.pk).hub_id == far.pk


def test_a_moved_site_is_refused_in_chinese_on_a_chinese_console(provider_user, buyer, offer):
    own = SiteFactory.create(code="own-dc", provider=offer.provider, hub=offer.site.hub)
    Offer.objects.filter(pk=offer.pk).update(site=own)
    _reserve(offer, buyer=buyer, gpu_count=4, locality_limit="national")
    client = Client(headers={"accept-language": "zh-hans"})
    client.force_login(provider_user)
    response = client.post(
        f"/console/marketplace/site/{own.pk}/change/", site_form(own, city="Qingyang")
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"city": ["该站点已有预订，城市不能再改"]}
    assert Site.objects.get(pk=own.pk).city == own.city


def test_a_site_a_reservation_comes_from_keeps_its_place(provider, provider_user, offer):
    # given a provider that also buys, whose home site is its own data centre, and a
    # reservation of its demand (origin: that site) on another provider's offer
    own = SiteFactory.create(code="own-dc", provider=provider, hub=offer.site.hub, city="Chengdu")
    Organisation.objects.filter(pk=provider.pk).update(kind=Organisation.Kind.BOTH, home_site=own)
    seller = ProviderFactory.create(name="Seller DC")
    Offer.objects.filter(pk=offer.pk).update(provider=seller)
    provider.refresh_from_db()
    wallet_deposit(organisation=provider, amount=Decimal("1000.00"))
    _reserve(offer, buyer=provider, origin_site=own, locality_limit="national")
    client = Client()
    client.force_login(provider_user)
    # when it moves its home site to another city
    response = client.post(
        f"/console/marketplace/site/{own.pk}/change/", site_form(own, city="Qingyang")
    )
    # then the form says why and the site stays where the reservation came from
    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {
        "city": ["the site has reservations; its city cannot change"]
    }
    assert Site.objects.get(pk=own.pk).city == "Chengdu"
