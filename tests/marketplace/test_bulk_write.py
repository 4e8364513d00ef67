"""The bulk write path of a cycle (``marketplace.matching.bulk``) against the one-by-one path
(``reservation_create`` per match): same reservations, holds, demand states and ledger balances
(every rule: ``test_bulk_write_rules``); a batch's statements do not grow with its size; and
races on PostgreSQL between a batch and a person booking the last GPUs or spending the last of
the same wallet."""

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Organisation
from ledger.audit import ledger_audit
from ledger.models import Account, Hold, Transaction
from ledger.services import programme_account, system_account, transaction_post
from marketplace.errors import DomainError
from marketplace.matching.bulk import matches_write
from marketplace.matching.engine import Match
from marketplace.models import Demand, Offer, Reservation
from marketplace.money import ZERO
from marketplace.services import offer_peak_reserved, reservation_create, wallet_deposit
from marketplace.timeutil import from_hour_index, hour_index
from tests.factories import (
    CatalogueEntryFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    ProgrammeFactory,
    ProviderFactory,
    SiteFactory,
    next_hour,
)
from tests.marketplace.races import wait_for_blocked
from tests.marketplace.writes import one_gpu_hours, open_demands
from vouchers.models import Voucher
from vouchers.services import programme_fund, voucher_issue

# (demand label, offer label, hours after the first start): one voucher demand, one remote
# (inter-hub) booking, a pair over capacity, a demand matched twice, a buyer short of funds.
PAIRS = [
    ("d1", "o1", 0),
    ("d2", "o1", 0),
    ("d3", "o1", 1),  # o1 has 8 GPUs: 4 + 4 taken at hour 1 → capacity_exhausted
    ("d4", "o2", 0),
    ("d1", "o2", 2),  # d1 already matched → demand_not_open
    ("d5", "o2", 0),  # poor buyer → insufficient_funds
    ("d6", "o3", 3),  # remote offer in another hub (national limit)
    ("d7", "o3", 0),
]


def _world(tag: str, accelerator: Any) -> dict[str, Any]:
    hub = HubFactory.create(code=f"hub-{tag}")
    far = HubFactory.create(code=f"far-{tag}")
    site = SiteFactory.create(code=f"site-{tag}", city=f"C{tag}", metro_area=f"C{tag}", hub=hub)
    remote = SiteFactory.create(code=f"rem-{tag}", city=f"R{tag}", metro_area=f"R{tag}", hub=far)
    provider = ProviderFactory.create(name=f"Provider {tag}", home_site=site)
    rich = OrganisationFactory.create(name=f"Rich {tag}", home_site=site)
    poor = OrganisationFactory.create(name=f"Poor {tag}", home_site=site)
    wallet_deposit(organisation=rich, amount=Decimal("5000.00"))
    wallet_deposit(organisation=poor, amount=Decimal("10.00"))
    programme = ProgrammeFactory.create(code=f"prog-{tag}")
    programme_fund(programme)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    voucher = voucher_issue(programme=programme, owner=rich, face_value=Decimal("300.00"))
    start = next_hour(2)
    offers = {
        "o1": OfferFactory.create(provider=provider, site=site, accelerator=accelerator),
        "o2": OfferFactory.create(
            provider=provider, site=site, accelerator=accelerator, price_per_gpu_hour=Decimal("7")
        ),
        "o3": OfferFactory.create(provider=provider, site=remote, accelerator=accelerator),
    }
    demand_args = {
        "d1": (rich, 4, 3, voucher),
        "d2": (rich, 4, 2, None),
        "d3": (rich, 2, 2, None),
        "d4": (rich, 6, 2, voucher),
        "d5": (poor, 2, 4, None),
        "d6": (rich, 8, 2, None),
        "d7": (rich, 4, 2, voucher),
    }
    demands = {
        label: DemandFactory.create(
            buyer=b,
            gpu_count=g,
            duration_hours=h,
            voucher=v,
            earliest_start=start,
            latest_end=start + timedelta(hours=24),
            locality_limit="national",
        )
        for label, (b, g, h, v) in demand_args.items()
    }
    return {"start": hour_index(start), "offers": offers, "demands": demands, "orgs": [rich, poor]}


