"""Scale-out: one matching queue per hub, two real worker processes on two hub queues at once,
competing for the same offers on the test PostgreSQL database. No capacity is booked twice."""

import time
import uuid
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest
import redis

from ledger.audit import ledger_audit
from marketplace import celery_app
from marketplace.models import Hub, MatchingCycle, Reservation
from marketplace.services import demand_create, wallet_deposit
from marketplace.tasks import hub_queue, hub_queues, match_all_hubs, match_hub
from marketplace.timeutil import hour_index
from tests.factories import (
    DemandFactory,
    HubFactory,
    OfferFactory,
    OrganisationFactory,
    SiteFactory,
    next_hour,
)
from tests.marketplace.test_real_worker import start_worker, stop_worker


def test_match_hub_is_routed_to_its_hub_queue(settings):  # type: ignore[no-untyped-def]
    settings.MATCH_QUEUE_PREFIX = "match"
    assert hub_queue("gansu") == "match.gansu"


@pytest.fixture
def broker_not_eager(settings):  # type: ignore[no-untyped-def]
    """Tasks go to the real Redis broker (not eager), under a queue prefix of this test's own."""
    settings.MATCH_QUEUE_PREFIX = f"test-{uuid.uuid4().hex[:8]}"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    old = (celery_app.conf.task_always_eager, celery_app.conf.task_default_queue)
    celery_app.conf.task_always_eager = False
    celery_app.conf.task_default_queue = f"{settings.MATCH_QUEUE_PREFIX}-default"
    try:
        yield broker
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_default_queue = old
        broker.delete(f"{settings.MATCH_QUEUE_PREFIX}-default", *hub_queues())


@pytest.mark.django_db(transaction=True)
def test_per_hub_queues_are_on_by_default_when_not_eager(
    broker_not_eager, settings, buyer, site, accelerator
):  # type: ignore[no-untyped-def]
    # given the default settings (MATCH_HUB_QUEUES not switched off) and a real broker
    assert settings.MATCH_HUB_QUEUES is True
    gansu = HubFactory.create(code=f"gansu-{uuid.uuid4().hex[:6]}")
    home = Hub.objects.get(pk=site.hub_id)
    start = next_hour(2)
    # when a buyer posts a demand (matching enqueued on commit) and the beat fans out
    demand_create(
        buyer=buyer,
        accelerators=["A100-80G"],
        gpu_count=2,
        duration_hours=3,
        earliest_start=start,
        latest_end=start + timedelta(hours=8),
        max_price_per_gpu_hour=Decimal("12.5"),
        locality_limit="city",
    )
    assert match_all_hubs() == 2
    # then the home hub's queue holds two cycles, Gansu's one, the default queue none
    default = f"{settings.MATCH_QUEUE_PREFIX}-default"
    assert broker_not_eager.llen(default) == 0
    assert broker_not_eager.llen(hub_queue(home.code)) == 2
    assert broker_not_eager.llen(hub_queue(gansu.code)) == 1


@pytest.mark.django_db(transaction=True)
def test_hub_queues_switched_off_use_the_default_queue(broker_not_eager, settings, site):  # type: ignore[no-untyped-def]
    settings.MATCH_HUB_QUEUES = False
    home = Hub.objects.get(pk=site.hub_id)
    assert match_all_hubs() == 1
    assert broker_not_eager.llen(f"{settings.MATCH_QUEUE_PREFIX}-default") == 1
    assert broker_not_eager.llen(hub_queue(home.code)) == 0


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_two_workers_on_two_hub_queues_never_book_capacity_twice(
    settings, buyer, provider, accelerator, site
):  # type: ignore[no-untyped-def]
    # given two hubs, each with its own buyers, competing for the same three 8-GPU offers
    # (every demand may dock nationally): 24 demands of 4 GPUs × 4 h where 12 fit
    settings.MATCH_QUEUE_PREFIX = f"test-{uuid.uuid4().hex[:8]}"
    home = Hub.objects.get(pk=site.hub_id)
    home.matching_policy = Hub.Policy.OPTIMAL
    home.save()
    gansu = HubFactory.create(code=f"gansu-{uuid.uuid4().hex[:6]}")
    qingyang = SiteFactory.create(
        code=f"qingyang-{uuid.uuid4().hex[:6]}", city="Qingyang", metro_area="Qingyang", hub=gansu
    )
    remote_buyer = OrganisationFactory.create(name="Gansu SME", home_site=qingyang)
    wallet_deposit(organisation=remote_buyer, amount=Decimal("100000.00"))
    start = next_hour(2)
    offers = [
        OfferFactory.create(
            provider=provider,
            site=s,
            accelerator=accelerator,
            available_from=start,
            available_until=start + timedelta(hours=8),
        )
        for s in (site, site, qingyang)
    ]
    demands = [
        DemandFactory.create(
            buyer=b,
            gpu_count=4,
            duration_hours=4,
            earliest_start=start,
            latest_end=start + timedelta(hours=8),
            max_price_per_gpu_hour=Decimal("20"),
            locality_limit="national",
        )
        for _ in range(12)
        for b in (buyer, remote_buyer)
    ]
    queues = [hub_queue(home.code), hub_queue(gansu.code)]
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    old = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        # when three cycles per hub are queued and a worker per hub queue starts at once
        for _ in range(3):
            match_hub.delay(str(home.pk))
            match_hub.delay(str(gansu.pk))
        assert [broker.llen(q) for q in queues] == [3, 3]
        workers = [
            start_worker(f"{settings.MATCH_QUEUE_PREFIX}-default-{i}", [hub.code])
            for i, hub in enumerate((home, gansu))
        ]
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and MatchingCycle.objects.count() < 6:
                assert all(w.poll() is None for w in workers), "a worker exited early"
                time.sleep(0.25)
        finally:
            for w in workers:
                stop_worker(w)
    finally:
        celery_app.conf.task_always_eager = old
        broker.delete(*queues)

    # then every queued cycle ran, each on its own hub
    cycles = defaultdict(list)
    for cycle in MatchingCycle.objects.all():
        cycles[cycle.hub_id].append(cycle.policy)
    assert dict(cycles) == {home.pk: ["optimal"] * 3, gansu.pk: ["greedy"] * 3}
    # and no GPU-hour of any offer is booked twice: the offers are exactly full
    booked: dict[tuple[object, int], int] = defaultdict(int)
    reservations = list(Reservation.objects.filter(status__in=Reservation.CAPACITY_STATUSES))
    for r in reservations:
        for h in range(hour_index(r.start), hour_index(r.end)):
            booked[(r.offer_id, h)] += r.gpu_count
    assert booked and max(booked.values()) == 8
    assert sum(booked.values()) == 3 * 8 * 8
    assert len(reservations) == 12
    assert len({r.demand_id for r in reservations}) == 12
    assert {r.offer_id for r in reservations} == {o.pk for o in offers}
    assert len(demands) == 24
    assert ledger_audit() == []
