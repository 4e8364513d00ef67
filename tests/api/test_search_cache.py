"""The offer search's page cache (``marketplace.api.search_cache``, its generation in
``marketplace.search_generation``): a write through any writer shows on the next search, a page
never crosses scopes, refused input is never stored, a hit costs the token query only, and
``ETag``/``If-None-Match`` answer 304.

Searches go through a real token (``Authorization: Token``), so they take the lean way of a hit
as production does; the cache is the test Redis (``marketplace.settings.test``)."""

import gc
import os
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.models import Organisation
from accounts.tokens import token_create, token_revoke
from marketplace.models import Accelerator, Hub, Offer, Site
from marketplace.search_generation import (
    GENERATION_KEY,
    cache_seconds,
    current_generation,
    offer_search_changed,
    store,
)
from marketplace.services import offer_create, offer_set_status, offer_update
from tests.api.conftest import PROBLEM_MEMBERS
from tests.factories import (
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    SiteFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

SEARCH = "/api/v1/offers/"


def _client(user) -> APIClient:  # type: ignore[no-untyped-def]
    _, secret = token_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


@pytest.fixture
def client(buyer_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = _client(buyer_user)
    client.get("/api/v1/organisations/me/")  # last_used_at written once, not during a test
    return client


def _prices(client: APIClient, query: str = "") -> dict[str, str]:
    response = client.get(SEARCH + query)
    assert response.status_code == 200, response.content
    return {row["id"]: row["price_per_gpu_hour"] for row in response.json()["results"]}


def _page_keys() -> int:
    shared = store()
    assert shared.client is not None  # the test settings cache in Redis
    return len(shared.client.keys(shared.cache.make_key("offer-search:page:*")))


def test_the_cache_is_on_in_the_tests() -> None:
    assert cache_seconds() > 0


def test_the_store_keeps_a_connection_per_thread_and_a_forked_process_makes_its_own() -> None:
    shared = store()
    client: Any = shared.client  # redis-py's, for its connection (the test only)
    assert client is not None and store().client is shared.client
    connection_ = client.connection
    in_thread: list[object] = []
    thread = threading.Thread(target=lambda: in_thread.append(store().client))
    thread.start()
    thread.join()
    assert in_thread[0] is not shared.client
    assert current_generation() is not None  # made if missing: the key the processes read
    sock = connection_._sock  # the parent's open connection
    assert sock is not None
    child = os.fork()
    if child == 0:  # the child: its own client, works, and dropping the parent's closes nothing
        code = 1
        try:
            mine = store()
            gc.collect()
            if mine.client is not shared.client and mine.get_many([GENERATION_KEY])[0]:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.get_many([GENERATION_KEY])[0]
    assert connection_._sock is sock  # the same connection, not a reconnect


def test_a_hit_costs_the_token_query_only_and_gives_the_same_bytes(client, offer):  # type: ignore[no-untyped-def]
    first = client.get(SEARCH + "?ordering=price")
    with CaptureQueriesContext(connection) as ctx:
        second = client.get(SEARCH + "?ordering=price")
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert len(sqls) == 1 and "accounts_apitoken" in sqls[0], sqls
    assert second.status_code == first.status_code == 200
    assert second.content == first.content
    for header in ("Content-Type", "ETag", "Cache-Control", "Allow", "Vary"):
        assert second[header] == first[header], header
    assert first["Content-Type"] == "application/json"
    assert first["Cache-Control"] == "private, no-cache"
    assert first.json()["results"][0]["id"] == str(offer.pk)


def test_parameter_order_does_not_matter_but_values_do(client, offer):  # type: ignore[no-untyped-def]
    a = client.get(SEARCH + "?min_gpus=1&ordering=price")
    b = client.get(SEARCH + "?ordering=price&min_gpus=1")
    c = client.get(SEARCH + "?ordering=price&min_gpus=9")
    assert a.content == b.content
    assert a.json()["count"] == 1 and c.json()["count"] == 0


# --- every writer makes the next search show its write -----------------------------------------


def test_service_writes_show_at_once(client, provider, site, accelerator):  # type: ignore[no-untyped-def]
    assert _prices(client) == {}
    offer = offer_create(
        provider=provider,
        site=site,
        accelerator=accelerator,
        gpu_count=8,
        gpus_per_node=8,
        available_from=OfferFactory.build().available_from,
        available_until=OfferFactory.build().available_until,
        price_per_gpu_hour=Decimal("12.5"),
        min_duration_hours=1,
    )
    assert _prices(client) == {str(offer.pk): "12.5000"}
    offer_update(offer_id=offer.pk, provider=provider, price_per_gpu_hour=Decimal("11"))
    assert _prices(client) == {str(offer.pk): "11.0000"}
    offer_set_status(offer_id=offer.pk, provider=provider, status=Offer.Status.PAUSED)
    assert _prices(client) == {}
    offer_set_status(offer_id=offer.pk, provider=provider, status=Offer.Status.ACTIVE)
    assert _prices(client) == {str(offer.pk): "11.0000"}
    offer_set_status(offer_id=offer.pk, provider=provider, status=Offer.Status.WITHDRAWN)
    assert _prices(client) == {}


def test_api_writes_show_at_once(client, provider_user, offer):  # type: ignore[no-untyped-def]
    seller = _client(provider_user)
    assert _prices(client) == {str(offer.pk): "10.0000"}
    response = seller.patch(
        f"/api/v1/offers/{offer.pk}/", {"price_per_gpu_hour": "9.5"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert _prices(client) == {str(offer.pk): "9.5000"}
    assert seller.post(f"/api/v1/offers/{offer.pk}/pause/").status_code == 200
    assert _prices(client) == {}


def test_admin_action_shows_at_once(client, offer):  # type: ignore[no-untyped-def]
    operator = UserFactory.create(username="operator", is_staff=True, is_superuser=True)
    admin = APIClient()
    admin.force_login(operator)
    assert _prices(client) == {str(offer.pk): "10.0000"}
    response = admin.post(
        "/admin/marketplace/offer/",
        {"action": "pause_offers", "_selected_action": [str(offer.pk)]},
    )
    assert response.status_code == 302
    assert Offer.objects.get(pk=offer.pk).status == Offer.Status.PAUSED
    assert _prices(client) == {}


def test_bulk_writes_show_at_once(client, provider, site, accelerator):  # type: ignore[no-untyped-def]
    assert _prices(client) == {}
    [made] = Offer.objects.bulk_create(
        [OfferFactory.build(provider=provider, site=site, accelerator=accelerator)]
    )
    assert _prices(client) == {str(made.pk): "10.0000"}
    Offer.objects.filter(pk=made.pk).update(price_per_gpu_hour=Decimal("8"))
    assert _prices(client) == {str(made.pk): "8.0000"}
    made.price_per_gpu_hour = Decimal("7")
    Offer.objects.bulk_update([made], ["price_per_gpu_hour"])
    assert _prices(client) == {str(made.pk): "7.0000"}
    provider.offers.update(status=Offer.Status.PAUSED)  # a related manager too
    assert _prices(client) == {}
    Offer.objects.filter(pk=made.pk).update(status=Offer.Status.ACTIVE)
    Offer.objects.filter(pk=made.pk).delete()
    assert _prices(client) == {}


def test_raw_sql_writers_call_offer_search_changed(client, offer):  # type: ignore[no-untyped-def]
    assert _prices(client) == {str(offer.pk): "10.0000"}
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE marketplace_offer SET price_per_gpu_hour = 6 WHERE id = %s", [offer.pk]
        )
    assert _prices(client) == {str(offer.pk): "10.0000"}  # the cache cannot know
    offer_search_changed()
    assert _prices(client) == {str(offer.pk): "6.0000"}


def test_what_a_result_shows_of_other_tables_shows_at_once(client, offer, provider, site):  # type: ignore[no-untyped-def]
    def row() -> dict:  # type: ignore[type-arg]
        return client.get(SEARCH).json()["results"][0]  # type: ignore[no-any-return]

    assert row()["provider_name"] == "Provider DC"
    provider.name = "Renamed DC"
    provider.save()
    assert row()["provider_name"] == "Renamed DC"
    Organisation.objects.filter(pk=provider.pk).update(name="Bulk Renamed")
    offer_search_changed()  # Organisation has no invalidating manager: callers say so
    assert row()["provider_name"] == "Bulk Renamed"
    Site.objects.filter(pk=site.pk).update(city="Chongqing")
    assert row()["city"] == "Chongqing"
    Hub.objects.filter(pk=site.hub_id).update(code="renamed-hub")
    assert row()["hub"] == "renamed-hub"
    accelerator = Accelerator.objects.get(pk=offer.accelerator_id)
    accelerator.code = "A100-NEW"
    accelerator.save()
    assert row()["accelerator"] == "A100-NEW"
    # the catalogue's aliases resolve the filter: a new alias finds the offer at once
    assert client.get(SEARCH + "?accelerator=brand-new-alias").status_code == 400
    accelerator.aliases = [*accelerator.aliases, "brand-new-alias"]
    accelerator.save()
    assert _prices(client, "?accelerator=brand-new-alias") == {str(offer.pk): "10.0000"}


def test_tier_results_follow_a_change_of_the_home_site(client, buyer, offer):  # type: ignore[no-untyped-def]
    assert _prices(client, "?tier=city") == {str(offer.pk): "10.0000"}
    home = Site.objects.get(pk=buyer.home_site_id)
    far = SiteFactory.create(code="far-away", city="Lhasa", metro_area="Lhasa", hub=home.hub)
    buyer.home_site = far
    buyer.save()
    assert _prices(client, "?tier=city") == {}
    assert _prices(client, "?tier=region") == {str(offer.pk): "10.0000"}


@pytest.mark.django_db(transaction=True)
def test_a_page_read_before_a_commit_is_not_served_after_it(buyer_user, offer):  # type: ignore[no-untyped-def]
    # given a provider's transaction that changed the price and said so, not yet committed
    client = _client(buyer_user)
    changed, committed = threading.Event(), threading.Event()

    def writer() -> None:
        try:
            with transaction.atomic():
                Offer.objects.filter(pk=offer.pk).update(price_per_gpu_hour=Decimal("5"))
                changed.set()
                committed.wait(timeout=30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=writer)
    thread.start()
    assert changed.wait(timeout=30)
    # when a search reads (and caches) the committed, old price meanwhile
    assert _prices(client) == {str(offer.pk): "10.0000"}
    assert _prices(client) == {str(offer.pk): "10.0000"}  # served from the cache
    committed.set()
    thread.join(timeout=30)
    # then the commit made that page stale
    assert _prices(client) == {str(offer.pk): "5.0000"}


# --- scopes, refused input ------------------------------------------------------------------------


def test_a_page_is_never_served_to_another_scope(client, buyer, offer):  # type: ignore[no-untyped-def]
    west = HubFactory.create(code="west-hub")
    elsewhere = SiteFactory.create(code="elsewhere", city="Urumqi", metro_area="Urumqi", hub=west)
    far_buyer = OrganisationFactory.create(name="Far SME", home_site=elsewhere)
    far = _client(UserFactory.create(username="far", organisation=far_buyer))
    far_offer = OfferFactory.create(site=elsewhere, accelerator=offer.accelerator)
    near_page = _prices(client, "?tier=region")
    far_page = _prices(far, "?tier=region")
    assert near_page == {str(offer.pk): "10.0000"}
    assert far_page == {str(far_offer.pk): "10.0000"}
    # the same question without tier is the same public page for both
    assert client.get(SEARCH).content == far.get(SEARCH).content
    # a caller with no home site is refused, not served another's page
    homeless = OrganisationFactory.create(name="Homeless SME", home_site=None)
    nowhere = _client(UserFactory.create(username="nowhere", organisation=homeless))
    assert nowhere.get(SEARCH + "?tier=region").status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        "?accelerator=NOPE",
        "?page=0",
        "?page_size=-5",
        "?max_price=NaN",
        "?colour=red",
        "?tier=",
        "?window_start=2030-01-01T00:00:00Z&window_end=2029-01-01T00:00:00Z",
        "?page=99",
    ],
)
def test_refused_input_is_refused_every_time_and_never_stored(client, offer, query):  # type: ignore[no-untyped-def]
    before = _page_keys()
    first = client.get(SEARCH + query)
    second = client.get(SEARCH + query)
    assert first.status_code in (400, 404)
    assert second.status_code == first.status_code
    assert second.json() == first.json()
    assert set(first.json()) >= PROBLEM_MEMBERS
    assert first["Content-Type"] == "application/problem+json"
    assert _page_keys() == before


def test_a_revoked_token_is_refused_even_with_its_page_stored(buyer_user, offer):  # type: ignore[no-untyped-def]
    token, secret = token_create(user=buyer_user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    assert client.get(SEARCH).status_code == 200
    token_revoke(user=buyer_user, token_id=token.pk)
    response = client.get(SEARCH)
    assert response.status_code == 401
    assert set(response.json()) >= PROBLEM_MEMBERS
    anonymous = APIClient().get(SEARCH)
    assert anonymous.status_code == 401


def test_other_media_types_and_session_callers_take_drfs_way(client, buyer_user, offer):  # type: ignore[no-untyped-def]
    plain = client.get(SEARCH)
    indented = client.get(SEARCH, HTTP_ACCEPT="application/json; indent=4")
    assert indented.status_code == 200 and indented.json() == plain.json()
    assert indented.content != plain.content and b"\n    " in indented.content
    session = APIClient()
    session.force_login(buyer_user)
    assert session.get(SEARCH).json() == plain.json()


# --- ETag / If-None-Match -------------------------------------------------------------------------


def test_if_none_match_answers_304_until_the_page_changes(client, offer, provider):  # type: ignore[no-untyped-def]
    first = client.get(SEARCH)
    etag = first["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = client.get(SEARCH, HTTP_IF_NONE_MATCH=tag)
        assert again.status_code == 304, tag
        assert again.content == b"" and again["ETag"] == etag
    assert client.get(SEARCH, HTTP_IF_NONE_MATCH='"other"').status_code == 200
    offer_update(offer_id=offer.pk, provider=provider, price_per_gpu_hour=Decimal("3"))
    changed = client.get(SEARCH, HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["results"][0]["price_per_gpu_hour"] == "3.0000"


def test_the_same_etag_without_the_cache(client, offer, settings):  # type: ignore[no-untyped-def]
    cached = client.get(SEARCH)
    settings.OFFER_SEARCH_CACHE_SECONDS = 0
    with CaptureQueriesContext(connection) as ctx:
        uncached = client.get(SEARCH, HTTP_IF_NONE_MATCH=cached["ETag"])
    assert len(ctx.captured_queries) >= 2  # it searched
    assert uncached.status_code == 304 and uncached["ETag"] == cached["ETag"]
