"""Locust users for ``bench/bench_load.py`` (not run on its own): SMEs post, poll and cancel
demands; providers re-price their offers. Credentials come from ``BENCH_CREDENTIALS`` (JSON
written by the orchestrator); a summary of status codes is written to ``BENCH_STATUS_OUT``."""

import itertools
import json
import os
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from locust import HttpUser, between, events, task

CREDS = json.loads(open(os.environ["BENCH_CREDENTIALS"]).read())  # noqa: SIM115
_sme_ids = itertools.count()
_provider_ids = itertools.count()
STATUS: Counter[str] = Counter()


@events.request.add_listener
def _count_status(response: Any = None, exception: Any = None, **_: Any) -> None:
    code = getattr(response, "status_code", None) if response is not None else None
    STATUS[str(code) if code else f"error:{type(exception).__name__}"] += 1


@events.quitting.add_listener
def _write_status(**_: Any) -> None:
    with open(os.environ["BENCH_STATUS_OUT"], "w") as fh:
        json.dump(dict(STATUS), fh)


def _next_hour(hours: int) -> datetime:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return now + timedelta(hours=1 + hours)


class Sme(HttpUser):
    """An SME: posts a demand now and then, polls its demands and reservations, cancels some."""

    weight = 200
    wait_time = between(2, 6)

    def on_start(self) -> None:
        me = CREDS["smes"][next(_sme_ids) % len(CREDS["smes"])]
        self.client.headers["Authorization"] = f"Token {me['token']}"
        self.models: list[str] = CREDS["accelerators"]
        self.open: list[str] = []

    @task(3)
    def post_demand(self) -> None:
        start = _next_hour(random.randint(0, 24))
        body = {
            "accelerators": [random.choice(self.models)],
            "gpu_count": random.randint(1, 4),
            "duration_hours": random.randint(1, 8),
            "earliest_start": start.isoformat(),
            "latest_end": (start + timedelta(hours=48)).isoformat(),
            "max_price_per_gpu_hour": "60",
            "locality_limit": random.choice(["metro", "region", "national"]),
        }
        with self.client.post(
            "/api/v1/demands/", json=body, name="POST demands", catch_response=True
        ) as r:
            if r.status_code == 201:
                self.open.append(r.json()["id"])
                r.success()
            else:
                r.failure(f"{r.status_code} {r.text[:200]}")

    @task(4)
    def poll_demand(self) -> None:
        if not self.open:
            return
        demand_id = random.choice(self.open[-10:])
        self.client.get(f"/api/v1/demands/{demand_id}/", name="GET demand")

    @task(2)
    def poll_reservations(self) -> None:
        self.client.get("/api/v1/reservations/?role=buyer", name="GET reservations")

    @task(1)
    def cancel_demand(self) -> None:
        if not self.open:
            return
        demand_id = self.open.pop(random.randrange(len(self.open)))
        with self.client.post(
            f"/api/v1/demands/{demand_id}/cancel/", name="POST demand cancel", catch_response=True
        ) as r:
            # 409: matched before the cancel arrived (a matched demand is cancelled through its
            # reservation) — the expected answer, not an error.
            if r.status_code in (200, 409):
                r.success()
            else:
                r.failure(f"{r.status_code} {r.text[:200]}")

    @task(1)
    def healthz(self) -> None:
        """The baseline: the web stack without the database, under the same load."""
        self.client.get("/healthz", name="GET healthz (baseline)")


class Provider(HttpUser):
    """A provider: re-prices one of its offers, lists its offers."""

    weight = 20
    wait_time = between(5, 15)

    def on_start(self) -> None:
        me = CREDS["providers"][next(_provider_ids) % len(CREDS["providers"])]
        self.client.headers["Authorization"] = f"Token {me['token']}"
        self.offers: list[dict[str, str]] = me["offers"]

    @task(2)
    def reprice(self) -> None:
        offer = random.choice(self.offers)
        price = Decimal(offer["price"]) * Decimal(random.choice(["0.95", "1.00", "1.05"]))
        with self.client.patch(
            f"/api/v1/offers/{offer['id']}/",
            json={"price_per_gpu_hour": str(price.quantize(Decimal("0.01")))},
            name="PATCH offer",
            catch_response=True,
        ) as r:
            if r.status_code == 200:
                r.success()
            else:
                r.failure(f"{r.status_code} {r.text[:200]}")

    @task(1)
    def list_offers(self) -> None:
        self.client.get("/api/v1/offers/", name="GET offers")
