"""Voucher writes and the voucher/cash split (PRODUCT.md §5.4, §5.6).

Lock order everywhere: programme row, then voucher row, then ledger accounts (by pk).
"""

import calendar
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from accounts.models import Organisation
from ledger.models import Account, Transaction
from ledger.services import programme_account, system_account, transaction_post, voucher_account
from marketplace.errors import Conflict, Unprocessable, ValidationFailed
from marketplace.money import ZERO, floor_money, quantize_money
from marketplace.types import ObjectId

from .models import CatalogueEntry, Programme, ReimbursementClaim, Voucher, VoucherApplication


def programme_year(programme: Programme, at: datetime) -> int:
    """The calendar year of ``at`` in the programme's time zone (Asia/Shanghai)."""
    return at.astimezone(ZoneInfo(programme.time_zone)).year


def _year_bounds(programme: Programme, year: int) -> tuple[datetime, datetime]:
    tz = ZoneInfo(programme.time_zone)
    return (datetime(year, 1, 1, tzinfo=tz), datetime(year + 1, 1, 1, tzinfo=tz))


def programme_in_effect(programme: Programme, at: datetime) -> bool:
    """Whether ``at`` falls in the programme's effective window (dates in its time zone,
    ``effective_until`` inclusive; none = open-ended)."""
    day = at.astimezone(ZoneInfo(programme.time_zone)).date()
    if day < programme.effective_from:
        return False
    return programme.effective_until is None or day <= programme.effective_until


def programme_fund(programme: Programme) -> None:
    """Fund the programme's budget account with its annual budget from the outside world, once."""
    account = programme_account(programme.pk)
    if account.entries.exists():
        return
    transaction_post(
        Transaction.Reason.PROGRAMME_FUNDING,
        [
            (system_account(Account.Kind.WORLD), -programme.annual_budget),
            (account, programme.annual_budget),
        ],
        memo=f"programme {programme.code} annual budget",
    )


def voucher_expiry(programme: Programme, issued_at: datetime) -> datetime:
    """End of the last valid day (Asia/Shanghai) ``validity_months`` after issue, as UTC."""
    tz = ZoneInfo(programme.time_zone)
    local = issued_at.astimezone(tz).date()
    month0 = local.month - 1 + programme.validity_months
    year, month = local.year + month0 // 12, month0 % 12 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    last_valid = date(year, month, day) - timedelta(days=1)
    return datetime.combine(last_valid + timedelta(days=1), time(0), tzinfo=tz).astimezone(
        ZoneInfo("UTC")
    )


def voucher_application_submit(
    *, buyer: Organisation, programme: Programme, amount: Decimal, purpose: str = ""
) -> VoucherApplication:
    """A buyer applies for a voucher of ``amount`` CNY.

    Raises ``ValidationFailed`` (field ``amount``) for an amount that is not positive CNY to the
    fen, below the programme's minimum voucher amount or above its per-buyer annual cap;
    ``ValidationFailed(code="programme_not_in_effect")`` outside the programme's effective
    window; ``ValidationFailed(code="not_a_buyer")`` when the organisation is not a buyer.
    """
    try:
        amount = Decimal(str(amount))
    except (ArithmeticError, ValueError) as exc:
        raise ValidationFailed("not a decimal number", field="amount") from exc
    if not buyer.is_buyer:
        raise ValidationFailed("only SMEs (buyers) can apply for vouchers", code="not_a_buyer")
    if not amount.is_finite() or amount <= 0 or amount != quantize_money(amount):
        raise ValidationFailed("amount must be positive CNY to the fen", field="amount")
    if amount > programme.buyer_annual_cap:
        raise ValidationFailed(
            f"above the programme's per-buyer annual cap ¥{programme.buyer_annual_cap}",
            code="buyer_cap_exceeded",
            field="amount",
        )
    if not programme_in_effect(programme, timezone.now()):
        raise ValidationFailed(
            "the programme is not in effect", code="programme_not_in_effect", field="programme"
        )
    if amount < programme.min_voucher_amount:
        raise ValidationFailed(
            f"below the programme's minimum voucher amount ¥{programme.min_voucher_amount}",
            code="below_minimum",
            field="amount",
        )
    return VoucherApplication.objects.create(
        programme=programme, buyer=buyer, amount=amount, purpose=purpose
    )


@transaction.atomic
def voucher_application_approve(
    *, application_id: ObjectId, now: datetime | None = None
) -> Voucher:
    """Approve a submitted application and issue its voucher (``voucher_issue``).

    Raises ``Conflict`` if the application is not ``submitted``; see ``voucher_issue``.
    """
    application = VoucherApplication.objects.select_for_update().get(pk=application_id)
    if application.status != VoucherApplication.Status.SUBMITTED:
        raise Conflict(f"application is {application.status}", code="illegal_transition")
    voucher = voucher_issue(
        programme=application.programme,
        owner=application.buyer,
        face_value=application.amount,
        application=application,
        now=now,
    )
    application.status = VoucherApplication.Status.APPROVED
    application.decided_at = timezone.now()
    application.save(update_fields=["status", "decided_at"])
    return voucher


