"""Every rule ``reservation_create`` applies, through the bulk write path
(``marketplace.matching.bulk``): two identical worlds, one written a match at a time through
``reservation_create`` and one through ``matches_write`` in batches of 1, 4 and all, must end
with the same reservations, events, inter-hub trades, holds, HOLD ledger transactions (entry by
entry), demand states and balances. The matches cover each refusal (demand not open, offer not
active, buyer not approved, self-trade-free pairs outside window/price/duration/locality/model,
capacity, funds, a buyer with no wallet at all) and each voucher rule (point of sale and
reimbursement, share tier, catalogue, region, related party, expiry, the voucher's balance, the
programme's budget and the buyer's annual cap used up by an earlier hold of the same batch)."""

from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from django.utils import timezone

from accounts.models import Organisation
from ledger.audit import ledger_audit
from ledger.models import Account, Entry, Hold, Transaction
from ledger.services import programme_account, system_account, transaction_post
from marketplace.errors import DomainError
from marketplace.matching.bulk import matches_write
from marketplace.matching.engine import Match
from marketplace.models import (
    Accelerator,
    Demand,
    InterHubTrade,
    Reservation,
    ReservationEvent,
)
from marketplace.services import reservation_create, wallet_deposit
from marketplace.timeutil import from_hour_index, hour_index
from tests.factories import (
    AcceleratorFactory,
    CatalogueEntryFactory,
    ClusterFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    ProgrammeFactory,
    ProviderFactory,
    SiteFactory,
    next_hour,
)
from vouchers.models import Programme, ShareTier, Voucher
from vouchers.services import programme_fund, voucher_issue

# (demand, offer, hours after the first start, the code it is refused with or "")
PAIRS = [
    ("d1", "o1", 0, ""),  # point-of-sale voucher V1
    ("d2", "o1", 0, ""),
    ("d3", "o1", 1, "capacity_exhausted"),  # o1's 8 GPUs are taken at hour 1
    ("d4", "o2", 0, ""),  # V1 again: its balance after d1
    ("d1", "o2", 2, "demand_not_open"),
    ("d5", "o2", 0, "insufficient_funds"),  # poor buyer
    ("d6", "o3", 3, ""),  # remote hub: an inter-hub trade
    ("d7", "o3", 0, ""),  # inter-hub with V1: the last of V1's balance
    ("d8", "o11", 0, ""),  # reimbursement-mode V2a (issued last year): takes most of the budget
    ("d9", "o2", 6, ""),  # V2b: only what d8 left of this year's programme budget
    ("d10", "o1", 9, "insufficient_funds"),  # a buyer without any wallet account
    ("d11", "o1", 9, "organisation_not_approved"),
    ("d12", "o5", 0, ""),  # provider outside the catalogue: cash only
    ("d13", "o6", 0, ""),  # provider related to the buyer: cash only
    ("d14", "o1", 12, ""),  # expired voucher: cash only
    ("d15", "o1", 12, ""),  # voucher of a programme scoped to the other hub: cash only
    ("d15b", "o3", 5, ""),  # the same voucher in its region (the hub): applies
    ("d15c", "o12", 0, ""),  # … in its region (a listed site): applies
    ("d15d", "o13", 0, ""),  # … in its region (a listed cluster): applies
    ("d16", "o4", 0, ""),  # V3a (issued last year) on a domestic GPU: tier share 0.8, cap
    ("d17", "o4", 10, ""),  # V3b: the buyer's annual cap is used up by d16
    ("d18", "o7", 0, "offer_not_active"),
    ("d19", "o8", 0, "below_min_duration"),
    ("d20", "o9", 0, "over_price"),
    ("d21", "o10", 0, "outside_locality"),
    ("d22", "o4", 8, "model_mismatch"),
    ("d23", "o2", 14, ""),  # no auto-accept: held, demand matched
    ("d24", "o1", 14, "outside_window"),  # ends after the demand's latest end
]
BATCHES = [1, 4, len(PAIRS)]


