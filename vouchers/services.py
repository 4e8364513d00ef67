"""Voucher writes and the voucher/cash split (PRODUCT.md §5.4, §5.6).

Lock order: a voucher's issue locks its programme row, then ledger accounts (by pk); a hold locks
the buyer's and the voucher's accounts (by pk; not the voucher row), then the programme row
``FOR KEY SHARE`` and its usage counters (``vouchers.usage``; the budget row is shared by every
hold of the programme, so as late as possible), then the shared hot accounts (escrow) last. A
release or refund locks the voucher row (``voucher_refund_account``) before the accounts; the
lapse job locks voucher rows, then each voucher's account.
"""

import calendar
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from accounts.models import Organisation
from ledger.models import Account, Transaction
from ledger.services import (
    organisation_account,
    programme_account,
    system_account,
    transaction_post,
    voucher_account,
)
from marketplace.errors import Conflict, PermissionDenied, Unprocessable, ValidationFailed
from marketplace.money import FEN, ZERO, floor_money, quantize_money
from marketplace.types import ObjectId

from .models import (
    CatalogueEntry,
    Programme,
    ReimbursementClaim,
    Statement,
    Voucher,
    VoucherApplication,
)
from .usage import usage_read


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
    window; ``PermissionDenied(code="not_a_buyer")`` when the organisation is not a buyer (a
    403, as for every other buyer action).
    """
    try:
        amount = Decimal(str(amount))
    except (ArithmeticError, ValueError) as exc:
        raise ValidationFailed("not a decimal number", field="amount") from exc
    if not buyer.is_buyer:
        raise PermissionDenied("only SMEs (buyers) can apply for vouchers", code="not_a_buyer")
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
    (else ``Unprocessable(code="programme_budget_exhausted")``), the programme must be in effect
    (``ValidationFailed(code="programme_not_in_effect")``) and the buyer's vouchers issued
    in this calendar year (Asia/Shanghai) plus this one must not pass ``buyer_annual_cap``
    (else ``Unprocessable(code="buyer_cap_exceeded")``). Vouchers go to approved organisations
    only (``Conflict(code="organisation_not_approved")``): an SME may apply while its
    registration is pending, but the operator approves the organisation first.
    """
    now = now or timezone.now()
    if owner.status != Organisation.Status.APPROVED:
        raise Conflict("organisation is not approved", code="organisation_not_approved")
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
class LineSplit:
    """One bill line and its share of the split: ``voucher_part + cash_part == amount`` (CNY);
    ``eligible`` when the programme funds the line's category (only then ``voucher_part`` > 0)."""

    category: str
    amount: Decimal
    eligible: bool
    voucher_part: Decimal
    cash_part: Decimal


@dataclass(frozen=True)
class Split:
    """A bill split: ``voucher_part + cash_part == bill`` (CNY); ``note`` says why the voucher
    part is what it is (empty when the voucher applies in full). ``lines`` split each bill line
    the same way; their amounts add up to ``bill`` and their parts to the parts, exactly."""

    bill: Decimal
    voucher_part: Decimal
    cash_part: Decimal
    note: str = ""
    lines: tuple[LineSplit, ...] = ()


def split_bill(bill: Decimal, max_share: Decimal, *limits: Decimal, note: str = "") -> Split:
    """``voucher_part = min(floor_fen(bill × max_share), *limits)``; cash is the rest (§5.4)."""
    return split_lines([BillLine("gpu_time", bill)], max_share, *limits, note=note)


@dataclass(frozen=True)
class BillLine:
    """One line of a bill: ``category`` (``vouchers.models.BILL_CATEGORIES``) and ``amount``
    CNY (already rounded to the fen by the pricing function)."""

    category: str
    amount: Decimal


