"""Reads for the web UI, the provider console pages and the operator dashboard.

Each returns rows with what its page shows already joined, so a page costs a fixed number of
queries whatever the row count. Amounts CNY (``Decimal``), GPU-hours integers, times UTC.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Cast, Coalesce, Round, TruncDate, TruncMonth
from django.utils import timezone

from accounts.models import Organisation
from ledger.holds import REIMBURSEMENT
from ledger.models import Account, Entry, Refund
from marketplace.locality import tier_between, tier_rank
from marketplace.models import (
    Demand,
    Dispute,
    Hub,
    InterHubTrade,
    Offer,
    Reservation,
    ReservationEvent,
)
from marketplace.selectors import hub_list, offer_search
from vouchers.models import Programme, ProgrammeUsage, ReimbursementClaim, Voucher
from vouchers.services import programme_year

SHANGHAI = ZoneInfo("Asia/Shanghai")
ZERO = Decimal("0.00")
OPEN_DEMAND = (Demand.Status.OPEN, Demand.Status.MATCHED)
CURRENT_RESERVATION = (
    Reservation.Status.HELD,
    Reservation.Status.CONFIRMED,
    Reservation.Status.ACTIVE,
)


def _reservations() -> QuerySet[Reservation]:
    return Reservation.objects.select_related(
        "offer__site__hub", "offer__accelerator", "provider", "voucher__programme"
    )


def open_demands(*, buyer: Organisation) -> QuerySet[Demand]:
    """The buyer's demands still waiting (open or matched), newest first."""
    return (
        Demand.objects.filter(buyer=buyer, status__in=OPEN_DEMAND)
        .prefetch_related("accelerators")
        .order_by("-created_at", "-id")
    )


def current_reservations(*, buyer: Organisation) -> QuerySet[Reservation]:
    """The buyer's upcoming and active reservations (held, confirmed, active), by start."""
    return (
        _reservations().filter(buyer=buyer, status__in=CURRENT_RESERVATION).order_by("start", "id")
    )


def buyer_reservations(*, buyer: Organisation) -> QuerySet[Reservation]:
    """All the buyer's reservations, newest start first."""
    return _reservations().filter(buyer=buyer).order_by("-start", "-id")


def buyer_reservation_get(*, buyer: Organisation, reservation_id: Any) -> Reservation | None:
    """One of the buyer's reservations with offer, site, provider and voucher joined."""
    from marketplace.selectors import as_uuid

    pk = as_uuid(reservation_id)
    return None if pk is None else _reservations().filter(buyer=buyer, pk=pk).first()


def reservation_events(reservation: Reservation) -> QuerySet[ReservationEvent]:
    """The reservation's status-change events (its timeline), oldest first (times UTC)."""
    return reservation.events.order_by("at", "id")


def spend_by_month(*, buyer: Organisation) -> list[tuple[str, Decimal, Decimal]]:
    """``[(YYYY-MM, voucher part, cash part)]`` of the buyer's reservations that hold or used
    capacity, by start month in Asia/Shanghai, oldest first (CNY)."""
    rows = (
        Reservation.objects.filter(buyer=buyer, status__in=Reservation.CAPACITY_STATUSES)
        .annotate(month=TruncMonth("start", tzinfo=SHANGHAI))
        .values("month")
        .annotate(voucher=Sum("voucher_part"), cash=Sum("cash_part"))
        .order_by("month")
    )
    return [(r["month"].strftime("%Y-%m"), r["voucher"], r["cash"]) for r in rows]


def statement(*, organisation: Organisation) -> QuerySet[Entry]:
    """The organisation's ledger entries (wallet, payable, claims, its vouchers), newest first."""
    from ledger.selectors import entry_list

    return entry_list(organisation=organisation).select_related("account__voucher__programme")


# --- Offer search --------------------------------------------------------------------------

