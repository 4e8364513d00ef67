"""Programme usage counters (``vouchers.models.ProgrammeUsage``): how much of a programme year's
budget and of each buyer's annual cap voucher parts use (PRODUCT.md §5.4, §5.6).

A hold adds its voucher part, a release takes it back, a settlement takes back the voucher value
of undelivered hours and a refund after settlement the value it returns. Growth is a conditional
UPDATE (``used + x ≤ limit``, evaluated on the row's latest version under its lock), so two holds
can never both take the last of a budget or cap, on READ COMMITTED and without retries.

Lock order (every change, whichever path): the programme row ``FOR KEY SHARE`` → the buyer's row
→ the budget row (shared by every hold of the programme: the hot row) → then the shared ledger
accounts (escrow, fees). KEY SHARE locks do not block each other, but they do block a caller
holding the programme row ``FOR UPDATE`` (the matcher's bulk write, a hold re-run after the
limits moved, a voucher issue): while it holds that lock no usage can grow under it, and nobody
waiting for it holds a usage row or escrow — no deadlock with a batch that already holds escrow.

Amounts are CNY ``Decimal`` to the fen; ``year`` is the programme year
(``vouchers.services.programme_year``).
"""

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Q

from marketplace.money import ZERO
from marketplace.types import ObjectId

from .models import Programme, ProgrammeUsage

# The three CTEs of one usage change on PostgreSQL, shared by ``usage_change`` and the one-
# statement hold write (``marketplace.holdpath``). Parameters (named): ``u_programme``,
# ``u_year``, ``u_buyer``, ``u_amount`` (CNY, may be negative) and ``u_check`` (refuse passing
# the limits). ``{after}`` is SQL the programme lock must wait for (a CTE to read first, so the
# statement's other writes happen before the hot rows are touched), or ``TRUE``.
USAGE_CTES = """
u_prog AS (
    SELECT p.annual_budget, p.buyer_annual_cap FROM vouchers_programme p
    WHERE p.id = %(u_programme)s AND ({after}) FOR KEY SHARE OF p
),
u_buyer AS (
    INSERT INTO vouchers_programmeusage AS u (programme_id, year, buyer_id, used)
    SELECT %(u_programme)s::uuid, %(u_year)s::smallint, %(u_buyer)s::uuid,
        %(u_amount)s::numeric FROM u_prog
    WHERE NOT %(u_check)s::boolean OR %(u_amount)s <= u_prog.buyer_annual_cap
    ON CONFLICT (programme_id, year, buyer_id) WHERE buyer_id IS NOT NULL
    DO UPDATE SET used = u.used + EXCLUDED.used
    WHERE NOT %(u_check)s OR u.used + EXCLUDED.used <= (SELECT buyer_annual_cap FROM u_prog)
    RETURNING 1
),
u_budget AS (
    INSERT INTO vouchers_programmeusage AS u (programme_id, year, buyer_id, used)
    SELECT %(u_programme)s::uuid, %(u_year)s::smallint, NULL::uuid, %(u_amount)s::numeric
    FROM u_prog
    WHERE EXISTS (SELECT 1 FROM u_buyer)
        AND (NOT %(u_check)s OR %(u_amount)s <= u_prog.annual_budget)
    ON CONFLICT (programme_id, year) WHERE buyer_id IS NULL
    DO UPDATE SET used = u.used + EXCLUDED.used
    WHERE NOT %(u_check)s OR u.used + EXCLUDED.used <= (SELECT annual_budget FROM u_prog)
    RETURNING 1
)"""


# Giving voucher value back (``u_amount`` < 0): the rows exist since the value was counted, and an
# upsert would not do — PostgreSQL checks ``used >= 0`` on the row an INSERT proposes before it
# looks for the conflicting one.
USAGE_GIVE_BACK = """
WITH u_prog AS (
    SELECT 1 FROM vouchers_programme p WHERE p.id = %(u_programme)s FOR KEY SHARE OF p
),
u_buyer AS (
    UPDATE vouchers_programmeusage SET used = used + %(u_amount)s
    WHERE programme_id = %(u_programme)s AND year = %(u_year)s AND buyer_id = %(u_buyer)s
        AND EXISTS (SELECT 1 FROM u_prog)
    RETURNING 1
),
u_budget AS (
    UPDATE vouchers_programmeusage SET used = used + %(u_amount)s
    WHERE programme_id = %(u_programme)s AND year = %(u_year)s AND buyer_id IS NULL
        AND EXISTS (SELECT 1 FROM u_buyer)
    RETURNING 1
)
SELECT count(*) FROM u_budget"""


