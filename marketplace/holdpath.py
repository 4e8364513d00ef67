"""One reservation hold in five round trips on PostgreSQL: the write path of
``marketplace.services.reservation_create`` (PRODUCT.md §4.4, §5.4; issue 3's target of at most
ten round trips per hold, the shared hot rows touched last, READ COMMITTED without retries).

The rules are the service layer's own — ``_pair_check``, ``reservation_locality_check``, the
split (``vouchers.services.split_with_facts``), the ledger shapes of ``ledger.holds`` — only the
reads and writes are fused into few statements of hand-written SQL (the ORM would need about
twenty). The ORM path (``marketplace.services.reservation_write``) writes exactly the same rows;
``tests/marketplace/test_holdpath.py`` compares the two.

Round trips (``BEGIN`` and ``COMMIT`` included):

1. ``BEGIN``;
2. the demand and the offer, ``FOR UPDATE`` (demand → offer, the service's lock order), with
   everything the checks need joined in: buyer, provider, accelerator, the demand's models,
   the voucher and its programme, the ids of the ledger accounts; then, in the same
   statement, the offer's site and the demand's origin site ``FOR KEY SHARE`` by pk (the lock
   a site move waits for, ``services.site_move_check``), their place as that lock returns it
   (after waiting for a move: the moved row) — the locality tier and the inter-hub trade are
   computed from it;
3. after those locks (so it sees every booking committed before them): the peak GPUs reserved on
   the offer over the window and, with a voucher, the buyer's wallet and the voucher's ledger
   account locked by pk (their balances are then current) plus every fact of the voucher's
   eligibility, share and programme limits;
4. every write in one statement of data-modifying CTEs, ordered by what each one reads: the
   wallet and voucher balances (a CHECK refuses a negative one: insufficient funds), the
   reservation, its events, the inter-hub trade, the demand, the hold, the HOLD transaction and
   its entries; then the programme row ``FOR KEY SHARE``, the buyer's and the budget's usage rows
   by conditional upsert (``vouchers.usage.USAGE_CTES``) and, last, the escrow balance — the
   shared hot rows are locked only once everything else is written, just before ``COMMIT``;
5. ``COMMIT``.

The three statements are server-side prepared once per database connection
(``prepared_cursor``): planning the fused statements costs more than running them, so each hold
only binds and executes. They still pass through Django's cursor wrappers (query logging,
``execute_wrapper``), so query counts and the benchmark see every one.

When the usage rows refuse the voucher part (a concurrent hold took the last of the budget or
the buyer's cap between step 3's read and step 4) nothing is committed and the service runs the
hold once more with the programme row locked ``FOR UPDATE`` before the split
(``programme_first``: two more round trips), where the limits read are final.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import psycopg
from django.db import IntegrityError, connection
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from accounts.models import Organisation
from ledger.holds import POINT_OF_SALE, REIMBURSEMENT
from ledger.models import Account
from ledger.services import organisation_account, system_account, voucher_account
from vouchers.models import Programme, Voucher
from vouchers.services import (
    VoucherFacts,
    programme_year,
    split_with_facts,
)
from vouchers.usage import USAGE_CTES, usage_params, usage_read

from .errors import Conflict, Unprocessable
from .models import Accelerator, Demand, Offer, Reservation, Site
from .money import ZERO, bill_amount
from .timeutil import HOUR
from .types import ObjectId

LIVE = "('held', 'confirmed', 'active', 'completed', 'settled')"  # Reservation.CAPACITY_STATUSES

# The pair locked first (demand → offer); then, through the LATERAL join on its row, the
# offer's site and the demand's origin site ``FOR KEY SHARE`` by pk: one row per site (one for
# both when they are the same). The tier is computed from their place as read here: under
# READ COMMITTED a lock that waited for a site move (``site_move_check``) returns the row as
# the move committed it, where a plain join would return the place before the move.
READ_PAIR = """
SELECT pair.*, st.id, st.city, st.metro_area, st.hub_id, st.cluster_id
FROM (
SELECT d.buyer_id, d.origin_site_id, d.min_memory_gb, d.min_tflops, d.gpu_count,
       d.duration_hours, d.earliest_start, d.latest_end, d.max_price_per_gpu_hour,
       d.locality_limit, d.voucher_id, d.auto_accept, d.status,
       b.status,
       o.provider_id, o.site_id, o.accelerator_id, o.gpu_count, o.available_from,
       o.available_until, o.price_per_gpu_hour, o.min_duration_hours, o.status,
       pr.status,
       a.memory_gb, a.bf16_tflops, a.is_domestic,
       EXISTS (SELECT 1 FROM marketplace_demand_accelerators da
               WHERE da.demand_id = d.id AND da.accelerator_id = o.accelerator_id),
       NOT EXISTS (SELECT 1 FROM marketplace_demand_accelerators da WHERE da.demand_id = d.id),
       v.programme_id, v.owner_id, v.face_value, v.issued_at, v.expires_at, v.status,
       p.code, p.effective_from, p.effective_until, p.annual_budget, p.max_share,
       p.buyer_annual_cap, p.redemption_mode, p.time_zone, p.eligible_categories,
       (SELECT w.id FROM ledger_account w
        WHERE w.kind = 'wallet' AND w.organisation_id = d.buyer_id),
       (SELECT e.id FROM ledger_account e WHERE e.kind = 'escrow'),
       (SELECT va.id FROM ledger_account va WHERE va.kind = 'voucher' AND va.voucher_id = v.id)
FROM marketplace_demand d
JOIN accounts_organisation b ON b.id = d.buyer_id
CROSS JOIN marketplace_offer o
JOIN accounts_organisation pr ON pr.id = o.provider_id
JOIN marketplace_accelerator a ON a.id = o.accelerator_id
LEFT JOIN vouchers_voucher v ON v.id = d.voucher_id
LEFT JOIN vouchers_programme p ON p.id = v.programme_id
WHERE d.id = %(demand)s AND o.id = %(offer)s
FOR UPDATE OF d, o
) AS pair
CROSS JOIN LATERAL (
SELECT id, city, metro_area, hub_id, cluster_id FROM marketplace_site
WHERE id IN (pair.origin_site_id, pair.site_id)
ORDER BY id
FOR KEY SHARE
) AS st
"""

# The most GPUs reserved at any hour of [start, end): the load peaks at the window's start or at
# the start of a reservation inside it.
# (The f-strings below join constant SQL fragments; every value is a bound parameter.)
PEAK = f"""
(SELECT COALESCE(MAX(l.load), 0) FROM (
    SELECT SUM(r2.gpu_count) AS load
    FROM (SELECT DISTINCT GREATEST(r.start, %(start)s) AS t FROM marketplace_reservation r
          WHERE r.offer_id = %(offer)s AND r.status IN {LIVE}
            AND r.start < %(end)s AND r."end" > %(start)s) pts
    JOIN marketplace_reservation r2 ON r2.offer_id = %(offer)s AND r2.status IN {LIVE}
        AND r2.start <= pts.t AND r2."end" > pts.t
    GROUP BY pts.t) l)
