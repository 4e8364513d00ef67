"""Races between a matching cycle's write path and what people do meanwhile, on PostgreSQL
with real threads: every writer takes its row locks in the one order of the service layer
(demand → offers → sites → voucher → ledger accounts → programme → escrow), so none of them
deadlocks with a cycle's batch, and the money and capacity come out exact."""

import time
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from ledger.audit import ledger_audit
from ledger.models import Account, Hold
from ledger.selectors import organisation_balances
from ledger.services import programme_account, system_account, voucher_account
from marketplace.matching.bulk import matches_write
from marketplace.matching.engine import Match
from marketplace.models import Demand, Reservation
from marketplace.money import ZERO
from marketplace.services import (
    offer_peak_reserved,
    reservation_cancel,
    reservation_create,
    reservation_parts_create,
    reservation_settle,
    wallet_deposit,
)
from marketplace.timeutil import hour_index
from tests.factories import DemandFactory, OfferFactory, OrganisationFactory
from tests.marketplace.races import (
    blocked_on_locks,
    in_thread,
    other_session,
    race_behind,
    wait_for_blocked,
)
from vouchers.models import ReimbursementClaim, Voucher
from vouchers.services import voucher_issue, vouchers_lapse_expired


def _demand(buyer, accelerator, **fields):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(buyer=buyer, **fields)
    demand.accelerators.add(accelerator)
    return demand


def _split_written_meanwhile(buyer, accelerator, voucher, start, *offers):  # type: ignore[no-untyped-def]
    """A split demand of ``buyer`` for 16 GPUs for 3 h paying with ``voucher``, and the
    cycle's write of it in two 8-GPU parts on ``offers`` at ``start`` (returns the parts
    made)."""
    wanted = _demand(
        buyer,
        accelerator,
        gpu_count=16,
        duration_hours=3,
        split="site",
        voucher=voucher,
        earliest_start=start,
    )

    def write() -> object:
        return len(
            reservation_parts_create(
                demand_id=wanted.pk, parts=[(o.pk, 8) for o in offers], start=start
            )
        )

    return wanted, write


