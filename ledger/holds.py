"""Two-phase payment holds of reservations: place (pending), void (release) or post (settle),
each at most once, with every refund recorded against what each part paid (§5.3–§5.5).

All functions run inside the caller's atomic block, after the caller locked the reservation
row (and, for a new hold, the programme and voucher rows). Amounts are CNY ``Decimal``.

Ledger shapes (``V`` voucher part, ``C`` cash part, ``B = V + C`` the bill):

* ``point_of_sale`` (default): hold moves V voucher → escrow and C wallet → escrow; at
  settlement the provider's payable gets the cash it earned less the platform fee and the
  provider's claims account gets the voucher part it earned (its claim on the programme).
* ``reimbursement``: the buyer pays in full, so the hold moves B wallet → escrow and V
  voucher → escrow (the voucher value is reserved so the programme's limits still hold); at
  settlement the provider's payable gets everything it earned less the fee and the *buyer's*
  claims account the voucher part (the buyer is repaid when the statement is paid).

Undelivered value goes back in the original proportion (``split_proportionally``); a voucher
refund goes to the voucher, or straight back to its programme when the voucher has already
lapsed, so an expired voucher's balance lapses exactly once. Every voucher value that comes back
also leaves the programme year's usage counters (``vouchers.usage``), in the posting's lock order
(the parties' accounts, then the programme's usage, then the shared hot accounts).

A settled hold can still be refunded (``hold_refund``: an operator's decision on a dispute, a
service-level credit): the cash from the provider's payable, the voucher value from the
claimant's claims (a receivable from the programme, which a negative adjustment line on the next
statement settles), both in the original proportion and within what each part still has paid.
"""

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from marketplace.errors import Conflict
from marketplace.money import ZERO, quantize_money, split_proportionally
from vouchers.usage import programme_key_share, usage_change

from .models import Account, Hold, Refund, Transaction
from .services import (
    Leg,
    accounts_lock,
    hold_accounts,
    organisation_account,
    system_account,
    transaction_post,
)

if TYPE_CHECKING:
    from accounts.models import User
    from marketplace.models import Reservation
    from vouchers.models import Voucher

POINT_OF_SALE = "point_of_sale"
REIMBURSEMENT = "reimbursement"


def hold_place(
    reservation: "Reservation",
    *,
    mode: str = POINT_OF_SALE,
    programme_year: int | None = None,
    before_hot: Callable[[], None] | None = None,
) -> Hold:
    """Open the pending hold of a just-created reservation and post its HOLD transaction.

    Moves ``reservation.voucher_part`` from the voucher and the cash paid (the cash part, or the
    whole bill in ``reimbursement`` mode) from the buyer's wallet into escrow. Raises
    ``Unprocessable(code="insufficient_funds")`` when the wallet or voucher cannot cover it.
    The buyer's and the voucher's balances change first; ``before_hot`` (the caller's change of
    the programme's usage, ``vouchers.usage.usage_change``) runs next, and the shared escrow row
    changes last. ``programme_year`` is the year the voucher part counts against.
    """
    voucher_part = reservation.voucher_part
    if not voucher_part:
        mode = POINT_OF_SALE
        programme_year = None
    cash_paid = reservation.bill if mode == REIMBURSEMENT else reservation.cash_part
    hold = Hold.objects.create(
        reservation=reservation,
        mode=mode,
        voucher_part=voucher_part,
        cash_paid=cash_paid,
        programme_year=programme_year,
    )
    escrow, wallet, voucher = hold_accounts(
        reservation.buyer_id, reservation.voucher_id if voucher_part else None
    )
    legs: list[Leg] = [(escrow, voucher_part + cash_paid)]
    if voucher is not None:
        legs.append((voucher, -voucher_part))
    legs.append((wallet, -cash_paid))
    transaction_post(
        Transaction.Reason.HOLD,
        legs,
        reservation=reservation,
        voucher=reservation.voucher,
        memo=f"hold ({mode})",
        before_hot=before_hot,
    )
    return hold


