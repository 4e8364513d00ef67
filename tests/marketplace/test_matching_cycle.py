"""A matching cycle against the database: reservations, holds, inter-hub trades."""

from decimal import Decimal

import pytest

from ledger.audit import ledger_audit
from marketplace.matching.cycle import matching_cycle_run
from marketplace.models import Demand, InterHubTrade, Reservation
from tests.factories import (
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    SiteFactory,
)
from vouchers.services import programme_fund

pytestmark = pytest.mark.django_db


def test_cycle_books_locally_then_docks_to_another_hub(buyer, offer, provider, accelerator):
    # given a local offer of 8 GPUs and an offer in another hub, and two 8-GPU demands
    gansu = HubFactory.create(code="gansu")
    qingyang = SiteFactory.create(
        code="qingyang-dc", city="Qingyang", metro_area="Qingyang", hub=gansu
    )
    remote = OfferFactory.create(provider=provider, site=qingyang, accelerator=accelerator)
    first = DemandFactory.create(buyer=buyer, gpu_count=8, max_price_per_gpu_hour="30")
    first.latest_end = first.earliest_start + (first.latest_end - first.earliest_start) / 12
    first.save()
    second = DemandFactory.create(
        buyer=buyer,
        gpu_count=8,
        earliest_start=first.earliest_start,
        latest_end=first.latest_end,
        max_price_per_gpu_hour="20",
    )
    # when the buyer's hub runs a cycle
    cycle = matching_cycle_run(buyer.home_site.hub_id)
    # then the higher bid is served locally and the other docks to Gansu as an inter-hub trade
    assert cycle is not None and cycle.reservations_made == cycle.pairs_chosen == 2
    assert (cycle.write_refusals, cycle.unserved) == ({}, {})
    local = Reservation.objects.get(demand=first)
    docked = Reservation.objects.get(demand=second)
    assert (local.offer, local.locality_tier) == (offer, "city")
    assert (docked.offer, docked.locality_tier) == (remote, "national")
    trade = InterHubTrade.objects.get()
    assert (trade.reservation, trade.exporting_hub, trade.importing_hub, trade.gpu_hours) == (
        docked,
        gansu,
        buyer.home_site.hub,
        16,
    )
    assert ledger_audit() == []


def test_unmatched_demand_keeps_its_reason(buyer, offer):
    demand = DemandFactory.create(buyer=buyer, max_price_per_gpu_hour="1")
    demand.accelerators.add(offer.accelerator)
    cycle = matching_cycle_run(buyer.home_site.hub_id)
    demand.refresh_from_db()
    assert (demand.status, demand.unmatched_reason) == (Demand.Status.OPEN, "over_price")
    assert not Reservation.objects.exists()
    # the cycle's row says so: nothing chosen, one demand unserved over the price
    assert cycle is not None
    assert (cycle.pairs_chosen, cycle.reservations_made, cycle.write_refusals) == (0, 0, {})
    assert cycle.unserved == {"over_price": 1}


def test_wallet_short_drops_the_pair_and_keeps_the_demand_open(buyer, offer, other_buyer):
    # given a buyer with no money in the wallet (everything withdrawn into a big booking)
    poor = DemandFactory.create(
        buyer=other_buyer, gpu_count=8, duration_hours=24, max_price_per_gpu_hour="2000"
    )
    offer.price_per_gpu_hour = 1000
    offer.save()
    cycle = matching_cycle_run(buyer.home_site.hub_id)
    poor.refresh_from_db()
    assert (poor.status, poor.unmatched_reason) == (Demand.Status.OPEN, "insufficient_funds")
    assert not Reservation.objects.exists()
    assert ledger_audit() == []
    # the cycle's row keeps the pair the engine chose and the write refused, by reason
    assert cycle is not None
    assert (cycle.pairs_chosen, cycle.reservations_made) == (1, 0)
    assert (cycle.write_refusals, cycle.unserved) == ({"insufficient_funds": 1}, {})


