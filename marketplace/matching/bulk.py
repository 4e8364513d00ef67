"""The bulk write path of a matching cycle: the engine's matches written in batches
(``MATCH_WRITE_BATCH`` per transaction) with a fixed number of statements per batch, not per
match, under the rules of ``marketplace.services.reservation_create`` (PRODUCT.md §4.4, §5.4)
and with its lock order and concurrency protocol.

Per batch, in one durable transaction, READ COMMITTED:

1. lock, one ``SELECT … FOR UPDATE`` per table, in the service layer's order: the demands (by
   pk) → the offers (by pk) → the offers' sites and the demands' origin sites (``FOR KEY
   SHARE``, by pk: ``site_places_lock``, whose place the tiers are computed from) → the
   demands' vouchers (by pk) → the buyers' wallets and the vouchers' ledger accounts (by pk).
   Nothing a check reads from these is read unlocked.
2. read what the checks need: the demands' accepted models, the GPUs reserved per hour on the
   locked offers, and for voucher demands the split's facts (``vouchers.bulk.SplitFacts``:
   programme budget and buyer cap used, catalogue, region, tiers, related organisations) —
   the budget and cap used without the programme locks, as ``reservation_create`` reads them.
3. check each pair in order in memory against the locked rows, exactly as one
   ``reservation_create`` call per pair in the same order would (demand open, pair feasible,
   locality, capacity, the §5.4 split, funds), booking each accepted pair's capacity, demand
   status, wallet and voucher balance and programme limits in memory so the next pair sees
   them. A refused pair is dropped with the code ``reservation_create`` would raise; its
   demand keeps the reason.
4. write the accepted pairs with one ``COPY`` each (``marketplace.bulkrows.rows_insert``;
   ``bulk_create`` on SQLite) for reservations, their events, inter-hub trades, payment holds,
   HOLD ledger transactions and their entries; one balance UPDATE for every wallet and voucher
   account of the batch; then the programme rows of the batch's voucher holds are locked (by
   pk; shared by every voucher hold of a programme, so last) and the batch's voucher parts
   grow the programmes' usage rows — each buyer's, then each budget — only if every one stays
   within its limit (``vouchers.usage.usage_book``, one statement); then one UPDATE of escrow,
   the hottest row, last (``ledger.bulk.transactions_post_bulk``). The CHECK
   constraints still refuse a negative balance; the copied rows' foreign keys are checked at
   the end of each COPY (``SET CONSTRAINTS ALL IMMEDIATE``) instead of at COMMIT; the entries'
   immutability trigger is untouched (inserts only).

When concurrent holds used what the splits counted on (the last of a budget or cap), the
batch rolls back and runs once more with the programme rows locked in step 1, after the
accounts, as ``reservation_create`` retries with ``programme_first``. About 25 statements a
batch whatever its size, against about 9 a reservation one by one. Should the database still
refuse a batch (a rule it holds that the checks do not model), the batch rolls back and its
pairs are written one at a time through ``reservation_create``.

A batch the database aborts transiently — deadlock detected (``40P01``), serialization failure
(``40001``), lock not available (``55P03``, ``lock_timeout``) — rolls back and runs again from
step 1, every lock and check anew, ``conflicts.WRITE_ATTEMPTS`` (3) times in all, each retry
logged at WARNING (``conflicts.retried``: why three, and why at once). Still refused, its pairs
go one at a time through ``reservation_create`` as above, once each; a pair refused
transiently there is dropped with the reason ``write_conflict`` (its demand stays open for the
next cycle; after ``WRITE_ATTEMPTS`` such pairs the rest of the batch is left open with that
reason, untried), and the cycle goes on with the next batch. Any other ``OperationalError``
(connection lost, ``statement_timeout``) propagates: the cycle stops there, and the task's own
retry (``ops.tasks.ReliableTask``) runs it again. The statements of a batch that goes through
the first time are unchanged.
"""

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.conf import settings
from django.db import DataError, IntegrityError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from ledger.bulk import Posting, transactions_post_bulk
from ledger.holds import POINT_OF_SALE, REIMBURSEMENT
from ledger.models import Account, Hold, Transaction
from ledger.services import system_account
from marketplace.bulkrows import rows_insert
from marketplace.errors import Conflict, DomainError, NotFound, Unprocessable
from marketplace.ids import ordered_uuid
from marketplace.models import Demand, InterHubTrade, Offer, Reservation, ReservationEvent
from marketplace.money import ZERO, bill_amount
from marketplace.services import (
    _pair_check,
    reservation_create,
    reservation_locality_check,
    site_places_lock,
)
from marketplace.timeutil import HOUR, from_hour_index, hour_index
from vouchers.bulk import SplitFacts, split_facts_load
from vouchers.models import Programme, Voucher
from vouchers.services import programme_year
from vouchers.usage import usage_book