SORTS = {
    "price": ("price_per_gpu_hour", "created_at", "id"),
    "-price": ("-price_per_gpu_hour", "created_at", "id"),
    "gpus": ("-gpu_count", "price_per_gpu_hour", "id"),
    "start": ("available_from", "price_per_gpu_hour", "id"),
}


def offers_filtered(
    *,
    home: Any | None,
    accelerator: Any = None,
    hub: Any = None,
    tier: str = "",
    max_price: Decimal | None = None,
    min_gpus: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    sort: str = "price",
) -> QuerySet[Offer]:
    """Active offers matching every given filter (already validated), sorted by ``sort``.

    ``tier`` keeps offers within that locality tier of ``home`` (a site): ``city`` same city,
    ``metro`` same metro area, ``region`` same hub, ``national`` any.
    """
    qs = offer_search()
    if accelerator is not None:
        qs = qs.filter(accelerator=accelerator)
    if hub is not None:
        qs = qs.filter(site__hub=hub)
    if tier and home is not None:
        if tier == "city":
            qs = qs.filter(site__hub_id=home.hub_id, site__city=home.city)
        elif tier == "metro":
            qs = qs.filter(site__hub_id=home.hub_id, site__metro_area=home.metro_area)
        elif tier == "region":
            qs = qs.filter(site__hub_id=home.hub_id)
    if max_price is not None:
        qs = qs.filter(price_per_gpu_hour__lte=max_price)
    if min_gpus is not None:
        qs = qs.filter(gpu_count__gte=min_gpus)
    if start is not None:
        qs = qs.filter(available_from__lte=start, available_until__gt=start)
    if end is not None:
        qs = qs.filter(available_until__gte=end, available_from__lt=end)
    return qs.order_by(*SORTS[sort])


def quote_candidate(
    *,
    buyer: Organisation,
    accelerators: list[Any],
    gpu_count: int,
    max_price: Decimal,
    locality_limit: str,
) -> Offer | None:
    """The cheapest active offer a demand with these fields could be matched to, ignoring
    time-shaped capacity: an acceptable model, price within the limit, enough GPUs, within
    the locality limit from the buyer's home site, not the buyer's own. The live quote on the
    demand form prices the demand on it; the matcher may still choose another."""
    home = buyer.home_site
    qs = offer_search().filter(price_per_gpu_hour__lte=max_price, gpu_count__gte=gpu_count)
    qs = qs.exclude(provider=buyer)
    if accelerators:
        qs = qs.filter(accelerator__code__in=accelerators)
    limit = tier_rank(locality_limit)
    for offer in qs.order_by("price_per_gpu_hour", "created_at", "id")[:200]:
        if home is None:
            return offer
        site = offer.site
        tier = tier_between(
            home.city, home.metro_area, home.hub_id, site.city, site.metro_area, site.hub_id
        )
        if tier_rank(tier) <= limit:
            return offer
    return None


# --- Provider console ----------------------------------------------------------------------


def provider_usage(*, provider: Organisation) -> QuerySet[Reservation]:
    """Reservations on the provider's capacity that have delivered (completed or settled), with
    booked vs delivered GPU-hours; newest end first."""
    return (
        Reservation.objects.filter(
            provider=provider,
            status__in=(Reservation.Status.COMPLETED, Reservation.Status.SETTLED),
        )
        .select_related("buyer", "offer__site", "offer__accelerator")
        .order_by("-end", "-id")
    )


def provider_payouts(*, provider: Organisation) -> QuerySet[Entry]:
    """Entries on the provider's payable account (settlements, fees, payouts), newest first."""
    return (
        Entry.objects.filter(account__organisation=provider, account__kind=Account.Kind.PAYABLE)
        .select_related("transaction", "transaction__reservation")
        .order_by("-transaction__created_at", "-id")
    )


def provider_claims(*, provider: Organisation) -> QuerySet[ReimbursementClaim]:
    """The provider's reimbursement claims on programmes, newest first."""
    return (
        ReimbursementClaim.objects.filter(provider=provider)
        .select_related("programme", "reservation")
        .order_by("-created_at", "-id")
    )


