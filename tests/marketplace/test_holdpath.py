"""The hold's PostgreSQL path (``marketplace.holdpath``: five round trips, prepared statements)
against the ORM path it replaces (``reservation_create_orm``): the same rules and the same rows
— reservation, events, inter-hub trade, demand, hold, HOLD transaction and entries, programme
usage — on a world of cases (cash, point of sale, reimbursement, held, remote, every reason a
voucher does not apply, a share tier, a budget and a cap that cut the voucher part, short funds,
no capacity). And the statements one hold sends, counted so the path cannot grow back."""

import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection, transaction
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.models import Account, Entry, Hold
from ledger.services import system_account
from marketplace.errors import DomainError
from marketplace.models import Demand, InterHubTrade, Reservation, ReservationEvent
from marketplace.services import reservation_create, reservation_create_orm, wallet_deposit
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
from vouchers.models import Programme, ProgrammeUsage, ShareTier, Voucher
from vouchers.services import programme_fund, voucher_issue

pytestmark = pytest.mark.django_db

# case → (buyer, voucher, offer, gpus, hours, hours after the first start, auto_accept)
CASES: dict[str, tuple[str, str | None, str, int, int, int, bool]] = {
    "cash": ("rich", None, "near", 2, 2, 0, True),
    "point_of_sale": ("rich", "pos", "near", 4, 2, 0, True),
    "remote": ("rich", "pos", "far", 4, 2, 0, True),
    "reimbursement": ("rich", "reimb", "near", 2, 3, 3, True),
    "held": ("rich", "pos", "near", 1, 2, 6, False),
    "not_in_catalogue": ("rich", "uncatalogued", "near", 1, 1, 8, True),
    "outside_region": ("rich", "regional", "near", 1, 1, 9, True),
    "related_party": ("related", "related", "near", 1, 1, 10, True),
    "expired": ("rich", "expired", "near", 1, 1, 11, True),
    "share_tier": ("startup", "startup", "near", 2, 2, 12, True),
    "budget_cut": ("rich", "budget", "near", 4, 2, 14, True),
    "cap_cut": ("rich", "capped", "near", 4, 2, 18, True),
    "short_of_funds": ("poor", None, "near", 2, 2, 20, True),
    "no_capacity": ("rich", None, "near", 8, 2, 0, True),  # 6 of the 8 GPUs taken at hour 0
}