"""  # noqa: S608

READ_CAPACITY = f"SELECT {PEAK}"

# With a voucher: the wallet and the voucher's account locked by pk (as every posting locks the
# parties' accounts) with their current balances, and the facts of ``VoucherFacts``.
READ_VOUCHER = f"""
SELECT a.id, a.balance, {PEAK},
    EXISTS (SELECT 1 FROM accounts_organisation_related rel
            WHERE rel.from_organisation_id = %(buyer)s AND rel.to_organisation_id = %(provider)s),
    EXISTS (SELECT 1 FROM vouchers_catalogueentry c
            WHERE c.programme_id = %(programme)s AND c.provider_id = %(provider)s
              AND c.year = %(year)s AND c.status = 'approved'),
    (NOT EXISTS (SELECT 1 FROM vouchers_programme_hubs WHERE programme_id = %(programme)s)
        AND NOT EXISTS (SELECT 1 FROM vouchers_programme_clusters
                        WHERE programme_id = %(programme)s)
        AND NOT EXISTS (SELECT 1 FROM vouchers_programme_sites
                        WHERE programme_id = %(programme)s))
    OR EXISTS (SELECT 1 FROM vouchers_programme_hubs
               WHERE programme_id = %(programme)s AND hub_id = %(hub)s)
    OR EXISTS (SELECT 1 FROM vouchers_programme_clusters
               WHERE programme_id = %(programme)s AND cluster_id = %(cluster)s::uuid)
    OR EXISTS (SELECT 1 FROM vouchers_programme_sites
               WHERE programme_id = %(programme)s AND site_id = %(site)s),
    (SELECT MAX(t.max_share) FROM vouchers_sharetier t
     WHERE t.programme_id = %(programme)s
       AND (t.domestic_accelerator IS NULL OR t.domestic_accelerator = %(domestic)s)
       AND (NOT EXISTS (SELECT 1 FROM vouchers_sharetier_accelerators x
                        WHERE x.sharetier_id = t.id)
            OR EXISTS (SELECT 1 FROM vouchers_sharetier_accelerators x
                       WHERE x.sharetier_id = t.id AND x.accelerator_id = %(accelerator)s))
       AND (NOT EXISTS (SELECT 1 FROM vouchers_sharetier_buyers y WHERE y.sharetier_id = t.id)
            OR EXISTS (SELECT 1 FROM vouchers_sharetier_buyers y
                       WHERE y.sharetier_id = t.id AND y.organisation_id = %(buyer)s))),
    (SELECT used FROM vouchers_programmeusage
     WHERE programme_id = %(programme)s AND year = %(year)s AND buyer_id IS NULL),
    (SELECT used FROM vouchers_programmeusage
     WHERE programme_id = %(programme)s AND year = %(year)s AND buyer_id = %(buyer)s)