@transaction.atomic
def voucher_application_reject(*, application_id: ObjectId, note: str = "") -> VoucherApplication:
    application = VoucherApplication.objects.select_for_update().get(pk=application_id)
    if application.status != VoucherApplication.Status.SUBMITTED:
        raise Conflict(f"application is {application.status}", code="illegal_transition")
    application.status = VoucherApplication.Status.REJECTED
    application.decision_note = note[:200]
    application.decided_at = timezone.now()
    application.save(update_fields=["status", "decision_note", "decided_at"])
    return application


@transaction.atomic
def voucher_issue(
    *,
    programme: Programme,
    owner: Organisation,
    face_value: Decimal,
    application: VoucherApplication | None = None,
    now: datetime | None = None,
) -> Voucher:
    """Issue a voucher of ``face_value`` CNY to ``owner``, reserving programme budget (§5.6).

    Under the programme row lock: the programme's budget account must cover the face value
    (else ``Unprocessable(code="programme_budget_exhausted")``) and the buyer's vouchers issued
    in this calendar year (Asia/Shanghai) plus this one must not pass ``buyer_annual_cap``
    (else ``Unprocessable(code="buyer_cap_exceeded")``).
    """
    now = now or timezone.now()
    if not programme_in_effect(programme, now):
        raise ValidationFailed(
            "the programme is not in effect", code="programme_not_in_effect", field="programme"
        )
    programme = Programme.objects.select_for_update().get(pk=programme.pk)
    face_value = quantize_money(Decimal(face_value))
    if face_value < programme.min_voucher_amount:
        raise ValidationFailed(
            "below the programme's minimum voucher amount", code="below_minimum", field="amount"
        )
    lo, hi = _year_bounds(programme, programme_year(programme, now))
    issued = (
        Voucher.objects.filter(
            programme=programme, owner=owner, issued_at__gte=lo, issued_at__lt=hi
        ).aggregate(s=Sum("face_value"))["s"]
        or ZERO
    )
    if issued + face_value > programme.buyer_annual_cap:
        raise Unprocessable(
            f"buyer's annual cap ¥{programme.buyer_annual_cap} would be passed (already ¥{issued})",
            code="buyer_cap_exceeded",
            field="amount",
        )
    budget = programme_account(programme.pk)
    budget.refresh_from_db()
    if budget.balance < face_value:
        raise Unprocessable(
            "programme budget exhausted", code="programme_budget_exhausted", field="amount"
        )
    voucher = Voucher.objects.create(
        programme=programme,
        owner=owner,
        application=application,
        face_value=face_value,
        issued_at=now,
        expires_at=voucher_expiry(programme, now),
    )
    transaction_post(
        Transaction.Reason.VOUCHER_ISSUE,
        [(budget, -face_value), (voucher_account(voucher.pk), face_value)],
        voucher=voucher,
        memo=f"voucher issued to {owner.name}",
    )
    return voucher


# --- The split -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """A bill split: ``voucher_part + cash_part == bill`` (CNY); ``note`` says why the voucher
    part is what it is (empty when the voucher applies in full)."""

    bill: Decimal
    voucher_part: Decimal
    cash_part: Decimal
    note: str = ""


def split_bill(bill: Decimal, max_share: Decimal, *limits: Decimal, note: str = "") -> Split:
    """``voucher_part = min(floor_fen(bill × max_share), *limits)``; cash is the rest (§5.4)."""
    voucher = min([floor_money(bill * max_share), *[max(ZERO, x) for x in limits]])
    voucher = max(ZERO, voucher)
    return Split(bill=bill, voucher_part=voucher, cash_part=bill - voucher, note=note)


def voucher_ineligibility(
    voucher: Voucher, *, buyer: Organisation, provider: Organisation, site: object, at: datetime
) -> str:
    """Why ``voucher`` cannot pay for ``provider``'s capacity at ``site`` for ``buyer`` at ``at``;
    an empty string when it can (§5.4). Reasons are stable codes."""
    programme = voucher.programme
    if voucher.owner_id != buyer.pk:
        return "voucher_not_owned"
    if voucher.status != Voucher.Status.ACTIVE or at >= voucher.expires_at:
        return "voucher_expired"
    if not programme_in_effect(programme, at):
        return "programme_not_in_effect"
    if buyer.pk == provider.pk or buyer.related.filter(pk=provider.pk).exists():
        return "related_party"
    year = programme_year(programme, at)
    if not CatalogueEntry.objects.filter(
        programme=programme, provider=provider, year=year, status=CatalogueEntry.Status.APPROVED
    ).exists():
        return "provider_not_in_catalogue"
    if not site_in_region(programme, site):
        return "site_outside_region"
    return ""


def site_in_region(programme: Programme, site: object) -> bool:
    """Whether a site lies in the programme's region scope (no scope = everywhere)."""
    hubs = set(programme.hubs.values_list("pk", flat=True))
    clusters = set(programme.clusters.values_list("pk", flat=True))
    sites = set(programme.sites.values_list("pk", flat=True))
    if not (hubs or clusters or sites):
        return True
    return (
        site.hub_id in hubs  # type: ignore[attr-defined]
        or (site.cluster_id is not None and site.cluster_id in clusters)  # type: ignore[attr-defined]
        or site.pk in sites  # type: ignore[attr-defined]
    )


