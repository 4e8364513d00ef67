"""Partial fills on PostgreSQL: a split demand written as one reservation per offer, all parts
or none, billed, held and settled per part, with a clean ledger."""

import threading
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.models import Account, Hold
from ledger.selectors import organisation_balances
from ledger.services import voucher_account
from marketplace.errors import Conflict, NotFound, ValidationFailed
from marketplace.matching.bulk import matches_write
from marketplace.matching.cycle import matching_cycle_run
from marketplace.matching.engine import Match
from marketplace.matching.partial import MAX_PARTS
from marketplace.models import Demand, Hub, InterHubTrade, Reservation
from marketplace.services import (
    MAX_SPLIT_PARTS,
    offer_peak_reserved,
    reservation_accept,
    reservation_cancel,
    reservation_create,
    reservation_parts_create,
    reservation_settle,
    reservations_advance,
    reservations_expire_unaccepted,
)
from marketplace.timeutil import hour_index
from tests.factories import (
    CatalogueEntryFactory,
    DemandFactory,
    HubFactory,
    OfferFactory,
    ProviderFactory,
    SiteFactory,
)
from vouchers.models import ReimbursementClaim

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_offers(provider, site, accelerator):  # type: ignore[no-untyped-def]
    """Two 8-GPU offers at the buyer's home site, listed in this order (CNY 10 and 12)."""
    first = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    second = OfferFactory.create(
        provider=provider, site=site, accelerator=accelerator, price_per_gpu_hour="12.0000"
    )
    return first, second


def _demand(buyer, accelerator, **fields):  # type: ignore[no-untyped-def]
    fields.setdefault("gpu_count", 16)
    fields.setdefault("duration_hours", 3)
    demand = DemandFactory.create(buyer=buyer, **fields)
    demand.accelerators.add(accelerator)
    return demand


def _state(buyer):  # type: ignore[no-untyped-def]
    """What a refused write must leave unchanged."""
    return (
        Reservation.objects.count(),
        Hold.objects.count(),
        organisation_balances(organisation=buyer)["wallet"],
    )


def test_cycle_serves_sixteen_gpus_over_two_offers_at_one_site(buyer, two_offers, accelerator):
    # given a 16-GPU split=site demand and two 8-GPU offers at the home site
    demand = _demand(buyer, accelerator, split="site")
    wallet = organisation_balances(organisation=buyer)["wallet"]
    # when the hub runs a cycle
    cycle = matching_cycle_run(buyer.home_site.hub_id)
    # then two reservations of 8 GPUs over the same hours, each billed at its own offer's price
    assert cycle is not None and cycle.reservations_made == 2
    parts = list(Reservation.objects.filter(demand=demand).order_by("price_per_gpu_hour"))
    assert [(r.offer, r.gpu_count, r.start, r.end) for r in parts] == [
        (two_offers[0], 8, demand.earliest_start, demand.earliest_start + timedelta(hours=3)),
        (two_offers[1], 8, demand.earliest_start, demand.earliest_start + timedelta(hours=3)),
    ]
    assert [r.bill for r in parts] == [Decimal("240.00"), Decimal("288.00")]
    assert all(r.status == Reservation.Status.CONFIRMED for r in parts)
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == (Demand.Status.RESERVED, "")
    # and both holds are in escrow: the wallet paid the two bills exactly
    assert organisation_balances(organisation=buyer)["wallet"] == wallet - Decimal("528.00")
    assert Hold.objects.filter(reservation__demand=demand).count() == 2
    assert ledger_audit() == []


def test_without_split_the_same_demand_is_not_served(buyer, two_offers, accelerator):
    demand = _demand(buyer, accelerator)
    assert demand.split == "none"
    matching_cycle_run(buyer.home_site.hub_id)
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == (Demand.Status.OPEN, "no_free_window")
    assert not Reservation.objects.exists()


