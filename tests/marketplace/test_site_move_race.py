"""A site move racing a reservation on PostgreSQL (``site_move_check``, §4.2).

A reservation's locality tier and inter-hub trade come from where its two sites (the offer's
site and the demand's origin site) were when it was made, so a site that a reservation is at or
comes from keeps its hub, city and metro area. The site edit locks the site row ``FOR UPDATE``
before it looks for reservations; every booking path locks the sites it computes the tier from
``FOR KEY SHARE`` after its demand and offer locks and reads their place from that lock. Each
test holds one side in flight — its locks taken, its rows written, paused before ``COMMIT`` —
on one connection while the other side runs on another:

* a booking in flight: the operator's move (through the admin's change form) waits for it,
  then is refused with ``site_has_reservations``, and the site stays where it was;
* a move in flight: the booking waits for it, then is made with the tier and the inter-hub
  trade of the site's new place.

Every path that writes reservations is raced: the hold (``reservation_create``, the fused
statements of ``marketplace.holdpath``), its ORM reference (``reservation_create_orm``), a split
demand's parts (``reservation_parts_create``) and the matcher's batch (``matches_write``).
"""

import re
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from ledger.audit import ledger_audit
from marketplace.matching.bulk import matches_write
from marketplace.matching.engine import Match
from marketplace.models import Demand, InterHubTrade, Offer, Reservation, Site
from marketplace.services import (
    reservation_create,
    reservation_create_orm,
    reservation_parts_create,
)
from marketplace.timeutil import hour_index
from tests.factories import DemandFactory, HubFactory, OfferFactory, SiteFactory, site_form

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 20  # seconds: the bound of every wait (a hung test fails instead)
RESERVATION_WRITE = re.compile(r'(INSERT INTO|COPY) "?marketplace_reservation"? ')
SITE_WRITE = re.compile(r'UPDATE "?marketplace_site"? ')


def _hold(demand: Demand, offer: Offer) -> None:
    reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)


def _hold_orm(demand: Demand, offer: Offer) -> None:
    with transaction.atomic(durable=True):
        reservation_create_orm(demand.pk, offer.pk, demand.earliest_start, timezone.now(), False)


def _parts(demand: Demand, offer: Offer) -> None:
    reservation_parts_create(
        demand_id=demand.pk, parts=[(offer.pk, demand.gpu_count)], start=demand.earliest_start
    )


def _batch(demand: Demand, offer: Offer) -> None:
    match = Match(
        str(demand.pk), str(offer.pk), hour_index(demand.earliest_start), "", Decimal(0), Decimal(0)
    )
    outcome = matches_write([match], now=timezone.now())
    assert not outcome.dropped, outcome.dropped


PATHS: dict[str, Callable[[Demand, Offer], None]] = {
    "hold": _hold,
    "hold_orm": _hold_orm,
    "parts": _parts,
    "batch": _batch,
}


