"""Marketplace writes: offers, demands, reservations and their payment holds (PRODUCT.md §3–5).

Every public service validates on every entry point (API, admin, console, tasks) and raises
``marketplace.errors.DomainError`` subclasses with a stable ``code`` and the ``field`` at fault.
Lock order: demand → offer → the sites the locality tier comes from (``FOR KEY SHARE``, by pk:
``site_places_lock``) → voucher row (where one is locked: split demands, the matcher's
batch, releases) → the parties' ledger accounts (by pk) → the programme row (``FOR KEY SHARE``
to change its usage counters, ``FOR UPDATE`` to stop them changing) → its usage rows (buyer,
then budget) → the shared hot accounts (escrow, fees, programme budgets) last.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as MalformedId
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from accounts.models import Organisation, User
from ledger.holds import (
    POINT_OF_SALE,
    REIMBURSEMENT,
    hold_place,
    hold_post,
    hold_refund,
    hold_void,
)
from ledger.models import Account, Hold, Refund, Transaction
from ledger.services import (
    organisation_account,
    system_account,
    transaction_post,
)
from vouchers.models import BILL_CATEGORIES, ReimbursementClaim, Voucher
from vouchers.services import (
    BillLine,
    Split,
    programme_year,
    voucher_hold_lock,
    voucher_split,
)
from vouchers.usage import usage_change

from .errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from .holdpath import ProgrammeLimitsMoved, hold_write
from .locality import tier_between, tier_rank
from .models import (
    Accelerator,
    Demand,
    Dispute,
    InterHubTrade,
    Offer,
    Reservation,
    ReservationEvent,
    Site,
    SplitScope,
)
from .money import MAX_BILL, ZERO, bill_amount, quantize_money
from .prepared import PreparedQuery
from .timeutil import HOUR, hour_index, hour_index_ceil, is_whole_hour
from .types import ObjectId

MAX_GPUS = 100_000
MAX_HOURS = 24 * 366
MAX_PRICE = Decimal("100000")
# How far ahead capacity may be listed or asked for: an offer's ``available_until`` and a
# demand's ``latest_end`` are at most this far from now (366 days, a year and a leap day). The
# engine holds each offer's free GPUs hour by hour, so an unbounded window (the API would take
# 9999-12-31) would cost every cycle of its hub gigabytes; a year covers every real contract.
MAX_HORIZON = timedelta(days=366)
# Most parts (reservations) one split demand is written as; the engine's
# ``marketplace.matching.partial.MAX_PARTS`` (kept ORM-free there, equal by a test).
MAX_SPLIT_PARTS = 16


# --- Input checks shared by every entry point ----------------------------------------------


def _money_input(value: Any, field: str, *, places: int, maximum: Decimal = MAX_PRICE) -> Decimal:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ValidationFailed("not a decimal number", field=field) from exc
    if not amount.is_finite():
        raise ValidationFailed("must be a finite number", field=field)
    if amount <= 0:
        raise ValidationFailed("must be positive", field=field)
    if amount > maximum:
        raise ValidationFailed(f"must be at most {maximum}", field=field)
    if amount != amount.quantize(Decimal(1).scaleb(-places)):
        raise ValidationFailed(f"at most {places} decimal places", field=field)
    return amount


def _positive_int(value: Any, field: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationFailed("must be an integer", field=field)
    if not 1 <= value <= maximum:
        raise ValidationFailed(f"must be between 1 and {maximum}", field=field)
    return value


# Read on every offer search and demand: compiled once (marketplace.prepared), read each time.
_CATALOGUE: PreparedQuery[Accelerator] = PreparedQuery(
    lambda _: Accelerator.objects.order_by("code")
)
_CATALOGUE_NAMES: PreparedQuery[Accelerator] = PreparedQuery(  # rows(): (id, code, aliases)
    lambda _: Accelerator.objects.order_by("code").values_list("id", "code", "aliases")
)


def _resolve(
    names: Iterable[str], field: str, catalogue: list[tuple[Any, str, list[str]]]
) -> list[Any]:
    """The ``key`` of each catalogue entry ``(key, code, aliases)`` that a name means (code or
    alias, case-insensitive), once each, in the order first named; ``ValidationFailed`` naming
    ``field`` and listing the known codes for a name that means none."""
    index: dict[str, tuple[Any, str]] = {}
    for key, code, aliases in catalogue:
        index[code.lower()] = (key, code)
        for alias in aliases:
            index[str(alias).lower()] = (key, code)
    found: dict[str, Any] = {}
    for name in names:
        match = index.get(str(name).strip().lower())
        if match is None:
            known = ", ".join(sorted(code for _, code, _ in catalogue))
            raise ValidationFailed(
                f"unknown accelerator {name!r}; known codes: {known}",
                code="unknown_accelerator",
                field=field,
            )
        found[match[1]] = match[0]
    return list(found.values())


def accelerators_resolve(names: Iterable[str], field: str = "accelerators") -> list[Accelerator]:
    """Resolve free-text accelerator names (codes or aliases, case-insensitive) to catalogue rows.

    Raises ``ValidationFailed(code="unknown_accelerator")`` listing the known codes (§2).
    """
    return _resolve(names, field, [(acc, acc.code, acc.aliases) for acc in _CATALOGUE.all()])


def accelerator_ids_resolve(names: Iterable[str], field: str = "accelerators") -> list[uuid.UUID]:
    """``accelerators_resolve`` giving only the ids (no model instances; the offer search)."""
    return _resolve(names, field, [tuple(row) for row in _CATALOGUE_NAMES.rows()])  # type: ignore[misc]


# --- Wallet ----------------------------------------------------------------------------------


@transaction.atomic
def wallet_deposit(*, organisation: Organisation, amount: Decimal, memo: str = "") -> Transaction:
    """Add ``amount`` CNY to the buyer's cash wallet from the outside world (test/demo funding)."""
    amount = _money_input(amount, "amount", places=2, maximum=Decimal("1000000000"))
    if not organisation.is_buyer:
        raise PermissionDenied("only buyers have a wallet", code="not_a_buyer")
    txn = transaction_post(
        Transaction.Reason.DEPOSIT,
        [
            (system_account(Account.Kind.WORLD), -amount),
            (organisation_account(organisation, Account.Kind.WALLET), amount),
        ],
        memo=memo or "deposit",
    )
    assert txn is not None
    return txn


# --- Offers ----------------------------------------------------------------------------------

OFFER_FIELDS = (
    "site",
    "accelerator",
    "gpu_count",
    "gpus_per_node",
    "interconnect",
    "available_from",
    "available_until",
    "price_per_gpu_hour",
    "min_duration_hours",
)


def _offer_check(offer: Offer) -> None:
    _positive_int(offer.gpu_count, "gpu_count", MAX_GPUS)
    _positive_int(offer.gpus_per_node, "gpus_per_node", 64)
    _positive_int(offer.min_duration_hours, "min_duration_hours", MAX_HOURS)
    offer.price_per_gpu_hour = _money_input(
        offer.price_per_gpu_hour, "price_per_gpu_hour", places=4
    )
    for name in ("available_from", "available_until"):
        if not is_whole_hour(getattr(offer, name)):
            raise ValidationFailed("must be a whole UTC hour", code="not_whole_hour", field=name)
    if offer.available_until <= offer.available_from:
        raise ValidationFailed(
            "must be after available_from", code="window_invalid", field="available_until"
        )
    site = offer.site
    if site.provider_id is not None and site.provider_id != offer.provider_id:
        raise NotFound("no such site", field="site")
    _provider_check(offer.provider)


def _offer_window_current(offer: Offer) -> None:
    """Refuse an offer whose window ends now or earlier (``window_in_past``) or more than
    ``MAX_HORIZON`` from now (``window_too_far``), naming ``available_until``."""
    now = timezone.now()
    if offer.available_until <= now:
        raise ValidationFailed(
            "window already over", code="window_in_past", field="available_until"
        )
    _within_horizon(offer.available_until, "available_until", now=now)


def _within_horizon(end: datetime, field: str, *, now: datetime) -> None:
    """Refuse a window ending more than ``MAX_HORIZON`` after ``now`` (``window_too_far``)."""
    if end > now + MAX_HORIZON:
        raise ValidationFailed(
            f"ends more than {MAX_HORIZON.days} days ahead", code="window_too_far", field=field
        )


