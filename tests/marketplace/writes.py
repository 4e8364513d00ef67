"""Open demands and engine matches built for the tests of the cycle's write path
(``marketplace.matching.bulk``), on the database."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from accounts.models import Organisation
from marketplace.matching.engine import Match
from marketplace.models import Demand, Offer
from marketplace.timeutil import hour_index
from tests.factories import DemandFactory, next_hour


def open_demands(
    buyer: Organisation, n: int, *, gpus: int, hours: int, start: datetime, **fields: Any
) -> list[Demand]:
    """``n`` open demands of ``buyer`` for ``gpus`` GPUs for ``hours`` hours within the 12
    hours from ``start`` (other ``fields`` as given)."""
    return [
        DemandFactory.create(
            buyer=buyer,
            gpu_count=gpus,
            duration_hours=hours,
            earliest_start=start,
            latest_end=start + timedelta(hours=12),
            **fields,
        )
        for _ in range(n)
    ]


def one_gpu_hours(buyer: Organisation, offer: Offer, n: int) -> tuple[list[Demand], list[Match]]:
    """``n`` open demands of ``buyer`` for one GPU for one hour within the next 12 hours, and
    the matches of the i-th on ``offer`` at the i-th hour from the next but one."""
    start = next_hour(2)
    demands = open_demands(buyer, n, gpus=1, hours=1, start=start)
    matches = [
        Match(str(d.pk), str(offer.pk), hour_index(start) + i, "", Decimal(0), Decimal(0))
        for i, d in enumerate(demands)
    ]
    return demands, matches
