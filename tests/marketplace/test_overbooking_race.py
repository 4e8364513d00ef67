"""Two threads race for the last capacity of an offer on PostgreSQL: exactly one wins."""

import threading
from datetime import datetime, timedelta
from uuid import UUID

import pytest
from django.db import connection

from ledger.audit import ledger_audit
from marketplace.errors import Conflict
from marketplace.models import Reservation
from marketplace.services import offer_peak_reserved, reservation_create
from tests.factories import DemandFactory


@pytest.mark.django_db(transaction=True)
def test_two_threads_cannot_overbook_the_last_gpus(buyer, other_buyer, offer):
    # given an 8-GPU offer and two demands of 6 GPUs for overlapping hours
    a = DemandFactory.create(buyer=buyer, gpu_count=6, duration_hours=3)
    b = DemandFactory.create(
        buyer=other_buyer,
        gpu_count=6,
        duration_hours=3,
        earliest_start=a.earliest_start,
        latest_end=a.latest_end,
    )
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def book(demand_id: UUID, start: datetime) -> None:
        try:
            barrier.wait()
            reservation_create(demand_id=demand_id, offer_id=offer.pk, start=start)
            outcomes.append("ok")
        except Conflict as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    # when both book at once, one hour apart (their windows overlap by two hours)
    threads = [
        threading.Thread(target=book, args=(a.pk, a.earliest_start)),
        threading.Thread(target=book, args=(b.pk, b.earliest_start + timedelta(hours=1))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # then exactly one booking exists and the offer is never over its 8 GPUs
    assert sorted(outcomes) == ["capacity_exhausted", "ok"]
    assert Reservation.objects.count() == 1
    assert offer_peak_reserved(offer) == 6
    assert ledger_audit() == []