def _provider_check(provider: Organisation) -> None:
    if not provider.is_provider:
        raise PermissionDenied("only providers list offers", code="not_a_provider")
    if provider.status != Organisation.Status.APPROVED:
        raise PermissionDenied("organisation is not approved", code="organisation_not_approved")


@transaction.atomic
def offer_create(*, provider: Organisation, activate: bool = True, **fields: Any) -> Offer:
    """List capacity. ``fields`` are the offer's own (see ``OFFER_FIELDS``); times whole UTC
    hours, price CNY per GPU-hour (≤ 4 places). Raises ``ValidationFailed`` naming the field."""
    offer = Offer(provider=provider, **{k: v for k, v in fields.items() if k in OFFER_FIELDS})
    _offer_check(offer)
    _offer_window_current(offer)
    offer.status = Offer.Status.ACTIVE if activate else Offer.Status.DRAFT
    offer.save()
    return offer


def offer_peak_reserved(
    offer: Offer,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    exclude: ObjectId | None = None,
) -> int:
    """The most GPUs reserved on ``offer`` at any hour in ``[start, end)`` (all time if None)."""
    qs = offer.reservations.filter(status__in=Reservation.CAPACITY_STATUSES)
    if start is not None and end is not None:
        qs = qs.filter(start__lt=end, end__gt=start)
    if exclude is not None:
        qs = qs.exclude(pk=exclude)
    deltas: dict[int, int] = defaultdict(int)
    for r_start, r_end, gpus in qs.values_list("start", "end", "gpu_count"):
        lo = hour_index(r_start) if start is None else max(hour_index(r_start), hour_index(start))
        hi = hour_index(r_end) if end is None else min(hour_index(r_end), hour_index(end))
        deltas[lo] += gpus
        deltas[hi] -= gpus
    peak = running = 0
    for hour in sorted(deltas):
        running += deltas[hour]
        peak = max(peak, running)
    return peak


# Where a site is, as the locality tiers and the inter-hub trades see it (§4.2).
SITE_PLACE_FIELDS = ("hub", "city", "metro_area")


def site_move_check(site: Site, changed: Iterable[str]) -> None:
    """Refuse moving a site that has reservations: ``changed`` names the fields an edit
    changes; changing any of ``SITE_PLACE_FIELDS`` (hub, city, metro area) of a site that a
    reservation (any status) is at, through its offer, or comes from, as its demand's origin
    site (a buyer's home site), raises ``Conflict(code="site_has_reservations")`` naming the
    first such field. Each of those reservations got its locality tier, and those across hubs
    their inter-hub trade (exporting hub: the offer's site's, importing hub: the origin's),
    from where both sites were when it was made (§4.2, §3): moving either afterwards would
    change what they stand for. Its code, name and cluster may still change (within its hub:
    the console's form checks the cluster's hub). The console's and the operator admin's
    site forms and ``load_reference`` call it.

    A move first locks the site row ``FOR UPDATE`` (on PostgreSQL; SQLite runs one writer at
    a time), so it must run inside the transaction that saves the site, which keeps the lock
    until it commits (``TransactionManagementError`` outside one). Every booking locks the
    sites it takes the tier from ``FOR KEY SHARE`` (``site_places_lock``), which conflicts
    with it: a move waits for the bookings in flight and then sees their reservations; a
    booking waits for the move in flight and then reads the new place. An edit that moves
    nothing takes no lock here."""
    changed = set(changed)
    moved = [name for name in SITE_PLACE_FIELDS if name in changed]
    if not moved or site.pk is None:
        return
    list(Site.objects.select_for_update().filter(pk=site.pk).values_list("pk", flat=True))
    # two probes, each down its own index, rather than one OR across two joins
    if (
        Reservation.objects.filter(offer__site=site).exists()
        or Reservation.objects.filter(demand__origin_site=site).exists()
    ):
        raise Conflict(
            f"the site has reservations; its {moved[0]} cannot change",
            code="site_has_reservations",
            field=moved[0],
        )


# Where a booking's sites are, read under the lock that keeps them there until it commits.
SITE_PLACES_LOCK = (
    "SELECT id, city, metro_area, hub_id, cluster_id FROM marketplace_site"
    " WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE"
)


def site_places_lock(sites: Iterable[Site]) -> None:
    """Lock the rows of ``sites`` (the offers' sites and the demands' origin sites a booking
    takes its locality tiers and inter-hub trades from) ``FOR KEY SHARE``, by pk, in one
    statement, and set on every given ``Site`` object (several may stand for one row) the
    ``city``, ``metro_area``, ``hub_id`` and ``cluster_id`` that statement returned. Call it
    inside the booking's transaction, after its demand and offer locks, before any check reads
    a site.

    The lock conflicts only with the ``FOR UPDATE`` of a move (``site_move_check``), never
    with other bookings. Under READ COMMITTED a lock that waited for a move returns the row as
    the move committed it, whereas the place joined into the demand's or offer's locking read
    (``select_related``) may be older: hence the values are set from this statement. A no-op
    on SQLite (one writer at a time) or without sites."""
    sites = list(sites)
    if connection.vendor != "postgresql" or not sites:
        return
    with connection.cursor() as cursor:
        cursor.execute(SITE_PLACES_LOCK, [sorted({s.pk for s in sites})])
        places = {row[0]: row[1:] for row in cursor.fetchall()}
    for s in sites:
        s.city, s.metro_area, s.hub_id, s.cluster_id = places[s.pk]


@transaction.atomic
def offer_update(*, offer_id: ObjectId, provider: Organisation, **fields: Any) -> Offer:
    """Edit an offer under its row lock. Reservations already made are untouched; lowering
    ``gpu_count`` below the peak already reserved raises ``Conflict(code="below_reserved")``;
    moving the window so that it ends in the past or more than ``MAX_HORIZON`` ahead raises
    ``ValidationFailed`` (field ``available_until``, code ``window_in_past`` or
    ``window_too_far``), as ``offer_create`` does; changing the
    ``site`` or ``accelerator`` of an offer that has reservations (any status) raises
    ``Conflict(code="offer_has_reservations")`` naming the field."""
    offer = _offer_locked(offer_id, provider)
    if offer.status in (Offer.Status.WITHDRAWN, Offer.Status.EXPIRED):
        raise Conflict(f"offer is {offer.status}", code="illegal_transition")
    window = (offer.available_from, offer.available_until)
    placed = {"site": offer.site_id, "accelerator": offer.accelerator_id}
    for key, value in fields.items():
        if key in OFFER_FIELDS:
            setattr(offer, key, value)
    # A reservation is capacity of this model at this site: moving the offer or changing its
    # model would change what every reservation made on it (and its bill, locality tier and
    # voucher eligibility, fixed at the hold) stands for (§3).
    for name, before in placed.items():
        if getattr(offer, f"{name}_id") != before and offer.reservations.exists():
            raise Conflict(
                f"the offer has reservations; its {name} cannot change",
                code="offer_has_reservations",
                field=name,
            )
    _offer_check(offer)
    # As on creation, a window that ends in the past or too far ahead is refused when the
    # update moves it (an edit that leaves the window alone, e.g. the price, is not refused).
    if (offer.available_from, offer.available_until) != window:
        _offer_window_current(offer)
    if offer.gpu_count < offer_peak_reserved(offer):
        raise Conflict(
            "capacity below what is already reserved", code="below_reserved", field="gpu_count"
        )
    offer.save()
    return offer


def _offer_locked(offer_id: ObjectId, provider: Organisation) -> Offer:
    try:
        return Offer.objects.select_for_update().get(pk=offer_id, provider=provider)
    except (Offer.DoesNotExist, ValueError, MalformedId) as exc:  # a bad id is not there
        raise NotFound("no such offer", field="offer") from exc


@transaction.atomic
def offer_set_status(*, offer_id: ObjectId, provider: Organisation, status: str) -> Offer:
    """Move an offer along ``draft → active ⇄ paused → withdrawn`` (§3); else ``Conflict``."""
    offer = _offer_locked(offer_id, provider)
    if status == Offer.Status.ACTIVE:
        _provider_check(offer.provider)
    if status not in Offer.TRANSITIONS[offer.status]:
        raise Conflict(f"cannot go from {offer.status} to {status}", code="illegal_transition")
    offer.status = status
    offer.save(update_fields=["status", "updated_at"])
    return offer


