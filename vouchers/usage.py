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