FROM ledger_account a WHERE a.id IN (%(wallet)s, %(voucher_account)s)
ORDER BY a.id
FOR NO KEY UPDATE
"""  # noqa: S608

WRITE = """
WITH
w_acc AS (
    UPDATE ledger_account a SET balance = a.balance + l.x
    FROM unnest(%(party_ids)s::uuid[], %(party_amounts)s::numeric[]) AS l(id, x)
    WHERE a.id = l.id
    RETURNING a.id
),
w_res AS (
    INSERT INTO marketplace_reservation (id, demand_id, offer_id, buyer_id, provider_id, start,
        "end", gpu_count, price_per_gpu_hour, bill, voucher_id, voucher_part, cash_part,
        voucher_note, locality_tier, status, delivered_gpu_hours, created_at, updated_at)
    VALUES (%(r_id)s, %(demand)s, %(offer)s, %(buyer)s, %(provider)s, %(start)s, %(end)s,
        %(gpus)s, %(price)s, %(bill)s, %(r_voucher)s::uuid, %(voucher_part)s, %(cash_part)s,
        %(note)s, %(tier)s, %(r_status)s, NULL, %(now)s, %(now)s)
    RETURNING 1
),
w_ev AS (
    INSERT INTO marketplace_reservationevent (reservation_id, from_status, to_status, actor_id,
        note, at)
    SELECT %(r_id)s::uuid, e.f, e.t, NULL::uuid, e.n, %(now)s::timestamptz
    FROM unnest(%(ev_from)s::varchar[], %(ev_to)s::varchar[], %(ev_note)s::varchar[])
        WITH ORDINALITY AS e(f, t, n, i)
    ORDER BY e.i
    RETURNING 1
),
w_trade AS (
    INSERT INTO marketplace_interhubtrade (id, reservation_id, exporting_hub_id,
        importing_hub_id, gpu_hours, value, created_at)
    SELECT %(trade_id)s::uuid, %(r_id)s::uuid, %(exporting)s::uuid, %(importing)s::uuid,
        %(gpu_hours)s::integer, %(bill)s::numeric, %(now)s::timestamptz
    WHERE %(cross_hub)s::boolean
    RETURNING 1
),
w_dem AS (
    UPDATE marketplace_demand SET status = %(d_status)s, unmatched_reason = ''
    WHERE id = %(demand)s
    RETURNING 1
),
w_hold AS (
    INSERT INTO ledger_hold (id, reservation_id, mode, status, voucher_part, cash_paid,
        refunded_voucher, refunded_cash, programme_year, created_at, closed_at)
    VALUES (%(hold_id)s, %(r_id)s, %(mode)s, 'pending', %(voucher_part)s, %(cash_paid)s, 0, 0,
        %(year)s::smallint, %(now)s, NULL)
    RETURNING 1
),
w_txn AS (
    INSERT INTO ledger_transaction (id, reason, reservation_id, voucher_id, memo, created_at)
    SELECT %(txn_id)s::uuid, 'hold', %(r_id)s::uuid, %(r_voucher)s::uuid, %(memo)s::varchar,
        %(now)s::timestamptz
    WHERE %(posts)s::boolean
    RETURNING 1
),
w_ent AS (
    INSERT INTO ledger_entry (transaction_id, account_id, amount)
    SELECT %(txn_id)s::uuid, e.a, e.x
    FROM unnest(%(entry_ids)s::uuid[], %(entry_amounts)s::numeric[]) AS e(a, x)
    RETURNING 1
),
w_done AS (
    SELECT (SELECT count(*) FROM w_acc) AS accounts,
        (SELECT count(*) FROM w_res) + (SELECT count(*) FROM w_ev)
        + (SELECT count(*) FROM w_trade) + (SELECT count(*) FROM w_dem)
        + (SELECT count(*) FROM w_hold) + (SELECT count(*) FROM w_txn)
        + (SELECT count(*) FROM w_ent) AS written
),
{usage}
w_escrow AS (
    UPDATE ledger_account SET balance = balance + %(escrow_amount)s
    WHERE id = %(escrow)s AND {escrow_after}
    RETURNING 1
)
SELECT (SELECT accounts FROM w_done), (SELECT count(*) FROM w_escrow)
"""

WRITE_CASH = WRITE.format(usage="", escrow_after="(SELECT written FROM w_done) > 0")
WRITE_VOUCHER = WRITE.format(
    usage=USAGE_CTES.format(after="(SELECT written FROM w_done) > 0") + ",",  # noqa: S608
    escrow_after="EXISTS (SELECT 1 FROM u_budget)",
)
# A hold of a zero bill posts nothing: no ledger account changes.
WRITE_NOTHING = WRITE.format(usage="", escrow_after="FALSE")


def _compact(sql: str) -> str:
    """One line, single spaces: psycopg caches the parsing of a statement's placeholders only up
    to 4,096 characters (``MAX_CACHED_STATEMENT_LENGTH``); the indented voucher write is longer
    and would be re-parsed on every hold. (No string literal here holds a double space.)"""
    return " ".join(sql.split())


READ_PAIR, READ_CAPACITY, READ_VOUCHER = map(_compact, (READ_PAIR, READ_CAPACITY, READ_VOUCHER))
WRITE_CASH, WRITE_VOUCHER, WRITE_NOTHING = map(_compact, (WRITE_CASH, WRITE_VOUCHER, WRITE_NOTHING))
assert len(WRITE_VOUCHER) <= 4096, "keep the hold's statements within psycopg's parse cache"


class ProgrammeLimitsMoved(Exception):
    """A concurrent hold used the programme budget or buyer cap this hold's split counted on."""