def offers_expire(*, now: datetime | None = None) -> int:
    """Mark active and paused offers whose window has ended (``available_until`` ≤ ``now``,
    UTC) ``expired`` (§3); they leave the offer search. Reservations made on them are
    untouched. Returns how many offers changed; running it again changes nothing."""
    now = now or timezone.now()
    return Offer.objects.filter(
        status__in=(Offer.Status.ACTIVE, Offer.Status.PAUSED), available_until__lte=now
    ).update(status=Offer.Status.EXPIRED, updated_at=now)


# --- Demands ---------------------------------------------------------------------------------


def demand_check(demand: Demand, *, now: datetime) -> None:
    """The demand rules of §4, for create and update alike. Raises ``ValidationFailed``."""
    _positive_int(demand.gpu_count, "gpu_count", MAX_GPUS)
    _positive_int(demand.duration_hours, "duration_hours", MAX_HOURS)
    demand.max_price_per_gpu_hour = _money_input(
        demand.max_price_per_gpu_hour, "max_price_per_gpu_hour", places=4
    )
    for name in ("earliest_start", "latest_end"):
        if not is_whole_hour(getattr(demand, name)):
            raise ValidationFailed(
                "must be a whole UTC hour (reservations use whole-hour intervals)",
                code="not_whole_hour",
                field=name,
            )
    if demand.latest_end <= demand.earliest_start:
        raise ValidationFailed(
            "must be after earliest_start", code="window_invalid", field="latest_end"
        )
    first = max(hour_index_ceil(demand.earliest_start), hour_index_ceil(now))
    if hour_index(demand.latest_end) <= hour_index_ceil(now):
        raise ValidationFailed("window already passed", code="window_in_past", field="latest_end")
    _within_horizon(demand.latest_end, "latest_end", now=now)
    if hour_index(demand.latest_end) - first < demand.duration_hours:
        raise ValidationFailed(
            "window cannot hold the duration", code="window_too_short", field="duration_hours"
        )
    if demand.locality_limit not in ("city", "metro", "region", "national"):
        raise ValidationFailed("unknown locality tier", field="locality_limit")
    if demand.split not in SplitScope.values:
        raise ValidationFailed("must be none, site or hub", code="invalid_split", field="split")
    _positive_int(demand.min_gpus_per_part, "min_gpus_per_part", MAX_GPUS)
    if demand.min_gpus_per_part > demand.gpu_count:
        raise ValidationFailed(
            "must be at most gpu_count", code="min_part_too_large", field="min_gpus_per_part"
        )
    _bill_storable(
        bill_amount(demand.gpu_count, demand.duration_hours, demand.max_price_per_gpu_hour),
        "max_price_per_gpu_hour",
    )


def _bill_storable(bill: Decimal, field: str) -> None:
    """Refuse (``bill_too_large``, naming ``field``) a ``bill`` (CNY) over ``MAX_BILL``, the
    largest the ledger stores."""
    if bill > MAX_BILL:
        raise ValidationFailed(
            f"the bill would be more than ¥{MAX_BILL:,}, the most a bill can hold",
            code="bill_too_large",
            field=field,
        )


@transaction.atomic
def demand_create(
    *,
    buyer: Organisation,
    user: User | None = None,
    accelerators: Iterable[str] = (),
    voucher: Voucher | None = None,
    now: datetime | None = None,
    enqueue_matching: bool = True,
    **fields: Any,
) -> Demand:
    """Post a demand for ``buyer`` and enqueue matching of its hub on commit.

    ``accelerators`` are names resolved to catalogue codes (empty = any model meeting
    ``min_memory_gb``/``min_tflops``). Times UTC; price CNY per GPU-hour. Raises
    ``ValidationFailed``/``NotFound`` naming the field; ``PermissionDenied`` for a non-buyer.
    ``enqueue_matching=False`` leaves matching to the next scheduled cycle (batch replays).
    """
    now = now or timezone.now()
    if not buyer.is_buyer:
        raise PermissionDenied("only buyers post demands", code="not_a_buyer")
    if buyer.status != Organisation.Status.APPROVED:
        raise PermissionDenied("organisation is not approved", code="organisation_not_approved")
    if buyer.home_site_id is None:
        raise ValidationFailed("organisation has no home site", code="no_home_site")
    resolved = accelerators_resolve(accelerators)
    if voucher is not None and voucher.owner_id != buyer.pk:
        raise NotFound("no such voucher", field="voucher")
    allowed = {f.name for f in Demand._meta.concrete_fields} - {
        "id",
        "buyer",
        "created_by",
        "origin_site",
        "voucher",
        "status",
        "unmatched_reason",
        "created_at",
    }
    demand = Demand(
        buyer=buyer,
        created_by=user,
        origin_site_id=buyer.home_site_id,
        voucher=voucher,
        **{k: v for k, v in fields.items() if k in allowed},
    )
    demand_check(demand, now=now)
    demand.save()
    demand.accelerators.set(resolved)
    if enqueue_matching:
        hub_id = Site.objects.filter(pk=buyer.home_site_id).values_list("hub_id", flat=True).get()
        _enqueue_match(hub_id)
    return demand


def _enqueue_match(hub_id: ObjectId) -> None:
    from .tasks import match_hub

    transaction.on_commit(lambda: match_hub.delay(str(hub_id)))


@transaction.atomic
def demand_cancel(*, demand_id: ObjectId, buyer: Organisation) -> Demand:
    """Cancel an open demand. Raises ``NotFound`` for another buyer's id, ``Conflict`` when
    the demand is not open (a matched demand is cancelled through its reservation)."""
    try:
        demand = Demand.objects.select_for_update().get(pk=demand_id, buyer=buyer)
    except (Demand.DoesNotExist, ValueError, MalformedId) as exc:  # a bad id is not there
        raise NotFound("no such demand", field="demand") from exc
    if demand.status != Demand.Status.OPEN:
        raise Conflict(f"demand is {demand.status}", code="illegal_transition")
    demand.status = Demand.Status.CANCELLED
    demand.save(update_fields=["status"])
    return demand


@transaction.atomic
def demands_expire(*, now: datetime | None = None) -> int:
    """Mark open demands whose window can no longer hold their duration ``expired``."""
    now = now or timezone.now()
    expired = 0
    for demand in (
        Demand.objects.select_for_update(skip_locked=True)
        .filter(status=Demand.Status.OPEN)
        .order_by("pk")
    ):
        first = max(hour_index_ceil(demand.earliest_start), hour_index_ceil(now))
        if hour_index(demand.latest_end) - first < demand.duration_hours:
            demand.status = Demand.Status.EXPIRED
            demand.unmatched_reason = demand.unmatched_reason or "window_passed"
            demand.save(update_fields=["status", "unmatched_reason"])
            expired += 1
    return expired


# --- Quote -----------------------------------------------------------------------------------


def quote(
    *,
    buyer: Organisation,
    offer: Offer,
    gpu_count: int,
    hours: int,
    voucher: Voucher | None = None,
    at: datetime | None = None,
    extra_lines: Iterable[tuple[str, Decimal]] = (),
) -> Split:
    """Bill and voucher/cash split (CNY) for ``gpu_count`` GPUs × ``hours`` on ``offer`` now,
    without holding anything, as the hold would split it (the offer's accelerator selects a
    share tier). ``extra_lines`` (``(category, amount CNY)``, categories of
    ``vouchers.models.BILL_CATEGORIES`` other than ``gpu_time``) are other items of the purchase
    split with it. ``Split.lines`` gives every line (``gpu_time`` first) with its eligible part;
    they add up to the bill and its parts exactly. ``Split.note`` says why a voucher does not
    apply. Raises ``ValidationFailed`` (fields ``gpu_count``, ``hours``, ``extra_lines``; code
    ``bill_too_large`` naming ``hours`` when the GPU time alone, or ``extra_lines`` when the
    whole bill, would pass ``MAX_BILL``) and ``NotFound`` (field ``voucher``)."""
    _positive_int(gpu_count, "gpu_count", MAX_GPUS)
    _positive_int(hours, "hours", MAX_HOURS)
    if gpu_count > offer.gpu_count:
        raise ValidationFailed(
            f"the offer lists {offer.gpu_count} GPUs", code="more_than_offered", field="gpu_count"
        )
    gpu_time = bill_amount(gpu_count, hours, offer.price_per_gpu_hour)
    _bill_storable(gpu_time, "hours")
    if voucher is not None and voucher.owner_id != buyer.pk:
        raise NotFound("no such voucher", field="voucher")
    lines = [BillLine("gpu_time", gpu_time)]
    for category, amount in extra_lines:
        if category not in BILL_CATEGORIES or category == "gpu_time":
            raise ValidationFailed(f"unknown bill category {category!r}", field="extra_lines")
        if any(line.category == category for line in lines):
            raise ValidationFailed("one line per category", field="extra_lines")
        lines.append(
            BillLine(
                category,
                _money_input(amount, "extra_lines", places=2, maximum=Decimal("1000000000")),
            )
        )
    bill = sum((line.amount for line in lines), ZERO)
    # The GPU time alone may fit while the extra lines carry the whole bill past what a bill
    # holds (the quote's amounts are 14 digits, as the ledger's).
    _bill_storable(bill, "extra_lines")
    return voucher_split(
        voucher,
        bill=bill,
        buyer=buyer,
        provider=offer.provider,
        site=offer.site,
        at=at or timezone.now(),
        accelerator=offer.accelerator,
        lines=lines,
    )


