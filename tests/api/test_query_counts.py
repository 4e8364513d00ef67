"""Every list endpoint of ``/api/v1/`` costs a fixed number of SQL queries: the same for 1 row as
for 20, and the same for page sizes 5 and 50 (no query per row: related rows are joined or
prefetched in the selectors)."""

from datetime import date
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import get_resolver

from accounts.tokens import token_create
from ledger.models import Account, Transaction
from ledger.services import organisation_account, system_account, transaction_post
from marketplace.models import Reservation
from marketplace.services import reservation_create, reservation_report_usage, reservation_settle
from tests.factories import (
    AcceleratorFactory,
    ClusterFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    ProgrammeFactory,
    SiteFactory,
)
from vouchers.models import Statement
from vouchers.services import voucher_application_submit, voucher_issue

pytestmark = pytest.mark.django_db

# (path, who asks): every list endpoint (GET on a collection) of /api/v1/.
LISTS = [
    ("/api/v1/auth/tokens/", "buyer"),
    ("/api/v1/hubs/", "buyer"),
    ("/api/v1/sites/", "buyer"),
    ("/api/v1/accelerators/", "buyer"),
    ("/api/v1/offers/", "buyer"),
    ("/api/v1/demands/", "buyer"),
    ("/api/v1/reservations/", "buyer"),
    ("/api/v1/reservations/?role=provider", "provider"),
    ("/api/v1/provider/sites/", "provider"),
    ("/api/v1/provider/usage-reports/", "provider"),
    ("/api/v1/provider/payouts/", "provider"),
    ("/api/v1/provider/reimbursement-claims/", "provider"),
    ("/api/v1/programmes/", "buyer"),
    ("/api/v1/vouchers/", "buyer"),
    ("/api/v1/voucher-applications/", "buyer"),
    ("/api/v1/ledger/", "buyer"),
    ("/api/v1/statements/", "provider"),
]


def _grow(n: int, start: int, *, buyer, provider, site, accelerator, programme, buyer_user):  # type: ignore[no-untyped-def]
    """Add ``n`` rows to every list: reference rows, an offer, a demand paid partly with its own
    voucher, its reservation run, usage-reported and settled (entries, a usage report, a
    reimbursement claim), a payout, a voucher application, an API token, a statement."""
    payable = organisation_account(provider, Account.Kind.PAYABLE)
    for i in range(start, start + n):
        hub = HubFactory.create(code=f"qc-hub-{i}")
        SiteFactory.create(code=f"qc-site-{i}", hub=hub, cluster=ClusterFactory(hub=hub))
        SiteFactory.create(code=f"qc-dc-{i}", hub=site.hub, provider=provider)
        AcceleratorFactory.create(code=f"QC-{i}")
        ProgrammeFactory.create(code=f"qc-programme-{i}")
        offer = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
        voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("20.00"))
        demand = DemandFactory.create(buyer=buyer, voucher=voucher)
        demand.accelerators.add(accelerator)
        reservation = reservation_create(
            demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start
        )
        Reservation.objects.filter(pk=reservation.pk).update(status=Reservation.Status.ACTIVE)
        reservation_report_usage(
            reservation_id=reservation.pk, provider=provider, delivered_gpu_hours=4
        )
        reservation_settle(reservation_id=reservation.pk)
        transaction_post(
            Transaction.Reason.PAYOUT,
            [(payable, Decimal("-1.00")), (system_account(Account.Kind.WORLD), Decimal("1.00"))],
            memo=f"payout {i}",
        )
        voucher_application_submit(buyer=buyer, programme=programme, amount=Decimal("10.00"))
        token_create(user=buyer_user, name=f"qc-{i}")
        Statement.objects.create(  # one empty monthly statement per past month
            programme=programme,
            provider=provider,
            period_start=date(2000 + i // 12, i % 12 + 1, 1),
            period_end=date(2000 + (i + 1) // 12, (i + 1) % 12 + 1, 1),
            total=Decimal(0),
            claim_count=0,
        )


def _count(client, url: str, page_size: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(queries, rows) of one GET of ``url`` at ``page_size``."""
    sep = "&" if "?" in url else "?"
    paged = url if url.endswith("/auth/tokens/") else f"{url}{sep}page_size={page_size}"
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(paged)
    assert response.status_code == 200, (url, response.content)
    body = response.json()
    rows = body if isinstance(body, list) else body["results"]
    return len(ctx.captured_queries), len(rows)


def test_every_collection_route_is_in_the_list():
    """A new list route must be added to ``LISTS`` (GET collections: routes without an id)."""
    resolver = get_resolver()
    (api,) = [p for p in resolver.url_patterns if str(p.pattern) == "api/v1/"]
    collections = {
        f"/api/v1/{p.pattern}"
        for p in api.url_patterns  # type: ignore[union-attr]
        if "<" not in str(p.pattern) and hasattr(p.callback.view_class, "get")  # type: ignore[union-attr]
    }
    known = {path.split("?")[0] for path, _ in LISTS}
    # one object each, not lists of rows (the matrix is an aggregate over all trades)
    singletons = {
        "/api/v1/organisations/me/",
        "/api/v1/wallet/",
        "/api/v1/inter-hub-trades/matrix/",
    }
    assert collections - singletons == known


def test_list_endpoints_cost_a_fixed_number_of_queries(
    buyer, provider, site, accelerator, programme, buyer_user, buyer_client, provider_client
):
    world = {
        "buyer": buyer,
        "provider": provider,
        "site": site,
        "accelerator": accelerator,
        "programme": programme,
        "buyer_user": buyer_user,
    }
    clients = {"buyer": buyer_client, "provider": provider_client}
    _grow(1, 0, **world)
    one = {url: _count(clients[who], url, 50) for url, who in LISTS}
    _grow(19, 1, **world)
    twenty = {url: _count(clients[who], url, 50) for url, who in LISTS}
    five = {url: _count(clients[who], url, 5) for url, who in LISTS}
    problems = []
    for url, _ in LISTS:
        (q1, rows1), (q20, rows20), (q5, rows5) = one[url], twenty[url], five[url]
        # the lists really grew, and page_size really cut the page
        assert rows1 >= 1 and rows20 >= 20, (url, rows1, rows20)
        if not url.endswith("/auth/tokens/"):
            assert rows5 == 5, (url, rows5)
        if not q1 == q20 == q5:
            problems.append(f"{url}: {q1} queries for 1 row, {q20} for 20, {q5} at page size 5")
    assert not problems, "\n".join(problems)