def split_lines(
    lines: Sequence[BillLine],
    max_share: Decimal,
    *limits: Decimal,
    eligible: Collection[str] = ("gpu_time",),
    note: str = "",
) -> Split:
    """Split a bill of several lines (§5.4): the voucher pays at most ``max_share`` of the
    *eligible base* — the lines whose category the programme funds — floored to the fen, and
    never more than any of ``limits`` (voucher balance, budget left, buyer's cap left).

    The voucher part is spread over the eligible lines in proportion to their amounts (each
    floored to the fen, the fens left over going to the largest remainders, earlier lines first
    on a tie), so the lines' parts add up to the parts exactly and no line's voucher part passes
    its amount. Beijing (20 %, compute only) on ¥80,000 of GPU time and ¥20,000 of storage:
    base ¥80,000, voucher part ≤ ¥16,000, all of it on the GPU-time line; cash ¥84,000.
    """
    bill = sum((line.amount for line in lines), ZERO)
    base = sum((line.amount for line in lines if line.category in eligible), ZERO)
    voucher = min([floor_money(base * max_share), *[max(ZERO, x) for x in limits]])
    voucher = max(ZERO, voucher)
    parts = [ZERO] * len(lines)
    if voucher:
        remainders: list[tuple[Decimal, int]] = []
        for i, line in enumerate(lines):
            if line.category in eligible and line.amount > 0:
                exact = voucher * line.amount / base
                parts[i] = floor_money(exact)
                remainders.append((exact - parts[i], i))
        left = voucher - sum(parts, ZERO)
        for _, i in sorted(remainders, key=lambda r: (-r[0], r[1])):
            if left <= 0:
                break
            parts[i] += FEN
            left -= FEN
    split_of_lines = tuple(
        LineSplit(
            category=line.category,
            amount=line.amount,
            eligible=line.category in eligible,
            voucher_part=part,
            cash_part=line.amount - part,
        )
        for line, part in zip(lines, parts, strict=True)
    )
    return Split(
        bill=bill, voucher_part=voucher, cash_part=bill - voucher, note=note, lines=split_of_lines
    )


def voucher_part_check(
    voucher: Voucher,
    voucher_part: Decimal,
    *,
    buyer: Organisation,
    accelerator: object | None = None,
    lines: Sequence[BillLine],
    share: Decimal | None = None,
) -> None:
    """Refuse a voucher part above ``floor_fen(eligible base × share)`` of its programme (§5.4):
    ``Unprocessable(code="voucher_share_exceeded", field="voucher_part")``. Chengdu 2025 on a
    ¥100,000 bill allows ¥60,000.00; ¥60,000.01 is refused. Every hold passes through it."""
    programme = voucher.programme
    base = sum(
        (line.amount for line in lines if line.category in (programme.eligible_categories or ())),
        ZERO,
    )
    if share is None:
        share = programme_share(programme, buyer=buyer, accelerator=accelerator)
    allowed = floor_money(base * share)
    if voucher_part > allowed:
        raise Unprocessable(
            f"voucher part ¥{voucher_part} exceeds ¥{allowed} allowed by {programme.code}",
            code="voucher_share_exceeded",
            field="voucher_part",
        )


def programme_share(
    programme: Programme, *, buyer: Organisation, accelerator: object | None = None
) -> Decimal:
    """The ``max_share`` that applies: the programme's own or the largest of its matching
    tiers (``ShareTier``: domestic accelerators, listed accelerators, listed buyers)."""
    share = programme.max_share
    for tier in programme.tiers.prefetch_related("accelerators", "buyers"):
        if tier.domestic_accelerator is not None and (
            accelerator is None
            or bool(getattr(accelerator, "is_domestic", False)) != tier.domestic_accelerator
        ):
            continue
        accelerators = {a.pk for a in tier.accelerators.all()}
        if accelerators and getattr(accelerator, "pk", None) not in accelerators:
            continue
        buyers = {b.pk for b in tier.buyers.all()}
        if buyers and buyer.pk not in buyers:
            continue
        share = max(share, tier.max_share)
    return share


@dataclass(frozen=True)
class VoucherFacts:
    """What splitting one bill needs to know about a voucher, read together at the hold (§5.4):
    its ledger ``balance`` (CNY); whether buyer and provider are ``related`` organisations;
    whether the provider is approved in the programme's catalogue for the year
    (``in_catalogue``) and the site inside its region (``in_region``); the ``share`` that applies
    (tiers included); the programme year's ``budget_left`` and the buyer's ``cap_left`` (CNY,
    negative once passed). ``voucher_facts`` reads them with the ORM; the hold's one-statement
    read (``marketplace.holdpath``) reads the same in SQL."""

    balance: Decimal
    related: bool
    in_catalogue: bool
    in_region: bool
    share: Decimal
    budget_left: Decimal
    cap_left: Decimal