class _Paused:
    """Run ``work`` on a thread of its own (its own connection) that stops right after its
    first statement matching ``pattern`` — its locks held, nothing committed — until
    ``release()``. ``error`` holds what it raised."""

    def __init__(self, work: Callable[[], None], pattern: re.Pattern[str]) -> None:
        self.work, self.pattern = work, pattern
        self.paused, self.go = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)

    def _pause(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        result = execute(sql, params, many, context)
        if not self.paused.is_set() and self.pattern.search(sql):
            self.paused.set()
            self.go.wait(WAIT)
        return result

    def _run(self) -> None:
        try:
            with connection.execute_wrapper(self._pause):
                self.work()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.paused.set()
            connection.close()

    def start(self) -> None:
        self.thread.start()
        assert self.paused.wait(WAIT), "the side in flight never reached its pause"
        assert self.error is None, self.error

    def release(self) -> None:
        self.go.set()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


class _Other:
    """Run ``work`` on a thread of its own; ``result`` and ``error`` once joined."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


def _someone_waits_on_a_lock() -> bool:
    """Whether another connection to the test database waits on a lock (a bounded poll)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


def _move(operator: Any, site: Site, **change: str) -> Callable[[], Any]:
    """The operator's move of ``site`` through the admin's change form (``changeform_view``:
    one transaction for the check and the save), on a client of its own."""

    def post() -> Any:
        client = Client()
        client.force_login(operator)
        url = reverse("admin:marketplace_site_change", args=[site.pk])
        return client.post(url, site_form(site, **change))

    return post


@pytest.fixture
def market(buyer, provider, accelerator):  # type: ignore[no-untyped-def]
    """An open 4-GPU demand from the buyer's home site (Chengdu, hub chengdu-chongqing; any
    locality) and an 8-GPU offer at another site in Chengdu: booked now, the tier is ``city``."""
    remote = SiteFactory.create(code="chengdu-east", city="Chengdu", metro_area="Chengdu")
    offer = OfferFactory.create(provider=provider, site=remote, accelerator=accelerator)
    demand = DemandFactory.create(buyer=buyer, gpu_count=4, locality_limit="national")
    return demand, offer


@pytest.mark.parametrize("which", ["offer_site", "origin_site"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_move_waits_for_a_booking_in_flight_and_is_refused(path, which, market, operator):
    # given a booking in flight: its locks taken and its reservation written, not committed
    demand, offer = market
    site = offer.site if which == "offer_site" else demand.origin_site
    before = Site.objects.values_list("hub_id", "city", "metro_area").get(pk=site.pk)
    guizhou = HubFactory.create(code="guizhou")
    booking = _Paused(lambda: PATHS[path](demand, offer), RESERVATION_WRITE)
    booking.start()
    # when the operator moves the site to another hub meanwhile
    move = _Other(_move(operator, site, hub=str(guizhou.pk), city="Gui'an", metro_area="Gui'an"))
    waited = _someone_waits_on_a_lock()
    booking.release()
    move.join()
    # then the booking was made, and the move — which waited for it — was refused: the site
    # stays where the reservation was made
    assert booking.error is None, booking.error
    assert move.error is None, move.error
    assert move.result.status_code == 200
    assert move.result.context["adminform"].form.errors == {
        "hub": ["the site has reservations; its hub cannot change"]
    }
    assert Site.objects.values_list("hub_id", "city", "metro_area").get(pk=site.pk) == before
    assert waited
    assert list(Reservation.objects.values_list("locality_tier", flat=True)) == ["city"]
    assert ledger_audit() == []


@pytest.mark.parametrize("which", ["offer_site", "origin_site"])
@pytest.mark.parametrize("path", list(PATHS))
def test_a_booking_waits_for_a_move_in_flight_and_sees_the_new_place(path, which, market, operator):
    # given the operator's move of a site to another hub in flight: checked (no reservations
    # yet) and saved, not committed
    demand, offer = market
    site = offer.site if which == "offer_site" else demand.origin_site
    home_hub = site.hub_id
    guizhou = HubFactory.create(code="guizhou")
    move = _Paused(
        _move(operator, site, hub=str(guizhou.pk), city="Gui'an", metro_area="Gui'an"),
        SITE_WRITE,
    )
    move.start()
    # when the demand is booked on the offer meanwhile
    booking = _Other(lambda: PATHS[path](demand, offer))
    waited = _someone_waits_on_a_lock()
    move.release()
    booking.join()
    # then the move went through, and the booking — which waited for it — was made with the
    # tier of the new place: the two sites are in different hubs now, an inter-hub trade
    assert move.error is None, move.error
    assert booking.error is None, booking.error
    assert Site.objects.get(pk=site.pk).hub_id == guizhou.pk
    reservation = Reservation.objects.get()
    assert reservation.locality_tier == "national"
    exporting, importing = (
        (guizhou.pk, home_hub) if which == "offer_site" else (home_hub, guizhou.pk)
    )
    assert list(
        InterHubTrade.objects.values_list("reservation_id", "exporting_hub_id", "importing_hub_id")
    ) == [(reservation.pk, exporting, importing)]
    assert waited
    assert ledger_audit() == []
