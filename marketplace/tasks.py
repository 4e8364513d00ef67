"""Celery tasks. Each takes ids (and an optional ISO time for simulations), re-reads state,
calls one service and is safe to run twice."""

from datetime import datetime
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from marketplace.matching.cycle import matching_cycle_run
from marketplace.models import Hub, Reservation
from marketplace.services import (
    demands_expire,
    offers_expire,
    reservation_settle,
    reservations_advance,
    reservations_expire_unaccepted,
)
from ops.tasks import ReliableTask
from vouchers.services import vouchers_lapse_expired


def _now(at: str | None) -> datetime:
    return datetime.fromisoformat(at) if at else timezone.now()


def hub_queue(hub_code: str) -> str:
    """The matching queue of a hub, ``<MATCH_QUEUE_PREFIX>.<hub code>`` (e.g. ``match.gansu``):
    one partition per hub (PRODUCT.md §4). Workers subscribe with ``-Q default,match.gansu,…``."""
    return f"{getattr(settings, 'MATCH_QUEUE_PREFIX', 'match')}.{hub_code}"


def hub_queues() -> list[str]:
    """Every hub's matching queue, by hub code (what a worker serving all hubs consumes)."""
    return [hub_queue(code) for code in Hub.objects.order_by("code").values_list("code", flat=True)]


def hub_routing_on(app: Any) -> bool:
    """Per-hub queues are used whenever tasks really go through a broker (not eager) and
    ``MATCH_HUB_QUEUES`` is not switched off."""
    return not app.conf.task_always_eager and getattr(settings, "MATCH_HUB_QUEUES", True)


class HubRoutedTask(ReliableTask):
    """Sends each ``match_hub`` call to its hub's queue ``match.<hub code>`` whenever Celery is
    not eager (an explicit ``queue=`` wins; ``MATCH_HUB_QUEUES=0`` turns routing off). Eager,
    the task runs in-process and no queue is involved. The per-hub advisory lock in
    ``matching_cycle_run`` keeps one cycle per hub either way."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        if "queue" not in options and hub_routing_on(self.app):
            hub_id = args[0] if args else (kwargs or {}).get("hub_id")
            code = None
            if hub_id is not None:
                code = Hub.objects.filter(pk=str(hub_id)).values_list("code", flat=True).first()
            if code is not None:
                options["queue"] = hub_queue(code)
        return super().apply_async(args, kwargs, **options)


@shared_task(name="marketplace.tasks.match_hub", base=HubRoutedTask)
def match_hub(hub_id: str, at: str | None = None) -> int:
    """Run one matching cycle for the hub (``matching_cycle_run``; ``at``: an ISO 8601 time
    with an offset for simulations, default now); returns reservations made (0 if another
    worker holds the hub's lock). ``Hub.DoesNotExist`` for an unknown hub."""
    cycle = matching_cycle_run(hub_id, now=_now(at))
    return cycle.reservations_made if cycle else 0


@shared_task(name="marketplace.tasks.match_all_hubs")
def match_all_hubs(at: str | None = None) -> int:
    """Beat entry point: enqueue one matching task per hub, each on its hub's queue
    (``match.<hub code>``) when routing is on. Returns the number enqueued."""
    hubs = list(Hub.objects.order_by("code").values_list("pk", "code"))
    routed = hub_routing_on(match_hub.app)
    for hub_id, code in hubs:
        if routed:
            match_hub.apply_async((str(hub_id), at), queue=hub_queue(code))
        else:
            match_hub.delay(str(hub_id), at)
    return len(hubs)


@shared_task(name="marketplace.tasks.expire_unaccepted")
def expire_unaccepted(at: str | None = None) -> int:
    """Expire held reservations not accepted within ``ACCEPT_TTL``."""
    return reservations_expire_unaccepted(now=_now(at))


@shared_task(name="marketplace.tasks.advance_reservations")
def advance_reservations(at: str | None = None) -> list[int]:
    """Activate reservations whose start passed; complete those whose end passed."""
    return list(reservations_advance(now=_now(at)))


@shared_task(name="marketplace.tasks.settle_completed")
def settle_completed() -> int:
    """Settle every completed reservation (one transaction each). Returns the number settled."""
    settled = 0
    for rid in Reservation.objects.filter(status=Reservation.Status.COMPLETED).values_list(
        "pk", flat=True
    ):
        settled += settle_reservation(str(rid))
    return settled


@shared_task(name="marketplace.tasks.settle_reservation")
def settle_reservation(reservation_id: str) -> bool:
    """Settle one reservation if it is still completed; a second run does nothing."""
    if not Reservation.objects.filter(
        pk=reservation_id, status=Reservation.Status.COMPLETED
    ).exists():
        return False
    from marketplace.errors import Conflict

    try:
        reservation_settle(reservation_id=reservation_id)
    except Conflict:
        return False
    return True


@shared_task(name="marketplace.tasks.expire_demands")
def expire_demands(at: str | None = None) -> int:
    """Expire open demands whose window can no longer hold their duration."""
    return demands_expire(now=_now(at))


@shared_task(name="marketplace.tasks.expire_offers")
def expire_offers(at: str | None = None) -> int:
    """Expire active and paused offers whose window has ended."""
    return offers_expire(now=_now(at))


@shared_task(name="vouchers.tasks.lapse_expired_vouchers")
def lapse_expired_vouchers(at: str | None = None) -> int:
    """Daily: lapse expired vouchers' unused balances back to their programmes, once."""
    return vouchers_lapse_expired(now=_now(at))