def voucher_facts(
    voucher: Voucher,
    *,
    buyer: Organisation,
    provider: Organisation,
    site: object,
    at: datetime,
    accelerator: object | None = None,
) -> VoucherFacts:
    """``VoucherFacts`` of ``voucher`` for ``provider``'s capacity at ``site`` bought by
    ``buyer`` at ``at``, read with the ORM (current balances, no locks)."""
    programme = voucher.programme
    budget_left, cap_left = programme_limits_left(programme, buyer, at)
    return VoucherFacts(
        balance=voucher_account(voucher.pk).balance,
        related=buyer.related.filter(pk=provider.pk).exists(),
        in_catalogue=provider_in_catalogue(programme, provider, at),
        in_region=site_in_region(programme, site),
        share=programme_share(programme, buyer=buyer, accelerator=accelerator),
        budget_left=budget_left,
        cap_left=cap_left,
    )


def ineligibility_reason(
    voucher: Voucher,
    *,
    buyer_id: ObjectId,
    provider_id: ObjectId,
    at: datetime,
    related: bool,
    in_catalogue: bool,
    in_region: bool,
) -> str:
    """The first reason ``voucher`` cannot pay here, as a stable code, or ``""`` (§5.4): not
    the buyer's, expired (end of its last valid day, Asia/Shanghai), programme not in effect,
    same or related organisations, provider not approved for the year, site outside the
    region. Pure: the facts are read by the caller."""
    if str(voucher.owner_id) != str(buyer_id):
        return "voucher_not_owned"
    if voucher.status != Voucher.Status.ACTIVE or at >= voucher.expires_at:
        return "voucher_expired"
    if not programme_in_effect(voucher.programme, at):
        return "programme_not_in_effect"
    if str(buyer_id) == str(provider_id) or related:
        return "related_party"
    if not in_catalogue:
        return "provider_not_in_catalogue"
    if not in_region:
        return "site_outside_region"
    return ""


def voucher_ineligibility(
    voucher: Voucher, *, buyer: Organisation, provider: Organisation, site: object, at: datetime
) -> str:
    """Why ``voucher`` cannot pay for ``provider``'s capacity at ``site`` for ``buyer`` at ``at``;
    an empty string when it can (§5.4). Reasons are stable codes (``ineligibility_reason``)."""
    programme = voucher.programme
    return ineligibility_reason(
        voucher,
        buyer_id=buyer.pk,
        provider_id=provider.pk,
        at=at,
        related=buyer.related.filter(pk=provider.pk).exists(),
        in_catalogue=provider_in_catalogue(programme, provider, at),
        in_region=site_in_region(programme, site),
    )