# --- Reservations ----------------------------------------------------------------------------


def _event(
    reservation: Reservation,
    from_status: str,
    to_status: str,
    actor: User | None = None,
    note: str = "",
) -> None:
    ReservationEvent.objects.create(
        reservation=reservation,
        from_status=from_status,
        to_status=to_status,
        actor=actor,
        note=note[:200],
    )


def _transition(
    reservation: Reservation, to_status: str, actor: User | None = None, note: str = ""
) -> None:
    if to_status not in Reservation.TRANSITIONS[reservation.status]:
        raise Conflict(
            f"reservation is {reservation.status}, cannot become {to_status}",
            code="illegal_transition",
        )
    from_status = reservation.status
    reservation.status = to_status
    reservation.save(update_fields=["status", "updated_at"])
    _event(reservation, from_status, to_status, actor, note)


# A concurrent hold used the programme budget or buyer cap this hold's split counted on.
_ProgrammeLimitsMoved = ProgrammeLimitsMoved


def reservation_create(
    *,
    demand_id: ObjectId,
    offer_id: ObjectId,
    start: datetime,
    now: datetime | None = None,
) -> Reservation:
    """Book ``offer`` for ``demand`` from ``start`` (whole UTC hour) for the demand's duration,
    holding capacity and funds together in one durable transaction (§4.4, §5.4).

    Under the demand and offer row locks: the pair must be feasible (model, price, window,
    min duration, different organisations, locality within the limit) and the offer's peak
    reserved GPUs over ``[start, end)`` plus the demand's must not pass ``gpu_count``. The
    bill's voucher part (§5.4) moves from the voucher and the cash part from the wallet into
    escrow. Raises ``Conflict`` (demand not open, ``capacity_exhausted``), ``ValidationFailed``
    (infeasible pair) or ``Unprocessable(code="insufficient_funds")``; nothing is written then.

    READ COMMITTED throughout, no SERIALIZABLE retries. Lock order: demand → offer → the
    offer's site and the demand's origin site (``FOR KEY SHARE``, by pk, in the demand and
    offer's statement; the tier is computed from their place as that lock reads it, see
    ``site_places_lock``: a site move waits for the hold, or the hold for the move) → the
    buyer's wallet and the voucher's ledger account (by pk) → the programme row (``FOR KEY
    SHARE``) → its usage rows (buyer, then budget) → escrow. On PostgreSQL the hold is five
    round trips with ``BEGIN`` and ``COMMIT`` (``marketplace.holdpath``); the programme's
    budget row and escrow (shared by every hold) are touched last, just before ``COMMIT``. The
    split reads the budget and cap left without a lock; the usage rows then grow only by a
    conditional update that keeps both limits. Only when a concurrent hold used what the split
    counted on (the last of a budget or cap) does the call run once more, then locking the
    programme row ``FOR UPDATE`` before the split (two more round trips).
    """
    now = now or timezone.now()
    try:
        return _reservation_create(demand_id, offer_id, start, now, programme_first=False)
    except _ProgrammeLimitsMoved:
        return _reservation_create(demand_id, offer_id, start, now, programme_first=True)


def _reservation_create(
    demand_id: ObjectId,
    offer_id: ObjectId,
    start: datetime,
    now: datetime,
    *,
    programme_first: bool,
) -> Reservation:
    with transaction.atomic(durable=True):
        if connection.vendor == "postgresql":
            return hold_write(
                demand_id,
                offer_id,
                start,
                now,
                programme_first=programme_first,
                pair_check=_pair_check,
                locality_check=reservation_locality_check,
            )
        return reservation_create_orm(demand_id, offer_id, start, now, programme_first)


def reservation_create_orm(
    demand_id: ObjectId, offer_id: ObjectId, start: datetime, now: datetime, programme_first: bool
) -> Reservation:
    """``reservation_create``'s hold through the ORM, inside the caller's transaction: the path of
    the embedded default (SQLite), and the reference the one-statement PostgreSQL path
    (``marketplace.holdpath``) is tested against — the same rules, the same rows. About twenty
    statements. Raises ``ProgrammeLimitsMoved`` as ``hold_write`` does."""
    demand = (
        Demand.objects.select_for_update(of=("self",))
        .select_related("buyer", "origin_site", "voucher__programme")
        .get(pk=demand_id)
    )
    if demand.status != Demand.Status.OPEN:
        raise Conflict(f"demand is {demand.status}", code="demand_not_open")
    listed = Demand.accelerators.through.objects.filter(demand_id=demand.pk)
    offer = (
        Offer.objects.select_for_update(of=("self",))
        .select_related("site", "provider", "accelerator")
        .annotate(
            model_listed=Exists(listed.filter(accelerator_id=OuterRef("accelerator_id"))),
            any_model=~Exists(listed),
        )
        .get(pk=offer_id)
    )
    site_places_lock([demand.origin_site, offer.site])
    end = start + demand.duration_hours * HOUR
    _pair_check(demand, offer, start, end, now)
    reservation_locality_check(demand, offer)
    if offer_peak_reserved(offer, start, end) + demand.gpu_count > offer.gpu_count:
        raise Conflict("no free capacity for the whole window", code="capacity_exhausted")
    voucher = demand.voucher
    if voucher is not None:
        voucher = Voucher.objects.select_related("programme").get(pk=voucher.pk)
        voucher_hold_lock(voucher, demand.buyer_id, programme=programme_first)
    return reservation_write(
        demand, offer, start, now, voucher=voucher, programme_locked=programme_first
    )


def reservation_parts_create(
    *,
    demand_id: ObjectId,
    parts: Sequence[tuple[ObjectId, int]],
    start: datetime,
    now: datetime | None = None,
) -> list[Reservation]:
    """Book a split demand (partial fills, §4): ``parts`` are ``(offer id, GPUs)``, one
    reservation each, all over ``[start, start + duration)`` (whole UTC hours), written with
    their payment holds in one durable transaction — all of them or none.

    The parts must add up to the demand's ``gpu_count``, lie inside its ``split`` scope (one
    site, or one hub), hold at least ``min_gpus_per_part`` each and number at most
    ``MAX_SPLIT_PARTS`` (``split_parts_check``); each (demand, offer) pair passes the rules of
    ``reservation_create`` for its own GPUs, and each offer's peak reserved GPUs plus its part
    stays within its ``gpu_count``. Each part is billed at its own offer's price and split
    between voucher and cash in the order given: the demand's voucher pays each part
    ``min(floor_fen(bill × max_share), what is left)`` (one voucher per reservation, §5.6).

    Raises ``NotFound`` (demand or an offer), ``Conflict`` (demand not open,
    ``capacity_exhausted``), ``ValidationFailed`` (a rule above, or of a pair) or
    ``Unprocessable(code="insufficient_funds")``; nothing is written then. Lock order as
    ``reservation_create``: demand → offers by pk → their sites and the demand's origin site
    (``site_places_lock``) → voucher → ledger accounts → programme.
    """
    now = now or timezone.now()
    try:
        return _reservation_parts_create(demand_id, parts, start, now, programme_first=False)
    except _ProgrammeLimitsMoved:
        return _reservation_parts_create(demand_id, parts, start, now, programme_first=True)