def _close(hold: Hold, status: str, now: datetime) -> None:
    """``pending → status`` by a conditional UPDATE: exactly one caller wins, the others get
    ``Conflict(code="hold_closed")`` (and their transaction rolls back)."""
    changed = Hold.objects.filter(pk=hold.pk, status=Hold.Status.PENDING).update(
        status=status, closed_at=now
    )
    if changed != 1:
        raise Conflict("the payment hold is already closed", code="hold_closed")
    hold.status, hold.closed_at = status, now


def _count_refund(hold: Hold, voucher_amount: Decimal, cash_amount: Decimal) -> None:
    """Add to the hold's refunded counters; the CHECK constraints refuse passing what was paid."""
    try:
        with transaction.atomic(savepoint=True):
            Hold.objects.filter(pk=hold.pk).update(
                refunded_voucher=F("refunded_voucher") + voucher_amount,
                refunded_cash=F("refunded_cash") + cash_amount,
            )
    except IntegrityError as exc:
        raise Conflict("refund would exceed what was paid", code="refund_exceeds_paid") from exc


def voucher_refund_account(voucher: "Voucher") -> Account:
    """Where value returning to ``voucher`` goes (``vouchers.services.voucher_refund_account``):
    the voucher, or its programme's budget once the voucher has lapsed."""
    from vouchers.services import voucher_refund_account as refund_account

    return refund_account(voucher.pk)


def cancellation_fee_legs(reservation: "Reservation", fee: Decimal) -> list[Leg]:
    """The cancellation fee ``fee`` CNY leaves escrow: the provider's payable gets it less the
    platform fee (``PLATFORM_FEE_RATE`` of the fee), the platform the rest."""
    platform = quantize_money(fee * settings.PLATFORM_FEE_RATE)
    return [
        (system_account(Account.Kind.ESCROW), -fee),
        (organisation_account(reservation.provider, Account.Kind.PAYABLE), fee - platform),
        (system_account(Account.Kind.FEES), platform),
    ]


def usage_give_back(
    reservation: "Reservation", hold: Hold, amount: Decimal
) -> Callable[[], None] | None:
    """The programme usage change returning ``amount`` CNY of voucher value of ``hold`` (a
    ``before_hot`` hook of the posting), or ``None`` when there is nothing to return."""
    if not amount:
        return None
    assert reservation.voucher is not None and hold.programme_year is not None
    programme_id = reservation.voucher.programme_id

    def give_back() -> None:
        usage_change(
            programme_id=programme_id,
            buyer_id=reservation.buyer_id,
            year=hold.programme_year,  # type: ignore[arg-type]
            amount=-amount,
            check=False,
        )

    return give_back


def hold_void(
    reservation: "Reservation",
    *,
    kind: str,
    fee: Decimal = ZERO,
    now: datetime | None = None,
) -> Refund | None:
    """Release a pending hold (cancellation, expiry, provider failure): everything held goes
    back — the voucher part to the voucher, the cash to the wallet — less ``fee`` CNY taken from
    the cash side only (vouchers pay for compute, not penalties) and posted as its own
    CANCEL_FEE transaction. Returns the refund (``None`` when nothing came back). Raises
    ``Conflict(code="hold_closed")`` when the hold is already closed. The accounts of both
    postings are locked first, in the one posting order (``accounts_lock``), with the voucher
    part leaving the programme's usage before the shared hot accounts."""
    now = now or timezone.now()
    hold = Hold.objects.get(reservation=reservation)
    _close(hold, Hold.Status.VOIDED, now)
    fee = max(ZERO, min(fee, reservation.cash_part))
    fee_legs = cancellation_fee_legs(reservation, fee) if fee else []
    cash_back = hold.cash_paid - fee
    legs: list[Leg] = [(system_account(Account.Kind.ESCROW), -(hold.voucher_part + cash_back))]
    if hold.voucher_part:
        assert reservation.voucher is not None
        legs.append((voucher_refund_account(reservation.voucher), hold.voucher_part))
    legs.append((organisation_account(reservation.buyer, Account.Kind.WALLET), cash_back))
    accounts_lock(
        [account for account, amount in [*fee_legs, *legs] if amount],
        before_hot=usage_give_back(reservation, hold, hold.voucher_part),
    )
    if fee:
        transaction_post(
            Transaction.Reason.CANCEL_FEE,
            fee_legs,
            reservation=reservation,
            memo=f"cancellation fee {fee}",
        )
    txn = transaction_post(
        Transaction.Reason.RELEASE,
        legs,
        reservation=reservation,
        voucher=reservation.voucher,
        memo=f"hold voided ({kind})",
    )
    if txn is None:  # a zero bill, or a fee that took all the cash: nothing came back
        return None
    _count_refund(hold, hold.voucher_part, cash_back)
    return Refund.objects.create(
        hold=hold,
        kind=kind,
        voucher_amount=hold.voucher_part,
        cash_amount=cash_back,
        transaction=txn,
    )