def _matches(world: dict[str, Any]) -> list[Match]:
    return [
        Match(
            demand_id=str(world["demands"][d].pk),
            offer_id=str(world["offers"][o].pk),
            start=world["start"] + h,
            tier="",
            bill=Decimal(0),
            voucher_part=Decimal(0),
        )
        for d, o, h in PAIRS
    ]


def _state(world: dict[str, Any]) -> dict[str, Any]:
    """Everything the write changed, with ids replaced by the world's labels."""
    label = {d.pk: k for k, d in world["demands"].items()} | {
        o.pk: k for k, o in world["offers"].items()
    }
    reservations = sorted(
        (
            label[r.demand_id],
            label[r.offer_id],
            hour_index(r.start) - world["start"],
            r.gpu_count,
            r.bill,
            r.voucher_part,
            r.cash_part,
            r.status,
            r.locality_tier,
            r.voucher_id is not None,
            hasattr(r, "interhubtrade") or r.offer.site.hub_id != r.demand.origin_site.hub_id,
        )
        for r in Reservation.objects.filter(demand__in=world["demands"].values()).select_related(
            "offer__site", "demand__origin_site"
        )
    )
    holds = sorted(
        (label[h.reservation.demand_id], h.mode, h.voucher_part, h.cash_paid, h.status)
        for h in Hold.objects.filter(
            reservation__demand__in=world["demands"].values()
        ).select_related("reservation")
    )
    demands = sorted(
        (k, d.status, d.unmatched_reason)
        for k, d in ((k, Demand.objects.get(pk=d.pk)) for k, d in world["demands"].items())
    )
    orgs: list[Organisation] = world["orgs"]
    wallets = [Account.objects.get(kind=Account.Kind.WALLET, organisation=o).balance for o in orgs]
    vouchers = sorted(
        a.balance
        for a in Account.objects.filter(kind=Account.Kind.VOUCHER, voucher__owner__in=orgs)
    )
    return {
        "reservations": reservations,
        "holds": holds,
        "demands": demands,
        "wallets": wallets,
        "vouchers": vouchers,
    }


@pytest.mark.django_db
def test_batch_path_writes_exactly_what_the_one_by_one_path_writes(accelerator):
    # given two identical worlds and the same matches (with pairs that must be refused)
    one, bulk = _world("a", accelerator), _world("b", accelerator)
    escrow_before = system_account(Account.Kind.ESCROW).balance
    # when one world is written a match at a time and the other in batches of three
    for m in _matches(one):
        try:
            reservation_create(
                demand_id=m.demand_id, offer_id=m.offer_id, start=from_hour_index(m.start)
            )
        except DomainError as exc:
            Demand.objects.filter(pk=m.demand_id, status=Demand.Status.OPEN).update(
                unmatched_reason=exc.code
            )
    outcome = matches_write(_matches(bulk), now=next_hour(0) - timedelta(hours=1), batch=3)
    # then reservations, holds, demand states and balances are identical
    expected = _state(one)
    assert _state(bulk) == expected
    assert len(expected["reservations"]) == 5
    assert [d for d in expected["demands"] if d[2]] == [
        ("d3", "open", "capacity_exhausted"),
        ("d5", "open", "insufficient_funds"),
    ]
    assert sorted(outcome.dropped.values()) == [
        "capacity_exhausted",
        "demand_not_open",
        "insufficient_funds",
    ]
    assert len(outcome.made) == 5
    # and escrow grew by the same held amount twice over
    held = sum(h[2] + h[3] for h in expected["holds"])
    assert Account.objects.get(kind=Account.Kind.ESCROW).balance - escrow_before == 2 * held
    assert ledger_audit() == []