def programme_limits_left(
    programme: Programme, buyer: Organisation, at: datetime
) -> tuple[Decimal, Decimal]:
    """``(budget left, buyer's cap left)`` for redemptions in ``at``'s programme year, in CNY:
    the annual budget and the per-buyer cap less voucher parts still held (live reservations)
    and voucher parts actually redeemed (reimbursement claims of settled ones, i.e. after any
    refund of undelivered hours)."""
    from marketplace.models import Reservation

    lo, hi = _year_bounds(programme, programme_year(programme, at))
    held = Reservation.objects.filter(
        voucher__programme=programme,
        status__in=("held", "confirmed", "active", "completed"),
        created_at__gte=lo,
        created_at__lt=hi,
    )
    redeemed = ReimbursementClaim.objects.filter(
        programme=programme, reservation__created_at__gte=lo, reservation__created_at__lt=hi
    )
    budget_used = (held.aggregate(s=Sum("voucher_part"))["s"] or ZERO) + (
        redeemed.aggregate(s=Sum("amount"))["s"] or ZERO
    )
    buyer_used = (held.filter(buyer=buyer).aggregate(s=Sum("voucher_part"))["s"] or ZERO) + (
        redeemed.filter(reservation__buyer=buyer).aggregate(s=Sum("amount"))["s"] or ZERO
    )
    return (
        quantize_money(programme.annual_budget - budget_used),
        quantize_money(programme.buyer_annual_cap - buyer_used),
    )


def voucher_split(
    voucher: Voucher | None,
    *,
    bill: Decimal,
    buyer: Organisation,
    provider: Organisation,
    site: object,
    at: datetime,
) -> Split:
    """The voucher/cash split of ``bill`` CNY (§5.4), reading current balances (no locks).

    Services that hold funds call this after locking the programme and voucher rows.
    """
    if voucher is None:
        return Split(bill=bill, voucher_part=ZERO, cash_part=bill)
    reason = voucher_ineligibility(voucher, buyer=buyer, provider=provider, site=site, at=at)
    if reason:
        return Split(bill=bill, voucher_part=ZERO, cash_part=bill, note=reason)
    balance = voucher_account(voucher.pk).balance
    budget_left, cap_left = programme_limits_left(voucher.programme, buyer, at)
    return split_bill(bill, voucher.programme.max_share, balance, budget_left, cap_left)


@transaction.atomic
def vouchers_lapse_expired(*, now: datetime | None = None) -> int:
    """Return each expired voucher's unused balance to its programme budget, once (§5.6).

    Holds made before expiry keep their escrowed amount. Returns the number of vouchers lapsed.
    """
    now = now or timezone.now()
    count = 0
    for voucher in (
        Voucher.objects.select_for_update()
        .filter(status=Voucher.Status.ACTIVE, expires_at__lte=now)
        .order_by("pk")
    ):
        account = voucher_account(voucher.pk)
        account.refresh_from_db()
        transaction_post(
            Transaction.Reason.VOUCHER_LAPSE,
            [
                (account, -account.balance),
                (programme_account(voucher.programme_id), account.balance),
            ],
            voucher=voucher,
            memo="expired voucher balance lapsed",
        )
        voucher.status = Voucher.Status.EXPIRED
        voucher.save(update_fields=["status"])
        count += 1
    return count


def catalogue_entry_approve(*, entry_id: ObjectId) -> CatalogueEntry:
    """Approve a provider's catalogue entry (``proposed``/``suspended`` → ``approved``)."""
    with transaction.atomic():
        entry = CatalogueEntry.objects.select_for_update().get(pk=entry_id)
        entry.status = CatalogueEntry.Status.APPROVED
        entry.save(update_fields=["status"])
    return entry


def voucher_refund_account(voucher_id: ObjectId) -> Account:
    """Where value returned to a voucher goes: the voucher's own account, or — once its unused
    balance has lapsed — straight back to the programme budget (§5.6: unused balance after expiry
    lapses back). A voucher past ``expires_at`` but not yet lapsed keeps it; the daily lapse job
    sweeps it then."""
    voucher = Voucher.objects.only("status", "programme_id").get(pk=voucher_id)
    if voucher.status == Voucher.Status.EXPIRED:
        return programme_account(voucher.programme_id)
    return voucher_account(voucher_id)
