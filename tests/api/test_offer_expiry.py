"""Offers become ``expired`` once ``available_until`` passes (PRODUCT.md §3): the periodic
``expire_offers`` task. Before it existed no code set the status, so an offer whose window had
ended stayed ``active`` and in the public offer search for good."""

from datetime import timedelta

import pytest

from marketplace.models import Offer
from marketplace.services import offers_expire
from marketplace.tasks import expire_offers
from tests.factories import OfferFactory, next_hour

pytestmark = pytest.mark.django_db


def test_offers_whose_window_ended_expire_once_and_leave_the_search(
    buyer_client, provider, site, accelerator
):
    # given offers of every status whose windows ended an hour ago, and one still open
    end = next_hour(0) - timedelta(hours=1)
    ended = {
        status: OfferFactory.create(
            provider=provider,
            site=site,
            accelerator=accelerator,
            status=status,
            available_from=end - timedelta(hours=24),
            available_until=end,
        )
        for status in Offer.Status.values
        if status != Offer.Status.EXPIRED
    }
    current = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    search = buyer_client.get("/api/v1/offers/").json()  # the page is now in the cache
    assert {o["id"] for o in search["results"]} == {
        str(ended[Offer.Status.ACTIVE].pk),
        str(current.pk),
    }
    # when the periodic task runs (twice: beat may run it again)
    assert expire_offers() == 2
    assert offers_expire() == 0
    # then the ended active and paused offers are expired, the others untouched
    statuses = {s: Offer.objects.get(pk=o.pk).status for s, o in ended.items()}
    assert statuses == {
        Offer.Status.DRAFT: Offer.Status.DRAFT,
        Offer.Status.ACTIVE: Offer.Status.EXPIRED,
        Offer.Status.PAUSED: Offer.Status.EXPIRED,
        Offer.Status.WITHDRAWN: Offer.Status.WITHDRAWN,
    }
    current.refresh_from_db()
    assert current.status == Offer.Status.ACTIVE
    # and the search no longer lists the ended offer (the cached page is stale)
    search = buyer_client.get("/api/v1/offers/").json()
    assert [o["id"] for o in search["results"]] == [str(current.pk)]