@pytest.mark.parametrize("policy", [Hub.Policy.GREEDY, Hub.Policy.OPTIMAL])
def test_a_hub_split_spans_two_sites_of_the_hub_under_both_policies(
    buyer, provider, site, accelerator, policy
):
    # given 8 GPUs at the home site and 8 in Chongqing (same hub), and 8 more in another hub
    hub = site.hub
    Hub.objects.filter(pk=hub.pk).update(matching_policy=policy, matching_time_limit=5)
    chongqing = SiteFactory.create(code="chongqing-dc", city="Chongqing", metro_area="Chongqing")
    gansu = SiteFactory.create(
        code="qingyang-dc", city="Qingyang", metro_area="Qingyang", hub=HubFactory(code="gansu")
    )
    home = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    near = OfferFactory.create(provider=provider, site=chongqing, accelerator=accelerator)
    OfferFactory.create(provider=provider, site=gansu, accelerator=accelerator)
    demand = _demand(buyer, accelerator, split="hub")
    # when the hub runs a cycle
    matching_cycle_run(hub.pk)
    # then the demand is served in its own hub, one part per site, never across hubs
    parts = Reservation.objects.filter(demand=demand).order_by("locality_tier")
    assert [(r.offer, r.gpu_count, r.locality_tier) for r in parts] == [
        (home, 8, "city"),
        (near, 8, "region"),
    ]
    assert not InterHubTrade.objects.exists()
    assert ledger_audit() == []


def test_a_voucher_pays_each_part_and_settlement_claims_per_part(
    buyer, two_offers, accelerator, voucher, programme
):
    # given a 60 % voucher of CNY 1,000 and a 16-GPU split demand over bills of 240 and 288
    demand = _demand(buyer, accelerator, split="site", voucher=voucher)
    # when matched
    matching_cycle_run(buyer.home_site.hub_id)
    parts = list(Reservation.objects.filter(demand=demand).order_by("price_per_gpu_hour"))
    # then each part carries the voucher and 60 % of its own bill, the parts add up
    assert [(r.voucher_id, r.voucher_part, r.cash_part) for r in parts] == [
        (voucher.pk, Decimal("144.00"), Decimal("96.00")),
        (voucher.pk, Decimal("172.80"), Decimal("115.20")),
    ]
    assert all(r.voucher_part + r.cash_part == r.bill for r in parts)
    assert voucher_account(voucher.pk).balance == Decimal("1000.00") - Decimal("316.80")
    # when both parts run and are settled, one delivering half its hours
    for r in parts:
        Reservation.objects.filter(pk=r.pk).update(status=Reservation.Status.COMPLETED)
    Reservation.objects.filter(pk=parts[1].pk).update(delivered_gpu_hours=12)
    for r in parts:
        reservation_settle(reservation_id=r.pk)
    # then one reimbursement claim per part, the undelivered half back in the same proportion
    claims = dict(ReimbursementClaim.objects.values_list("reservation_id", "amount"))
    assert claims == {parts[0].pk: Decimal("144.00"), parts[1].pk: Decimal("86.40")}
    assert voucher_account(voucher.pk).balance == Decimal("1000.00") - Decimal("230.40")
    assert ledger_audit() == []


def test_a_voucher_running_out_pays_the_first_part_in_full_and_the_second_with_the_rest(
    buyer, two_offers, accelerator, programme
):
    from vouchers.services import voucher_issue

    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("200.00"))
    demand = _demand(buyer, accelerator, split="site", voucher=voucher)
    matching_cycle_run(buyer.home_site.hub_id)
    parts = list(Reservation.objects.filter(demand=demand).order_by("price_per_gpu_hour"))
    assert [r.voucher_part for r in parts] == [Decimal("144.00"), Decimal("56.00")]
    assert voucher_account(voucher.pk).balance == Decimal("0.00")
    assert ledger_audit() == []