def _split_booked(buyer, provider, site, accelerator, voucher, n):  # type: ignore[no-untyped-def]
    """``n`` offers at ``site``, and a split demand of ``buyer`` for 16 GPUs for 3 h paying
    with ``voucher``, booked in two 8-GPU parts on the first two (each part paying some of it
    with the voucher): ``(offers, demand, parts)``."""
    offers = [
        OfferFactory.create(provider=provider, site=site, accelerator=accelerator) for _ in range(n)
    ]
    booked = _demand(
        buyer, accelerator, gpu_count=16, duration_hours=3, split="site", voucher=voucher
    )
    parts = reservation_parts_create(
        demand_id=booked.pk,
        parts=[(offers[0].pk, 8), (offers[1].pk, 8)],
        start=booked.earliest_start,
    )
    assert all(p.voucher_part > 0 for p in parts)
    return offers, booked, parts


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writer", ["batch", "parts"])
def test_cancelling_a_split_demand_while_a_cycle_books_the_same_voucher_does_not_deadlock(
    writer, buyer, provider, site, accelerator, voucher
):
    # given a split demand booked in two parts, each paid partly by the buyer's voucher, and
    # another open demand of the buyer paying with the same voucher, which the cycle writes
    # (as a whole demand in a batch, or in parts) on two other offers
    offers, booked, parts = _split_booked(buyer, provider, site, accelerator, voucher, 4)
    start = booked.earliest_start
    if writer == "batch":
        wanted = _demand(
            buyer, accelerator, gpu_count=4, duration_hours=3, voucher=voucher, earliest_start=start
        )

        def write() -> object:
            match = Match(str(wanted.pk), str(offers[2].pk), hour_index(start), "", ZERO, ZERO)
            return len(matches_write([match], now=timezone.now()).made)

    else:
        wanted, write = _split_written_meanwhile(
            buyer, accelerator, voucher, start, offers[2], offers[3]
        )

    # and another session holding the first part's payment hold, so that the cancellation
    # stops there, with everything it locks before the hold already locked
    # when the buyer cancels a part, and the cycle writes the other demand meanwhile
    outcomes = race_behind(
        "SELECT 1 FROM ledger_hold WHERE reservation_id = %s FOR UPDATE",
        [parts[0].pk],
        ("cancel", lambda: reservation_cancel(reservation_id=parts[0].pk, buyer=buyer).status),
        ("write", write),
    )
    # then neither was chosen as a deadlock's victim: the cancellation returned everything
    # of both parts and the other demand was booked, with the voucher value given back
    assert outcomes == {"cancel": "cancelled", "write": 1 if writer == "batch" else 2}
    assert set(Reservation.objects.filter(demand=booked).values_list("status", flat=True)) == {
        "cancelled"
    }
    assert Demand.objects.get(pk=booked.pk).status == Demand.Status.CANCELLED
    made = list(Reservation.objects.filter(demand=wanted))
    assert Demand.objects.get(pk=wanted.pk).status == Demand.Status.RESERVED
    assert all(r.voucher_id == voucher.pk and r.voucher_part > 0 for r in made)
    held = sum((r.voucher_part for r in made), ZERO)
    assert voucher_account(voucher.pk).balance == Decimal("1000.00") - held
    assert Hold.objects.filter(reservation__in=made, status=Hold.Status.PENDING).count() == len(
        made
    )
    peaks = [4, 0] if writer == "batch" else [8, 8]
    assert [offer_peak_reserved(o) for o in offers] == [0, 0, *peaks]
    assert organisation_balances(organisation=buyer)["wallet"] >= ZERO
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("writer", ["batch", "parts", "lapse"])
def test_a_person_booking_with_a_voucher_another_writer_locks_meanwhile_does_not_deadlock(
    writer, buyer, provider, site, accelerator, voucher
):
    # given an open demand of the buyer paying with its voucher, which the buyer books itself
    # (``reservation_create``, at a time the voucher is still valid), while another writer
    # locks the voucher: the cycle writing another demand of the buyer with the same voucher
    # (as a whole demand in a batch, or in parts) on other offers, or the voucher lapsing
    offers = [
        OfferFactory.create(provider=provider, site=site, accelerator=accelerator) for _ in range(3)
    ]
    mine = _demand(buyer, accelerator, gpu_count=4, duration_hours=3, voucher=voucher)
    start = mine.earliest_start
    booked_at = timezone.now()
    wanted: Demand | None = None
    if writer == "lapse":
        expiry = booked_at + timedelta(minutes=1)
        Voucher.objects.filter(pk=voucher.pk).update(expires_at=expiry)

        def write() -> object:
            return vouchers_lapse_expired(now=expiry)

    elif writer == "batch":
        wanted = _demand(
            buyer, accelerator, gpu_count=4, duration_hours=3, voucher=voucher, earliest_start=start
        )
        match = Match(str(wanted.pk), str(offers[1].pk), hour_index(start), "", ZERO, ZERO)

        def write() -> object:
            return len(matches_write([match], now=timezone.now()).made)

    else:
        wanted, write = _split_written_meanwhile(
            buyer, accelerator, voucher, start, offers[1], offers[2]
        )

    # and another session holding escrow, so that the person's hold stops at its last write
    # with the wallet and the voucher's account locked, before its COMMIT checks its foreign
    # keys (the reservation's and the transaction's voucher among them)
    escrow = system_account(Account.Kind.ESCROW)
    # when the buyer books, and the other writer locks the voucher meanwhile
    outcomes = race_behind(
        "SELECT 1 FROM ledger_account WHERE id = %s FOR UPDATE",
        [escrow.pk],
        (
            "person",
            lambda: (
                reservation_create(
                    demand_id=mine.pk, offer_id=offers[0].pk, start=start, now=booked_at
                ).status
            ),
        ),
        ("write", write),
    )
    # then neither was chosen as a deadlock's victim: every demand is booked, each paying part
    # with the voucher, and the voucher paid exactly what the holds say (a lapse returned the
    # rest to the programme after the person's hold)
    demands = [mine] if wanted is None else [mine, wanted]
    written = {"batch": 1, "parts": 2, "lapse": 1}[writer]
    assert outcomes == {"person": "confirmed", "write": written}
    made = list(Reservation.objects.filter(demand__in=demands))
    assert {Demand.objects.get(pk=d.pk).status for d in demands} == {"reserved"}
    assert all(r.voucher_id == voucher.pk and r.voucher_part > 0 for r in made)
    held = sum((r.voucher_part for r in made), ZERO)
    left = ZERO if writer == "lapse" else Decimal("1000.00") - held
    assert voucher_account(voucher.pk).balance == left
    peaks = {"batch": [4, 4, 0], "parts": [4, 8, 8], "lapse": [4, 0, 0]}[writer]
    assert [offer_peak_reserved(o) for o in offers] == peaks
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_settling_a_voucher_reservation_while_a_batch_books_the_programme_does_not_deadlock(
    buyer, other_buyer, provider, site, accelerator, programme, voucher
):
    # given a completed reservation of one buyer, part paid by its voucher of a programme, and
    # an open demand of another buyer paying with its own voucher of the same programme
    offers = [
        OfferFactory.create(provider=provider, site=site, accelerator=accelerator) for _ in range(2)
    ]
    done = _demand(buyer, accelerator, gpu_count=4, duration_hours=3, voucher=voucher)
    start = done.earliest_start
    completed = reservation_create(demand_id=done.pk, offer_id=offers[0].pk, start=start)
    Reservation.objects.filter(pk=completed.pk).update(status=Reservation.Status.COMPLETED)
    theirs = voucher_issue(programme=programme, owner=other_buyer, face_value=Decimal("1000.00"))
    wanted = _demand(
        other_buyer,
        accelerator,
        gpu_count=4,
        duration_hours=3,
        voucher=theirs,
        earliest_start=start,
    )
    match = Match(str(wanted.pk), str(offers[1].pk), hour_index(start), "", ZERO, ZERO)
    # and another session holding escrow, so that the settlement stops at it, then the batch
    # (which locks the programme row last but escrow) behind it
    escrow = system_account(Account.Kind.ESCROW)
    # when the reservation is settled while the cycle writes the other demand
    outcomes = race_behind(
        "SELECT 1 FROM ledger_account WHERE id = %s FOR UPDATE",
        [escrow.pk],
        ("settle", lambda: reservation_settle(reservation_id=completed.pk).status),
        ("write", lambda: len(matches_write([match], now=timezone.now()).made)),
    )
    # then neither was chosen as a deadlock's victim: the settlement claimed the voucher part
    # and the other demand was booked with its voucher
    assert outcomes == {"settle": "settled", "write": 1}
    assert ReimbursementClaim.objects.get(reservation=completed).amount == completed.voucher_part
    made = Reservation.objects.get(demand=wanted)
    assert (made.voucher_id, made.voucher_part > 0) == (theirs.pk, True)
    assert voucher_account(theirs.pk).balance == Decimal("1000.00") - made.voucher_part
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_split_demand_while_a_person_books_the_same_voucher_does_not_deadlock(
    site, provider, accelerator, programme
):
    # given a buyer whose wallet has a higher key than its voucher's account (account keys
    # are random: the wallet is given the largest one, so a hold on that voucher locks the
    # voucher's account before the wallet), a split demand of the buyer booked in two parts
    # paid partly by the voucher, and another open demand of the buyer paying with it
    buyer = OrganisationFactory.create(name="Late wallet SME", home_site=site)
    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.00"))
    wallet = Account.objects.create(
        id=uuid.UUID(int=(1 << 128) - 1), kind=Account.Kind.WALLET, organisation=buyer
    )
    wallet_deposit(organisation=buyer, amount=Decimal("100000.00"))
    assert voucher_account(voucher.pk).pk < wallet.pk
    offers, booked, parts = _split_booked(buyer, provider, site, accelerator, voucher, 3)
    wanted = _demand(
        buyer,
        accelerator,
        gpu_count=4,
        duration_hours=3,
        voucher=voucher,
        earliest_start=booked.earliest_start,
    )
    # and another session holding the first part's payment hold, so that the cancellation
    # stops there, with everything it locks before the hold already locked
    # when the buyer cancels a part, and books the other demand (``reservation_create``, as
    # the API and a batch's one-pair fallback do) meanwhile
    outcomes = race_behind(
        "SELECT 1 FROM ledger_hold WHERE reservation_id = %s FOR UPDATE",
        [parts[0].pk],
        ("cancel", lambda: reservation_cancel(reservation_id=parts[0].pk, buyer=buyer).status),
        (
            "book",
            lambda: (
                reservation_create(
                    demand_id=wanted.pk, offer_id=offers[2].pk, start=booked.earliest_start
                ).status
            ),
        ),
    )
    # then neither was chosen as a deadlock's victim, and the money is exact
    assert outcomes == {"cancel": "cancelled", "book": "confirmed"}
    assert set(Reservation.objects.filter(demand=booked).values_list("status", flat=True)) == {
        "cancelled"
    }
    made = Reservation.objects.get(demand=wanted)
    assert made.voucher_part > 0
    assert voucher_account(voucher.pk).balance == Decimal("1000.00") - made.voucher_part
    assert [offer_peak_reserved(o) for o in offers] == [0, 0, 4]
    assert ledger_audit() == []