def hold_post(
    reservation: "Reservation", *, billable: Decimal, now: datetime | None = None
) -> tuple[Transaction | None, Decimal]:
    """Settle a pending hold for ``billable`` CNY (≤ the bill): one SETTLEMENT transaction.

    The undelivered ``bill − billable`` goes back in the original voucher:cash proportion (a
    ``Refund`` row records it); the platform fee (``PLATFORM_FEE_RATE`` of the billable amount,
    half-up, from the cash side) goes to fee revenue. Returns ``(transaction, voucher part
    earned)``: no transaction for a zero bill; the voucher part earned is the amount of the
    reimbursement claim to create (0 for none).
    Raises ``Conflict(code="hold_closed")`` when the hold is already closed.
    """
    now = now or timezone.now()
    hold = Hold.objects.get(reservation=reservation)
    _close(hold, Hold.Status.POSTED, now)
    r = reservation
    refund_v, refund_c = split_proportionally(r.bill - billable, r.voucher_part, r.cash_part)
    paid_v, paid_c = r.voucher_part - refund_v, r.cash_part - refund_c
    escrow = system_account(Account.Kind.ESCROW)
    wallet = organisation_account(r.buyer, Account.Kind.WALLET)
    payable = organisation_account(r.provider, Account.Kind.PAYABLE)
    fees = system_account(Account.Kind.FEES)
    if hold.mode == REIMBURSEMENT:
        # The buyer paid the whole bill in cash: all undelivered value returns as cash, the
        # voucher part earned becomes the buyer's claim and the provider earns the billable.
        fee = min(quantize_money(billable * settings.PLATFORM_FEE_RATE), billable)
        cash_back = refund_v + refund_c
        legs: list[Leg] = [
            (escrow, -(hold.voucher_part + hold.cash_paid)),
            (wallet, cash_back),
            (payable, billable - fee),
            (fees, fee),
        ]
        claimant = r.buyer
    else:
        fee = min(quantize_money(billable * settings.PLATFORM_FEE_RATE), paid_c)
        cash_back = refund_c
        legs = [(escrow, -r.bill), (wallet, cash_back), (payable, paid_c - fee), (fees, fee)]
        claimant = r.provider
    before_hot = usage_give_back(r, hold, refund_v)
    if r.voucher_id:
        assert r.voucher is not None
        legs += [
            (voucher_refund_account(r.voucher), refund_v),
            (organisation_account(claimant, Account.Kind.CLAIMS), paid_v),
        ]
        if before_hot is None and paid_v:
            # The caller's reimbursement claim references the programme: its row's KEY SHARE
            # before the hot accounts, as a usage change takes it (``vouchers.usage``).
            before_hot = partial(programme_key_share, r.voucher.programme_id)
    txn = transaction_post(
        Transaction.Reason.SETTLEMENT,
        legs,
        reservation=r,
        voucher=r.voucher,
        memo=f"settled for {billable} of {r.bill}",
        before_hot=before_hot,
    )
    if txn is not None and (refund_v or cash_back):
        _count_refund(hold, refund_v, cash_back)
        delivered = r.delivered_gpu_hours
        early = delivered is not None and delivered % r.gpu_count == 0
        Refund.objects.create(
            hold=hold,
            kind=Refund.Kind.EARLY_COMPLETION if early else Refund.Kind.PARTIAL_DELIVERY,
            voucher_amount=refund_v,
            cash_amount=cash_back,
            transaction=txn,
        )
    return txn, paid_v