def _last_year(voucher: Voucher) -> None:
    """Move a voucher's issue into last year (it counts against last year's issuing limits but
    its holds count against this year's redemption budget and cap)."""
    Voucher.objects.filter(pk=voucher.pk).update(issued_at=voucher.issued_at - timedelta(days=366))


def _world(tag: str) -> dict[str, Any]:
    hub = HubFactory.create(code=f"hub-{tag}")
    far = HubFactory.create(code=f"far-{tag}")
    site = SiteFactory.create(code=f"site-{tag}", city=f"C{tag}", metro_area=f"C{tag}", hub=hub)
    remote = SiteFactory.create(code=f"rem-{tag}", city=f"R{tag}", metro_area=f"R{tag}", hub=far)
    listed = SiteFactory.create(code=f"lst-{tag}", city=f"C{tag}", metro_area=f"C{tag}", hub=hub)
    cluster = ClusterFactory.create(code=f"cl-{tag}", hub=hub)
    clustered = SiteFactory.create(
        code=f"cls-{tag}", city=f"C{tag}", metro_area=f"C{tag}", hub=hub, cluster=cluster
    )
    a100 = AcceleratorFactory.create()
    ascend: Accelerator = AcceleratorFactory.create(
        code="Ascend-910B", vendor="Huawei", memory_gb=64, is_domestic=True
    )
    p = ProviderFactory.create(name=f"P {tag}", home_site=site)
    q = ProviderFactory.create(name=f"Q {tag}", home_site=site)  # not in any catalogue
    r = ProviderFactory.create(name=f"R {tag}", home_site=site)  # related to the rich buyer
    orgs = {
        "rich": OrganisationFactory.create(name=f"Rich {tag}", home_site=site),
        "poor": OrganisationFactory.create(name=f"Poor {tag}", home_site=site),
        "thrifty": OrganisationFactory.create(name=f"Thrifty {tag}", home_site=site),
        "capped": OrganisationFactory.create(name=f"Capped {tag}", home_site=site),
        "walletless": OrganisationFactory.create(name=f"No wallet {tag}", home_site=site),
        "pending": OrganisationFactory.create(
            name=f"Pending {tag}", home_site=site, status=Organisation.Status.PENDING
        ),
    }
    orgs["rich"].related.add(r)
    for label, amount in (("rich", "5000"), ("poor", "10"), ("thrifty", "2000"), ("capped", "900")):
        wallet_deposit(organisation=orgs[label], amount=Decimal(amount))
    wallet_deposit(organisation=orgs["pending"], amount=Decimal("500"))

    pos = ProgrammeFactory.create(code=f"pos-{tag}", buyer_annual_cap=Decimal("300.00"))
    ShareTier.objects.create(
        programme=pos, name="domestic", max_share=Decimal("0.8000"), domestic_accelerator=True
    )
    reimb = ProgrammeFactory.create(
        code=f"reimb-{tag}",
        annual_budget=Decimal("500.00"),
        buyer_annual_cap=Decimal("1000.00"),
        redemption_mode=Programme.RedemptionMode.REIMBURSEMENT,
    )
    scoped = ProgrammeFactory.create(code=f"far-{tag}")
    scoped.hubs.add(far)
    scoped.sites.add(listed)
    scoped.clusters.add(cluster)
    for programme in (pos, reimb, scoped):
        programme_fund(programme)
        CatalogueEntryFactory.create(programme=programme, provider=p)
        CatalogueEntryFactory.create(programme=programme, provider=r)
    # last year's voucher of the reimbursement programme was funded by last year's budget
    transaction_post(
        Transaction.Reason.PROGRAMME_FUNDING,
        [
            (system_account(Account.Kind.WORLD), Decimal("-500")),
            (programme_account(reimb.pk), Decimal("500")),
        ],
    )
    vouchers = {
        "V1": voucher_issue(programme=pos, owner=orgs["rich"], face_value=Decimal("150")),
        "V2a": voucher_issue(programme=reimb, owner=orgs["thrifty"], face_value=Decimal("400")),
        "V2b": voucher_issue(programme=reimb, owner=orgs["thrifty"], face_value=Decimal("400")),
        "V3a": voucher_issue(programme=pos, owner=orgs["capped"], face_value=Decimal("300")),
        "V4": voucher_issue(programme=scoped, owner=orgs["rich"], face_value=Decimal("100")),
        "V5": voucher_issue(programme=scoped, owner=orgs["rich"], face_value=Decimal("100")),
    }
    _last_year(vouchers["V2a"])
    _last_year(vouchers["V3a"])
    vouchers["V3b"] = voucher_issue(programme=pos, owner=orgs["capped"], face_value=Decimal("300"))
    Voucher.objects.filter(pk=vouchers["V4"].pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )

    start = next_hour(2)

    def offer(provider: Organisation, **kw: Any) -> Any:
        return OfferFactory.create(provider=provider, site=kw.pop("site", site), **kw)

    offers = {
        "o1": offer(p, accelerator=a100),
        "o2": offer(p, accelerator=a100, price_per_gpu_hour=Decimal("7")),
        "o3": offer(p, accelerator=a100, site=remote),
        "o4": offer(p, accelerator=ascend),
        "o5": offer(q, accelerator=a100),
        "o6": offer(r, accelerator=a100),
        "o7": offer(p, accelerator=a100, status="paused"),
        "o8": offer(p, accelerator=a100, min_duration_hours=10),
        "o9": offer(p, accelerator=a100, price_per_gpu_hour=Decimal("50")),
        "o10": offer(p, accelerator=a100, site=remote),
        "o11": offer(p, accelerator=a100),
        "o12": offer(p, accelerator=a100, site=listed),
        "o13": offer(p, accelerator=a100, site=clustered),
    }
    # label: (buyer, gpus, hours, voucher, locality limit, auto-accept, listed models)
    specs: dict[str, tuple[str, int, int, str | None, str, bool, list[Accelerator]]] = {
        "d1": ("rich", 4, 3, "V1", "city", True, []),
        "d2": ("rich", 4, 2, None, "city", True, []),
        "d3": ("rich", 2, 2, None, "city", True, []),
        "d4": ("rich", 6, 2, "V1", "city", True, []),
        "d5": ("poor", 2, 4, None, "city", True, []),
        "d6": ("rich", 8, 2, None, "national", True, []),
        "d7": ("rich", 4, 2, "V1", "national", True, []),
        "d8": ("thrifty", 8, 10, "V2a", "city", True, []),
        "d9": ("thrifty", 4, 10, "V2b", "city", True, []),
        "d10": ("walletless", 1, 1, None, "city", True, []),
        "d11": ("pending", 1, 1, None, "city", True, []),
        "d12": ("rich", 2, 2, "V1", "city", True, []),
        "d13": ("rich", 2, 2, "V1", "city", True, []),
        "d14": ("rich", 2, 2, "V4", "city", True, []),
        "d15": ("rich", 2, 2, "V5", "city", True, []),
        "d15b": ("rich", 2, 2, "V5", "national", True, []),
        "d15c": ("rich", 2, 2, "V5", "city", True, []),
        "d15d": ("rich", 2, 2, "V5", "city", True, []),
        "d16": ("capped", 4, 10, "V3a", "city", True, []),
        "d17": ("capped", 2, 2, "V3b", "city", True, []),
        "d18": ("rich", 1, 1, None, "city", True, []),
        "d19": ("rich", 1, 2, None, "city", True, []),
        "d20": ("rich", 1, 1, None, "city", True, []),
        "d21": ("rich", 1, 1, None, "city", True, []),
        "d22": ("rich", 1, 1, None, "city", True, [a100]),
        "d23": ("rich", 2, 2, None, "city", False, []),
        "d24": ("rich", 2, 12, None, "city", True, []),
    }
    demands = {}
    for label, (buyer, gpus, hours, voucher, limit, auto, models) in specs.items():
        demand = DemandFactory.create(
            buyer=orgs[buyer],
            gpu_count=gpus,
            duration_hours=hours,
            voucher=vouchers[voucher] if voucher else None,
            earliest_start=start,
            latest_end=start + timedelta(hours=24),
            locality_limit=limit,
            auto_accept=auto,
        )
        demand.accelerators.set(models)
        demands[label] = demand
    labels: dict[object, str] = {}
    for group in (orgs, vouchers, offers, demands):
        labels |= {obj.pk: label for label, obj in group.items()}
    labels |= {p.pk: "P", q.pk: "Q", r.pk: "R", hub.pk: "hub", far.pk: "far"}
    labels |= {prog.pk: name for name, prog in (("pos", pos), ("reimb", reimb), ("far", scoped))}
    return {"start": hour_index(start), "demands": demands, "offers": offers, "labels": labels}


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
        for d, o, h, _ in PAIRS
    ]