@dataclass(frozen=True)
class Utilisation:
    """One offer's row of ``provider_utilisation``: reserved GPU-hours per day (labels
    ``MM-DD``, Asia/Shanghai), its daily capacity in GPU-hours and the most GPUs reserved in
    any hour of the period."""

    offer: Offer
    days: list[str]
    reserved_gpu_hours: list[Decimal]
    capacity_gpu_hours: int
    peak_reserved: int


def provider_utilisation(
    *, provider: Organisation, day_from: datetime, days: int
) -> list[Utilisation]:
    """Per offer, reserved GPU-hours on each of ``days`` days (Asia/Shanghai) from ``day_from``
    (a Shanghai midnight), against the offer's daily capacity (``gpu_count × 24``). Two
    queries: offers and the reservations overlapping the period."""
    from datetime import timedelta

    end = day_from + timedelta(days=days)
    offers = list(
        Offer.objects.filter(provider=provider)
        .select_related("site", "accelerator")
        .order_by("created_at", "id")
    )
    per: dict[Any, list[Decimal]] = {o.pk: [Decimal(0)] * days for o in offers}
    peak: dict[Any, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for offer_id, start, stop, gpus in Reservation.objects.filter(
        offer__provider=provider,
        status__in=Reservation.CAPACITY_STATUSES,
        start__lt=end,
        end__gt=day_from,
    ).values_list("offer_id", "start", "end", "gpu_count"):
        hour = max(start, day_from)
        while hour < min(stop, end):
            index = int((hour - day_from).total_seconds() // 86400)
            per[offer_id][index] += gpus
            peak[offer_id][int(hour.timestamp() // 3600)] += gpus
            hour += timedelta(hours=1)
    labels = [
        (day_from + timedelta(days=i)).astimezone(SHANGHAI).strftime("%m-%d") for i in range(days)
    ]
    return [
        Utilisation(
            offer=o,
            days=labels,
            reserved_gpu_hours=per[o.pk],
            capacity_gpu_hours=o.gpu_count * 24,
            peak_reserved=max(peak[o.pk].values(), default=0),
        )
        for o in offers
    ]


# --- Operator dashboard --------------------------------------------------------------------


@dataclass(frozen=True)
class ProgrammeBudget:
    """One programme's row of ``programme_budgets`` (amounts in CNY)."""

    programme: Programme
    used_this_year: Decimal
    issued: Decimal
    held: Decimal
    redeemed: Decimal
    left: Decimal


def programme_budgets(now: datetime | None = None) -> list[ProgrammeBudget]:
    """Per programme, in CNY: voucher value used in the current programme year against the
    annual budget (the usage counter holds are checked against, ``vouchers.ProgrammeUsage``:
    held plus redeemed, less refunds), face value of vouchers issued, voucher parts currently
    held in escrow (held/confirmed/active/completed reservations), redeemed (settled
    reservations' reimbursement claims) and budget left (the programme budget account's
    balance). ``now`` (UTC, default the current time) picks each programme's year."""
    now = now or timezone.now()
    programmes = list(Programme.objects.order_by("code"))
    used = {
        (programme_id, year): amount
        for programme_id, year, amount in ProgrammeUsage.objects.filter(
            buyer__isnull=True
        ).values_list("programme_id", "year", "used")
    }
    issued = dict(
        Voucher.objects.values_list("programme_id").annotate(s=Sum("face_value")).order_by()
    )
    held = dict(
        Reservation.objects.filter(
            status__in=("held", "confirmed", "active", "completed"), voucher__isnull=False
        )
        .values_list("voucher__programme_id")
        .annotate(s=Sum("voucher_part"))
        .order_by()
    )
    redeemed = dict(
        ReimbursementClaim.objects.values_list("programme_id").annotate(s=Sum("amount")).order_by()
    )
    left = dict(
        Account.objects.filter(kind=Account.Kind.PROGRAMME).values_list("programme_id", "balance")
    )
    return [
        ProgrammeBudget(
            p,
            used.get((p.pk, programme_year(p, now)), ZERO),
            issued.get(p.pk) or ZERO,
            held.get(p.pk) or ZERO,
            redeemed.get(p.pk) or ZERO,
            left.get(p.pk, ZERO),
        )
        for p in programmes
    ]


def vouchers_by_status() -> list[tuple[str, int, Decimal]]:
    """``[(status, count, face value CNY)]`` of all vouchers."""
    rows = Voucher.objects.values("status").annotate(n=Count("id"), s=Sum("face_value"))
    return [(r["status"], r["n"], r["s"]) for r in rows.order_by("status")]


def gpu_hours_by_hub_day(
    *, since: datetime
) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    """GPU-hours matched (reservations created since ``since``, an aware datetime, that hold or
    used capacity: their booked GPUs × hours), by the offer's hub and the creation day in
    Asia/Shanghai: ``(days YYYY-MM-DD, hub names, {(day, hub name): GPU-hours})``."""
    rows = (
        Reservation.objects.filter(created_at__gte=since, status__in=Reservation.CAPACITY_STATUSES)
        .annotate(day=TruncDate("created_at", tzinfo=SHANGHAI))
        .values_list("day", "offer__site__hub__name", "gpu_count", "start", "end")
        .order_by("day")
    )
    cells: dict[tuple[str, str], int] = defaultdict(int)
    days: list[str] = []
    hubs: set[str] = set()
    for day_value, hub, gpus, start, end in rows.iterator(chunk_size=5000):
        day = day_value.strftime("%Y-%m-%d")
        if day not in days:
            days.append(day)
        hubs.add(hub)
        cells[(day, hub)] += gpus * int((end - start).total_seconds() // 3600)
    return days, sorted(hubs), dict(cells)


# Reservations whose inter-hub trade the matrix counts: the booking stands (held, confirmed,
# active) or was delivered (completed, settled). A cancelled, expired or failed reservation
# returned its hold, so its trade row (written with the hold, never changed) traded nothing.
TRADE_COUNTED = Reservation.CAPACITY_STATUSES
# Offer prices have 4 decimal places: price × 10,000 is an exact integer.
_PRICE_UNITS_PER_CNY = 10_000
# A completed or settled reservation that delivered fewer GPU-hours than it booked.
_SHORT_DELIVERY = Q(
    reservation__status__in=(Reservation.Status.COMPLETED, Reservation.Status.SETTLED),
    reservation__delivered_gpu_hours__lt=F("gpu_hours"),
)


def _trade_value_fen() -> CombinedExpression:
    """Per trade row, the value counted, in fen (an integer, so the sums are exact on every
    backend: SQLite's decimal arithmetic is binary floating point). As ``reservation_settle``:
    the booked value (the bill) unless a completed or settled reservation delivered fewer
    GPU-hours than booked; then ``bill_amount(1, delivered, price)``, i.e. delivered ×
    price in ten-thousandths of a CNY, rounded half-up to the fen by ``(n + 50) div 100``;
    less what was refunded after settlement (``_refunded_after_fen``)."""
    price_units = Cast(
        Round(F("reservation__price_per_gpu_hour") * _PRICE_UNITS_PER_CNY), BigIntegerField()
    )
    billable = ExpressionWrapper(
        (F("reservation__delivered_gpu_hours") * price_units + 50) / 100,
        output_field=BigIntegerField(),
    )
    booked = Cast(Round(F("value") * 100), BigIntegerField())
    return Case(When(_SHORT_DELIVERY, then=billable), default=booked) - _refunded_after_fen()


def _refunded_after_fen() -> Coalesce:
    """Per trade row, in fen: what operators refunded of its reservation after settlement
    (``Refund.AFTER_SETTLEMENT``: dispute decisions, service-level credits; §5.5), voucher
    and cash parts together — under a ``reimbursement`` programme the cash part alone, which
    is the whole refund there (the buyer paid the bill in cash; the voucher part only takes
    back its claim, ``ledger.holds.hold_refund``); 0 without such a refund. Refunds before
    settlement (a cancellation, an expiry, a short delivery) are already outside the value
    counted."""
    refunded = Case(
        When(hold__mode=REIMBURSEMENT, then=F("cash_amount")),
        default=F("voucher_amount") + F("cash_amount"),
    )
    refunds = (
        Refund.objects.filter(
            hold__reservation=OuterRef("reservation"), kind__in=Refund.AFTER_SETTLEMENT
        )
        .order_by()
        .values("hold__reservation")
        .annotate(fen=Sum(Cast(Round(refunded * 100), BigIntegerField())))
        .values("fen")
    )
    return Coalesce(Subquery(refunds, output_field=BigIntegerField()), Value(0))


def trade_matrix(
    trades: QuerySet[InterHubTrade] | None = None,
) -> tuple[list[Hub], dict[tuple[Any, Any], tuple[int, Decimal, int]]]:
    """What was traded between hubs (PRODUCT.md §4 hub docking), summed by (exporting hub pk,
    importing hub pk): ``(GPU-hours, value CNY, trades)``; all hubs by code. Pairs without a
    counted trade are absent. Two queries.

    ``trades``: the trade rows to count (default all; the API and admin pass them filtered by
    ``InterHubTradeFilter``). Of those, only trades of reservations in ``TRADE_COUNTED``
    count:

    * ``held``, ``confirmed``, ``active``: the booked GPU-hours and value (the bill);
    * ``completed``, ``settled``: the delivered GPU-hours and the billable value, exactly as
      ``reservation_settle`` computes it: the bill when all booked GPU-hours were delivered,
      otherwise ``bill_amount(1, delivered, price_per_gpu_hour)`` (half-up to the fen, §5.5);
      a reservation that delivered nothing counts as a trade of 0 GPU-hours and ¥0.00;
    * ``cancelled``, ``expired``, ``failed``: left out (the hold went back, PRODUCT.md §5.3).

    Refunds operators decide after settlement (disputes, service-level credits) are subtracted
    from the value (not from the GPU-hours, which were delivered).
    """
    hubs = list(hub_list())
    trades = InterHubTrade.objects.all() if trades is None else trades
    gpu_hours = Case(
        When(_SHORT_DELIVERY, then=F("reservation__delivered_gpu_hours")),
        default=F("gpu_hours"),
        output_field=IntegerField(),
    )
    rows = (
        trades.filter(reservation__status__in=TRADE_COUNTED)
        .values("exporting_hub", "importing_hub")
        .annotate(gh=Sum(gpu_hours), fen=Sum(_trade_value_fen()), n=Count("id"))
        .order_by()
    )
    cells = {
        (r["exporting_hub"], r["importing_hub"]): (
            int(r["gh"]),
            Decimal(int(r["fen"])).scaleb(-2),
            r["n"],
        )
        for r in rows
    }
    return hubs, cells


def inter_hub_trade_matrix(trades: QuerySet[InterHubTrade] | None = None) -> dict[str, Any]:
    """The exporting × importing hub matrix of what was traded between hubs (PRODUCT.md §4 hub
    docking) over ``trades`` (default all): ``{"hubs": [{id, code, name}], "cells":
    [{exporting_hub, importing_hub (codes), trades, gpu_hours, value (CNY)}], "trades",
    "gpu_hours", "value"}``, from ``trade_matrix`` (which reservations count and at what
    GPU-hours and value), cells ordered by exporting then importing code. The API's answer
    and the demo report's matrix."""
    hubs, cells = trade_matrix(trades)
    code = {h.pk: h.code for h in hubs}
    rows = sorted(
        (
            {
                "exporting_hub": code[exp],
                "importing_hub": code[imp],
                "trades": n,
                "gpu_hours": gh,
                "value": value,
            }
            for (exp, imp), (gh, value, n) in cells.items()
        ),
        key=lambda c: (c["exporting_hub"], c["importing_hub"]),
    )
    return {
        "hubs": [{"id": h.pk, "code": h.code, "name": h.name} for h in hubs],
        "cells": rows,
        "trades": sum(n for _, _, n in cells.values()),
        "gpu_hours": sum(gh for gh, _, _ in cells.values()),
        "value": sum((v for _, v, _ in cells.values()), Decimal("0.00")),
    }


def unserved_by_reason() -> list[tuple[str, int]]:
    """Open or expired demands that carry an unmatched reason, counted by reason."""
    rows = (
        Demand.objects.filter(status__in=(Demand.Status.OPEN, Demand.Status.EXPIRED))
        .exclude(unmatched_reason="")
        .values("unmatched_reason")
        .annotate(n=Count("id"))
        .order_by("-n", "unmatched_reason")
    )
    return [(r["unmatched_reason"], r["n"]) for r in rows]


def demand_counts(*, organisation: Organisation) -> dict[str, int]:
    """The organisation's demands counted by status (``{status: count}``, statuses with none
    absent). One query."""
    rows = Demand.objects.filter(buyer=organisation).values("status").annotate(n=Count("id"))
    return {r["status"]: r["n"] for r in rows.order_by()}


@dataclass(frozen=True)
class ReservationMoney:
    """What a reservation's ledger transactions charged and gave back, CNY: the cancellation
    fee taken from the cash part, and the refunds to the voucher and to the wallet."""

    fee: Decimal
    refund_voucher: Decimal
    refund_cash: Decimal

    @property
    def any(self) -> bool:
        """Whether there is any fee or refund to show."""
        return bool(self.fee or self.refund_voucher or self.refund_cash)


def reservation_money(reservation: Reservation) -> ReservationMoney:
    """The fee charged and the refunds of ``reservation`` from its ledger (two queries): the
    ``cancel_fee`` transactions' amount leaving escrow and the hold's ``Refund`` rows."""
    from ledger.models import Refund, Transaction

    fee = Entry.objects.filter(
        transaction__reservation=reservation,
        transaction__reason=Transaction.Reason.CANCEL_FEE,
        amount__gt=0,
    ).aggregate(s=Sum("amount"))["s"]
    refunds = Refund.objects.filter(hold__reservation=reservation).aggregate(
        v=Sum("voucher_amount"), c=Sum("cash_amount")
    )
    return ReservationMoney(fee or ZERO, refunds["v"] or ZERO, refunds["c"] or ZERO)


def offers_peak_reserved(offer_ids: list[Any]) -> dict[Any, int]:
    """Per offer id, the most GPUs reserved at any hour over all time (as
    ``marketplace.services.offer_peak_reserved`` without a window), for a page of offers in one
    query: the capacity-holding reservations of all of them, swept per offer."""
    from marketplace.timeutil import hour_index

    deltas: dict[Any, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for offer_id, start, end, gpus in Reservation.objects.filter(
        offer_id__in=offer_ids, status__in=Reservation.CAPACITY_STATUSES
    ).values_list("offer_id", "start", "end", "gpu_count"):
        deltas[offer_id][hour_index(start)] += gpus
        deltas[offer_id][hour_index(end)] -= gpus
    peaks: dict[Any, int] = {}
    for offer_id in offer_ids:
        peak = running = 0
        for hour in sorted(deltas[offer_id]):
            running += deltas[offer_id][hour]
            peak = max(peak, running)
        peaks[offer_id] = peak
    return peaks


def open_disputes() -> QuerySet[Dispute]:
    """Open disputes, oldest first, with the organisation that opened each."""
    return (
        Dispute.objects.filter(status=Dispute.Status.OPEN)
        .select_related("opened_by")
        .order_by("created_at", "id")
    )


def reservation_disputes(reservation: Reservation) -> list[Dispute]:
    """The disputes of one reservation, newest first."""
    return list(reservation.disputes.select_related("opened_by").order_by("-created_at", "id"))