def _world(tag: str, accelerator: Any) -> dict[str, Any]:
    """Organisations, offers, programmes and vouchers for every case; labels for every id."""
    hub = HubFactory.create(code=f"hp-hub-{tag}")
    far_hub = HubFactory.create(code=f"hp-far-{tag}")
    near = SiteFactory.create(code=f"hp-site-{tag}", city=f"C{tag}", metro_area=f"C{tag}", hub=hub)
    far = SiteFactory.create(
        code=f"hp-rem-{tag}", city=f"R{tag}", metro_area=f"R{tag}", hub=far_hub
    )
    provider = ProviderFactory.create(name=f"HP provider {tag}", home_site=near)
    orgs = {
        name: OrganisationFactory.create(name=f"HP {name} {tag}", home_site=near)
        for name in ("rich", "poor", "related", "startup")
    }
    for name, amount in (("rich", "100000.00"), ("poor", "5.00"), ("related", "1000.00")):
        wallet_deposit(organisation=orgs[name], amount=Decimal(amount))
    wallet_deposit(organisation=orgs["startup"], amount=Decimal("1000.00"))
    orgs["related"].related.add(provider)
    offers = {
        "near": OfferFactory.create(provider=provider, site=near, accelerator=accelerator),
        "far": OfferFactory.create(provider=provider, site=far, accelerator=accelerator),
    }

    def programme(code: str, *, approved: bool = True, **fields: Any) -> Programme:
        p = ProgrammeFactory.create(code=f"hp-{code}-{tag}", **fields)
        programme_fund(p)
        if approved:
            CatalogueEntryFactory.create(programme=p, provider=provider)
        return p

    pos = programme("pos")
    programmes = {
        "pos": pos,
        "reimb": programme("reimb", redemption_mode="reimbursement"),
        "uncatalogued": programme("uncat", approved=False),
        "regional": programme("regional"),
        "expired": programme("expired"),
        "startup": programme("startup"),
        "budget": programme("budget"),
        "capped": programme("capped"),
    }
    programmes["regional"].hubs.add(far_hub)  # the near offer is outside its region
    tier = ShareTier.objects.create(
        programme=programmes["startup"], name="startups", max_share=Decimal("0.8000")
    )
    tier.buyers.add(orgs["startup"])
    owner = {"related": orgs["related"], "startup": orgs["startup"]}
    vouchers = {
        name: voucher_issue(
            programme=p, owner=owner.get(name, orgs["rich"]), face_value=Decimal("500.00")
        )
        for name, p in programmes.items()
    }
    vouchers["related"] = voucher_issue(
        programme=pos, owner=orgs["related"], face_value=Decimal(50)
    )
    Voucher.objects.filter(pk=vouchers["expired"].pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    # limits lowered after issue (programmes are data an operator edits; the audit then flags
    # the vouchers issued above them): 30 CNY of budget and 25 CNY of the buyer's cap left
    Programme.objects.filter(pk=programmes["budget"].pk).update(annual_budget=Decimal("30.00"))
    Programme.objects.filter(pk=programmes["capped"].pk).update(buyer_annual_cap=Decimal("25.00"))
    labels: dict[object, str] = {provider.pk: "provider", hub.pk: "hub", far_hub.pk: "far-hub"}
    for named in (orgs, offers, programmes, vouchers):
        labels.update({o.pk: k for k, o in named.items()})
    return {
        "orgs": orgs,
        "offers": offers,
        "vouchers": vouchers,
        "programmes": programmes,
        "labels": labels,
        "start": next_hour(2),
    }


def _demands(world: dict[str, Any]) -> dict[str, Demand]:
    start = world["start"]
    demands = {}
    for case, (buyer, voucher, _, gpus, hours, _, auto) in CASES.items():
        demands[case] = DemandFactory.create(
            buyer=world["orgs"][buyer],
            voucher=world["vouchers"][voucher] if voucher else None,
            gpu_count=gpus,
            duration_hours=hours,
            earliest_start=start,
            latest_end=start + timedelta(hours=24),
            locality_limit="national",
            auto_accept=auto,
        )
    world["labels"] |= {d.pk: case for case, d in demands.items()}
    return demands


def _book(world: dict[str, Any], demands: dict[str, Demand], *, orm: bool) -> dict[str, str]:
    outcomes = {}
    for case, (_, _, offer, _, _, later, _) in CASES.items():
        args = (
            demands[case].pk,
            world["offers"][offer].pk,
            world["start"] + later * timedelta(hours=1),
        )
        try:
            if orm:
                with transaction.atomic():
                    reservation_create_orm(*args, timezone.now(), False)
            else:
                reservation_create(demand_id=args[0], offer_id=args[1], start=args[2])
            outcomes[case] = "ok"
        except DomainError as exc:
            outcomes[case] = exc.code
    return outcomes


def _state(world: dict[str, Any], demands: dict[str, Demand]) -> dict[str, Any]:
    """Every row the holds wrote, with ids replaced by labels."""
    label = world["labels"]
    mine = Reservation.objects.filter(demand__in=demands.values())
    reservations = {}
    for r in mine:
        hold = Hold.objects.get(reservation=r)
        entries = sorted(
            (e.account.kind, label.get(e.account.organisation_id or e.account.voucher_id), e.amount)
            for e in Entry.objects.filter(
                transaction__reservation=r, transaction__reason="hold"
            ).select_related("account")
        )
        reservations[label[r.demand_id]] = {
            "row": (
                label[r.offer_id],
                label[r.buyer_id],
                label[r.provider_id],
                r.start - world["start"],
                r.end - r.start,
                r.gpu_count,
                r.price_per_gpu_hour,
                r.bill,
                label.get(r.voucher_id),
                r.voucher_part,
                r.cash_part,
                r.voucher_note,
                r.locality_tier,
                r.status,
                r.delivered_gpu_hours,
            ),
            "events": [
                (e.from_status, e.to_status, e.note, e.actor_id)
                for e in ReservationEvent.objects.filter(reservation=r).order_by("id")
            ],
            "trade": [
                (label[t.exporting_hub_id], label[t.importing_hub_id], t.gpu_hours, t.value)
                for t in InterHubTrade.objects.filter(reservation=r)
            ],
            "hold": (
                hold.mode,
                hold.status,
                hold.voucher_part,
                hold.cash_paid,
                hold.refunded_voucher,
                hold.refunded_cash,
                hold.programme_year,
                hold.closed_at,
            ),
            "transactions": [
                (t.reason, label.get(t.voucher_id), t.memo) for t in r.transactions.all()
            ],
            "entries": entries,
        }
    usage = sorted(
        (label[u.programme_id], u.year, label.get(u.buyer_id, "budget"), u.used)
        for u in ProgrammeUsage.objects.filter(programme__in=world["programmes"].values())
    )
    states = sorted(
        (label[d.pk], d.status, d.unmatched_reason)
        for d in Demand.objects.filter(pk__in=[d.pk for d in demands.values()])
    )
    return {"reservations": reservations, "usage": usage, "demands": states}


def test_the_postgresql_path_writes_exactly_what_the_orm_path_writes(accelerator):
    # given two identical worlds with a demand for every case
    fast, orm = _world("f", accelerator), _world("o", accelerator)
    fast_demands, orm_demands = _demands(fast), _demands(orm)
    # when one is booked through reservation_create (PostgreSQL path), the other through the ORM
    fast_outcomes = _book(fast, fast_demands, orm=False)
    orm_outcomes = _book(orm, orm_demands, orm=True)
    # then the outcomes and every row written are the same
    assert fast_outcomes == orm_outcomes
    assert fast_outcomes == {
        **dict.fromkeys(CASES, "ok"),
        "short_of_funds": "insufficient_funds",
        "no_capacity": "capacity_exhausted",
    }
    expected = _state(orm, orm_demands)
    assert _state(fast, fast_demands) == expected
    # and the cases did what they are named after
    parts = {
        case: (r["row"][9], r["row"][10], r["row"][11], r["hold"][0])
        for case, r in expected["reservations"].items()
    }
    assert parts == {
        "cash": (Decimal(0), Decimal("40.00"), "", "point_of_sale"),
        "point_of_sale": (Decimal("48.00"), Decimal("32.00"), "", "point_of_sale"),
        "reimbursement": (Decimal("36.00"), Decimal("24.00"), "", "reimbursement"),
        "held": (Decimal("12.00"), Decimal("8.00"), "", "point_of_sale"),
        "remote": (Decimal("48.00"), Decimal("32.00"), "", "point_of_sale"),
        "not_in_catalogue": (
            Decimal(0),
            Decimal("10.00"),
            "provider_not_in_catalogue",
            "point_of_sale",
        ),
        "outside_region": (Decimal(0), Decimal("10.00"), "site_outside_region", "point_of_sale"),
        "related_party": (Decimal(0), Decimal("10.00"), "related_party", "point_of_sale"),
        "expired": (Decimal(0), Decimal("10.00"), "voucher_expired", "point_of_sale"),
        "share_tier": (Decimal("32.00"), Decimal("8.00"), "", "point_of_sale"),
        "budget_cut": (Decimal("30.00"), Decimal("50.00"), "", "point_of_sale"),
        "cap_cut": (Decimal("25.00"), Decimal("55.00"), "", "point_of_sale"),
    }
    assert expected["reservations"]["remote"]["trade"] == [("far-hub", "hub", 8, Decimal("80.00"))]
    assert expected["reservations"]["held"]["row"][13] == "held"
    # the only findings: the limits an operator lowered below what was already issued
    assert sorted(ledger_audit()) == sorted(
        f"{what} {label} got 500.00 from hp-capped-{tag} in {year}"
        if what == "buyer"
        else f"programme hp-budget-{tag} issued 500.00 in {year}"
        for tag, label in ((t, str(w["orgs"]["rich"].pk)) for t, w in (("f", fast), ("o", orm)))
        for what in ("buyer", "programme")
        for year in [timezone.now().astimezone(ZoneInfo("Asia/Shanghai")).year]
    )


def _one_booking(buyer: Any, offer: Any, voucher: Any, hours_ahead: int) -> Demand:
    start = next_hour(hours_ahead)
    return DemandFactory.create(
        buyer=buyer, voucher=voucher, earliest_start=start, latest_end=start + timedelta(hours=4)
    )


@pytest.mark.parametrize("with_voucher", [False, True], ids=["cash", "voucher"])
def test_a_hold_is_three_statements_and_five_round_trips(
    with_voucher, buyer, offer, voucher, django_assert_num_queries
):
    # given a first hold made (it creates the escrow account once for the whole market)
    first = _one_booking(buyer, offer, voucher if with_voucher else None, 1)
    reservation_create(demand_id=first.pk, offer_id=offer.pk, start=first.earliest_start)
    demand = _one_booking(buyer, offer, voucher if with_voucher else None, 3)
    # when the next hold is made, then five round trips are counted: inside the test's own
    # transaction the hold's durable block is a SAVEPOINT and its RELEASE, which stand for the
    # BEGIN and COMMIT it sends in production, around its three statements (issue 3: ≤ 10)
    with django_assert_num_queries(5) as captured:
        r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    sql = [q["sql"] for q in captured.captured_queries]
    assert sql[0].startswith("SAVEPOINT") and sql[-1].startswith("RELEASE SAVEPOINT")
    assert (r.voucher_part > 0) == with_voucher
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_a_hold_whose_programme_limits_moved_after_its_read_runs_again_locked(accelerator, site):
    """The re-run branch of ``reservation_create`` (``ProgrammeLimitsMoved``): a concurrent hold
    takes budget between this hold's unlocked read of the limits and its write. Forced, not
    hoped for: the other hold is made — and committed — from another thread at the moment this
    one sends its write statement."""
    # given a programme with a budget of ¥100 a year (funded once with more), and two buyers
    # holding vouchers issued in earlier years (so this year's budget is all left): A wants ¥48
    # of it, B ¥60
    today = timezone.now()
    programme = ProgrammeFactory.create(
        code="rerun",
        annual_budget=Decimal("1000.00"),
        validity_months=36,
        effective_from=today.date().replace(year=today.year - 3, month=1, day=1),
    )
    programme_fund(programme)
    provider = ProviderFactory.create(name="Rerun DC", home_site=site)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    buyers, demands, offers = [], [], []
    for years_ago, gpus in ((1, 4), (2, 5)):
        buyer = OrganisationFactory.create(home_site=site)
        wallet_deposit(organisation=buyer, amount=Decimal("1000.00"))
        issued = today.replace(year=today.year - years_ago)
        voucher = voucher_issue(
            programme=programme, owner=buyer, face_value=Decimal("80.00"), now=issued
        )
        offers.append(OfferFactory.create(provider=provider, site=site, accelerator=accelerator))
        demands.append(DemandFactory.create(buyer=buyer, voucher=voucher, gpu_count=gpus))
        buyers.append(buyer)
    Programme.objects.filter(pk=programme.pk).update(annual_budget=Decimal("100.00"))
    system_account(Account.Kind.ESCROW)  # made by the first hold otherwise, which B would wait on
    a, b = demands
    sent: list[str] = []
    other: dict[str, Any] = {}

    def book_b() -> None:
        try:
            other["b"] = reservation_create(
                demand_id=b.pk, offer_id=offers[1].pk, start=b.earliest_start
            )
        finally:
            connection.close()

    def b_commits_before_a_writes(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        sent.append(sql)
        if sql.lstrip().startswith("WITH") and "b" not in other:
            thread = threading.Thread(target=book_b)
            thread.start()
            thread.join(30)
        return execute(sql, params, many, context)

    # when A's hold sends its write just after B's hold committed
    with connection.execute_wrapper(b_commits_before_a_writes):
        r = reservation_create(demand_id=a.pk, offer_id=offers[0].pk, start=a.earliest_start)
    assert "b_failed" not in other, other
    # then B got its ¥60 and A — run again with the programme row locked before its split — the
    # ¥40 left, not the ¥48 its first read counted on; nothing of the first run was committed
    assert other["b"].voucher_part == Decimal("60.00")
    assert (r.voucher_part, r.cash_part) == (Decimal("40.00"), Decimal("40.00"))
    writes = [s for s in sent if s.lstrip().startswith("WITH")]
    locks = [s for s in sent if "FROM vouchers_programme WHERE id = %s FOR UPDATE" in s]
    assert (len(writes), len(locks)) == (2, 1)
    assert Reservation.objects.filter(demand=a).count() == 1
    budget = ProgrammeUsage.objects.get(programme=programme, buyer__isnull=True)
    assert budget.used == Decimal("100.00")
    assert ledger_audit() == []
