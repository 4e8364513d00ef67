"""Faults of the infrastructure around the workers: two beats at once, a Redis restart while
demands are posted and matched, and 200 ms of added latency on the database connection."""

import json
import signal
import urllib.error
import urllib.request
from datetime import timedelta
from decimal import Decimal

import pytest
import redis

from accounts.tokens import token_create
from ledger.audit import ledger_audit
from marketplace.models import Demand, Reservation
from marketplace.services import demand_create
from marketplace.tasks import match_all_hubs
from tests.factories import DemandFactory, UserFactory, next_hour

from .harness import (
    Cluster,
    Gunicorn,
    RedisServer,
    TcpProxy,
    database_url,
    publishing_to,
    wait_for,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _queued(client: redis.Redis, queue: str) -> list[dict]:
    """Headers of the messages waiting in ``queue`` (oldest first)."""
    return [json.loads(raw)["headers"] for raw in reversed(client.lrange(queue, 0, -1))]


def test_two_beats_send_each_periodic_task_once_and_fail_over(cluster):
    # given two beat processes started together, matching sweep every second, no worker
    client = redis.Redis.from_url(cluster.broker)
    env = {"MATCH_INTERVAL": "1", "BEAT_STANDBY_INTERVAL": "1"}
    first, second = cluster.beat(**env), cluster.beat(**env)
    beats = {first.pid: first, second.pid: second}

    def senders() -> list[int]:
        return [
            int(h["origin"].split("@")[0].removeprefix("gen"))
            for h in _queued(client, cluster.queue)
        ]

    # when they run for a few sweeps
    wait_for(lambda: len(senders()) >= 4, 60)
    # then every periodic message came from one beat: the other stood by
    assert len(set(senders())) == 1
    (active_pid,) = set(senders())
    assert active_pid in beats
    sent_before = len(senders())
    tasks = {h["task"] for h in _queued(client, cluster.queue)}
    assert tasks == {"marketplace.tasks.match_all_hubs"}
    # when the active beat is killed, the standby takes over and is then the only sender
    beats[active_pid].kill(signal.SIGKILL)
    (standby_pid,) = set(beats) - {active_pid}
    wait_for(lambda: senders().count(standby_pid) >= 3, 60)
    assert set(senders()[sent_before:]) == {standby_pid}
    assert beats[standby_pid].alive()


def _post(buyer, accelerator: str, n: int) -> list[Demand | Exception]:
    start = next_hour(2)
    out: list[Demand | Exception] = []
    for i in range(n):
        try:
            out.append(
                demand_create(
                    buyer=buyer,
                    accelerators=[accelerator],
                    gpu_count=1,
                    duration_hours=2,
                    earliest_start=start + timedelta(hours=i % 4),
                    latest_end=start + timedelta(hours=48),
                    max_price_per_gpu_hour="12.5",
                    locality_limit="city",
                )
            )
        except Exception as exc:  # the enqueue after commit failed: the demand is committed
            out.append(exc)
    return out


def test_redis_restart_while_demands_are_posted_and_matched(tmp_path, buyer, offer):
    # given a private Redis (restarting the shared one would break other runs) and a worker on it
    server = RedisServer(tmp_path)
    server.start()
    cluster = Cluster(tmp_path, broker=server.url)
    try:
        worker = cluster.worker(CELERY_TASK_RETRY_BACKOFF="1")
        code = offer.accelerator.code
        with publishing_to(cluster.queue, broker=server.url):
            # when demands are posted and matched, Redis is restarted (its queue is lost: no
            # persistence), and more demands are posted
            before = _post(buyer, code, 6)
            assert all(isinstance(d, Demand) for d in before), before
            wait_for(lambda: Reservation.objects.count() >= 1, 60)
            server.stop()
            during = _post(buyer, code, 2)  # publish retries give up while Redis is down
            server.start()
            after = _post(buyer, code, 6)
            # and the periodic sweep runs once (as the beat does every MATCH_INTERVAL)
            match_all_hubs.delay()
        demands = [d for d in before + during + after if isinstance(d, Demand)]
        failed_enqueues = [e for e in before + during + after if not isinstance(e, Demand)]
        # then every posted demand was committed (an enqueue failure does not lose it) ...
        assert Demand.objects.count() == 14
        assert len(demands) + len(failed_enqueues) == 14
        assert len(failed_enqueues) == 2  # posted while Redis was down: committed, not enqueued
        # ... and every one is booked exactly once; the worker reconnected by itself
        wait_for(lambda: Reservation.objects.count() == 14, 90)
        for d in Demand.objects.all():
            assert Reservation.objects.filter(demand=d).count() == 1
        assert worker.alive()
        assert worker.output().count("Connected to redis://") >= 2
        assert ledger_audit() == []
    finally:
        cluster.stop()
        server.stop()


def _http(method: str, url: str, token: str, timeout: float = 60) -> tuple[int, dict]:
    headers = {"Authorization": f"Token {token}"}
    req = urllib.request.Request(url, method=method, headers=headers)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_200ms_database_latency_keeps_requests_bounded_by_timeouts(
    tmp_path, other_session, buyer, offer
):
    # given gunicorn (production settings) whose database connection goes through a proxy
    # adding 200 ms to every round trip, with a 1 s lock timeout and a 5 s statement timeout
    proxy = TcpProxy(target_port=5432, delay=0.2).start()
    user = UserFactory.create(username="sme-latency", organisation=buyer)
    _, token = token_create(user=user)
    demand = DemandFactory.create(buyer=buyer, max_price_per_gpu_hour=Decimal("1"))
    web = Gunicorn(
        tmp_path,
        DATABASE_URL=database_url(port=proxy.port),
        DB_LOCK_TIMEOUT_MS="1000",
        DB_STATEMENT_TIMEOUT_MS="5000",
        GUNICORN_TIMEOUT="60",
    )
    try:
        # then ordinary requests answer, slowly
        assert _http("GET", f"{web.url}/readyz", token)[0] == 200
        status, body = _http("GET", f"{web.url}/api/v1/demands/{demand.pk}/", token)
        assert (status, body["id"]) == (200, str(demand.pk))
        # and when another session holds the demand's row, a cancel does not hang: the lock
        # timeout ends it with a 503 and the demand is unchanged
        other_session.execute(
            "SELECT id FROM marketplace_demand WHERE id = %s FOR UPDATE", [demand.pk]
        )
        status, body = _http("POST", f"{web.url}/api/v1/demands/{demand.pk}/cancel/", token)
        assert (status, body["code"]) == (503, "database_busy")
        assert Demand.objects.get(pk=demand.pk).status == Demand.Status.OPEN
        # and once the row is free, the same request succeeds
        other_session.rollback()
        status, body = _http("POST", f"{web.url}/api/v1/demands/{demand.pk}/cancel/", token)
        assert status == 200, body
        assert Demand.objects.get(pk=demand.pk).status == Demand.Status.CANCELLED
        assert "database busy" in web.proc.output()
    finally:
        web.stop()
        proxy.stop()
