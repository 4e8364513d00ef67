"""Provider console pages added for usage reports, payouts, reimbursement claims and
utilisation: scoped to the provider, read-only, fixed query counts."""

from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from marketplace.services import (
    reservation_create,
    reservation_report_usage,
    reservation_settle,
    reservations_advance,
)
from tests.factories import DemandFactory, OfferFactory, ProviderFactory, next_hour
from vouchers.models import ReimbursementClaim

pytestmark = pytest.mark.django_db


def _settled(buyer, offer, voucher, hours_ahead):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(
        buyer=buyer, voucher=voucher, earliest_start=next_hour(hours_ahead)
    )
    demand.accelerators.add(offer.accelerator)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    reservations_advance(now=r.start)
    reservation_report_usage(
        reservation_id=r.pk, provider=offer.provider, delivered_gpu_hours=r.gpu_hours - 1
    )
    return reservation_settle(reservation_id=r.pk)


@pytest.fixture
def console(provider_user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(provider_user)
    return client


@pytest.fixture
def rival(site, accelerator, programme):  # type: ignore[no-untyped-def]
    """Another provider with its own offer in the same programme catalogue."""
    from tests.factories import CatalogueEntryFactory

    other = ProviderFactory.create(name="Rival DC", home_site=site)
    CatalogueEntryFactory.create(programme=programme, provider=other)
    return OfferFactory.create(provider=other, site=site, accelerator=accelerator)


def test_pages_show_only_the_providers_own_rows(console, buyer, offer, voucher, rival):
    mine = _settled(buyer, offer, voucher, 2)
    theirs = _settled(buyer, rival, voucher, 5)
    usage = console.get("/console/usage/").content.decode()
    assert str(mine.pk) in usage and str(theirs.pk) not in usage
    payouts = console.get("/console/payouts/").content.decode()
    assert str(mine.pk) in payouts and str(theirs.pk) not in payouts
    # 4 GPUs × 2 h booked, 7 GPU-hours delivered at ¥10: ¥70 billable, 60 % voucher → ¥28 cash
    assert 'id="payable">¥28.00' in payouts
    claims = console.get("/console/vouchers/reimbursementclaim/").content.decode()
    my_claim = ReimbursementClaim.objects.get(reservation=mine)
    their_claim = ReimbursementClaim.objects.get(reservation=theirs)
    assert my_claim.amount == Decimal("42.00")
    assert f"/{my_claim.pk}/" in claims and f"/{their_claim.pk}/" not in claims
    # another provider's claim reads as "does not exist"; claims cannot be changed
    other = console.get(f"/console/vouchers/reimbursementclaim/{their_claim.pk}/change/")
    assert other.status_code == 302 and other["Location"] == "/console/"
    own = console.post(
        f"/console/vouchers/reimbursementclaim/{my_claim.pk}/change/", {"amount": "1"}
    )
    assert own.status_code == 403
    my_claim.refresh_from_db()
    assert my_claim.amount == Decimal("42.00")
    util = console.get("/console/utilisation/").content.decode()
    assert "<svg" in util and f"@ {offer.site.code}" in util
    assert util.count('class="offer-utilisation"') == 1  # the rival's offer is not listed


def test_buyer_and_anonymous_are_kept_out(buyer_user, client):
    buyer_client = Client()
    buyer_client.force_login(buyer_user)
    for path in ("/console/usage/", "/console/payouts/", "/console/utilisation/"):
        assert client.get(path).status_code == 302
        assert buyer_client.get(path).status_code == 302


def test_console_pages_have_fixed_query_counts(console, buyer, offer, voucher):
    _settled(buyer, offer, voucher, 2)
    counts = {}
    for path in ("/console/usage/", "/console/payouts/", "/console/utilisation/"):
        with CaptureQueriesContext(connection) as ctx:
            assert console.get(path).status_code == 200
        counts[path] = len(ctx.captured_queries)
    for hours in (6, 10, 14):
        _settled(buyer, offer, voucher, hours)
    for path, before in counts.items():
        with CaptureQueriesContext(connection) as ctx:
            console.get(path)
        assert len(ctx.captured_queries) == before, path