def provider_in_catalogue(programme: Programme, provider: Organisation, at: datetime) -> bool:
    """Whether ``provider`` has an approved catalogue entry of ``programme`` for the programme
    year that ``at`` falls in (§5.4: vouchers pay approved providers only)."""
    return CatalogueEntry.objects.filter(
        programme=programme,
        provider=provider,
        year=programme_year(programme, at),
        status=CatalogueEntry.Status.APPROVED,
    ).exists()


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
    the annual budget and the per-buyer cap less the voucher parts counted in that year — held
    by live reservations, redeemed by settled ones after any refund (``ProgrammeUsage``). One
    query, no locks; negative when a limit is passed."""
    budget_used, buyer_used = usage_read(programme.pk, buyer.pk, programme_year(programme, at))
    return (
        quantize_money(programme.annual_budget - budget_used),
        quantize_money(programme.buyer_annual_cap - buyer_used),
    )


def voucher_hold_lock(voucher: Voucher, buyer_id: ObjectId, *, programme: bool = True) -> None:
    """Lock what a voucher hold changes, in the hold's lock order, before its split: the buyer's
    wallet and the voucher's ledger accounts (by pk; the balances read next are then current),
    then — with ``programme`` — the programme row ``FOR UPDATE``, which stops every other change
    of the programme's usage counters (``vouchers.usage``) until commit, so the split can read
    budget and cap left and know they still hold."""
    list(
        Account.objects.select_for_update(no_key=True)
        .filter(
            Q(kind=Account.Kind.WALLET, organisation_id=buyer_id)
            | Q(kind=Account.Kind.VOUCHER, voucher_id=voucher.pk)
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if programme:
        Programme.objects.select_for_update().filter(pk=voucher.programme_id).values_list(
            "pk"
        ).get()


def split_with_facts(
    voucher: Voucher,
    facts: VoucherFacts,
    *,
    bill: Decimal,
    buyer: Organisation,
    provider_id: ObjectId,
    at: datetime,
    lines: Sequence[BillLine] | None = None,
) -> Split:
    """The voucher/cash split of ``bill`` CNY (§5.4) from facts already read: zero voucher part
    with the reason in ``Split.note`` when the voucher cannot pay here, else
    ``min(floor_fen(eligible base × share), balance, budget left, cap left)``; checked by
    ``voucher_part_check``. ``lines`` default to one ``gpu_time`` line of the whole bill."""
    lines = list(lines) if lines is not None else [BillLine("gpu_time", bill)]
    if sum((line.amount for line in lines), ZERO) != bill:
        raise ValueError("bill lines must add up to the bill")
    programme = voucher.programme
    eligible = programme.eligible_categories or ()
    reason = ineligibility_reason(
        voucher,
        buyer_id=buyer.pk,
        provider_id=provider_id,
        at=at,
        related=facts.related,
        in_catalogue=facts.in_catalogue,
        in_region=facts.in_region,
    )
    if reason:
        return split_lines(lines, facts.share, ZERO, eligible=eligible, note=reason)
    split = split_lines(
        lines, facts.share, facts.balance, facts.budget_left, facts.cap_left, eligible=eligible
    )
    voucher_part_check(voucher, split.voucher_part, buyer=buyer, lines=lines, share=facts.share)
    return split


def voucher_split(
    voucher: Voucher | None,
    *,
    bill: Decimal,
    buyer: Organisation,
    provider: Organisation,
    site: object,
    at: datetime,
    accelerator: object | None = None,
    lines: Sequence[BillLine] | None = None,
) -> Split:
    """The voucher/cash split of ``bill`` CNY (§5.4), reading current balances (no locks).

    ``lines`` default to one ``gpu_time`` line of the whole bill; the voucher pays only for
    the categories its programme funds. ``accelerator`` selects a share tier. The voucher part
    is zero, with the reason in ``Split.note``, when the voucher is not usable here
    (``ineligibility_reason``). Services that hold funds call this after locking the voucher's
    accounts; the programme's limits are then kept by ``vouchers.usage.usage_change``.
    """
    if voucher is None:
        lines = list(lines) if lines is not None else [BillLine("gpu_time", bill)]
        if sum((line.amount for line in lines), ZERO) != bill:
            raise ValueError("bill lines must add up to the bill")
        return split_lines(lines, Decimal(0), eligible=())
    facts = voucher_facts(
        voucher, buyer=buyer, provider=provider, site=site, at=at, accelerator=accelerator
    )
    return split_with_facts(
        voucher, facts, bill=bill, buyer=buyer, provider_id=provider.pk, at=at, lines=lines
    )


def vouchers_lapse_expired(*, now: datetime | None = None) -> int:
    """Return each expired voucher's unused balance to its programme budget, once (§5.6).

    Holds made before expiry keep their escrowed amount. Returns the number of vouchers lapsed.
    One transaction per voucher, its status checked again under its row lock (a second run
    finds it expired and skips it): the programme's budget account, which the posting locks
    after the voucher's account, is never held while the next voucher's account is waited
    for (a booking holding that account waits for the programme's row, which a voucher issue
    holds while it waits for the budget account: a deadlock of three).
    """
    now = now or timezone.now()
    count = 0
    expired = Voucher.objects.filter(status=Voucher.Status.ACTIVE, expires_at__lte=now)
    for voucher_id in expired.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            # ``FOR NO KEY UPDATE``: a hold in flight on a voucher (it locks the voucher's
            # account, not its row) checks its foreign keys at COMMIT with ``FOR KEY SHARE`` of
            # the voucher row; ``FOR UPDATE`` would block that check while waiting for the
            # account: a deadlock.
            voucher = (
                Voucher.objects.select_for_update(no_key=True)
                .filter(pk=voucher_id, status=Voucher.Status.ACTIVE, expires_at__lte=now)
                .first()
            )
            if voucher is None:
                continue
            # Holds lock the voucher's account, not its row: lock the account before reading
            # the balance, so a hold committing meanwhile cannot make the posting below stale.
            voucher_account(voucher.pk)
            account = Account.objects.select_for_update(no_key=True).get(
                kind=Account.Kind.VOUCHER, voucher_id=voucher.pk
            )
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


def catalogue_entry_propose(
    *, programme: Programme, provider: Organisation, year: int
) -> CatalogueEntry:
    """Propose ``provider`` for ``programme``'s catalogue of ``year`` (status ``proposed``).

    Raises ``ValidationFailed(code="not_a_provider")`` for a buyer-only organisation and
    ``Conflict(code="already_in_catalogue")`` when an entry for that year exists.
    """
    if not provider.is_provider:
        raise ValidationFailed("only providers enter catalogues", code="not_a_provider")
    with transaction.atomic():
        entry, created = CatalogueEntry.objects.get_or_create(
            programme=programme, provider=provider, year=year
        )
    if not created:
        raise Conflict(f"already {entry.status} for {year}", code="already_in_catalogue")
    return entry


def _catalogue_entry_move(entry_id: ObjectId, status: str) -> CatalogueEntry:
    with transaction.atomic():
        entry = CatalogueEntry.objects.select_for_update().get(pk=entry_id)
        if status not in CatalogueEntry.TRANSITIONS[entry.status]:
            raise Conflict(
                f"catalogue entry is {entry.status}, cannot become {status}",
                code="illegal_transition",
            )
        entry.status = status
        entry.save(update_fields=["status"])
    return entry


def voucher_refund_account(voucher_id: ObjectId) -> Account:
    """Where value returned to a voucher goes: the voucher's own account, or — once its unused
    balance has lapsed — straight back to the programme budget (§5.6: unused balance after expiry
    lapses back). A voucher past ``expires_at`` but not yet lapsed keeps it; the daily lapse job
    sweeps it then. The voucher row is locked (``FOR NO KEY UPDATE``) until commit, so the lapse
    job cannot sweep the balance between this read and the caller's posting."""
    voucher = (
        Voucher.objects.select_for_update(no_key=True)
        .only("status", "programme_id")
        .get(pk=voucher_id)
    )
    if voucher.status == Voucher.Status.EXPIRED:
        return programme_account(voucher.programme_id)
    return voucher_account(voucher_id)