class _PreparingCursor(psycopg.Cursor):  # type: ignore[type-arg]
    """A server-side-binding psycopg cursor that prepares every statement it runs: psycopg
    keeps a connection's prepared statements (keyed by text and parameter types), so a statement
    is parsed and planned once per connection and then only bound and executed."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        kwargs["prepare"] = True
        result = super().execute(query, params, **kwargs)
        if self._query is None:
            # psycopg records no query text for a prepared execution; Django's query log (and
            # so query counts in tests) reads it from here.
            self._query = SimpleNamespace(query=str(query).encode(), params=None)  # type: ignore[assignment]
        return result


@contextmanager
def prepared_cursor() -> Iterator[CursorWrapper]:
    """A Django cursor (wrapped as Django wraps its own: query logging, ``execute_wrapper``)
    over a ``_PreparingCursor`` of the default connection. PostgreSQL only; Django itself never
    prepares statements (connection poolers in transaction mode), and this is used only by the
    hold's few fixed statements."""
    connection.ensure_connection()
    driver = connection.connection
    if driver.prepare_threshold is None:
        # Django turns automatic preparing off (threshold None), which also ignores an explicit
        # ``prepare=True``. A threshold no statement reaches keeps everything else unprepared
        # (Django's client-side-binding cursors never prepare anyway).
        driver.prepare_threshold = 2**31
    raw = _PreparingCursor(driver)
    # (django-stubs type the argument as Django's wrapper; Django passes the driver's cursor.)
    wrapped = (
        connection.make_debug_cursor(raw)  # type: ignore[arg-type]
        if connection.queries_logged
        else connection.make_cursor(raw)  # type: ignore[arg-type]
    )
    try:
        yield wrapped
    finally:
        raw.close()