def _reservation_parts_create(
    demand_id: ObjectId,
    parts: Sequence[tuple[ObjectId, int]],
    start: datetime,
    now: datetime,
    *,
    programme_first: bool,
) -> list[Reservation]:
    with transaction.atomic(durable=True):
        try:
            demand = (
                Demand.objects.select_for_update(of=("self",))
                .select_related("buyer", "origin_site", "voucher__programme")
                .get(pk=demand_id)
            )
        except (Demand.DoesNotExist, ValueError, MalformedId) as exc:
            raise NotFound("no such demand", field="demand") from exc
        if demand.status != Demand.Status.OPEN:
            raise Conflict(f"demand is {demand.status}", code="demand_not_open")
        listed = Demand.accelerators.through.objects.filter(demand_id=demand.pk)
        try:
            offers = {
                str(o.pk): o
                for o in Offer.objects.select_for_update(of=("self",))
                .select_related("site", "provider", "accelerator")
                .annotate(
                    model_listed=Exists(listed.filter(accelerator_id=OuterRef("accelerator_id"))),
                    any_model=~Exists(listed),
                )
                .filter(pk__in=[offer_id for offer_id, _ in parts])
                .order_by("pk")
            }
        except (ValueError, MalformedId) as exc:
            raise NotFound("no such offer", field="offer") from exc
        site_places_lock([demand.origin_site, *(o.site for o in offers.values())])
        resolved: list[tuple[Offer, int]] = []
        for offer_id, gpus in parts:
            found = offers.get(str(offer_id))
            if found is None:
                raise NotFound("no such offer", field="offer")
            resolved.append((found, gpus))
        split_parts_check(demand, resolved)
        end = start + demand.duration_hours * HOUR
        for offer, gpus in resolved:
            _pair_check(demand, offer, start, end, now, gpus=gpus)
            reservation_locality_check(demand, offer)
            if offer_peak_reserved(offer, start, end) + gpus > offer.gpu_count:
                raise Conflict("no free capacity for the whole window", code="capacity_exhausted")
        voucher = demand.voucher
        if voucher is not None:
            # ``FOR NO KEY UPDATE``: a single hold in flight on this voucher checks its foreign
            # keys at COMMIT (``FOR KEY SHARE`` of the voucher row) after locking the wallet
            # waited for next; ``FOR UPDATE`` would block that check (a deadlock).
            voucher = (
                Voucher.objects.select_for_update(of=("self",), no_key=True)
                .select_related("programme")
                .get(pk=voucher.pk)
            )
            # The voucher's balance is read by the split: lock its account (single holds lock
            # the account, not the voucher row) — and with ``programme_first`` the programme.
            voucher_hold_lock(voucher, demand.buyer_id, programme=programme_first)
        return reservation_parts_write(
            demand, resolved, start, now, voucher=voucher, programme_locked=programme_first
        )


def split_parts_check(demand: Demand, parts: Sequence[tuple[Offer, int]]) -> None:
    """The rules of a split placement (partial fills, §4), raising ``ValidationFailed``:
    ``split_not_allowed`` (several parts for a demand whose ``split`` is ``none``),
    ``too_many_parts`` (over ``MAX_SPLIT_PARTS``), ``duplicate_offer`` (two parts on one
    offer), ``part_below_minimum`` (a part under ``min_gpus_per_part``, or under 1),
    ``parts_not_whole`` (the parts do not add up to ``gpu_count``) and ``split_outside_scope``
    (parts at two sites for ``site``, or in two hubs for ``hub``). ``offer.site`` is read."""
    if not parts:
        raise ValidationFailed("at least one part", code="parts_not_whole", field="parts")
    if len(parts) > 1 and demand.split == SplitScope.NONE:
        raise ValidationFailed(
            "the demand does not allow splitting", code="split_not_allowed", field="split"
        )
    if len(parts) > MAX_SPLIT_PARTS:
        raise ValidationFailed(
            f"at most {MAX_SPLIT_PARTS} parts", code="too_many_parts", field="parts"
        )
    if len({offer.pk for offer, _ in parts}) != len(parts):
        raise ValidationFailed("one part per offer", code="duplicate_offer", field="parts")
    least = demand.min_gpus_per_part if len(parts) > 1 else 1
    for _, gpus in parts:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < least:
            raise ValidationFailed(
                f"every part holds at least {least} GPUs", code="part_below_minimum", field="parts"
            )
    if sum(gpus for _, gpus in parts) != demand.gpu_count:
        raise ValidationFailed(
            f"the parts must add up to {demand.gpu_count} GPUs",
            code="parts_not_whole",
            field="parts",
        )
    if demand.split == SplitScope.SITE:
        spread = {offer.site_id for offer, _ in parts}
    else:
        spread = {offer.site.hub_id for offer, _ in parts}
    if len(spread) > 1:
        raise ValidationFailed(
            f"parts must all be in one {demand.split}", code="split_outside_scope", field="parts"
        )


def reservation_parts_write(
    demand: Demand,
    parts: Sequence[tuple[Offer, int]],
    start: datetime,
    now: datetime,
    *,
    voucher: Voucher | None,
    programme_locked: bool,
) -> list[Reservation]:
    """Write a checked split placement inside the caller's transaction: one
    ``reservation_write`` per ``(offer, GPUs)`` part, in order (the voucher pays them in that
    order). The caller holds the locks of ``reservation_write`` and checked every pair and its
    capacity; the split rules are checked here (``split_parts_check``). Raises as
    ``reservation_write``; the caller's atomic block then rolls every part back."""
    split_parts_check(demand, parts)
    return [
        reservation_write(
            demand,
            offer,
            start,
            now,
            voucher=voucher,
            programme_locked=programme_locked,
            gpus=gpus,
        )
        for offer, gpus in parts
    ]


def reservation_locality_check(demand: Demand, offer: Offer) -> str:
    """The offer's locality tier from the demand's home site; ``ValidationFailed(code=
    "outside_locality")`` past the demand's ``locality_limit`` (§4 hub docking)."""
    tier = tier_between(
        demand.origin_site.city,
        demand.origin_site.metro_area,
        demand.origin_site.hub_id,
        offer.site.city,
        offer.site.metro_area,
        offer.site.hub_id,
    )
    if tier_rank(tier) > tier_rank(demand.locality_limit):
        raise ValidationFailed("offer outside the demand's locality limit", code="outside_locality")
    return tier