def usage_params(
    programme_id: ObjectId, buyer_id: ObjectId, year: int, amount: Decimal, *, check: bool
) -> dict[str, Any]:
    """The parameters of ``USAGE_CTES``."""
    return {
        "u_programme": programme_id,
        "u_year": year,
        "u_buyer": buyer_id,
        "u_amount": amount,
        "u_check": check,
    }


def usage_change(
    *,
    programme_id: ObjectId,
    buyer_id: ObjectId,
    year: int,
    amount: Decimal,
    check: bool = True,
) -> bool:
    """Add ``amount`` CNY (negative to give back) to the programme's budget row and the buyer's
    row of ``year``, inside the caller's transaction. With ``check`` the change is made only when
    both stay within the programme's ``annual_budget`` and ``buyer_annual_cap`` — read from the
    programme row under its lock — and ``False`` is returned (nothing changed) otherwise.
    One statement on PostgreSQL; on SQLite (which serialises writers and adds decimals as
    binary floats) a read and a write in Python.
    """
    if not amount:
        return True
    if connection.vendor == "postgresql":
        if amount > 0:
            sql = f"WITH {USAGE_CTES.format(after='TRUE')} SELECT count(*) FROM u_budget"  # noqa: S608
        else:
            sql = USAGE_GIVE_BACK
        with connection.cursor() as cursor:
            cursor.execute(sql, usage_params(programme_id, buyer_id, year, amount, check=check))
            (changed,) = cursor.fetchone()
        if amount < 0 and not changed:
            raise ValueError(f"no usage of programme {programme_id} in {year} to give back")
        return bool(changed)
    programme = Programme.objects.get(pk=programme_id)
    rows = [
        ProgrammeUsage.objects.get_or_create(
            programme_id=programme_id,
            year=year,
            buyer_id=who,  # type: ignore[misc]  # None: the budget row
        )[0]
        for who in (buyer_id, None)
    ]
    limits = (programme.buyer_annual_cap, programme.annual_budget)
    if check and any(row.used + amount > limit for row, limit in zip(rows, limits, strict=True)):
        return False
    for row in rows:
        ProgrammeUsage.objects.filter(pk=row.pk).update(used=row.used + amount)
    return True


PROGRAMME_KEY_SHARE = "SELECT 1 FROM vouchers_programme WHERE id = %s FOR KEY SHARE"