from .conflicts import WRITE_ATTEMPTS, WRITE_CONFLICT, reason_keep, retried, transient_state
from .engine import Match
from .parts_write import parts_write, split_matches

logger = logging.getLogger("marketplace.matching")


@dataclass
class BatchOutcome:
    """What a bulk write did: reservation ids made and ``{demand id: reason code}`` dropped
    (the last reason of each demand, as ``unmatched_reason`` keeps it)."""

    made: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)


def matches_write(
    matches: Sequence[Match], *, now: datetime, batch: int | None = None
) -> BatchOutcome:
    """Write ``matches`` (engine output, hour-index starts) in batches of ``batch`` pairs
    (``MATCH_WRITE_BATCH``, default 500), each batch one durable transaction, in the order
    given. Returns the ids made and the reasons of the pairs dropped (each also stored as the
    demand's ``unmatched_reason`` while it stays open). ``now`` (UTC) is the cycle's clock:
    starts before it are refused and vouchers are checked at it, as in
    ``reservation_create``. The parts of split demands (partial fills: ``Match.gpus`` set)
    are written after the batches, one transaction per demand (``parts_write``): a batch
    never holds half of a split demand.

    A batch or a split demand's transaction aborted by a transient database error (deadlock
    ``40P01``, serialization failure ``40001``, lock not available ``55P03``) is run again from
    scratch, ``conflicts.WRITE_ATTEMPTS`` (3) times in all; a batch still refused is written a
    pair at a time, and a pair or split demand still refused is dropped with the reason
    ``write_conflict``: the later batches and the split demands are written either way. Any
    other ``OperationalError`` is raised."""
    size: int = batch if batch else settings.MATCH_WRITE_BATCH
    outcome = BatchOutcome()
    # Partial fills: the parts of a split demand go through ``parts_write``, all or none.
    matches, split = split_matches(matches)
    if matches:
        _whole_write(matches, now, size, outcome)
    parts_write(split, now=now, made=outcome.made, dropped=outcome.dropped)
    return outcome


def _whole_write(matches: Sequence[Match], now: datetime, size: int, outcome: BatchOutcome) -> None:
    escrow = system_account(Account.Kind.ESCROW)
    for i in range(0, len(matches), size):
        pairs = matches[i : i + size]

        def attempt(pairs: Sequence[Match] = pairs) -> None:
            # One attempt from scratch: every lock and check again (nothing of an attempt
            # that failed is left, in the database or in ``outcome``).
            try:
                _batch_write(pairs, now, outcome, escrow, programme_first=False)
            except _ProgrammeLimitsMoved:
                _batch_write(pairs, now, outcome, escrow, programme_first=True)

        try:
            retried(attempt, what=f"batch of {len(pairs)} matches")
        except (IntegrityError, DataError, DomainError) as exc:
            # The database refused a row the checks passed (a rule it holds that they do not
            # model): the batch rolled back; write its pairs one at a time so one bad pair
            # neither drops the others nor stalls the hub's matching cycle after cycle.
            logger.warning("batch of %d matches refused (%r); one by one now", len(pairs), exc)
            _pairs_write_one_by_one(pairs, now, outcome)
        except OperationalError as exc:
            if transient_state(exc) is None:
                raise  # not a conflict (connection lost, statement timeout): the task's retry
            # Still a deadlock, serialization failure or lock timeout after every attempt:
            # the pairs one at a time, so the one that meets the contended row is dropped
            # alone and the cycle goes on with the next batch.
            logger.warning(
                "batch of %d matches refused %d times (%r); one by one now",
                len(pairs),
                WRITE_ATTEMPTS,
                exc,
            )
            _pairs_write_one_by_one(pairs, now, outcome)


class _ProgrammeLimitsMoved(Exception):
    """Concurrent holds used the programme budget or buyer cap the batch's splits counted on."""


