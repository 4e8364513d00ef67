"""Marketplace reads: reference data, offers, demands, reservations (PRODUCT.md §2-5).

Every selector that returns another organisation's data takes the caller's organisation and
scopes to it, so an id that belongs to someone else reads as "not there". Querysets come with
their related rows joined or prefetched so lists cost a fixed number of queries.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.db import connection, transaction
from django.db.models import Prefetch, Q, QuerySet

from accounts.models import Organisation

from .models import Accelerator, Demand, Hub, Offer, Reservation, ReservationEvent, Site

if TYPE_CHECKING:
    from ledger.models import Entry
    from vouchers.models import ReimbursementClaim


@contextmanager
def one_snapshot() -> Iterator[None]:
    """Run the reads inside as one read-only transaction that sees one snapshot of the
    database (PostgreSQL ``REPEATABLE READ, READ ONLY``): an answer assembled from several
    queries (``demand_explain``: counts, capacity, near misses) is then consistent even while
    cycles and people book. Inside a transaction already (a test's, a caller's), and on SQLite
    (one writer at a time anyway), the reads simply run in it. Raises what the reads raise; a
    write inside is refused by PostgreSQL (``ReadOnlySqlTransaction``)."""
    if connection.in_atomic_block or connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def offers_within(tier: str, city: str, metro: str, hub_id: object) -> Q:
    """Offers whose site is within locality ``tier`` (``city``, ``metro``, ``region`` or
    ``national``) of a site at ``city``, metro area ``metro`` in hub ``hub_id``, as a filter on
    offers: ``locality.tier_between``'s rule in SQL (another hub is national; in the same hub
    the same city is city, the same metro area metro, the rest region). For the offer search's
    ``tier`` and explain's near miss."""
    if tier == "national":
        return Q()
    same_hub = Q(site__hub_id=hub_id)
    if tier == "region":
        return same_hub
    if tier == "metro":
        return same_hub & (Q(site__city=city) | Q(site__metro_area=metro))
    return same_hub & Q(site__city=city)


def as_uuid(value: object) -> uuid.UUID | None:
    """``value`` as a UUID, or ``None`` when it is not one (ids from URLs and bodies)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def hub_list() -> QuerySet[Hub]:
    """All hub nodes, by code."""
    return Hub.objects.order_by("code")


def site_list() -> QuerySet[Site]:
    """All sites (public data centres and home locations), by code, with hub and cluster."""
    return Site.objects.select_related("hub", "cluster").order_by("code")


def accelerator_list() -> QuerySet[Accelerator]:
    """The accelerator catalogue, by code."""
    return Accelerator.objects.order_by("code")


def _offers() -> QuerySet[Offer]:
    return Offer.objects.select_related("provider", "site__hub", "accelerator")


def offer_search(*, related: bool = True) -> QuerySet[Offer]:
    """Active offers anyone may see, oldest first (filters are applied by the API layer), with
    provider, site, hub and accelerator joined (``related=False``: without, for ``values()``)."""
    offers = _offers() if related else Offer.objects.all()
    return offers.filter(status=Offer.Status.ACTIVE).order_by("created_at", "id")


def offer_get_visible(*, organisation: Organisation | None, offer_id: object) -> Offer | None:
    """An offer the caller may see: any active offer, or one of its own in any status."""
    pk = as_uuid(offer_id)
    if pk is None:
        return None
    visible = Q(status=Offer.Status.ACTIVE)
    if organisation is not None:
        visible |= Q(provider=organisation)
    return _offers().filter(visible, pk=pk).first()


def demand_list(*, buyer: Organisation) -> QuerySet[Demand]:
    """The buyer's own demands, oldest first, with accelerators prefetched."""
    return (
        Demand.objects.filter(buyer=buyer)
        .select_related("origin_site")
        .prefetch_related("accelerators")
        .order_by("created_at", "id")
    )


def demand_get(*, buyer: Organisation, demand_id: object) -> Demand | None:
    """One of the buyer's demands, or ``None`` (also for another buyer's id), with its
    reservations (the parts of a split demand) and their offers' sites prefetched."""
    pk = as_uuid(demand_id)
    if pk is None:
        return None
    parts = Prefetch(
        "reservations",
        queryset=Reservation.objects.select_related("offer__site").order_by("created_at", "id"),
    )
    return demand_list(buyer=buyer).prefetch_related(parts).filter(pk=pk).first()


def reservation_list(
    *, organisation: Organisation, role: str | None = None
) -> QuerySet[Reservation]:
    """Reservations the organisation takes part in: ``role="buyer"`` its purchases,
    ``role="provider"`` its sales, ``None`` both. By start time."""
    if role == "buyer":
        scope = Q(buyer=organisation)
    elif role == "provider":
        scope = Q(provider=organisation)
    else:
        scope = Q(buyer=organisation) | Q(provider=organisation)
    return Reservation.objects.filter(scope).order_by("start", "id")


def reservation_get(*, organisation: Organisation, reservation_id: object) -> Reservation | None:
    """One reservation the organisation buys or sells, or ``None``."""
    pk = as_uuid(reservation_id)
    return None if pk is None else reservation_list(organisation=organisation).filter(pk=pk).first()


# --- The provider's side (provider API) -----------------------------------------------------


def provider_site_list(*, provider: Organisation) -> QuerySet[Site]:
    """The provider's own data centres, by code, with hub and cluster."""
    return site_list().filter(provider=provider)


def provider_usage_report_list(*, provider: Organisation) -> "QuerySet[ReservationEvent]":
    """Completions of reservations the provider sells, newest first: each carries the
    GPU-hours delivered (reported by the provider, or the full amount when the reservation ran
    to its end). One row per reservation; reservation and offer joined."""
    return (
        ReservationEvent.objects.filter(
            reservation__provider=provider, to_status=Reservation.Status.COMPLETED
        )
        .select_related("reservation")
        .order_by("-at", "-id")
    )


def provider_payout_list(*, provider: Organisation) -> "QuerySet[Entry]":
    """Payouts from the provider's payable account (CNY), newest first: the ledger entries of
    ``payout`` transactions on it, with their transaction joined."""
    from ledger.models import Account, Entry, Transaction

    return (
        Entry.objects.filter(
            account__organisation=provider,
            account__kind=Account.Kind.PAYABLE,
            transaction__reason=Transaction.Reason.PAYOUT,
        )
        .select_related("transaction")
        .order_by("-transaction__created_at", "-id")
    )


def provider_claim_list(*, provider: Organisation) -> "QuerySet[ReimbursementClaim]":
    """The provider's reimbursement claims on voucher programmes (§5.5), newest first, with
    their programme joined."""
    from vouchers.models import ReimbursementClaim

    return (
        ReimbursementClaim.objects.filter(provider=provider)
        .select_related("programme")
        .order_by("-created_at", "-id")
    )