def hold_refund(
    reservation: "Reservation",
    *,
    amount: Decimal,
    kind: str,
    actor: "User | None" = None,
    memo: str = "",
) -> tuple[Refund, "Account | None"]:
    """Refund ``amount`` CNY of a settled (posted) hold: an operator's decision on a dispute or
    a service-level credit, after settlement (``Refund.AFTER_SETTLEMENT`` kinds).

    The amount is split in the reservation's original voucher:cash proportion
    (``split_proportionally``, the voucher share floored to the fen), then kept within what each
    part still has paid (a fen moves to the other part when rounding would pass one); more than
    is left in total is ``Conflict(code="refund_exceeds_paid")`` and changes nothing. The cash
    goes from the provider's payable back to the buyer's wallet (in ``reimbursement`` mode, where
    the buyer paid the whole bill in cash, the voucher share too); the voucher value goes from
    the claimant's claims account back to the voucher (or its programme once the voucher has
    lapsed) and leaves the programme year's usage. The platform fee is not refunded. One REFUND
    transaction; the hold's refunded counters grow under their CHECK constraints, so two racing
    refunds can never pass what was paid. Returns ``(refund, claims account debited or None)``;
    the caller writes the matching negative claim line. ``Unprocessable(code=
    "insufficient_funds")`` when the provider's payable cannot cover the cash.
    Inside the caller's atomic block, under the reservation's row lock.
    """
    hold = Hold.objects.get(reservation=reservation)
    if hold.status != Hold.Status.POSTED:
        raise Conflict("only a settled reservation can be refunded so", code="not_settled")
    r = reservation
    left_v = hold.voucher_part - hold.refunded_voucher
    if hold.mode == REIMBURSEMENT:
        left_c = hold.cash_paid - hold.refunded_cash - left_v
    else:
        left_c = hold.cash_paid - hold.refunded_cash
    if amount > left_v + left_c:
        raise Conflict(
            f"at most {left_v + left_c} CNY is left to refund",
            code="refund_exceeds_paid",
            field="amount",
        )
    refund_v, refund_c = split_proportionally(amount, r.voucher_part, r.cash_part)
    if refund_v > left_v:
        refund_v, refund_c = left_v, refund_c + (refund_v - left_v)
    if refund_c > left_c:
        refund_v, refund_c = refund_v + (refund_c - left_c), left_c
    cash_back = refund_v + refund_c if hold.mode == REIMBURSEMENT else refund_c
    legs: list[Leg] = [
        (organisation_account(r.provider, Account.Kind.PAYABLE), -cash_back),
        (organisation_account(r.buyer, Account.Kind.WALLET), cash_back),
    ]
    claims = None
    if refund_v:
        assert r.voucher is not None
        claimant = r.buyer if hold.mode == REIMBURSEMENT else r.provider
        claims = organisation_account(claimant, Account.Kind.CLAIMS)
        legs += [(claims, -refund_v), (voucher_refund_account(r.voucher), refund_v)]
    txn = transaction_post(
        Transaction.Reason.REFUND,
        legs,
        reservation=r,
        voucher=r.voucher if refund_v else None,
        memo=f"refund after settlement ({kind}) {amount}",
        before_hot=usage_give_back(r, hold, refund_v),
    )
    assert txn is not None
    _count_refund(hold, refund_v, cash_back)
    refund = Refund.objects.create(
        hold=hold,
        kind=kind,
        voucher_amount=refund_v,
        cash_amount=cash_back,
        transaction=txn,
        actor=actor,
        memo=memo[:200],
    )
    return refund, claims