def _owner(account: Account, labels: dict[object, str]) -> str:
    owner = account.organisation_id or account.voucher_id or account.programme_id
    return f"{account.kind}:{labels.get(owner, 'system') if owner else 'system'}"


def _state(world: dict[str, Any]) -> dict[str, Any]:
    """Everything a write changed, with ids replaced by the world's labels."""
    labels: dict[object, str] = world["labels"]
    demands = world["demands"].values()
    reservations = Reservation.objects.filter(demand__in=demands)
    by_res: dict[object, str] = {
        r.pk: f"{labels[r.demand_id]}@{labels[r.offer_id]}" for r in reservations
    }
    rows = sorted(
        (
            by_res[r.pk],
            hour_index(r.start) - world["start"],
            hour_index(r.end) - world["start"],
            labels[r.buyer_id],
            labels[r.provider_id],
            r.gpu_count,
            r.price_per_gpu_hour,
            r.bill,
            labels.get(r.voucher_id),
            r.voucher_part,
            r.cash_part,
            r.voucher_note,
            r.locality_tier,
            r.status,
            r.delivered_gpu_hours,
        )
        for r in reservations
    )
    events = sorted(
        (by_res[e.reservation_id], e.from_status, e.to_status, e.actor_id, e.note)
        for e in ReservationEvent.objects.filter(reservation__in=reservations)
    )
    trades = sorted(
        (
            by_res[t.reservation_id],
            labels[t.exporting_hub_id],
            labels[t.importing_hub_id],
            t.gpu_hours,
            t.value,
        )
        for t in InterHubTrade.objects.filter(reservation__in=reservations)
    )
    holds = sorted(
        (
            by_res[h.reservation_id],
            h.mode,
            h.status,
            h.voucher_part,
            h.cash_paid,
            h.refunded_voucher,
            h.refunded_cash,
            h.closed_at,
        )
        for h in Hold.objects.filter(reservation__in=reservations)
    )
    txns = sorted(
        (
            by_res[t.reservation_id],
            t.reason,
            labels.get(t.voucher_id),
            t.memo,
            tuple(
                sorted(
                    (_owner(e.account, labels), e.amount)
                    for e in Entry.objects.filter(transaction=t).select_related("account")
                )
            ),
        )
        for t in Transaction.objects.filter(reservation__in=reservations)
    )
    demand_rows = sorted(
        (labels[d.pk], d.status, d.unmatched_reason)
        for d in Demand.objects.filter(pk__in=[d.pk for d in demands])
    )
    owners = set(labels)
    balances = sorted(
        (_owner(a, labels), a.balance)
        for a in Account.objects.all()
        if (a.organisation_id or a.voucher_id or a.programme_id) in owners
    )
    return {
        "reservations": rows,
        "events": events,
        "trades": trades,
        "holds": holds,
        "transactions": txns,
        "demands": demand_rows,
        "balances": balances,
    }