@dataclass
class _Pair:
    demand: Demand
    offer: Offer
    voucher: Voucher | None
    wallet_id: Any
    escrow_id: Any
    voucher_account_id: Any


def _pair_read(demand_id: ObjectId, offer_id: ObjectId) -> _Pair:
    with prepared_cursor() as cursor:
        cursor.execute(READ_PAIR, {"demand": demand_id, "offer": offer_id})
        rows = cursor.fetchall()
    if not rows:  # as ``.get()``: a missing demand or offer is the caller's bug
        if not Demand.objects.filter(pk=demand_id).exists():
            raise Demand.DoesNotExist(f"no demand {demand_id}")
        raise Offer.DoesNotExist(f"no offer {offer_id}")
    (
        buyer_id, origin_site_id, min_memory_gb, min_tflops, d_gpus, duration, earliest, latest,
        max_price, locality_limit, voucher_id, auto_accept, d_status,
        buyer_status,
        provider_id, site_id, accelerator_id, o_gpus, available_from, available_until, price,
        min_duration, o_status,
        provider_status,
        memory_gb, tflops, is_domestic, model_listed, any_model,
        programme_id, owner_id, face_value, issued_at, expires_at, v_status,
        p_code, p_from, p_until, p_budget, p_share, p_cap, p_mode, p_tz, p_categories,
        wallet_id, escrow_id, voucher_account_id,
    ) = rows[0][:-5]  # fmt: skip
    places = {r[-5]: r[-4:] for r in rows}  # {site id: (city, metro area, hub id, cluster id)}
    o_city, o_metro, o_hub, _ = places[origin_site_id]
    s_city, s_metro, s_hub, s_cluster = places[site_id]
    demand = Demand(
        id=demand_id, buyer_id=buyer_id, origin_site_id=origin_site_id,
        min_memory_gb=min_memory_gb, min_tflops=min_tflops, gpu_count=d_gpus,
        duration_hours=duration, earliest_start=earliest, latest_end=latest,
        max_price_per_gpu_hour=max_price, locality_limit=locality_limit, voucher_id=voucher_id,
        auto_accept=auto_accept, status=d_status,
    )  # fmt: skip
    demand.buyer = Organisation(id=buyer_id, status=buyer_status)
    demand.origin_site = Site(id=origin_site_id, city=o_city, metro_area=o_metro, hub_id=o_hub)
    offer = Offer(
        id=offer_id, provider_id=provider_id, site_id=site_id, accelerator_id=accelerator_id,
        gpu_count=o_gpus, available_from=available_from, available_until=available_until,
        price_per_gpu_hour=price, min_duration_hours=min_duration, status=o_status,
    )  # fmt: skip
    offer.provider = Organisation(id=provider_id, status=provider_status)
    offer.site = Site(
        id=site_id, city=s_city, metro_area=s_metro, hub_id=s_hub, cluster_id=s_cluster
    )
    offer.accelerator = Accelerator(
        id=accelerator_id, memory_gb=memory_gb, bf16_tflops=tflops, is_domestic=is_domestic
    )
    offer.model_listed = model_listed  # type: ignore[attr-defined]
    offer.any_model = any_model  # type: ignore[attr-defined]
    voucher = None
    if voucher_id is not None:
        voucher = Voucher(
            id=voucher_id, programme_id=programme_id, owner_id=owner_id, face_value=face_value,
            issued_at=issued_at, expires_at=expires_at, status=v_status,
        )  # fmt: skip
        voucher.programme = Programme(
            id=programme_id, code=p_code, effective_from=p_from, effective_until=p_until,
            annual_budget=p_budget, max_share=p_share, buyer_annual_cap=p_cap,
            redemption_mode=p_mode, time_zone=p_tz, eligible_categories=p_categories,
        )  # fmt: skip
    return _Pair(demand, offer, voucher, wallet_id, escrow_id, voucher_account_id)