@pytest.mark.django_db(transaction=True)
def test_a_voucher_lapse_does_not_deadlock_with_a_booking_and_a_voucher_issue(
    site, buyer, other_buyer, provider, accelerator, programme
):
    # given two vouchers of one programme about to expire: the first (lower key, lapsed first)
    # of another buyer, the second of a buyer whose wallet has the higher key than the
    # voucher's account (account keys are random: the wallet is given the largest one, so a
    # hold on the voucher locks its account, then the wallet), and an open demand of that
    # buyer paying with the second voucher
    late = OrganisationFactory.create(name="Late wallet SME", home_site=site)
    issued = [
        voucher_issue(programme=programme, owner=owner, face_value=Decimal("1000.00"))
        for owner in (other_buyer, late)
    ]
    first, second = sorted(issued, key=lambda v: v.pk)
    if first.owner_id == late.pk:  # the booked voucher is the one the lapse reaches second
        Voucher.objects.filter(pk=first.pk).update(owner=other_buyer)
        Voucher.objects.filter(pk=second.pk).update(owner=late)
    second_account = voucher_account(second.pk)
    wallet = Account.objects.create(
        id=uuid.UUID(int=(1 << 128) - 1), kind=Account.Kind.WALLET, organisation=late
    )
    wallet_deposit(organisation=late, amount=Decimal("100000.00"))
    assert second_account.pk < wallet.pk
    offer = OfferFactory.create(provider=provider, site=site, accelerator=accelerator)
    mine = _demand(late, accelerator, gpu_count=4, duration_hours=3, voucher=second)
    booked_at = timezone.now()
    expiry = booked_at + timedelta(minutes=1)
    Voucher.objects.filter(pk__in=[first.pk, second.pk]).update(expires_at=expiry)
    budget = programme_account(programme.pk)
    budget_before = budget.balance
    # and another session holding the buyer's wallet, so that the booking stops there with the
    # second voucher's account locked and the programme row not yet (its usage comes later)
    other = other_session()
    other.execute("SELECT 1 FROM ledger_account WHERE id = %s FOR UPDATE", [wallet.pk])
    outcomes: dict[str, object] = {}
    threads = []
    issue_done_before_booking_went_on = False
    try:
        # when the buyer books with the second voucher (while it is still valid)
        threads.append(
            in_thread(
                "book",
                lambda: (
                    reservation_create(
                        demand_id=mine.pk,
                        offer_id=offer.pk,
                        start=mine.earliest_start,
                        now=booked_at,
                    ).status
                ),
                outcomes,
            )
        )
        wait_for_blocked(1)
        # and the lapse job runs, lapsing the first voucher (its balance goes to the budget
        # account) and then waiting for the second voucher's account, which the booking holds
        threads.append(in_thread("lapse", lambda: vouchers_lapse_expired(now=expiry), outcomes))
        wait_for_blocked(2)
        # and a voucher is issued meanwhile: it locks the programme row, then the budget account
        issue = in_thread(
            "issue",
            lambda: (
                voucher_issue(
                    programme=programme, owner=buyer, face_value=Decimal("1000.00")
                ).face_value
            ),
            outcomes,
        )
        threads.append(issue)
        for _ in range(600):  # a bounded poll, not a timed assertion
            if not issue.is_alive() or blocked_on_locks() >= 3:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the voucher issue neither finished nor waited on a lock")
        issue_done_before_booking_went_on = not issue.is_alive()
    finally:
        # the wallet is let go: the booking goes on to the programme row (which an issue
        # still waiting for the budget account would hold: a deadlock of three)
        other.rollback()
        other.close()
    for t in threads:
        t.join(60)
    # then none was chosen as a deadlock's victim: the issue did not wait for the lapse (which
    # never holds the budget account while it waits for the next voucher's account), the
    # booking holds its voucher part, and both vouchers lapsed what was left to the budget
    assert outcomes == {"book": "confirmed", "lapse": 2, "issue": Decimal("1000.00")}
    assert issue_done_before_booking_went_on
    made = Reservation.objects.get(demand=mine)
    assert (made.voucher_id, made.voucher_part > 0) == (second.pk, True)
    assert {v.status for v in Voucher.objects.filter(pk__in=[first.pk, second.pk])} == {
        Voucher.Status.EXPIRED
    }
    assert voucher_account(first.pk).balance == ZERO
    assert voucher_account(second.pk).balance == ZERO
    lapsed = Decimal("1000.00") + Decimal("1000.00") - made.voucher_part
    budget.refresh_from_db()
    assert budget.balance == budget_before + lapsed - Decimal("1000.00")
    assert ledger_audit() == []