def _pairs_write_one_by_one(pairs: Sequence[Match], now: datetime, outcome: BatchOutcome) -> None:
    """The fallback of a refused batch: ``reservation_create`` per pair, in order, once each.
    A pair the database still refuses is dropped with the reason ``write_refused``; one it
    refuses transiently (``conflicts.transient_state``: the batch already had its attempts)
    with ``write_conflict``. After ``WRITE_ATTEMPTS`` such refusals the pairs left are dropped
    with ``write_conflict`` unwritten (their demands stay open for the next cycle): each
    refusal may have waited ``lock_timeout``, and a row every pair needs (escrow) held by a
    stuck session would otherwise cost that wait once per pair of the batch while the hub's
    lock is held. Any other database error propagates."""
    conflicts = 0
    for n, m in enumerate(pairs):
        if conflicts >= WRITE_ATTEMPTS:
            left = pairs[n:]
            logger.warning(
                "%d matches left unwritten after %d transient refusals", len(left), conflicts
            )
            for rest in left:
                outcome.dropped[rest.demand_id] = WRITE_CONFLICT
            reason_keep([rest.demand_id for rest in left], WRITE_CONFLICT)
            return
        try:
            reservation = reservation_create(
                demand_id=m.demand_id, offer_id=m.offer_id, start=from_hour_index(m.start), now=now
            )
        except (Demand.DoesNotExist, Offer.DoesNotExist):
            outcome.dropped[m.demand_id] = "not_found"
            continue
        except (DomainError, IntegrityError, DataError, OperationalError) as exc:
            if isinstance(exc, OperationalError) and transient_state(exc) is None:
                raise
            if isinstance(exc, DomainError):
                reason = exc.code[:40]
            else:
                reason = WRITE_CONFLICT if isinstance(exc, OperationalError) else "write_refused"
                conflicts += reason == WRITE_CONFLICT
                logger.warning(
                    "match %s → %s refused by the database: %r", m.demand_id, m.offer_id, exc
                )
            outcome.dropped[m.demand_id] = reason
            reason_keep([m.demand_id], reason)
            continue
        outcome.made.append(str(reservation.pk))


@dataclass
class _Locked:
    """A batch's rows, read under their row locks."""

    demands: dict[str, Demand]
    offers: dict[str, Offer]
    vouchers: dict[UUID, Voucher]
    wallets: dict[UUID, Account]  # by buyer id
    voucher_accounts: dict[UUID, Account]  # by voucher id
    balances: dict[UUID, Decimal]  # by account id, CNY; booked as pairs are accepted


RESERVATION_FIELDS = (
    "id",
    "demand_id",
    "offer_id",
    "buyer_id",
    "provider_id",
    "start",
    "end",
    "gpu_count",
    "price_per_gpu_hour",
    "bill",
    "voucher_id",
    "voucher_part",
    "cash_part",
    "voucher_note",
    "locality_tier",
    "status",
    "delivered_gpu_hours",
    "created_at",
    "updated_at",
)
EVENT_FIELDS = ("reservation_id", "from_status", "to_status", "actor_id", "note", "at")
TRADE_FIELDS = (
    "id",
    "reservation_id",
    "exporting_hub_id",
    "importing_hub_id",
    "gpu_hours",
    "value",
    "created_at",
)
HOLD_FIELDS = (
    "id",
    "reservation_id",
    "mode",
    "status",
    "voucher_part",
    "cash_paid",
    "refunded_voucher",
    "refunded_cash",
    "programme_year",
    "created_at",
    "closed_at",
)