def test_capacity_taken_meanwhile_drops_the_whole_split_demand(
    buyer, other_buyer, two_offers, accelerator
):
    # given the engine's two parts for a split demand
    demand = _demand(buyer, accelerator, split="site")
    start = hour_index(demand.earliest_start)
    parts = [
        Match(str(demand.pk), str(o.pk), start, "city", Decimal("0"), Decimal("0"), gpus=8)
        for o in two_offers
    ]
    # and a person books 2 GPUs of the second offer in the meantime
    other = _demand(other_buyer, accelerator, gpu_count=2)
    reservation_create(demand_id=other.pk, offer_id=two_offers[1].pk, start=other.earliest_start)
    before = _state(buyer)
    # when the cycle writes its matches
    outcome = matches_write(parts, now=timezone.now())
    # then nothing of the split demand is written: no half-booked demand
    assert outcome.made == [] and outcome.dropped == {str(demand.pk): "capacity_exhausted"}
    assert _state(buyer) == before
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == (Demand.Status.OPEN, "capacity_exhausted")
    assert offer_peak_reserved(two_offers[0]) == 0
    assert ledger_audit() == []


def test_funds_for_one_part_only_write_no_part(buyer, two_offers, accelerator, settings):
    # given a wallet that covers the first part (240) but not both (528)
    from marketplace.services import wallet_deposit
    from tests.factories import OrganisationFactory

    poor = OrganisationFactory.create(name="Poor SME", home_site=buyer.home_site)
    wallet_deposit(organisation=poor, amount=Decimal("300.00"))
    demand = _demand(poor, accelerator, split="site")
    before = _state(poor)
    matching_cycle_run(buyer.home_site.hub_id)
    assert _state(poor) == before
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == (Demand.Status.OPEN, "insufficient_funds")
    assert ledger_audit() == []


@pytest.mark.parametrize(
    ("split", "gpus", "min_part", "code"),
    [
        ("none", [8, 8], 1, "split_not_allowed"),
        ("site", [8, 4], 1, "parts_not_whole"),
        ("site", [12, 4], 8, "part_below_minimum"),
        ("site", [0, 16], 1, "part_below_minimum"),
    ],
)
def test_parts_that_break_a_split_rule_are_refused_and_write_nothing(
    buyer, two_offers, accelerator, split, gpus, min_part, code
):
    demand = _demand(buyer, accelerator, split=split, min_gpus_per_part=min_part)
    before = _state(buyer)
    with pytest.raises(ValidationFailed) as exc:
        reservation_parts_create(
            demand_id=demand.pk,
            parts=list(zip([o.pk for o in two_offers], gpus, strict=True)),
            start=demand.earliest_start,
        )
    assert (exc.value.code, exc.value.field) == (
        code,
        "split" if code == "split_not_allowed" else "parts",
    )
    assert _state(buyer) == before


def test_parts_outside_the_scope_or_on_one_offer_twice_are_refused(
    buyer, provider, two_offers, accelerator
):
    other_site = SiteFactory.create(code="chengdu-east")
    elsewhere = OfferFactory.create(provider=provider, site=other_site, accelerator=accelerator)
    demand = _demand(buyer, accelerator, split="site")
    start = demand.earliest_start
    with pytest.raises(ValidationFailed) as scope:
        reservation_parts_create(
            demand_id=demand.pk, parts=[(two_offers[0].pk, 8), (elsewhere.pk, 8)], start=start
        )
    assert scope.value.code == "split_outside_scope"
    with pytest.raises(ValidationFailed) as twice:
        reservation_parts_create(
            demand_id=demand.pk, parts=[(two_offers[0].pk, 8), (two_offers[0].pk, 8)], start=start
        )
    assert twice.value.code == "duplicate_offer"
    with pytest.raises(NotFound):
        reservation_parts_create(
            demand_id=demand.pk, parts=[(two_offers[0].pk, 8), ("not-an-id", 8)], start=start
        )
    assert not Reservation.objects.exists()


def test_a_part_over_its_offer_is_refused(buyer, two_offers, accelerator):
    demand = _demand(buyer, accelerator, split="site")
    with pytest.raises(ValidationFailed) as exc:
        reservation_parts_create(
            demand_id=demand.pk,
            parts=[(two_offers[0].pk, 12), (two_offers[1].pk, 4)],
            start=demand.earliest_start,
        )
    assert exc.value.code == "capacity_exhausted"
    assert not Reservation.objects.exists()