def test_snapshot_vouchers_carry_what_the_services_say(buyer, other_buyer, provider, programme):
    # given two programmes, one limited to a hub and a site with a small buyer cap, vouchers of
    # two buyers on each, some of each programme's budget and one buyer's cap already used, and
    # an open demand paying with each voucher
    from django.utils import timezone

    from marketplace.matching.cycle import snapshot_load
    from tests.factories import CatalogueEntryFactory, ProgrammeFactory
    from vouchers.services import programme_limits_left, programme_year, voucher_issue
    from vouchers.usage import usage_book

    scoped = ProgrammeFactory.create(code="scoped", buyer_annual_cap=Decimal("700.00"))
    programme_fund(scoped)
    CatalogueEntryFactory.create(programme=scoped, provider=provider)
    far = HubFactory.create(code="gansu")
    scoped.hubs.add(far)
    scoped.sites.add(buyer.home_site)
    now = timezone.now()
    face = {programme.pk: Decimal("1000.00"), scoped.pk: Decimal("500.00")}
    vouchers = [
        voucher_issue(programme=p, owner=b, face_value=face[p.pk])
        for p in (programme, scoped)
        for b in (buyer, other_buyer)
    ]
    years = {p.pk: programme_year(p, now) for p in (programme, scoped)}
    assert usage_book({(scoped.pk, buyer.pk): Decimal("250.00")}, years)
    assert usage_book({(programme.pk, other_buyer.pk): Decimal("40.00")}, years)
    demands = {str(DemandFactory.create(buyer=v.owner, voucher=v).pk): v for v in vouchers}
    # when the cycle loads its snapshot
    snaps, _ = snapshot_load(buyer.home_site.hub, now)
    # then each demand's voucher is what the one-voucher services give: balance, budget and
    # cap left, the approved providers and the programme's region
    assert {d.id for d in snaps} == set(demands)
    for snap in snaps:
        v, got = demands[snap.id], snap.voucher
        assert got is not None
        budget_left, cap_left = programme_limits_left(v.programme, v.owner, now)
        assert got.available == min(face[v.programme_id], budget_left, cap_left)
        assert got.providers == frozenset({str(provider.pk)})
        assert got.hubs == frozenset(str(h) for h in v.programme.hubs.values_list("pk", flat=True))
        assert got.sites == frozenset(
            str(s) for s in v.programme.sites.values_list("pk", flat=True)
        )
        assert got.clusters == frozenset()
    assert min(s.voucher.available for s in snaps if s.voucher) == Decimal("450.00")