def _ensure_accounts(pair: _Pair) -> None:
    """Create the ledger accounts a first hold needs (first use only: extra statements)."""
    if pair.wallet_id is None:
        pair.wallet_id = organisation_account(pair.demand.buyer, Account.Kind.WALLET).pk
    if pair.escrow_id is None:
        pair.escrow_id = system_account(Account.Kind.ESCROW).pk
    if pair.voucher is not None and pair.voucher_account_id is None:
        pair.voucher_account_id = voucher_account(pair.voucher.pk).pk


def hold_write(
    demand_id: ObjectId,
    offer_id: ObjectId,
    start: datetime,
    now: datetime,
    *,
    programme_first: bool,
    pair_check: Any,
    locality_check: Any,
) -> Reservation:
    """Book ``offer`` for ``demand`` from ``start`` and hold the funds, inside the caller's
    durable transaction, in the round trips of the module docstring. ``pair_check`` and
    ``locality_check`` are the service's rules (``marketplace.services._pair_check`` and
    ``reservation_locality_check``). Raises what ``reservation_create`` documents, and
    ``ProgrammeLimitsMoved`` for the caller to run again with ``programme_first``."""
    pair = _pair_read(demand_id, offer_id)
    demand, offer, voucher = pair.demand, pair.offer, pair.voucher
    if demand.status != Demand.Status.OPEN:
        raise Conflict(f"demand is {demand.status}", code="demand_not_open")
    end = start + demand.duration_hours * HOUR
    pair_check(demand, offer, start, end, now)
    tier = locality_check(demand, offer)
    _ensure_accounts(pair)
    bill = bill_amount(demand.gpu_count, demand.duration_hours, offer.price_per_gpu_hour)
    window: dict[str, Any] = {"offer": offer.pk, "start": start, "end": end}
    year = None
    with prepared_cursor() as cursor:
        if voucher is None:
            cursor.execute(READ_CAPACITY, window)
            (peak,) = cursor.fetchone()
        else:
            programme = voucher.programme
            year = programme_year(programme, now)
            cursor.execute(
                READ_VOUCHER,
                {
                    **window,
                    "buyer": demand.buyer_id,
                    "provider": offer.provider_id,
                    "programme": programme.pk,
                    "year": year,
                    "hub": offer.site.hub_id,
                    "cluster": offer.site.cluster_id,
                    "site": offer.site_id,
                    "domestic": offer.accelerator.is_domestic,
                    "accelerator": offer.accelerator_id,
                    "wallet": pair.wallet_id,
                    "voucher_account": pair.voucher_account_id,
                },
            )
            rows = cursor.fetchall()
            balances = {str(r[0]): r[1] for r in rows}
            _, _, peak, related, in_catalogue, in_region, tier_share, budget_used, cap_used = rows[
                0
            ]
            if programme_first:
                # Under the programme row's FOR UPDATE no usage can grow: read it after the lock.
                cursor.execute(
                    "SELECT 1 FROM vouchers_programme WHERE id = %s FOR UPDATE", [programme.pk]
                )
                budget_used, cap_used = usage_read(programme.pk, demand.buyer_id, year)
            facts = VoucherFacts(
                balance=balances[str(pair.voucher_account_id)],
                related=related,
                in_catalogue=in_catalogue,
                in_region=in_region,
                share=max(programme.max_share, tier_share or programme.max_share),
                budget_left=programme.annual_budget - (budget_used or ZERO),
                cap_left=programme.buyer_annual_cap - (cap_used or ZERO),
            )
    if peak + demand.gpu_count > offer.gpu_count:
        raise Conflict("no free capacity for the whole window", code="capacity_exhausted")
    if voucher is None:
        voucher_part, cash_part, note = ZERO, bill, ""
    else:
        split = split_with_facts(
            voucher,
            facts,
            bill=bill,
            buyer=demand.buyer,
            provider_id=offer.provider_id,
            at=now,
        )
        voucher_part, cash_part, note = split.voucher_part, split.cash_part, split.note
    return _write(pair, start, end, bill, voucher_part, cash_part, note, tier, year)