@dataclass
class _Planned:
    """Rows to write for the accepted pairs, in pair order (tuples in the ``*_FIELDS`` order;
    every timestamp is the batch's ``created``)."""

    created: datetime
    reservations: list[tuple[object, ...]] = field(default_factory=list)
    events: list[tuple[object, ...]] = field(default_factory=list)
    trades: list[tuple[object, ...]] = field(default_factory=list)
    holds: list[tuple[object, ...]] = field(default_factory=list)
    postings: list[Posting] = field(default_factory=list)
    demand_status: dict[str, str] = field(default_factory=dict)
    # {programme id: buyer ids} of the holds a voucher pays part of
    programme_buyers: dict[UUID, set[UUID]] = field(default_factory=dict)
    # voucher parts (CNY) by (programme id, buyer id), and each programme's year: the usage
    # the batch books (``vouchers.usage.usage_book``)
    usage: dict[tuple[UUID, UUID], Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    years: dict[UUID, int] = field(default_factory=dict)


def _batch_write(
    pairs: Sequence[Match],
    now: datetime,
    outcome: BatchOutcome,
    escrow: Account,
    *,
    programme_first: bool,
) -> None:
    with transaction.atomic(durable=True):
        if connection.vendor == "postgresql":
            # Every read of the batch looks rows up by key (its demands, offers, accounts, the
            # demands' models) in pages the cycle's snapshot has just read. With the default
            # random_page_cost of 4 (a spinning disk) the planner scans the whole demand table
            # for a batch of 500 ids instead of probing the primary key (3-4 ms more a lookup on
            # 20k demands). 1.1 is the usual value for data in memory or on SSD; SET LOCAL
            # keeps it to this transaction.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL random_page_cost = 1.1")
        locked = _lock(pairs, programme_first=programme_first)
        listed = _listed_models(list(locked.demands))
        used = _reserved_by_hour(list(locked.offers), now)
        facts = split_facts_load(
            list(locked.vouchers.values()),
            balances={v: locked.balances[a.pk] for v, a in locked.voucher_accounts.items()},
            buyer_ids={d.buyer_id for d in locked.demands.values() if d.voucher_id},
            provider_ids={o.provider_id for o in locked.offers.values()},
            at=now,
        )
        # Reservations get ``created_at`` = the wall clock (auto_now_add) as in the one-by-one
        # path, and count towards the programme year holding it.
        created = timezone.now()
        planned = _Planned(created)
        dropped: dict[str, str] = {}
        for m in pairs:
            try:
                _plan(m, locked, listed, used, facts, now, escrow, planned)
            except DomainError as exc:
                dropped[m.demand_id] = exc.code[:40]

        def programme_check() -> None:
            # The programme rows, locked last (just before escrow), and the batch's voucher
            # parts onto their usage rows: do the budgets and caps the splits counted on hold?
            if usage_book(planned.usage, planned.years):
                return
            if programme_first:  # cannot happen: nobody grows the usage under our locks
                raise Conflict("the programme's limits moved", code="programme_limits_moved")
            raise _ProgrammeLimitsMoved

        _write(planned, programme_check)
        reasons: dict[str, list[str]] = defaultdict(list)
        for demand_id, reason in dropped.items():
            demand = locked.demands.get(demand_id)
            if demand is not None and demand.status == Demand.Status.OPEN:
                reasons[reason].append(demand_id)
        for reason, ids in sorted(reasons.items()):
            Demand.objects.filter(pk__in=ids, status=Demand.Status.OPEN).update(
                unmatched_reason=reason
            )
    outcome.made += [str(r[0]) for r in planned.reservations]
    outcome.dropped.update(dropped)


def _lock(pairs: Sequence[Match], *, programme_first: bool) -> _Locked:
    """Lock the batch's rows, one statement per table, in the service layer's order (the
    sites ``FOR KEY SHARE``, the rest ``FOR UPDATE``); the programme rows only with
    ``programme_first`` (else ``usage_book`` locks them last)."""
    demands = {
        str(d.pk): d
        for d in Demand.objects.select_for_update(of=("self",))
        .select_related("buyer", "origin_site")
        .filter(pk__in={m.demand_id for m in pairs})
        .order_by("pk")
    }
    offers = {
        str(o.pk): o
        for o in Offer.objects.select_for_update(of=("self",))
        .select_related("site", "provider", "accelerator")
        .filter(pk__in={m.offer_id for m in pairs})
        .order_by("pk")
    }
    # The sites the tiers come from, one statement for the batch: their place as this lock
    # reads it replaces what the joins above read (a site move may have committed meanwhile).
    site_places_lock([d.origin_site for d in demands.values()] + [o.site for o in offers.values()])
    voucher_ids = {d.voucher_id for d in demands.values() if d.voucher_id is not None}
    vouchers: dict[UUID, Voucher] = {}
    if voucher_ids:
        # ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: a hold in flight on one of these vouchers
        # (``reservation_create`` locks its accounts, not its row) checks its rows' foreign
        # keys at COMMIT with ``FOR KEY SHARE`` on the voucher row, after taking the wallet
        # this batch waits for; ``FOR UPDATE`` would block that check: a deadlock.
        vouchers = {
            v.pk: v
            for v in Voucher.objects.select_for_update(of=("self",), no_key=True)
            .select_related("programme")
            .filter(pk__in=voucher_ids)
            .order_by("pk")
        }
    buyer_ids = {d.buyer_id for d in demands.values()}
    wallets: dict[UUID, Account] = {}
    voucher_accounts: dict[UUID, Account] = {}
    balances: dict[UUID, Decimal] = {}
    for account in (
        Account.objects.select_for_update()
        .filter(
            Q(kind=Account.Kind.WALLET, organisation_id__in=buyer_ids)
            | Q(kind=Account.Kind.VOUCHER, voucher_id__in=voucher_ids)
        )
        .order_by("pk")
        .only("pk", "kind", "organisation_id", "voucher_id", "balance", "allow_negative")
    ):
        if account.kind == Account.Kind.WALLET and account.organisation_id is not None:
            wallets[account.organisation_id] = account
        elif account.voucher_id is not None:
            voucher_accounts[account.voucher_id] = account
        balances[account.pk] = account.balance
    programme_ids = {v.programme_id for v in vouchers.values()}
    if programme_first and programme_ids:
        list(
            Programme.objects.select_for_update()
            .filter(pk__in=programme_ids)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
    return _Locked(demands, offers, vouchers, wallets, voucher_accounts, balances)


def _listed_models(demand_ids: list[str]) -> dict[str, set[object]]:
    """The accelerators each demand lists (none = any model that meets its minimums)."""
    listed: dict[str, set[object]] = defaultdict(set)
    for demand_id, acc_id in Demand.accelerators.through.objects.filter(
        demand_id__in=demand_ids
    ).values_list("demand_id", "accelerator_id"):
        listed[str(demand_id)].add(acc_id)
    return listed


def _plan(
    m: Match,
    locked: _Locked,
    listed: dict[str, set[object]],
    used: dict[str, dict[int, int]],
    facts: SplitFacts,
    now: datetime,
    escrow: Account,
    planned: _Planned,
) -> None:
    """Check one pair as ``reservation_create`` does, in its order, and plan its rows;
    raise the ``DomainError`` it would raise. Books the pair in the in-memory state."""
    demand, offer = locked.demands.get(m.demand_id), locked.offers.get(m.offer_id)
    if demand is None or offer is None:
        raise NotFound("no such demand or offer", code="not_found")
    if demand.status != Demand.Status.OPEN:
        raise Conflict(f"demand is {demand.status}", code="demand_not_open")
    start = from_hour_index(m.start)
    end = start + demand.duration_hours * HOUR
    models = listed[m.demand_id]
    offer.model_listed = offer.accelerator_id in models  # type: ignore[attr-defined]
    offer.any_model = not models  # type: ignore[attr-defined]
    _pair_check(demand, offer, start, end, now)
    tier = reservation_locality_check(demand, offer)
    hours = range(hour_index(start), hour_index(end))
    timeline = used[m.offer_id]
    if max((timeline[h] for h in hours), default=0) + demand.gpu_count > offer.gpu_count:
        raise Conflict("no free capacity for the whole window", code="capacity_exhausted")

    voucher = locked.vouchers.get(demand.voucher_id) if demand.voucher_id else None
    bill = bill_amount(demand.gpu_count, demand.duration_hours, offer.price_per_gpu_hour)
    split = facts.split(
        voucher,
        bill=bill,
        buyer=demand.buyer,
        provider=offer.provider,
        site=offer.site,
        accelerator=offer.accelerator,
    )
    paying = voucher if split.voucher_part > 0 else None
    # ``ledger.holds.hold_place``: the programme's mode only when the voucher pays a part.
    mode = paying.programme.redemption_mode if paying is not None else POINT_OF_SALE
    cash_paid = bill if mode == REIMBURSEMENT else split.cash_part
    wallet = locked.wallets.get(demand.buyer_id)
    voucher_account = locked.voucher_accounts.get(paying.pk) if paying is not None else None
    # A buyer without a wallet account: the one-by-one path creates an empty one, then
    # refuses the same way (that empty account is not created here).
    if cash_paid and (wallet is None or locked.balances[wallet.pk] < cash_paid):
        raise Unprocessable(
            "Buyer cash wallet balance would go below zero", code="insufficient_funds"
        )
    if paying is not None and (
        voucher_account is None or locked.balances[voucher_account.pk] < split.voucher_part
    ):
        raise Unprocessable("Voucher balance would go below zero", code="insufficient_funds")

    # Accepted: book it in memory, then plan its rows (``reservation_write``, ``hold_place``).
    for h in hours:
        timeline[h] += demand.gpu_count
    status = Reservation.Status.CONFIRMED if demand.auto_accept else Reservation.Status.HELD
    demand.status = Demand.Status.RESERVED if demand.auto_accept else Demand.Status.MATCHED
    planned.demand_status[m.demand_id] = demand.status
    legs: list[tuple[Account, Decimal]] = [(escrow, split.voucher_part + cash_paid)]
    if paying is not None:
        assert voucher_account is not None
        locked.balances[voucher_account.pk] -= split.voucher_part
        facts.count(paying, demand.buyer_id, split.voucher_part)
        legs.append((voucher_account, -split.voucher_part))
        planned.programme_buyers.setdefault(paying.programme_id, set()).add(demand.buyer_id)
        planned.usage[paying.programme_id, demand.buyer_id] += split.voucher_part
        planned.years[paying.programme_id] = programme_year(paying.programme, now)
    if wallet is not None:
        locked.balances[wallet.pk] -= cash_paid
        legs.append((wallet, -cash_paid))

    rid, at = ordered_uuid(), planned.created
    planned.reservations.append(
        (
            rid,
            demand.pk,
            offer.pk,
            demand.buyer_id,
            offer.provider_id,
            start,
            end,
            demand.gpu_count,
            offer.price_per_gpu_hour,
            bill,
            paying.pk if paying is not None else None,
            split.voucher_part,
            split.cash_part,
            split.note,
            tier,
            status,
            None,
            at,
            at,
        )
    )
    held = Reservation.Status.HELD
    planned.events.append((rid, "", held, None, f"matched at tier {tier}", at))
    if demand.auto_accept:
        planned.events.append((rid, held, Reservation.Status.CONFIRMED, None, "auto-accepted", at))
    if offer.site.hub_id != demand.origin_site.hub_id:
        planned.trades.append(
            (
                ordered_uuid(),
                rid,
                offer.site.hub_id,
                demand.origin_site.hub_id,
                demand.gpu_count * demand.duration_hours,
                bill,
                at,
            )
        )
    planned.holds.append(
        (
            ordered_uuid(),
            rid,
            mode,
            Hold.Status.PENDING,
            split.voucher_part,
            cash_paid,
            ZERO,
            ZERO,
            planned.years[paying.programme_id] if paying is not None else None,
            at,
            None,
        )
    )
    planned.postings.append(
        Posting(
            Transaction.Reason.HOLD,
            legs,
            reservation_id=rid,
            voucher_id=paying.pk if paying is not None else None,
            memo=f"hold ({mode})",
        )
    )


def _write(planned: _Planned, before_hot: Callable[[], None]) -> None:
    """Insert the planned rows (one COPY per table on PostgreSQL) and move the held money;
    ``before_hot`` runs after the parties' balances changed, before escrow's."""
    if not planned.reservations:
        return
    if connection.vendor == "postgresql":
        # Check the copied rows' foreign keys at the end of each COPY rather than at COMMIT:
        # the same checks, made while the rows and index pages they touch are fresh, instead
        # of queued as deferred trigger events and fetched again at COMMIT (about 10 % less
        # server CPU for the batch). Each table is copied after the rows it references; a
        # violation is an IntegrityError either way. Lasts until the batch's transaction ends.
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    rows_insert(Reservation, RESERVATION_FIELDS, planned.reservations)
    rows_insert(ReservationEvent, EVENT_FIELDS, planned.events)
    rows_insert(InterHubTrade, TRADE_FIELDS, planned.trades)
    rows_insert(Hold, HOLD_FIELDS, planned.holds)
    transactions_post_bulk(planned.postings, parties_locked=True, before_hot=before_hot)
    by_status: dict[str, list[str]] = defaultdict(list)
    for demand_id, status in planned.demand_status.items():
        by_status[status].append(demand_id)
    for status, ids in sorted(by_status.items()):
        Demand.objects.filter(pk__in=ids).update(status=status, unmatched_reason="")


def _reserved_by_hour(offer_ids: list[str], now: datetime) -> dict[str, dict[int, int]]:
    """GPUs reserved per hour index on each offer, from the reservations holding capacity
    (read under the offers' row locks, so no booking can slip in meanwhile)."""
    used: dict[str, dict[int, int]] = {o: defaultdict(int) for o in offer_ids}
    for offer_id, start, end, gpus in Reservation.objects.filter(
        offer_id__in=offer_ids, status__in=Reservation.CAPACITY_STATUSES, end__gt=now
    ).values_list("offer_id", "start", "end", "gpu_count"):
        timeline = used[str(offer_id)]
        for h in range(hour_index(start), hour_index(end)):
            timeline[h] += gpus
    return used