def programme_key_share(programme_id: ObjectId) -> None:
    """Lock the programme row ``FOR KEY SHARE`` inside the caller's transaction, in this
    module's lock order (before the shared ledger accounts): the lock a row referencing the
    programme (a reimbursement claim) takes for its foreign key at COMMIT. Taken at COMMIT,
    after escrow, it would wait for a caller holding the programme row ``FOR UPDATE`` (the
    matcher's batch) that waits for escrow: a deadlock. A no-op on SQLite."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(PROGRAMME_KEY_SHARE, [programme_id])


def usage_read(programme_id: ObjectId, buyer_id: ObjectId, year: int) -> tuple[Decimal, Decimal]:
    """``(budget used, buyer's cap used)`` in CNY for ``year`` (zero before any hold), in one
    query, without locks."""
    used: dict[str | None, Decimal] = {
        (str(who) if who is not None else None): amount
        for who, amount in ProgrammeUsage.objects.filter(
            Q(buyer__isnull=True) | Q(buyer_id=buyer_id), programme_id=programme_id, year=year
        ).values_list("buyer_id", "used")
    }
    return used.get(None, ZERO), used.get(str(buyer_id), ZERO)


# Many usage rows grown at once (the matcher's batch), each only within its limit: the buyers'
# rows in (programme, buyer) order, then — only if every one of them grew — the budget rows in
# programme order. The caller holds the programme rows ``FOR UPDATE``.
USAGE_BOOK = """
WITH u_buyer AS (
    INSERT INTO vouchers_programmeusage AS u (programme_id, year, buyer_id, used)
    SELECT x.p, x.y, x.b, x.a
    FROM unnest(%(b_programmes)s::uuid[], %(b_years)s::smallint[], %(b_buyers)s::uuid[],
        %(b_amounts)s::numeric[]) AS x(p, y, b, a)
    JOIN vouchers_programme pr ON pr.id = x.p
    WHERE x.a <= pr.buyer_annual_cap
    ORDER BY x.p, x.b
    ON CONFLICT (programme_id, year, buyer_id) WHERE buyer_id IS NOT NULL
    DO UPDATE SET used = u.used + EXCLUDED.used
    WHERE u.used + EXCLUDED.used
        <= (SELECT buyer_annual_cap FROM vouchers_programme WHERE id = u.programme_id)
    RETURNING 1
),
u_budget AS (
    INSERT INTO vouchers_programmeusage AS u (programme_id, year, buyer_id, used)
    SELECT x.p, x.y, NULL::uuid, x.a
    FROM unnest(%(p_programmes)s::uuid[], %(p_years)s::smallint[], %(p_amounts)s::numeric[])
        AS x(p, y, a)
    JOIN vouchers_programme pr ON pr.id = x.p
    WHERE x.a <= pr.annual_budget AND (SELECT count(*) FROM u_buyer) = %(b_count)s
    ORDER BY x.p
    ON CONFLICT (programme_id, year) WHERE buyer_id IS NULL
    DO UPDATE SET used = u.used + EXCLUDED.used
    WHERE u.used + EXCLUDED.used
        <= (SELECT annual_budget FROM vouchers_programme WHERE id = u.programme_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM u_buyer), (SELECT count(*) FROM u_budget)"""


def usage_book(amounts: Mapping[tuple[Any, Any], Decimal], years: Mapping[Any, int]) -> bool:
    """Grow the usage of many holds at once (the matcher's batch): ``amounts`` CNY by
    ``(programme id, buyer id)``, each programme in its year ``years[programme id]``. Locks the
    programme rows ``FOR UPDATE`` (by pk; the batch's last lock before escrow) and grows every
    buyer's row and every programme's budget row only if all of them stay within their limits;
    ``False`` (nothing grown) otherwise. Two statements on PostgreSQL."""
    amounts = {k: v for k, v in amounts.items() if v}
    if not amounts:
        return True
    programme_ids = sorted({str(p) for p, _ in amounts})
    list(
        Programme.objects.select_for_update()
        .filter(pk__in=programme_ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    totals: dict[str, Decimal] = {}
    for (p, _), amount in amounts.items():
        totals[str(p)] = totals.get(str(p), ZERO) + amount
    year_of = {str(p): y for p, y in years.items()}
    if connection.vendor != "postgresql":
        programmes = {str(p.pk): p for p in Programme.objects.filter(pk__in=programme_ids)}
        grow: dict[tuple[Any, Any], Decimal] = {
            **amounts,
            **{(p, None): t for p, t in totals.items()},
        }
        rows = {
            key: ProgrammeUsage.objects.get_or_create(
                programme_id=key[0],
                year=year_of[str(key[0])],
                buyer_id=key[1],
            )[0]
            for key in grow
        }
        for key, amount in grow.items():
            programme = programmes[str(key[0])]
            limit = programme.annual_budget if key[1] is None else programme.buyer_annual_cap
            if rows[key].used + amount > limit:
                return False
        for key, amount in grow.items():
            ProgrammeUsage.objects.filter(pk=rows[key].pk).update(used=rows[key].used + amount)
        return True
    buyers = sorted(amounts, key=lambda k: (str(k[0]), str(k[1])))
    params: dict[str, Any] = {
        "b_programmes": [k[0] for k in buyers],
        "b_years": [year_of[str(k[0])] for k in buyers],
        "b_buyers": [k[1] for k in buyers],
        "b_amounts": [amounts[k] for k in buyers],
        "b_count": len(buyers),
        "p_programmes": programme_ids,
        "p_years": [year_of[p] for p in programme_ids],
        "p_amounts": [totals[p] for p in programme_ids],
    }
    with connection.cursor() as cursor:
        cursor.execute(USAGE_BOOK, params)
        grown_buyers, grown_budgets = cursor.fetchone()
    return grown_buyers == len(buyers) and grown_budgets == len(programme_ids)
