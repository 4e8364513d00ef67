"""Celery at-least-once, done safely, with real worker processes on the test database and Redis:
request ids in task logs, poison tasks, duplicate delivery, a task longer than the visibility
timeout, a worker SIGKILLed mid matching cycle, the database connection cut during settlement,
and a crash between commit and enqueue. Each test ends with a clean ``ledger_audit``."""

import json
import signal
import uuid
from datetime import timedelta

import pytest
import redis
from django.db import connection

from ledger.audit import ledger_audit
from ledger.models import Account, Transaction
from ledger.services import system_account
from marketplace.models import Demand, Reservation
from marketplace.services import (
    demand_create,
    reservation_create,
    reservations_advance,
)
from marketplace.tasks import match_all_hubs, match_hub, settle_completed, settle_reservation
from ops.context import request_id_var
from ops.models import FailedTask
from tests.factories import DemandFactory, next_hour

from . import fault_tasks
from .harness import publishing_to, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _json_lines(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            continue
    return lines


def _messages(proc, part: str) -> list[str]:
    return [m for line in _json_lines(proc.output()) if part in (m := line.get("message", ""))]


def _task_results(proc, task_id: str) -> list[str]:
    """The ``succeeded`` log lines of ``task_id`` in the worker's JSON log."""
    return [
        line["message"]
        for line in _json_lines(proc.output())
        if task_id in line.get("message", "") and "succeeded" in line.get("message", "")
    ]


def _completed_reservation(buyer, offer, slot: int = 0) -> Reservation:
    start = next_hour(1 + 3 * slot)
    demand = DemandFactory.create(
        buyer=buyer,
        gpu_count=2,
        duration_hours=3,
        earliest_start=start,
        latest_end=start + timedelta(hours=3),
    )
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    r.refresh_from_db()
    assert r.status == Reservation.Status.COMPLETED
    return r


def _settlements(r: Reservation) -> int:
    return Transaction.objects.filter(reservation=r, reason=Transaction.Reason.SETTLEMENT).count()


def test_request_id_of_the_enqueuing_request_is_in_the_task_log(cluster):
    worker = cluster.worker()
    token = request_id_var.set("req-abc-123")
    try:
        with publishing_to(cluster.queue):
            result = fault_tasks.log_request_id.delay()
    finally:
        request_id_var.reset(token)
    line = wait_for(
        lambda: next(
            (x for x in _json_lines(worker.output()) if x.get("message") == "fault task ran"),
            None,
        )
    )
    assert line["request_id"] == "req-abc-123"
    assert line["task_id"] == result.id
    assert (line["level"], line["logger"]) == ("INFO", "tests.ops.fault_tasks")


def test_poison_task_with_a_non_transient_error_fails_once_and_is_recorded(cluster):
    worker = cluster.worker(CELERY_TASK_MAX_RETRIES="3", CELERY_TASK_RETRY_BACKOFF="1")
    with publishing_to(cluster.queue):
        result = fault_tasks.poison_error.delay()
    failed = wait_for(lambda: FailedTask.objects.filter(task_id=result.id).first())
    assert (failed.task_name, failed.reason, failed.exception, failed.retries) == (
        "tests.ops.poison_error",
        FailedTask.Reason.ERROR,
        "ValueError",
        0,
    )
    assert "poison: bad input" in failed.message
    assert not _messages(worker, "Retry in")


def test_poison_task_with_transient_errors_retries_a_bounded_number_of_times(cluster):
    worker = cluster.worker(CELERY_TASK_MAX_RETRIES="2", CELERY_TASK_RETRY_BACKOFF="1")
    with publishing_to(cluster.queue):
        result = fault_tasks.poison_transient.delay()
    failed = wait_for(lambda: FailedTask.objects.filter(task_id=result.id).first())
    assert (failed.reason, failed.exception, failed.retries) == (
        FailedTask.Reason.RETRIES_EXHAUSTED,
        "OperationalError",
        2,
    )
    assert len(_messages(worker, "Retry in")) == 2
    # and it is not delivered again: the queue is empty and nothing is unacknowledged
    client = redis.Redis.from_url(cluster.broker)
    wait_for(lambda: client.llen(cluster.queue) == 0 and client.hlen("unacked") == 0, 10)


def test_poison_task_that_kills_its_worker_is_given_up_after_bounded_deliveries(cluster):
    # prefork: the pool replaces the killed child; the message is rejected back to the queue
    worker = cluster.worker(pool="prefork", concurrency=1, CELERY_TASK_MAX_DELIVERIES="3")
    with publishing_to(cluster.queue):
        result = fault_tasks.poison_kill.delay()
    failed = wait_for(lambda: FailedTask.objects.filter(task_id=result.id).first(), 120)
    assert (failed.reason, failed.exception) == (FailedTask.Reason.WORKER_LOST, "WorkerLostError")
    assert len(_messages(worker, "WorkerLostError")) == 3
    assert worker.alive()


def test_same_task_delivered_twice_has_one_effect(cluster, buyer, offer):
    # given a completed reservation and an open demand the offer can serve
    r = _completed_reservation(buyer, offer)
    demand = DemandFactory.create(buyer=buyer, gpu_count=2, max_price_per_gpu_hour="30")
    demand.accelerators.add(offer.accelerator)
    worker = cluster.worker()
    hub_id = str(buyer.home_site.hub_id)
    # when each task's message is published twice under one task id (a redelivery)
    settle_id, match_id = uuid.uuid4().hex, uuid.uuid4().hex
    with publishing_to(cluster.queue):
        for _ in range(2):
            settle_reservation.apply_async((str(r.pk),), task_id=settle_id)
            match_hub.apply_async((hub_id,), task_id=match_id)
    wait_for(lambda: len(_task_results(worker, settle_id)) == 2)
    wait_for(lambda: len(_task_results(worker, match_id)) == 2)
    # then the first run settles and books, the second changes nothing
    assert sorted(m.rsplit(": ", 1)[1] for m in _task_results(worker, settle_id)) == [
        "False",
        "True",
    ]
    assert sorted(m.rsplit(": ", 1)[1] for m in _task_results(worker, match_id)) == ["0", "1"]
    assert _settlements(r) == 1
    assert Reservation.objects.filter(demand=demand).count() == 1
    assert ledger_audit() == []


def test_batch_task_settles_every_completed_reservation(cluster, buyer, offer):
    # given more completed reservations than the delivery limit (the batch task calls the
    # per-reservation task as a function: those calls are not deliveries)
    reservations = [_completed_reservation(buyer, offer, slot) for slot in range(7)]
    worker = cluster.worker(CELERY_TASK_MAX_DELIVERIES="2")
    with publishing_to(cluster.queue):
        result = settle_completed.delay()
    # then one run settles all seven, each once
    wait_for(lambda: _task_results(worker, result.id))
    assert _task_results(worker, result.id)[0].endswith(": 7")
    assert [_settlements(r) for r in reservations] == [1] * 7
    assert ledger_audit() == []


def test_task_longer_than_the_visibility_timeout_has_one_effect(cluster, buyer, offer):
    # given two workers whose broker hands an unacknowledged message out again after 2 s
    r = _completed_reservation(buyer, offer)
    env = {"CELERY_VISIBILITY_TIMEOUT": "2", "CELERY_UNACKED_RESTORE_INTERVAL": "1"}
    first, second = cluster.worker(**env), cluster.worker(**env)
    # when a task that runs 6 s is published once
    with publishing_to(cluster.queue):
        result = fault_tasks.slow_then_settle.delay(str(r.pk), 6)
    # then it is delivered again while running (both workers run it) ...
    wait_for(lambda: len(_task_results(first, result.id) + _task_results(second, result.id)) == 2)
    results = sorted(
        m.rsplit(": ", 1)[1]
        for m in _task_results(first, result.id) + _task_results(second, result.id)
    )
    # ... and the reservation is settled once
    assert results == ["False", "True"]
    assert _settlements(r) == 1
    assert ledger_audit() == []


def _blocked_backends() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return [pid for (pid,) in cursor.fetchall()]


def _backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is not None


def test_worker_killed_mid_matching_cycle_leaves_nothing_half_written(
    cluster, other_session, buyer, offer
):
    # given three open demands the offer can all serve; the engine takes them by price
    start = next_hour(2)
    demands = [
        DemandFactory.create(
            buyer=buyer,
            gpu_count=2,
            earliest_start=start,
            latest_end=start + timedelta(hours=12),
            max_price_per_gpu_hour=price,
        )
        for price in ("30", "20", "15")
    ]
    # and another session holds the second demand's row, so the cycle stops inside its write
    # (matches are written in batches: the batch locks all its demands first)
    other_session.execute(
        "SELECT id FROM marketplace_demand WHERE id = %s FOR UPDATE", [demands[1].pk]
    )
    env = {"CELERY_VISIBILITY_TIMEOUT": "3"}
    worker = cluster.worker(**env)
    with publishing_to(cluster.queue):
        match_hub.delay(str(buyer.home_site.hub_id))
    blocked = wait_for(_blocked_backends)
    assert not Reservation.objects.filter(demand__in=demands).exists()
    # when the worker is SIGKILLed in the middle of the cycle, and the row is let go
    worker.kill(signal.SIGKILL)
    other_session.rollback()
    wait_for(lambda: not any(_backend_alive(pid) for pid in blocked), 30)
    # then nothing of the interrupted batch was written: no reservation, hold or ledger entry
    assert not Reservation.objects.filter(demand__in=demands).exists()
    assert all(Demand.objects.get(pk=d.pk).status == Demand.Status.OPEN for d in demands)
    assert ledger_audit() == []
    # and when a worker comes back, the unacknowledged cycle is delivered again and finishes
    cluster.worker(**env)
    wait_for(lambda: Reservation.objects.filter(demand__in=demands).count() == 3, 60)
    # and a further scheduled cycle books nothing twice
    with publishing_to(cluster.queue):
        result = match_all_hubs.delay()
    wait_for(lambda: _task_results(cluster.procs[-1], result.id))
    for d in demands:
        assert Reservation.objects.filter(demand=d).count() == 1
    assert ledger_audit() == []


def test_database_connection_cut_during_settlement_rolls_back_and_retry_settles_once(
    cluster, other_session, buyer, offer
):
    # given a completed reservation and another session holding the escrow account's row,
    # so the settlement transaction stops half-way (transaction and entries written, balances not)
    r = _completed_reservation(buyer, offer)
    escrow = system_account(Account.Kind.ESCROW)
    other_session.execute("SELECT id FROM ledger_account WHERE id = %s FOR UPDATE", [escrow.pk])
    worker = cluster.worker(CELERY_TASK_RETRY_BACKOFF="1")
    with publishing_to(cluster.queue):
        result = settle_reservation.delay(str(r.pk))
    (pid,) = wait_for(_blocked_backends)
    # when the worker's database connection is cut mid-transaction
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    other_session.rollback()
    # then the task retries on a new connection and settles exactly once
    wait_for(lambda: _task_results(worker, result.id), 60)
    assert len(_messages(worker, "Retry in")) == 1
    assert _task_results(worker, result.id)[0].endswith(": True")
    r.refresh_from_db()
    assert r.status == Reservation.Status.SETTLED
    assert _settlements(r) == 1
    assert not FailedTask.objects.exists()
    assert ledger_audit() == []


def test_demand_committed_without_its_enqueue_is_matched_by_the_periodic_sweep(
    cluster, buyer, offer
):
    # given a demand committed but whose "match now" message was never sent (a crash between
    # commit and enqueue)
    start = next_hour(2)
    demand = demand_create(
        buyer=buyer,
        accelerators=[offer.accelerator.code],
        gpu_count=2,
        duration_hours=3,
        earliest_start=start,
        latest_end=start + timedelta(hours=12),
        max_price_per_gpu_hour="12.5",
        locality_limit="city",
        enqueue_matching=False,
    )
    assert redis.Redis.from_url(cluster.broker).llen(cluster.queue) == 0
    # when a worker and the beat run (matching sweep every MATCH_INTERVAL = 2 s here)
    cluster.worker()
    cluster.beat(MATCH_INTERVAL="2")
    # then the sweep re-scans open demands and books it, once
    wait_for(lambda: Reservation.objects.filter(demand=demand).exists(), 60)
    assert Reservation.objects.filter(demand=demand).count() == 1
    assert ledger_audit() == []