def test_the_engine_and_the_service_agree_on_the_most_parts():
    assert MAX_PARTS == MAX_SPLIT_PARTS


def _held_parts(buyer, two_offers, accelerator):  # type: ignore[no-untyped-def]
    demand = _demand(buyer, accelerator, split="site", auto_accept=False)
    parts = reservation_parts_create(
        demand_id=demand.pk,
        parts=[(o.pk, 8) for o in two_offers],
        start=demand.earliest_start,
    )
    return demand, parts


def test_accepting_one_part_accepts_the_demand_whole(buyer, two_offers, accelerator):
    demand, parts = _held_parts(buyer, two_offers, accelerator)
    demand.refresh_from_db()
    assert demand.status == Demand.Status.MATCHED
    reservation_accept(reservation_id=parts[1].pk, buyer=buyer)
    assert set(Reservation.objects.values_list("status", flat=True)) == {"confirmed"}
    demand.refresh_from_db()
    assert demand.status == Demand.Status.RESERVED


def test_unaccepted_parts_expire_together_and_the_demand_reopens(
    buyer, two_offers, accelerator, settings
):
    demand, _parts = _held_parts(buyer, two_offers, accelerator)
    wallet = organisation_balances(organisation=buyer)["wallet"]
    later = timezone.now() + settings.ACCEPT_TTL + timedelta(minutes=1)
    assert reservations_expire_unaccepted(now=later) == 2
    assert set(Reservation.objects.values_list("status", flat=True)) == {"expired"}
    demand.refresh_from_db()
    assert demand.status == Demand.Status.OPEN
    assert organisation_balances(organisation=buyer)["wallet"] == wallet + Decimal("528.00")
    assert reservations_expire_unaccepted(now=later) == 0  # safe to run twice
    assert ledger_audit() == []


def test_accepting_a_part_after_the_ttl_expires_every_part(
    buyer, two_offers, accelerator, settings
):
    _demand_row, parts = _held_parts(buyer, two_offers, accelerator)
    later = timezone.now() + settings.ACCEPT_TTL + timedelta(minutes=1)
    with pytest.raises(Conflict) as exc:
        reservation_accept(reservation_id=parts[0].pk, buyer=buyer, now=later)
    assert exc.value.code == "accept_ttl_passed"
    assert set(Reservation.objects.values_list("status", flat=True)) == {"expired"}
    assert ledger_audit() == []


def test_cancelling_one_part_cancels_every_part_with_its_own_fee(buyer, two_offers, accelerator):
    # given a confirmed split demand starting within the cancellation-fee window
    demand = _demand(buyer, accelerator, split="site")
    parts = reservation_parts_create(
        demand_id=demand.pk, parts=[(o.pk, 8) for o in two_offers], start=demand.earliest_start
    )
    wallet = organisation_balances(organisation=buyer)["wallet"]
    # when the buyer cancels one part
    reservation_cancel(reservation_id=parts[0].pk, buyer=buyer)
    # then both are cancelled, each returning its bill less 10 % of it
    assert set(Reservation.objects.values_list("status", flat=True)) == {"cancelled"}
    demand.refresh_from_db()
    assert demand.status == Demand.Status.CANCELLED
    fees = Decimal("24.00") + Decimal("28.80")
    assert organisation_balances(organisation=buyer)["wallet"] == wallet + Decimal("528.00") - fees
    assert organisation_balances(organisation=parts[0].provider)["payable"] == fees
    assert ledger_audit() == []