def reservation_write(
    demand: Demand,
    offer: Offer,
    start: datetime,
    now: datetime,
    *,
    voucher: Voucher | None,
    programme_locked: bool,
    gpus: int | None = None,
) -> Reservation:
    """Write one checked match inside the caller's transaction: the reservation, its events,
    the inter-hub trade row, the demand's new status and the payment hold (§5.4 split).
    ``gpus``: the GPUs of one part of a split demand (``reservation_parts_write``); default the
    whole demand.

    The caller holds the demand, offer and voucher row locks and the sites' locks (their place
    read by ``site_places_lock``), checked the pair
    (``_pair_check``, ``reservation_locality_check``) and capacity. With ``programme_locked``
    the caller also holds the buyer's and voucher's ledger accounts and the programme row
    (``voucher_hold_lock``), so the split reads budget and cap under the lock; otherwise the
    limits are re-checked under the programme lock just before escrow and
    ``_ProgrammeLimitsMoved`` is raised if a concurrent hold used them. Raises
    ``Unprocessable(code="insufficient_funds")``; the caller's atomic block then rolls back.
    """
    end = start + demand.duration_hours * HOUR
    tier = reservation_locality_check(demand, offer)
    gpu_count = demand.gpu_count if gpus is None else gpus
    bill = bill_amount(gpu_count, demand.duration_hours, offer.price_per_gpu_hour)
    split = voucher_split(
        voucher,
        bill=bill,
        buyer=demand.buyer,
        provider=offer.provider,
        site=offer.site,
        at=now,
        accelerator=offer.accelerator,
    )
    status = Reservation.Status.HELD
    if demand.auto_accept:
        status = Reservation.Status.CONFIRMED
    reservation = Reservation.objects.create(
        demand=demand,
        offer=offer,
        buyer=demand.buyer,
        provider=offer.provider,
        start=start,
        end=end,
        gpu_count=gpu_count,
        price_per_gpu_hour=offer.price_per_gpu_hour,
        bill=bill,
        voucher=voucher if split.voucher_part > 0 else None,
        voucher_part=split.voucher_part,
        cash_part=split.cash_part,
        voucher_note=split.note,
        locality_tier=tier,
        status=status,
    )
    events = [
        ReservationEvent(
            reservation=reservation,
            from_status="",
            to_status=Reservation.Status.HELD,
            note=f"matched at tier {tier}",
        )
    ]
    if demand.auto_accept:
        events.append(
            ReservationEvent(
                reservation=reservation,
                from_status=Reservation.Status.HELD,
                to_status=Reservation.Status.CONFIRMED,
                note="auto-accepted",
            )
        )
    ReservationEvent.objects.bulk_create(events)
    if offer.site.hub_id != demand.origin_site.hub_id:
        InterHubTrade.objects.create(
            reservation=reservation,
            exporting_hub_id=offer.site.hub_id,
            importing_hub_id=demand.origin_site.hub_id,
            gpu_hours=reservation.gpu_hours,
            value=bill,
        )
    demand.status = Demand.Status.RESERVED if demand.auto_accept else Demand.Status.MATCHED
    demand.unmatched_reason = ""
    demand.save(update_fields=["status", "unmatched_reason"])

    year = programme_year(voucher.programme, now) if voucher and reservation.voucher_id else None

    def programme_usage() -> None:
        # The programme row KEY SHARE, then the buyer's and the budget's usage rows, growing
        # only while both stay within the limits (``vouchers.usage``); then escrow.
        assert voucher is not None and year is not None
        if usage_change(
            programme_id=voucher.programme_id,
            buyer_id=demand.buyer_id,
            year=year,
            amount=reservation.voucher_part,
        ):
            return
        if programme_locked:  # cannot happen: nobody can grow the usage under our lock
            raise Conflict("the programme's limits moved", code="programme_limits_moved")
        raise _ProgrammeLimitsMoved

    hold_place(
        reservation,
        mode=voucher.programme.redemption_mode if reservation.voucher else POINT_OF_SALE,  # type: ignore[union-attr]
        programme_year=year,
        before_hot=programme_usage if reservation.voucher_id else None,
    )
    return reservation


def _pair_check(
    demand: Demand,
    offer: Offer,
    start: datetime,
    end: datetime,
    now: datetime,
    gpus: int | None = None,
) -> None:
    """The rules of one (demand, offer) pair (§4.1) for ``gpus`` GPUs (default: the whole
    demand; a part of a split demand passes its own count)."""
    if offer.status != Offer.Status.ACTIVE:
        raise Conflict(f"offer is {offer.status}", code="offer_not_active")
    if offer.provider.status != Organisation.Status.APPROVED:
        raise Conflict("provider is not approved", code="provider_not_approved")
    if demand.buyer.status != Organisation.Status.APPROVED:
        raise Conflict("buyer is not approved", code="organisation_not_approved")
    if offer.provider_id == demand.buyer_id:
        raise ValidationFailed("an organisation cannot trade with itself", code="self_trade")
    if not is_whole_hour(start) or start < now:
        raise ValidationFailed("start must be a whole UTC hour, not in the past", field="start")
    if not (demand.earliest_start <= start and end <= demand.latest_end):
        raise ValidationFailed("outside the demand's window", code="outside_window")
    if not (offer.available_from <= start and end <= offer.available_until):
        raise ValidationFailed("outside the offer's availability", code="outside_window")
    if demand.duration_hours < offer.min_duration_hours:
        raise ValidationFailed("shorter than the offer's minimum", code="below_min_duration")
    if offer.price_per_gpu_hour > demand.max_price_per_gpu_hour:
        raise ValidationFailed("offer over the demand's price limit", code="over_price")
    if (demand.gpu_count if gpus is None else gpus) > offer.gpu_count:
        raise ValidationFailed("offer too small", code="capacity_exhausted")
    # A demand made before ``demand_check`` bounded its bill: refused here, pair by pair, so it
    # cannot make the database refuse every batch it is in.
    _bill_storable(
        bill_amount(
            demand.gpu_count if gpus is None else gpus,
            demand.duration_hours,
            offer.price_per_gpu_hour,
        ),
        "gpu_count",
    )
    # ``model_listed``/``any_model``: annotations of the offer's locked read (no extra query)
    if not (offer.any_model or offer.model_listed):  # type: ignore[attr-defined]
        raise ValidationFailed("accelerator not acceptable", code="model_mismatch")
    acc = offer.accelerator
    if demand.min_memory_gb and (acc.memory_gb or 0) < demand.min_memory_gb:
        raise ValidationFailed("accelerator memory too small", code="model_mismatch")
    if demand.min_tflops and (acc.bf16_tflops or 0) < demand.min_tflops:
        raise ValidationFailed("accelerator too slow", code="model_mismatch")


def _reservation_locked(
    reservation_id: ObjectId,
    *,
    buyer: Organisation | None = None,
    provider: Organisation | None = None,
) -> Reservation:
    qs = Reservation.objects.select_for_update()
    if buyer is not None:
        qs = qs.filter(buyer=buyer)
    if provider is not None:
        qs = qs.filter(provider=provider)
    try:
        return qs.get(pk=reservation_id)
    except (Reservation.DoesNotExist, ValueError, MalformedId) as exc:  # a bad id is not there
        raise NotFound("no such reservation", field="reservation") from exc


def _parts_locked(
    reservation_id: ObjectId, *, buyer: Organisation, statuses: Sequence[str]
) -> tuple[Reservation, list[Reservation]]:
    """Lock the demand of the buyer's reservation, then the reservation and the other parts of
    a split demand (the demand's reservations in ``statuses``), all by pk: demand before
    reservations, so two parts handled at once cannot deadlock. Returns ``(reservation, other
    parts)``; the other parts are empty for a whole demand. ``NotFound`` for anyone else's id."""
    try:
        demand_id = (
            Reservation.objects.filter(pk=reservation_id, buyer=buyer)
            .values_list("demand_id", flat=True)
            .get()
        )
    except (Reservation.DoesNotExist, ValueError, MalformedId) as exc:  # a bad id is not there
        raise NotFound("no such reservation", field="reservation") from exc
    Demand.objects.select_for_update().filter(pk=demand_id).values_list("pk").get()
    locked = list(
        Reservation.objects.select_for_update()
        .filter(Q(pk=reservation_id) | Q(demand_id=demand_id, status__in=statuses))
        .order_by("pk")
    )
    reservation = next(r for r in locked if str(r.pk) == str(reservation_id))
    return reservation, [r for r in locked if r.pk != reservation.pk]


def reservation_accept(
    *,
    reservation_id: ObjectId,
    buyer: Organisation,
    actor: User | None = None,
    now: datetime | None = None,
) -> Reservation:
    """The buyer accepts a ``held`` reservation (``held → confirmed``) within ``ACCEPT_TTL`` of
    the match. Raises ``Conflict(code="accept_ttl_passed")`` after the TTL (the reservation is
    expired and its hold released on the spot) and ``Conflict`` for any other state.

    A part of a split demand is accepted (or expired) together with the demand's other
    ``held`` parts: a demand is booked whole or not at all (partial fills, §4)."""
    with transaction.atomic(durable=True):
        reservation, others = _parts_locked(
            reservation_id, buyer=buyer, statuses=(Reservation.Status.HELD,)
        )
        late = (
            reservation.status == Reservation.Status.HELD
            and reservation.created_at <= (now or timezone.now()) - settings.ACCEPT_TTL
        )
        if late:
            for part in (reservation, *others):
                _expire_held(part)
        else:
            _transition(reservation, Reservation.Status.CONFIRMED, actor, "accepted")
            for part in others:
                _transition(
                    part, Reservation.Status.CONFIRMED, actor, f"accepted with {reservation.pk}"
                )
            Demand.objects.filter(pk=reservation.demand_id).update(status=Demand.Status.RESERVED)
    if late:
        raise Conflict("the time to accept has passed", code="accept_ttl_passed")
    return reservation