def _snapshot_from_models(hub, now):  # type: ignore[no-untyped-def]
    """The snapshot built from model instances, one demand and offer at a time (what
    ``snapshot_load`` did before it read plain rows): the oracle of the test below."""
    from marketplace.matching.cycle import _site_ref, _voucher_snaps
    from marketplace.matching.engine import DemandSnap, OfferSnap
    from marketplace.models import Accelerator, Offer
    from marketplace.timeutil import from_hour_index, hour_index, hour_index_ceil

    now_h = hour_index_ceil(now)
    snaps, wanted = [], set()
    demands = Demand.objects.filter(status=Demand.Status.OPEN, origin_site__hub=hub).order_by(
        "created_at", "id"
    )
    vouchers = _voucher_snaps([d.voucher for d in demands if d.voucher is not None], now)
    for order, d in enumerate(demands):
        chosen = [a.code for a in d.accelerators.all()] or [
            a.code
            for a in Accelerator.objects.all()
            if (not d.min_memory_gb or (a.memory_gb or 0) >= d.min_memory_gb)
            and (not d.min_tflops or (a.bf16_tflops or 0) >= d.min_tflops)
        ]
        first, last = max(hour_index_ceil(d.earliest_start), now_h), hour_index(d.latest_end)
        if last - first < d.duration_hours:
            continue
        wanted.update(chosen)
        snaps.append(
            DemandSnap(
                id=str(d.pk),
                buyer=str(d.buyer_id),
                related=frozenset(str(r.pk) for r in d.buyer.related.all()),
                models=frozenset(chosen),
                gpu_count=d.gpu_count,
                duration=d.duration_hours,
                start=first,
                end=last,
                max_price=d.max_price_per_gpu_hour,
                origin=_site_ref(d.origin_site),
                limit=d.locality_limit,
                posted=order,
                voucher=vouchers.get(str(d.voucher_id)) if d.voucher_id else None,
                split=d.split,
                min_part=d.min_gpus_per_part,
            )
        )
    offers = Offer.objects.filter(
        status=Offer.Status.ACTIVE,
        available_until__gt=from_hour_index(now_h),
        accelerator__code__in=wanted,
    ).order_by("created_at", "id")
    offer_snaps = []
    for listed, o in enumerate(offers):
        start, end = max(hour_index(o.available_from), now_h), hour_index(o.available_until)
        if end <= start:
            continue
        snap = OfferSnap(
            id=str(o.pk),
            provider=str(o.provider_id),
            model=o.accelerator.code,
            site=_site_ref(o.site),
            price=o.price_per_gpu_hour,
            gpu_count=o.gpu_count,
            start=start,
            end=end,
            min_duration=o.min_duration_hours,
            listed=listed,
        )
        for r in o.reservations.filter(status__in=Reservation.CAPACITY_STATUSES):
            for h in range(max(hour_index(r.start), start), min(hour_index(r.end), end)):
                snap.used[h - start] += r.gpu_count
        offer_snaps.append(snap)
    return snaps, offer_snaps


def test_snapshot_rows_are_what_the_models_say(buyer, other_buyer, provider, voucher, offer):
    # given a market with every kind of row the snapshot reads: a demand listing models, one
    # asking only for memory and TFLOPS (every model meeting them), one paying with a voucher,
    # one whose window has passed, one split across a hub, one at another hub; related buyers;
    # offers of a wanted and an unwanted model, in a cluster, at another hub, ended, paused,
    # and one with GPUs already reserved
    from datetime import timedelta

    from django.utils import timezone

    from marketplace.matching.cycle import snapshot_load
    from marketplace.models import Offer
    from tests.factories import AcceleratorFactory, ClusterFactory, next_hour

    h800 = AcceleratorFactory.create(code="H800", memory_gb=80, bf16_tflops=Decimal("989.0"))
    small = AcceleratorFactory.create(code="T4", memory_gb=16, bf16_tflops=Decimal("65.0"))
    ascend = AcceleratorFactory.create(code="Ascend-910B", memory_gb=64, is_domestic=True)
    buyer.related.add(other_buyer)
    hub = buyer.home_site.hub
    clustered = SiteFactory.create(
        code="tianfu-2", city="Chengdu", metro_area="Chengdu", hub=hub, cluster=ClusterFactory()
    )
    gansu = SiteFactory.create(
        code="qingyang", city="Qingyang", metro_area="Qingyang", hub=HubFactory(code="gansu")
    )
    listing = DemandFactory.create(buyer=buyer, gpu_count=2)
    listing.accelerators.add(h800, ascend)
    DemandFactory.create(buyer=other_buyer, min_memory_gb=60, min_tflops=Decimal("300"))
    paying = DemandFactory.create(buyer=buyer, voucher=voucher, locality_limit="national")
    past = DemandFactory.create(buyer=buyer)
    Demand.objects.filter(pk=past.pk).update(
        earliest_start=past.earliest_start - timedelta(days=3),
        latest_end=past.earliest_start - timedelta(days=2),
    )
    split = DemandFactory.create(buyer=other_buyer, gpu_count=16, split="hub", min_gpus_per_part=4)
    for listed in (paying, split):
        listed.accelerators.add(offer.accelerator)
    DemandFactory.create(buyer=OrganisationFactory(home_site=gansu))
    offers = [
        OfferFactory.create(provider=provider, site=clustered, accelerator=h800),
        OfferFactory.create(provider=provider, site=gansu, accelerator=ascend, gpu_count=16),
        OfferFactory.create(provider=provider, accelerator=small),
        OfferFactory.create(provider=provider, status=Offer.Status.PAUSED),
        OfferFactory.create(
            provider=provider,
            available_from=next_hour(-48),
            available_until=next_hour(-24),
        ),
    ]
    Reservation.objects.create(
        demand=DemandFactory.create(buyer=buyer, status=Demand.Status.RESERVED),
        offer=offers[0],
        buyer=buyer,
        provider=provider,
        start=next_hour(2),
        end=next_hour(5),
        gpu_count=3,
        price_per_gpu_hour=Decimal("10.0000"),
        bill=Decimal("90.00"),
        cash_part=Decimal("90.00"),
        locality_tier="city",
        status=Reservation.Status.CONFIRMED,
    )
    now = timezone.now()
    # when the cycle loads its snapshot of the buyer's hub
    demands, offer_snaps = snapshot_load(hub, now)
    # then it is, field by field and in order, what the models give one at a time
    assert (demands, offer_snaps) == _snapshot_from_models(hub, now)
    assert len(demands) == 4 and len(offer_snaps) == 3  # the kinds above are all there
    assert {o.id for o in offer_snaps} == {str(offer.pk), str(offers[0].pk), str(offers[1].pk)}
    assert max(next(o for o in offer_snaps if o.id == str(offers[0].pk)).used) == 3