def test_parts_start_together_and_settle_independently(buyer, two_offers, accelerator):
    demand = _demand(buyer, accelerator, split="site")
    parts = reservation_parts_create(
        demand_id=demand.pk, parts=[(o.pk, 8) for o in two_offers], start=demand.earliest_start
    )
    end = parts[0].end + timedelta(minutes=1)
    assert reservations_advance(now=parts[0].start) == (2, 0)
    assert reservations_advance(now=end) == (0, 2)
    for r in parts:
        reservation_settle(reservation_id=r.pk)
    assert set(Reservation.objects.values_list("status", flat=True)) == {"settled"}
    assert organisation_balances(organisation=parts[0].provider)["payable"] == Decimal("528.00")
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_a_split_demand_and_a_whole_one_race_for_the_last_gpus(
    buyer, other_buyer, two_offers, accelerator
):
    # given a 16-GPU split demand on two 8-GPU offers and a 6-GPU demand for the second offer
    split = _demand(buyer, accelerator, split="site")
    whole = _demand(other_buyer, accelerator, gpu_count=6)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def book(kind: str, demand_id: UUID) -> None:
        try:
            barrier.wait()
            if kind == "split":
                reservation_parts_create(
                    demand_id=demand_id,
                    parts=[(o.pk, 8) for o in two_offers],
                    start=split.earliest_start,
                )
            else:
                reservation_create(
                    demand_id=demand_id, offer_id=two_offers[1].pk, start=split.earliest_start
                )
            outcomes.append(kind)
        except Conflict as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    # when both book at once
    threads = [
        threading.Thread(target=book, args=("split", split.pk)),
        threading.Thread(target=book, args=("whole", whole.pk)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # then exactly one wins; the split demand is either whole or absent, never over capacity
    assert sorted(outcomes) in (["capacity_exhausted", "split"], ["capacity_exhausted", "whole"])
    split_parts = Reservation.objects.filter(demand=split).count()
    assert split_parts == (2 if "split" in outcomes else 0)
    assert offer_peak_reserved(two_offers[1]) == (8 if "split" in outcomes else 6)
    assert offer_peak_reserved(two_offers[0]) == (8 if "split" in outcomes else 0)
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_the_migration_maps_single_site_to_split(buyer):
    # given the schema before partial fills and two demands, one with single_site false
    executor = MigrationExecutor(connection)
    executor.migrate([("marketplace", "0005_dispute")])
    old = executor.loader.project_state([("marketplace", "0005_dispute")]).apps
    OldDemand = old.get_model("marketplace", "Demand")
    common = {
        "buyer_id": buyer.pk,
        "origin_site_id": buyer.home_site_id,
        "gpu_count": 4,
        "duration_hours": 2,
        "earliest_start": timezone.now(),
        "latest_end": timezone.now() + timedelta(hours=4),
        "max_price_per_gpu_hour": Decimal("10"),
    }
    spread = OldDemand.objects.create(single_site=False, **common)
    single = OldDemand.objects.create(single_site=True, **common)
    # when migrated forward
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    # then the explicit "not one site" becomes a hub split, the default stays whole
    assert Demand.objects.get(pk=spread.pk).split == "hub"
    assert Demand.objects.get(pk=single.pk).split == "none"
    assert Demand.objects.get(pk=single.pk).min_gpus_per_part == 1


def test_catalogue_of_a_second_provider_is_per_part(buyer, site, accelerator, programme, voucher):
    # given two providers at one site, only the first in the voucher programme's catalogue
    first = ProviderFactory.create(name="In catalogue")
    second = ProviderFactory.create(name="Not in catalogue")
    CatalogueEntryFactory.create(programme=programme, provider=first)
    a = OfferFactory.create(provider=first, site=site, accelerator=accelerator)
    b = OfferFactory.create(provider=second, site=site, accelerator=accelerator)
    demand = _demand(buyer, accelerator, split="site", voucher=voucher)
    parts = reservation_parts_create(
        demand_id=demand.pk, parts=[(a.pk, 8), (b.pk, 8)], start=demand.earliest_start
    )
    # then the voucher pays the part it may, the other is all cash with the reason noted
    assert [(r.voucher_id, r.voucher_part, r.voucher_note) for r in parts] == [
        (voucher.pk, Decimal("144.00"), ""),
        (None, Decimal("0.00"), "provider_not_in_catalogue"),
    ]
    assert Account.objects.filter(kind=Account.Kind.VOUCHER, voucher=voucher).get().balance == (
        Decimal("856.00")
    )
    assert ledger_audit() == []