def _release(reservation: Reservation, fee: Decimal, reason: str) -> None:
    """Void the reservation's payment hold: the held parts return to voucher and wallet, less
    ``fee`` CNY taken from the cash part for the provider (``ledger.holds.hold_void``; vouchers
    pay for compute, not penalties). ``reason`` is the ``ledger.models.Refund.Kind``."""
    hold_void(reservation, kind=reason, fee=fee)


def cancellation_fee(reservation: Reservation, now: datetime) -> Decimal:
    """Fee in CNY for cancelling now: ``CANCEL_FEE_RATE`` × bill inside ``CANCEL_FEE_WINDOW``
    before the start, taken from the cash part only; zero before the window or for a reservation
    not yet confirmed."""
    if reservation.status != Reservation.Status.CONFIRMED:
        return ZERO
    if reservation.start - now > settings.CANCEL_FEE_WINDOW:
        return ZERO
    return min(quantize_money(reservation.bill * settings.CANCEL_FEE_RATE), reservation.cash_part)


def reservation_cancel(
    *,
    reservation_id: ObjectId,
    buyer: Organisation,
    actor: User | None = None,
    now: datetime | None = None,
) -> Reservation:
    """The buyer cancels before the start: everything held returns to voucher and wallet, less
    the cancellation fee inside ``CANCEL_FEE_WINDOW`` (§5.5). ``Conflict`` once started.

    Cancelling a part of a split demand cancels its other ``held``/``confirmed`` parts with it
    (they share the start), each with its own fee: a demand is booked whole or not at all."""
    now = now or timezone.now()
    with transaction.atomic(durable=True):
        reservation, others = _parts_locked(
            reservation_id,
            buyer=buyer,
            statuses=(Reservation.Status.HELD, Reservation.Status.CONFIRMED),
        )
        if reservation.start <= now:
            raise Conflict("reservation has started", code="already_started")
        if others:
            # The parts' voucher first (its row: the release of each part's voucher value
            # locks it, ``voucher_refund_account``), before any ledger account, as every hold
            # and the matcher's batch lock them: a voucher row after the wallet would deadlock
            # with a batch booking the same voucher.
            voucher_ids = {r.voucher_id for r in (reservation, *others) if r.voucher_id}
            list(
                Voucher.objects.select_for_update(no_key=True)
                .filter(pk__in=voucher_ids)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            # Fees go to each part's provider: lock the parties' accounts by pk before the
            # first posting (escrow, hot, comes after them in every posting). The voucher's
            # account with them, in the one pk order: a hold on the same voucher
            # (``reservation_create`` locks wallet and voucher account by pk, not the voucher
            # row) holding the lower of the two would otherwise wait for the wallet while the
            # first part's release waits for the voucher's account: a deadlock.
            list(
                Account.objects.select_for_update(no_key=True)  # as a balance change locks
                .filter(
                    Q(
                        kind=Account.Kind.PAYABLE,
                        organisation_id__in={r.provider_id for r in (reservation, *others)},
                    )
                    | Q(kind=Account.Kind.WALLET, organisation_id=reservation.buyer_id)
                    | Q(kind=Account.Kind.VOUCHER, voucher_id__in=voucher_ids)
                )
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        for part in (reservation, *others):
            fee = cancellation_fee(part, now)
            note = f"cancelled by buyer, fee {fee}"
            if part is not reservation:
                note += f", with {reservation.pk}"
            _transition(part, Reservation.Status.CANCELLED, actor, note)
            _release(part, fee, Refund.Kind.CANCELLATION)
        Demand.objects.filter(pk=reservation.demand_id).update(status=Demand.Status.CANCELLED)
    return reservation


def reservations_expire_unaccepted(*, now: datetime | None = None) -> int:
    """Expire ``held`` reservations older than ``ACCEPT_TTL`` and release their holds; the demand
    returns to ``open``. The ``held`` parts of a split demand expire together, in one
    transaction (a demand is never left half-booked). Safe to run twice (row locks, demand
    first then its reservations, ``skip_locked``). Returns the count of reservations expired."""
    now = now or timezone.now()
    count = 0
    demand_ids = list(
        Reservation.objects.filter(
            status=Reservation.Status.HELD, created_at__lte=now - settings.ACCEPT_TTL
        )
        .order_by("demand_id")
        .values_list("demand_id", flat=True)
        .distinct()
    )
    for demand_id in demand_ids:
        with transaction.atomic(durable=True):
            locked = (
                Demand.objects.select_for_update(skip_locked=True)
                .filter(pk=demand_id)
                .values_list("pk", flat=True)
            )
            if not list(locked):
                continue
            held = list(
                Reservation.objects.select_for_update(skip_locked=True)
                .filter(demand_id=demand_id, status=Reservation.Status.HELD)
                .order_by("pk")
            )
            if not any(r.created_at <= now - settings.ACCEPT_TTL for r in held):
                continue
            for reservation in held:
                _expire_held(reservation)
                count += 1
    return count


def _expire_held(reservation: Reservation) -> None:
    """``held → expired``: release the hold; the demand is open again for the next cycle."""
    _transition(reservation, Reservation.Status.EXPIRED, note="accept TTL passed")
    _release(reservation, ZERO, Refund.Kind.EXPIRY)
    Demand.objects.filter(pk=reservation.demand_id).update(status=Demand.Status.OPEN)


def reservations_advance(*, now: datetime | None = None) -> tuple[int, int]:
    """At hour boundaries: ``confirmed → active`` once started, ``active → completed`` once
    ended (delivered = all hours unless reported). Returns ``(activated, completed)``."""
    now = now or timezone.now()
    activated = completed = 0
    for rid in Reservation.objects.filter(
        status=Reservation.Status.CONFIRMED, start__lte=now
    ).values_list("pk", flat=True):
        with transaction.atomic(durable=True):
            r = (
                Reservation.objects.select_for_update(skip_locked=True)
                .filter(pk=rid, status=Reservation.Status.CONFIRMED)
                .first()
            )
            if r is not None:
                _transition(r, Reservation.Status.ACTIVE, note="start reached")
                activated += 1
    for rid in Reservation.objects.filter(
        status=Reservation.Status.ACTIVE, end__lte=now
    ).values_list("pk", flat=True):
        with transaction.atomic(durable=True):
            r = (
                Reservation.objects.select_for_update(skip_locked=True)
                .filter(pk=rid, status=Reservation.Status.ACTIVE)
                .first()
            )
            if r is not None:
                _complete(r, None, note="end reached")
                completed += 1
    return activated, completed


def _complete(
    reservation: Reservation,
    delivered_gpu_hours: int | None,
    *,
    actor: User | None = None,
    note: str = "",
) -> None:
    full = reservation.gpu_hours
    delivered = full if delivered_gpu_hours is None else delivered_gpu_hours
    if isinstance(delivered, bool) or not isinstance(delivered, int) or not 0 <= delivered <= full:
        raise ValidationFailed(f"must be between 0 and {full}", field="delivered_gpu_hours")
    reservation.delivered_gpu_hours = delivered
    reservation.save(update_fields=["delivered_gpu_hours"])
    _transition(reservation, Reservation.Status.COMPLETED, actor, note)


def reservation_report_usage(
    *,
    reservation_id: ObjectId,
    provider: Organisation,
    delivered_gpu_hours: int,
    actor: User | None = None,
    now: datetime | None = None,
) -> Reservation:
    """The provider reports delivered GPU-hours of an ``active`` reservation and completes it
    (early end or partial delivery). Undelivered hours are refunded at settlement."""
    with transaction.atomic(durable=True):
        reservation = _reservation_locked(reservation_id, provider=provider)
        if reservation.status != Reservation.Status.ACTIVE:
            raise Conflict(f"reservation is {reservation.status}", code="illegal_transition")
        _complete(reservation, delivered_gpu_hours, actor=actor, note="usage reported")
    return reservation


def reservation_settle(*, reservation_id: ObjectId) -> Reservation:
    """Settle a ``completed`` reservation (§5.5), exactly once.

    Billable = delivered GPU-hours × rate (half-up); the rest returns to voucher and wallet in
    the original proportion. Of the billable part, cash goes to the provider's payable less the
    platform fee (``PLATFORM_FEE_RATE`` of the billable amount, from the cash side) and the
    voucher part becomes a reimbursement claim on the programme. ``Conflict`` if not completed.
    """
    with transaction.atomic(durable=True):
        r = (
            Reservation.objects.select_for_update(of=("self",))
            .select_related("voucher")
            .get(pk=reservation_id)
        )
        if r.status != Reservation.Status.COMPLETED:
            raise Conflict(f"reservation is {r.status}", code="illegal_transition")
        delivered = r.gpu_hours if r.delivered_gpu_hours is None else r.delivered_gpu_hours
        billable = (
            r.bill if delivered == r.gpu_hours else bill_amount(1, delivered, r.price_per_gpu_hour)
        )
        _, paid_v = hold_post(r, billable=billable)
        if paid_v > 0 and r.voucher is not None:
            mode = Hold.objects.filter(reservation=r).values_list("mode", flat=True).get()
            ReimbursementClaim.objects.create(
                programme_id=r.voucher.programme_id,
                provider_id=r.provider_id,
                claimant_id=r.buyer_id if mode == REIMBURSEMENT else r.provider_id,
                mode=mode,
                reservation=r,
                voucher=r.voucher,
                amount=paid_v,
            )
        _transition(r, Reservation.Status.SETTLED, note=f"billable {billable}")
    return r


def reservation_refund(
    *,
    reservation_id: ObjectId,
    amount: Decimal,
    kind: str = Refund.Kind.DISPUTE,
    operator: User | None = None,
    memo: str = "",
) -> Refund:
    """An operator refunds ``amount`` CNY of a *settled* reservation (§5.5): a decision on a
    dispute (``kind="dispute"``) or a service-level credit (``"sla_credit"``).

    The value goes back to the voucher and the wallet in the reservation's original
    voucher:cash proportion, never more than each part still has paid
    (``ledger.holds.hold_refund``: cash from the provider's payable, voucher value from the
    claimant's claims, the voucher value leaving the programme year's usage). The voucher part
    refunded becomes a negative ``adjustment`` claim line dated now: it lands on the statement
    of the current period, so a refund after the original line's statement lowers the next
    statement instead of changing an issued one. Returns the ``Refund`` row.

    Raises ``ValidationFailed`` (field ``amount`` not positive CNY to the fen, field ``kind``),
    ``NotFound`` (field ``reservation``), ``Conflict(code="not_settled")`` unless settled,
    ``Conflict(code="refund_exceeds_paid")`` past what is left to refund — also when refunds
    race (they serialise on the reservation row, and the hold's CHECK constraints hold anyway)
    — and ``Unprocessable(code="insufficient_funds")`` when the provider's payable is short.
    """
    with transaction.atomic(durable=True):
        try:
            reservation = (
                Reservation.objects.select_for_update(of=("self",))
                .select_related("voucher")
                .get(pk=reservation_id)
            )
        except (Reservation.DoesNotExist, ValueError, MalformedId) as exc:
            raise NotFound("no such reservation", field="reservation") from exc
        return _refund_settled(reservation, amount, kind, operator, memo)


def _refund_settled(
    reservation: Reservation, amount: Any, kind: str, operator: User | None, memo: str
) -> Refund:
    """``reservation_refund`` under the reservation's row lock, inside the caller's block."""
    amount = _money_input(amount, "amount", places=2, maximum=Decimal("1000000000"))
    if kind not in Refund.AFTER_SETTLEMENT:
        raise ValidationFailed("must be dispute or sla_credit", field="kind")
    if reservation.status != Reservation.Status.SETTLED:
        raise Conflict(f"reservation is {reservation.status}, not settled", code="not_settled")
    refund, _ = hold_refund(reservation, amount=amount, kind=kind, actor=operator, memo=memo)
    if refund.voucher_amount:
        voucher = reservation.voucher
        assert voucher is not None
        mode = Hold.objects.filter(reservation=reservation).values_list("mode", flat=True).get()
        ReimbursementClaim.objects.create(
            kind=ReimbursementClaim.Kind.ADJUSTMENT,
            refund=refund,
            programme_id=voucher.programme_id,
            provider_id=reservation.provider_id,
            claimant_id=reservation.buyer_id if mode == REIMBURSEMENT else reservation.provider_id,
            mode=mode,
            reservation=reservation,
            voucher=voucher,
            amount=-refund.voucher_amount,
        )
    return refund


def reservation_fail(
    *, reservation_id: ObjectId, provider: Organisation, actor: User | None = None
) -> Reservation:
    """The provider cannot deliver a reservation not yet completed: all held funds return."""
    with transaction.atomic(durable=True):
        reservation = _reservation_locked(reservation_id, provider=provider)
        _transition(reservation, Reservation.Status.FAILED, actor, "provider failed")
        _release(reservation, ZERO, Refund.Kind.PROVIDER_FAILURE)
    return reservation


# --- Disputes --------------------------------------------------------------------------------

DISPUTABLE = ("active", "completed", "settled", "failed")


def dispute_open(
    *,
    reservation_id: ObjectId,
    organisation: Organisation,
    reason: str,
    user: User | None = None,
) -> Dispute:
    """The buyer or the provider of a reservation opens a dispute about it (§6.4).

    Raises ``NotFound`` when ``organisation`` is neither party (another organisation's id looks
    like no id at all), ``ValidationFailed`` (field ``reason``) for a blank or over-long reason,
    ``Conflict(code="not_disputable")`` before the reservation started or after it was
    cancelled/expired, and ``Conflict(code="dispute_open")`` while one is already open.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("must not be blank", field="reason")
    if len(reason) > 1000:
        raise ValidationFailed("at most 1000 characters", field="reason")
    with transaction.atomic(durable=True):
        try:
            reservation = (
                Reservation.objects.select_for_update()
                .filter(Q(buyer=organisation) | Q(provider=organisation))
                .get(pk=reservation_id)
            )
        except (Reservation.DoesNotExist, ValueError, MalformedId) as exc:
            raise NotFound("no such reservation", field="reservation") from exc
        if reservation.status not in DISPUTABLE:
            raise Conflict(
                f"a {reservation.status} reservation cannot be disputed", code="not_disputable"
            )
        if reservation.disputes.filter(status=Dispute.Status.OPEN).exists():
            raise Conflict("a dispute is already open", code="dispute_open")
        return Dispute.objects.create(
            reservation=reservation, opened_by=organisation, opened_by_user=user, reason=reason
        )


def dispute_decide(
    *,
    dispute_id: ObjectId,
    outcome: str,
    operator: User | None = None,
    resolution: str = "",
    refund: Decimal | None = None,
) -> Dispute:
    """An operator closes an open dispute as ``resolved`` or ``rejected`` with a note.

    ``refund`` (CNY, resolved disputes of settled reservations only) refunds that much of the
    reservation in the same transaction (``reservation_refund`` with ``kind="dispute"``).
    Raises ``ValidationFailed`` (field ``outcome``, or ``refund`` on a rejection),
    ``Conflict(code="illegal_transition")`` when the dispute is no longer open, and what
    ``reservation_refund`` raises. Lock order: dispute → reservation.
    """
    if outcome not in (Dispute.Status.RESOLVED, Dispute.Status.REJECTED):
        raise ValidationFailed("must be resolved or rejected", field="outcome")
    if refund is not None and outcome != Dispute.Status.RESOLVED:
        raise ValidationFailed("only a resolved dispute refunds", field="refund")
    with transaction.atomic(durable=True):
        try:
            dispute = Dispute.objects.select_for_update().get(pk=dispute_id)
        except (Dispute.DoesNotExist, ValueError, MalformedId) as exc:
            raise NotFound("no such dispute", field="dispute") from exc
        if dispute.status != Dispute.Status.OPEN:
            raise Conflict(f"dispute is {dispute.status}", code="illegal_transition")
        if refund is not None:
            reservation = (
                Reservation.objects.select_for_update(of=("self",))
                .select_related("voucher")
                .get(pk=dispute.reservation_id)
            )
            _refund_settled(
                reservation, refund, Refund.Kind.DISPUTE, operator, f"dispute {dispute.pk}"
            )
        dispute.status = outcome
        dispute.resolution = resolution[:500]
        dispute.resolved_by = operator
        dispute.resolved_at = timezone.now()
        dispute.save(update_fields=["status", "resolution", "resolved_by", "resolved_at"])
    return dispute