def test_a_demand_closed_while_the_snapshot_reads_keeps_its_listed_models(
    buyer, other_buyer, provider, site, accelerator
):  # type: ignore[no-untyped-def]
    # given one slot on an H800 offer, a first demand listing only A100 and a second listing
    # H800, and the first demand cancelled by its buyer while the cycle reads its snapshot
    from django.db import connection
    from django.utils import timezone

    from marketplace.matching.cycle import snapshot_load
    from tests.factories import AcceleratorFactory, next_hour

    h800 = AcceleratorFactory.create(code="H800", memory_gb=80, bf16_tflops=Decimal("989.0"))
    offer = OfferFactory.create(provider=provider, site=site, accelerator=h800, gpu_count=8)
    tight = {"gpu_count": 8, "duration_hours": 2, "max_price_per_gpu_hour": "20"}
    tight |= {"earliest_start": next_hour(1), "latest_end": next_hour(3)}  # one slot
    first = DemandFactory.create(buyer=buyer, **tight)
    first.accelerators.add(accelerator)
    second = DemandFactory.create(buyer=other_buyer, **tight)
    second.accelerators.add(h800)
    cancelled: list[bool] = []

    def cancel_first(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        # the buyer's cancel lands just after the snapshot's first statement
        result = execute(sql, params, many, context)
        if "marketplace_demand" in sql and not cancelled:
            cancelled.append(True)
            Demand.objects.filter(pk=first.pk).update(status=Demand.Status.CANCELLED)
        return result

    # when the snapshot is read, and a cycle runs the same way
    with connection.execute_wrapper(cancel_first):
        demands, _ = snapshot_load(site.hub, timezone.now())
    Demand.objects.filter(pk=first.pk).update(status=Demand.Status.OPEN)
    cancelled.clear()
    with connection.execute_wrapper(cancel_first):
        cycle = matching_cycle_run(site.hub_id)
    # then the cancelled demand still stands for the model it listed, not every model, and
    # the H800 slot goes to the demand that asked for it
    assert [d.models for d in demands if d.id == str(first.pk)] == [frozenset({"A100-80G"})]
    assert cycle is not None and Reservation.objects.filter(demand=second, offer=offer).exists()