@pytest.mark.django_db
@pytest.mark.parametrize("batch", BATCHES)
def test_batches_write_what_one_call_per_match_writes_under_every_rule(batch):
    # given two identical worlds and the same matches, in the same order
    one, bulk = _world("a"), _world("b")
    escrow_before = system_account(Account.Kind.ESCROW).balance
    # when one world is written a match at a time and the other in batches
    codes = []
    for m in _matches(one):
        try:
            reservation_create(
                demand_id=m.demand_id, offer_id=m.offer_id, start=from_hour_index(m.start)
            )
            codes.append("")
        except DomainError as exc:
            codes.append(exc.code)
            Demand.objects.filter(pk=m.demand_id, status=Demand.Status.OPEN).update(
                unmatched_reason=exc.code
            )
    outcome = matches_write(_matches(bulk), now=timezone.now(), batch=batch)
    # then the one-by-one path refused exactly the pairs the table says (the rules hold)
    assert codes == [code for *_, code in PAIRS]
    # and both worlds hold exactly the same rows and balances
    expected = _state(one)
    assert _state(bulk) == expected
    assert len(outcome.made) == len(expected["reservations"]) == codes.count("")
    labels = bulk["labels"]
    dropped = {labels[UUID(d)]: code for d, code in outcome.dropped.items()}
    assert dropped == {d: code for d, _, _, code in PAIRS if code}
    # and each voucher rule bit where the table says: (voucher part, note) per reservation
    split = {r[0]: (r[9], r[11]) for r in expected["reservations"]}
    assert split["d1@o1"] == (Decimal("72.00"), "")  # 60 % of ¥120
    assert split["d4@o2"] == (Decimal("50.40"), "")  # 60 % of ¥84
    assert split["d7@o3"] == (Decimal("27.60"), "")  # V1's last ¥27.60 of ¥150 (not ¥48)
    assert split["d8@o11"] == (Decimal("400.00"), "")  # V2a's balance (60 % of ¥800 is 480)
    assert split["d9@o2"] == (Decimal("100.00"), "")  # this year's budget ¥500 − d8's ¥400
    assert split["d12@o5"] == (Decimal("0.00"), "provider_not_in_catalogue")
    assert split["d13@o6"] == (Decimal("0.00"), "related_party")
    assert split["d14@o1"] == (Decimal("0.00"), "voucher_expired")
    assert split["d15@o1"] == (Decimal("0.00"), "site_outside_region")
    assert split["d15b@o3"] == (Decimal("24.00"), "")  # 60 % of ¥40, in the scoped region
    assert split["d15c@o12"] == split["d15d@o13"] == (Decimal("24.00"), "")
    assert split["d16@o4"] == (Decimal("300.00"), "")  # 80 % (domestic tier) of ¥400, capped
    assert split["d17@o4"] == (Decimal("0.00"), "")  # the buyer's ¥300 cap is used up
    holds = {h[0]: h[1:5] for h in expected["holds"]}
    assert holds["d8@o11"] == ("reimbursement", "pending", Decimal("400.00"), Decimal("800.00"))
    assert holds["d1@o1"] == ("point_of_sale", "pending", Decimal("72.00"), Decimal("48.00"))
    assert [t[:3] for t in expected["trades"]] == [
        ("d15b@o3", "far", "hub"),
        ("d6@o3", "far", "hub"),
        ("d7@o3", "far", "hub"),
    ]
    assert ("d23", "matched", "") in expected["demands"]
    # and escrow grew by the same held amount in both worlds
    held = sum(h[3] + h[4] for h in expected["holds"])
    assert Account.objects.get(kind=Account.Kind.ESCROW).balance - escrow_before == 2 * held
    assert ledger_audit() == []