def _write(
    pair: _Pair,
    start: datetime,
    end: datetime,
    bill: Decimal,
    voucher_part: Decimal,
    cash_part: Decimal,
    note: str,
    tier: str,
    year: int | None,
) -> Reservation:
    """Step 4: every row of the hold in one statement; the hot rows last."""
    demand, offer, voucher = pair.demand, pair.offer, pair.voucher
    written_at = timezone.now()  # as ``auto_now_add``
    uses_voucher = voucher is not None and voucher_part > 0
    mode = voucher.programme.redemption_mode if uses_voucher else POINT_OF_SALE  # type: ignore[union-attr]
    cash_paid = bill if mode == REIMBURSEMENT else cash_part
    status = Reservation.Status.CONFIRMED if demand.auto_accept else Reservation.Status.HELD
    events = [("", Reservation.Status.HELD, f"matched at tier {tier}")]
    if demand.auto_accept:
        events.append((Reservation.Status.HELD, Reservation.Status.CONFIRMED, "auto-accepted"))
    # The HOLD transaction's legs, as ``ledger.holds.hold_place``: escrow +, voucher −, wallet −.
    legs = [(pair.escrow_id, voucher_part + cash_paid)]
    if uses_voucher:
        legs.append((pair.voucher_account_id, -voucher_part))
    legs.append((pair.wallet_id, -cash_paid))
    legs = [(a, x) for a, x in legs if x]
    party = [(a, x) for a, x in legs if a != pair.escrow_id]
    reservation = Reservation(
        id=uuid.uuid4(),
        demand_id=demand.pk,
        offer_id=offer.pk,
        buyer_id=demand.buyer_id,
        provider_id=offer.provider_id,
        start=start,
        end=end,
        gpu_count=demand.gpu_count,
        price_per_gpu_hour=offer.price_per_gpu_hour,
        bill=bill,
        voucher_id=voucher.pk if uses_voucher else None,  # type: ignore[union-attr]
        voucher_part=voucher_part,
        cash_part=cash_part,
        voucher_note=note,
        locality_tier=tier,
        status=status,
        created_at=written_at,
        updated_at=written_at,
    )
    cross_hub = offer.site.hub_id != demand.origin_site.hub_id
    params: dict[str, Any] = {
        "party_ids": [a for a, _ in party],
        "party_amounts": [x for _, x in party],
        "r_id": reservation.pk,
        "demand": demand.pk,
        "offer": offer.pk,
        "buyer": demand.buyer_id,
        "provider": offer.provider_id,
        "start": start,
        "end": end,
        "gpus": demand.gpu_count,
        "price": offer.price_per_gpu_hour,
        "bill": bill,
        "r_voucher": reservation.voucher_id,
        "voucher_part": voucher_part,
        "cash_part": cash_part,
        "note": note,
        "tier": tier,
        "r_status": status,
        "now": written_at,
        "ev_from": [e[0] for e in events],
        "ev_to": [e[1] for e in events],
        "ev_note": [e[2] for e in events],
        "trade_id": uuid.uuid4(),
        "exporting": offer.site.hub_id,
        "importing": demand.origin_site.hub_id,
        "gpu_hours": reservation.gpu_hours,
        "cross_hub": cross_hub,
        "d_status": Demand.Status.RESERVED if demand.auto_accept else Demand.Status.MATCHED,
        "hold_id": uuid.uuid4(),
        "mode": mode,
        "cash_paid": cash_paid,
        "year": year if uses_voucher else None,
        "txn_id": uuid.uuid4(),
        "posts": bool(legs),
        "memo": f"hold ({mode})",
        "entry_ids": [a for a, _ in legs],
        "entry_amounts": [x for _, x in legs],
        "escrow_amount": voucher_part + cash_paid,
        "escrow": pair.escrow_id,
    }
    if not legs:
        sql = WRITE_NOTHING
    elif uses_voucher:
        assert voucher is not None and year is not None
        sql = WRITE_VOUCHER
        params |= usage_params(
            voucher.programme_id, demand.buyer_id, year, voucher_part, check=True
        )
    else:
        sql = WRITE_CASH
    try:
        with prepared_cursor() as cursor:
            cursor.execute(sql, params)
            accounts, escrow = cursor.fetchone()
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", "") == "account_nonneg":
            # The voucher's balance was read under its lock: only the wallet can fall short.
            raise Unprocessable(
                "Buyer cash wallet balance would go below zero", code="insufficient_funds"
            ) from exc
        raise
    assert accounts == len(party), (accounts, party)
    if legs and escrow != 1:
        raise ProgrammeLimitsMoved
    reservation._state.adding = False
    reservation._state.db = "default"
    return reservation