def catalogue_entry_approve(*, entry_id: ObjectId) -> CatalogueEntry:
    """Approve a provider for its year (``proposed``/``suspended`` → ``approved``); only then
    can its capacity be paid with the programme's vouchers. ``Conflict`` otherwise."""
    return _catalogue_entry_move(entry_id, CatalogueEntry.Status.APPROVED)


def catalogue_entry_suspend(*, entry_id: ObjectId) -> CatalogueEntry:
    """Suspend a provider (``proposed``/``approved`` → ``suspended``): new holds get no voucher
    part; holds already made keep theirs. ``Conflict`` otherwise."""
    return _catalogue_entry_move(entry_id, CatalogueEntry.Status.SUSPENDED)


# --- Reimbursement statements ----------------------------------------------------------------


def statement_period_bounds(programme: Programme, day: date) -> tuple[date, date]:
    """The statement period ``[start, end)`` holding ``day`` (monthly or quarterly)."""
    months = 3 if programme.statement_period == Programme.StatementPeriod.QUARTERLY else 1
    first_month = (day.month - 1) // months * months + 1
    start = date(day.year, first_month, 1)
    end_month0 = first_month - 1 + months
    end = date(day.year + end_month0 // 12, end_month0 % 12 + 1, 1)
    return start, end


def _local_midnight(programme: Programme, day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(programme.time_zone))


def statement_issue(
    *,
    programme_id: ObjectId,
    provider_id: ObjectId,
    period_start: date,
    now: datetime | None = None,
) -> Statement:
    """Issue the reimbursement statement of one programme, provider and period (§5.6).

    The period is the one holding ``period_start`` (``statement_period_bounds``); it must be
    over in the programme's time zone (else ``Conflict(code="period_not_over")``), so no claim
    can join it later. It lists every claim line of the provider on the programme made in the
    period — redemptions of settled reservations and negative adjustments of refunds after
    settlement — plus any line from an earlier period whose statement was already issued
    before the line was made (a late line: it goes on the next statement, never into an issued
    one). ``total`` is their sum (CNY; negative when adjustments outweigh redemptions).
    Issuing the same period again returns the same statement with the same total
    (reproducible).
    """
    return _statement_issue(programme_id, provider_id, period_start, now or timezone.now())[0]


def _statement_issue(
    programme_id: ObjectId, provider_id: ObjectId, period_start: date, now: datetime
) -> tuple[Statement, bool]:
    with transaction.atomic():
        programme = Programme.objects.select_for_update().get(pk=programme_id)
        start, end = statement_period_bounds(programme, period_start)
        if _local_midnight(programme, end) > now:
            raise Conflict("the statement period is not over yet", code="period_not_over")
        existing = Statement.objects.filter(
            programme=programme, provider__pk=provider_id, period_start=start
        ).first()
        if existing is not None:
            return existing, False
        claims = list(
            ReimbursementClaim.objects.select_for_update()
            .filter(
                programme=programme,
                provider__pk=provider_id,
                statement__isnull=True,
                created_at__lt=_local_midnight(programme, end),
            )
            .order_by("pk")
        )
        statement = Statement.objects.create(
            programme=programme,
            provider_id=provider_id,
            period_start=start,
            period_end=end,
            total=sum((c.amount for c in claims), ZERO),
            claim_count=len(claims),
        )
        ReimbursementClaim.objects.filter(pk__in=[c.pk for c in claims]).update(statement=statement)
    return statement, True


def statements_issue_due(*, now: datetime | None = None) -> int:
    """Issue every statement whose period is over and that has unlisted claim lines (beat task).
    A line made in a period whose statement is already issued waits for the next period.
    Safe to run twice. Returns the number of statements issued."""
    now = now or timezone.now()
    issued = 0
    pending = (
        ReimbursementClaim.objects.filter(statement__isnull=True)
        .values_list("programme_id", "provider_id", "created_at")
        .order_by("programme_id", "provider_id", "created_at")
    )
    programmes = {p.pk: p for p in Programme.objects.all()}
    done = set(Statement.objects.values_list("programme_id", "provider_id", "period_start"))
    seen: set[tuple[object, object, date]] = set()
    for programme_id, provider_id, created_at in pending:
        programme = programmes[programme_id]
        local_day = created_at.astimezone(ZoneInfo(programme.time_zone)).date()
        start, end = statement_period_bounds(programme, local_day)
        while (programme_id, provider_id, start) in done:  # a late line: the next period
            start, end = statement_period_bounds(programme, end)
        key = (programme_id, provider_id, start)
        if key in seen or _local_midnight(programme, end) > now:
            continue
        seen.add(key)
        _, created = _statement_issue(programme_id, provider_id, start, now)
        issued += created
    return issued


def statement_mark_paid(*, statement_id: ObjectId, now: datetime | None = None) -> Statement:
    """The operator marks a statement paid: one CLAIM_PAID ledger transaction moves each
    claim's amount out of its claimant's claims account — to the provider's payable
    (``point_of_sale``) or back to the buyer's wallet (``reimbursement``) — and the claims
    become ``paid``. Exactly once: a second call (or a racing one) is a ``Conflict``
    (``already_paid``) and posts nothing.
    """
    now = now or timezone.now()
    with transaction.atomic():
        statement = Statement.objects.select_for_update().get(pk=statement_id)
        if statement.status != Statement.Status.ISSUED:
            raise Conflict("statement already paid", code="already_paid")
        claims = list(statement.claims.select_related("claimant").order_by("pk"))
        by_account: dict[object, tuple[Account, Decimal]] = {}

        def add(account: Account, amount: Decimal) -> None:
            _, before = by_account.get(account.pk, (account, ZERO))
            by_account[account.pk] = (account, before + amount)

        for claim in claims:
            add(organisation_account(claim.claimant, Account.Kind.CLAIMS), -claim.amount)
            kind = (
                Account.Kind.WALLET
                if claim.mode == Programme.RedemptionMode.REIMBURSEMENT
                else Account.Kind.PAYABLE
            )
            add(organisation_account(claim.claimant, kind), claim.amount)
        txn = transaction_post(
            Transaction.Reason.CLAIM_PAID,
            list(by_account.values()),
            memo=f"statement {statement.programme_id} {statement.period_start} paid",
        )
        statement.status = Statement.Status.PAID
        statement.paid_at = now
        statement.transaction = txn
        statement.save(update_fields=["status", "paid_at", "transaction"])
        statement.claims.update(status=ReimbursementClaim.Status.PAID, paid_at=now)
    return statement