def _race_batch_with_person(
    matches: list[Match], start: Any, person: Demand, offer: Offer
) -> dict[str, Any]:
    """Run ``matches_write(matches)`` (two hours before ``start``) and a person's
    ``reservation_create(person, offer, start)`` at once on two connections. Returns
    ``{"batch": BatchOutcome, "person": "ok" or the DomainError code}``."""
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def run_batch() -> None:
        try:
            barrier.wait()
            results["batch"] = matches_write(matches, now=start - timedelta(hours=2))
        finally:
            connection.close()

    def run_person() -> None:
        try:
            barrier.wait()
            reservation_create(demand_id=person.pk, offer_id=offer.pk, start=start)
            results["person"] = "ok"
        except DomainError as exc:
            results["person"] = exc.code
        finally:
            connection.close()

    threads = [threading.Thread(target=run_batch), threading.Thread(target=run_person)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.django_db(transaction=True)
def test_batch_and_a_person_racing_for_the_last_gpus_book_nothing_twice(buyer, other_buyer, offer):
    # given an 8-GPU offer, a batch of 10 two-GPU demands (the batch alone would fill it) and
    # a person booking 6 GPUs for the same hours
    start = next_hour(2)
    batch = open_demands(buyer, 10, gpus=2, hours=3, start=start)
    (person,) = open_demands(other_buyer, 1, gpus=6, hours=3, start=start)
    matches = [
        Match(str(d.pk), str(offer.pk), hour_index(start), "", Decimal(0), Decimal(0))
        for d in batch
    ]
    results = _race_batch_with_person(matches, start, person, offer)
    results["batch"] = len(results["batch"].made)
    # then either the person got 6 GPUs and the batch one 2-GPU booking, or the batch got four
    # and the person none: never more than 8 GPUs at any hour
    booked = Reservation.objects.filter(offer=offer).count()
    if results["person"] == "ok":
        assert (results["batch"], booked) == (1, 2)
    else:
        assert (results["person"], results["batch"], booked) == ("capacity_exhausted", 4, 4)
    assert offer_peak_reserved(offer) == 8
    assert Offer.objects.get(pk=offer.pk).gpu_count == 8
    assert ledger_audit() == []


def _statement_kinds(queries: CaptureQueriesContext) -> list[str]:
    return [
        " ".join(q["sql"].split()[:3])
        for q in queries.captured_queries
        if "SAVEPOINT" not in q["sql"]
    ]


@pytest.mark.django_db
def test_a_batch_takes_the_same_statements_whatever_its_size(buyer, offer, voucher):
    # given open demands of one buyer (the first paying with a voucher) and one hour each
    def write(n: int) -> list[str]:
        start = next_hour(2)
        demands = [
            DemandFactory.create(
                buyer=buyer,
                gpu_count=1,
                duration_hours=1,
                voucher=voucher if i == 0 else None,
                earliest_start=start,
                latest_end=start + timedelta(hours=48),
            )
            for i in range(n)
        ]
        matches = [
            Match(str(d.pk), str(offer.pk), hour_index(start) + i, "", Decimal(0), Decimal(0))
            for i, d in enumerate(demands)
        ]
        with CaptureQueriesContext(connection) as queries:
            outcome = matches_write(matches, now=timezone.now(), batch=n)
        assert len(outcome.made) == n
        return _statement_kinds(queries)

    # when a batch of 2 and a batch of 16 are written, then both send the same statements
    system_account(Account.Kind.ESCROW)  # (created on first use)
    few, many = write(2), write(16)
    assert few == many
    assert len(many) <= 30
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_batch_and_a_person_spending_the_same_wallet_never_overdraw_it(site, provider):
    # given a buyer with ¥100 and five ¥30 demands: four in a batch, one booked by a person
    # at the same time on another offer (the wallet is all they share)
    org = OrganisationFactory.create(name="Thrifty", home_site=site)
    wallet_deposit(organisation=org, amount=Decimal("100.00"))
    batch_offer = OfferFactory.create(provider=provider, site=site)
    person_offer = OfferFactory.create(provider=provider, site=site)
    start = next_hour(2)
    window = {"earliest_start": start, "latest_end": start + timedelta(hours=12)}
    batch = [
        DemandFactory.create(buyer=org, gpu_count=1, duration_hours=3, **window) for _ in "1234"
    ]
    person = DemandFactory.create(buyer=org, gpu_count=1, duration_hours=3, **window)
    matches = [
        Match(str(d.pk), str(batch_offer.pk), hour_index(start), "", Decimal(0), Decimal(0))
        for d in batch
    ]
    results = _race_batch_with_person(matches, start, person, person_offer)
    # then exactly three ¥30 holds were made, whoever came first, and ¥10 is left
    made = len(results["batch"].made) + (results["person"] == "ok")
    assert made == Reservation.objects.filter(buyer=org).count() == 3
    if results["person"] == "ok":  # ¥70 left for the batch: two of its four
        assert list(results["batch"].dropped.values()) == ["insufficient_funds"] * 2
    else:  # the batch took ¥90 first
        assert results["person"] == "insufficient_funds"
        assert list(results["batch"].dropped.values()) == ["insufficient_funds"]
    assert Account.objects.get(kind=Account.Kind.WALLET, organisation=org).balance == Decimal(
        "10.00"
    )
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_the_batch_planner_setting_stays_inside_the_batch(buyer, offer):
    # given the connection's own planner setting, and two open demands
    def show() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SHOW random_page_cost")
            return str(cursor.fetchone()[0])

    before = show()
    wallet_deposit(organisation=buyer, amount=Decimal("1000.00"))
    _, matches = one_gpu_hours(buyer, offer, 2)
    # when the cycle writes them in batches of one on this connection
    with CaptureQueriesContext(connection) as queries:
        outcome = matches_write(matches, now=timezone.now(), batch=1)
    # then each batch set the planner's page cost for itself, and the connection has its own
    # setting back afterwards
    assert len(outcome.made) == 2
    assert [q["sql"] for q in queries if "random_page_cost" in q["sql"]] == [
        "SET LOCAL random_page_cost = 1.1"
    ] * 2
    assert before != "1.1" and show() == before


@pytest.mark.django_db
def test_a_demand_whose_bill_the_ledger_cannot_hold_is_dropped_alone(buyer, provider, site, offer):
    # given a demand made before demands' bills were bounded (10,000 GPUs × 1,001 h at
    # ¥100,000: ¥1.001 × 10^12, over the 14 digits a bill holds) on an offer big enough, and
    # an ordinary demand in the same batch
    wallet_deposit(organisation=buyer, amount=Decimal("1000.00"))
    start = next_hour(2)
    huge_offer = OfferFactory.create(
        provider=provider,
        site=site,
        accelerator=offer.accelerator,
        gpu_count=10_000,
        available_until=start + timedelta(hours=1100),
        price_per_gpu_hour=Decimal("100000"),
    )
    legacy = DemandFactory.create(
        buyer=buyer,
        gpu_count=10_000,
        duration_hours=1001,
        earliest_start=start,
        latest_end=start + timedelta(hours=1100),
        max_price_per_gpu_hour=Decimal("100000"),
    )
    ordinary = DemandFactory.create(
        buyer=buyer,
        gpu_count=1,
        duration_hours=1,
        earliest_start=start,
        latest_end=start + timedelta(hours=4),
    )
    matches = [
        Match(str(legacy.pk), str(huge_offer.pk), hour_index(start), "", Decimal(0), Decimal(0)),
        Match(str(ordinary.pk), str(offer.pk), hour_index(start), "", Decimal(0), Decimal(0)),
    ]
    wallet = Account.objects.get(kind=Account.Kind.WALLET, organisation=buyer)
    before = wallet.balance
    # when the cycle writes them in one batch
    outcome = matches_write(matches, now=timezone.now())
    # then the legacy demand alone is dropped, with its reason, and the batch wrote the other
    assert outcome.dropped == {str(legacy.pk): "bill_too_large"}
    assert [str(r.demand_id) for r in Reservation.objects.all()] == [str(ordinary.pk)]
    legacy.refresh_from_db()
    assert (legacy.status, legacy.unmatched_reason) == ("open", "bill_too_large")
    # the wallet paid the ordinary demand's bill only (1 GPU × 1 h × ¥10)
    wallet.refresh_from_db()
    assert Reservation.objects.get().bill == Decimal("10.00")
    assert wallet.balance == before - Decimal("10.00")
    assert ledger_audit() == []


@pytest.mark.django_db
def test_a_batch_the_database_refuses_is_written_one_pair_at_a_time(buyer, offer):
    # given three open demands, and a rule only the database holds (a trigger refusing any
    # reservation of the second), which the batch's checks cannot foresee
    demands, matches = one_gpu_hours(buyer, offer, 3)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_reservation() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.demand_id = '{demands[1].pk}' THEN RAISE EXCEPTION 'refused' "
            "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_reservation BEFORE INSERT ON marketplace_reservation "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_reservation()"
        )
    # when the cycle writes them in one batch
    outcome = matches_write(matches, now=timezone.now())
    # then the batch rolled back and its pairs went one by one: two booked, the refused one
    # dropped with its reason, nothing of it written
    assert len(outcome.made) == 2
    assert outcome.dropped == {str(demands[1].pk): "write_refused"}
    assert [Demand.objects.get(pk=d.pk).status for d in demands] == ["reserved", "open", "reserved"]
    assert Demand.objects.get(pk=demands[1].pk).unmatched_reason == "write_refused"
    assert Reservation.objects.filter(demand__in=demands).count() == 2
    assert Hold.objects.filter(reservation__demand__in=demands).count() == 2
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_two_batches_racing_for_a_programme_budget_never_pass_it(site, provider):
    # given a programme whose ¥500 budget for this year's redemptions two buyers' vouchers of
    # ¥400 could each nearly use up (one issued last year), and one ¥800 demand per buyer
    programme = ProgrammeFactory.create(code="race", annual_budget=Decimal("500.00"))
    programme_fund(programme)
    transaction_post(
        Transaction.Reason.PROGRAMME_FUNDING,
        [
            (system_account(Account.Kind.WORLD), Decimal("-500")),
            (programme_account(programme.pk), Decimal("500")),
        ],
    )
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    start = next_hour(2)
    batches = []
    for name in ("first", "second"):
        org = OrganisationFactory.create(name=name, home_site=site)
        wallet_deposit(organisation=org, amount=Decimal("1000.00"))
        voucher = voucher_issue(programme=programme, owner=org, face_value=Decimal("400"))
        if name == "first":
            Voucher.objects.filter(pk=voucher.pk).update(
                issued_at=voucher.issued_at - timedelta(days=366)
            )
        demand = DemandFactory.create(
            buyer=org,
            voucher=voucher,
            gpu_count=4,
            duration_hours=20,
            earliest_start=start,
            latest_end=start + timedelta(hours=24),
        )
        offer = OfferFactory.create(provider=provider, site=site)
        batches.append([Match(str(demand.pk), str(offer.pk), hour_index(start), "", ZERO, ZERO)])
    # and another session holding the programme row, so both batches stop at its lock (the
    # last they take), each having split with the whole budget left
    db = connection.settings_dict
    other = psycopg.connect(
        dbname=db["NAME"], user=db["USER"], host=db["HOST"], port=db["PORT"] or 5432
    )
    other.execute("SELECT 1 FROM vouchers_programme WHERE id = %s FOR UPDATE", [programme.pk])
    outcomes: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            outcomes[i] = matches_write(batches[i], now=timezone.now())
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    try:
        threads[0].start()
        wait_for_blocked(1)
        threads[1].start()
        wait_for_blocked(2)
    finally:
        other.rollback()  # when the row is let go: the first batch commits its ¥400 hold
        other.close()
    for t in threads:
        t.join(60)
    # then the second batch found the budget gone under the lock and ran again with the
    # programme locked first: its voucher pays the ¥100 left, cash the rest
    parts = {
        r.buyer.name: (r.voucher_part, r.cash_part)
        for r in Reservation.objects.filter(voucher__programme=programme).select_related("buyer")
    }
    assert [len(outcomes[i].made) for i in (0, 1)] == [1, 1]
    assert parts == {
        "first": (Decimal("400.00"), Decimal("400.00")),
        "second": (Decimal("100.00"), Decimal("700.00")),
    }
    assert ledger_audit() == []
