"""A cycle's writes against transient refusals by PostgreSQL (``marketplace.matching.conflicts``):
a batch chosen as a real deadlock's victim is run again from scratch and written once, with the
later batches of the call; a batch (or a split demand) the database keeps refusing transiently
goes one pair at a time, the pair that still conflicts dropped with ``write_conflict``; an error
that is not transient still ends the write."""

import logging
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from accounts.models import Organisation
from ledger.audit import ledger_audit
from ledger.models import Account, Hold
from ledger.services import system_account
from marketplace.matching.bulk import matches_write
from marketplace.matching.conflicts import WRITE_ATTEMPTS
from marketplace.matching.cycle import matching_cycle_run
from marketplace.matching.engine import Match
from marketplace.models import Demand, Offer, Reservation
from marketplace.money import ZERO
from marketplace.services import offer_peak_reserved
from marketplace.timeutil import hour_index
from tests.factories import DemandFactory, OfferFactory, next_hour
from tests.marketplace.races import in_thread, other_session, wait_for_blocked
from tests.marketplace.writes import one_gpu_hours, open_demands


def _wallet(org: Organisation) -> Decimal:
    return Account.objects.get(kind=Account.Kind.WALLET, organisation=org).balance


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "running it again" in r.getMessage()
    ]


@pytest.mark.django_db(transaction=True)
def test_a_batch_chosen_as_a_deadlock_victim_is_written_again_and_so_are_the_later_batches(
    buyer, other_buyer, provider, site, caplog
):
    # given six 4-GPU two-hour demands written in batches of two: the first and last batches
    # the buyer's on one 8-GPU offer (two hours apart), the middle one the other buyer's on
    # another 8-GPU offer — each offer full at those hours once everything is written
    caplog.set_level(logging.WARNING, logger="marketplace.matching")
    first, second = (OfferFactory.create(provider=provider, site=site) for _ in "12")
    start = next_hour(2)
    window = {"earliest_start": start, "latest_end": start + timedelta(hours=12)}
    owners = [buyer, buyer, other_buyer, other_buyer, buyer, buyer]
    demands = [
        DemandFactory.create(buyer=org, gpu_count=4, duration_hours=2, **window) for org in owners
    ]
    placed = [(first, 0), (first, 0), (second, 0), (second, 0), (first, 2), (first, 2)]
    matches = [
        Match(str(d.pk), str(o.pk), hour_index(start) + h, "", ZERO, ZERO)
        for d, (o, h) in zip(demands, placed, strict=True)
    ]
    escrow_before = system_account(Account.Kind.ESCROW).balance
    wallets_before = _wallet(buyer), _wallet(other_buyer)
    # and a session (B) holding the other buyer's wallet, which the middle batch locks after
    # its demands; B never runs the deadlock check itself (only after 10 minutes), so the
    # batch, which does after the default second, is the victim whenever the timing
    hold_wallet = other_session()
    hold_wallet.execute("SET deadlock_timeout = '10min'")
    hold_wallet.execute(
        "SELECT 1 FROM ledger_account WHERE kind = 'wallet' AND organisation_id = %s FOR UPDATE",
        [other_buyer.pk],
    )
    # and a session (C) holding the middle batch's offer, so that the batch stops there with
    # its demands locked and the wallet not yet asked for
    hold_offer = other_session()
    hold_offer.execute("SELECT 1 FROM marketplace_offer WHERE id = %s FOR UPDATE", [second.pk])
    outcomes: dict[str, object] = {}
    threads = []
    try:
        # when the cycle writes the six matches in batches of two: the first batch commits,
        # the middle one waits for the offer
        threads.append(
            in_thread(
                "write", lambda: matches_write(matches, now=timezone.now(), batch=2), outcomes
            )
        )
        wait_for_blocked(1)
        # and B asks for one of the middle batch's demands (waiting on the batch)
        threads.append(
            in_thread(
                "demand",
                lambda: hold_wallet.execute(
                    "SELECT 1 FROM marketplace_demand WHERE id = %s FOR UPDATE", [demands[2].pk]
                ).fetchall(),
                outcomes,
            )
        )
        wait_for_blocked(2)
        # and C lets the offer go: the batch goes on to the wallet B holds, a cycle of waits
        hold_offer.rollback()
        # then PostgreSQL aborts the batch (40P01), so B gets the demand; B then lets
        # everything go, and the batch, run again from its first lock, goes through
        threads[1].join(60)
        assert outcomes["demand"] == [(1,)]
    finally:
        hold_offer.rollback()
        hold_offer.close()
        hold_wallet.rollback()
        hold_wallet.close()
    threads[0].join(60)
    outcome = outcomes["write"]
    assert not isinstance(outcome, BaseException), outcome
    retries = _retries(caplog)
    assert len(retries) == 1 and "40P01" in retries[0] and "batch of 2 matches" in retries[0]
    assert not [r for r in caplog.records if "one by one" in r.getMessage()]
    # then every match was written exactly once, the later batch included, and nothing dropped
    assert outcome.dropped == {}  # type: ignore[attr-defined]
    made = outcome.made  # type: ignore[attr-defined]
    assert len(made) == len(set(made)) == 6
    assert set(made) == {str(pk) for pk in Reservation.objects.values_list("pk", flat=True)}
    assert sorted(Reservation.objects.values_list("demand_id", flat=True)) == sorted(
        d.pk for d in demands
    )
    assert [Demand.objects.get(pk=d.pk).status for d in demands] == ["reserved"] * 6
    assert Hold.objects.filter(status=Hold.Status.PENDING).count() == 6
    # capacity: each offer exactly full, never over
    assert [offer_peak_reserved(o) for o in (first, second)] == [8, 8]
    assert all(Offer.objects.get(pk=o.pk).gpu_count == 8 for o in (first, second))
    # money: each demand held 4 GPUs × 2 h × ¥10 once
    bill = Decimal("80.00")
    assert (_wallet(buyer), _wallet(other_buyer)) == (
        wallets_before[0] - 4 * bill,
        wallets_before[1] - 2 * bill,
    )
    assert system_account(Account.Kind.ESCROW).balance == escrow_before + 6 * bill
    assert ledger_audit() == []


def _refuse_reservations_of(demand_ids: list[object], errcode: str) -> None:
    """A trigger that makes PostgreSQL refuse any reservation of ``demand_ids`` with SQLSTATE
    ``errcode`` (by name), however it is inserted (COPY or INSERT)."""
    ids = ", ".join(f"'{pk}'" for pk in demand_ids)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_reservation() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.demand_id IN ({ids}) THEN RAISE EXCEPTION 'refused' "
            f"USING ERRCODE = '{errcode}'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_reservation BEFORE INSERT ON marketplace_reservation "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_reservation()"
        )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("errcode", "sqlstate"),
    [
        ("deadlock_detected", "40P01"),
        ("serialization_failure", "40001"),
        ("lock_not_available", "55P03"),
    ],
)
def test_a_batch_the_database_keeps_refusing_transiently_goes_one_pair_at_a_time(
    errcode, sqlstate, buyer, offer, caplog
):
    # given five open demands written in batches of three, and the database refusing any
    # reservation of the second with a transient error, every time
    caplog.set_level(logging.WARNING, logger="marketplace.matching")
    demands, matches = one_gpu_hours(buyer, offer, 5)
    _refuse_reservations_of([demands[1].pk], errcode)
    before = _wallet(buyer)
    # when the cycle writes them
    outcome = matches_write(matches, now=timezone.now(), batch=3)
    # then the first batch ran its attempts, each logged, then went one pair at a time: the
    # refused demand alone dropped with ``write_conflict``, kept open with that reason; the
    # second batch was written as usual
    retries = _retries(caplog)
    assert len(retries) == WRITE_ATTEMPTS - 1
    assert all(sqlstate in r and "batch of 3 matches" in r for r in retries)
    assert len(outcome.made) == 4
    assert outcome.dropped == {str(demands[1].pk): "write_conflict"}
    statuses = [Demand.objects.get(pk=d.pk).status for d in demands]
    assert statuses == ["reserved", "open", "reserved", "reserved", "reserved"]
    assert Demand.objects.get(pk=demands[1].pk).unmatched_reason == "write_conflict"
    assert Reservation.objects.count() == Hold.objects.count() == 4
    assert _wallet(buyer) == before - 4 * Decimal("10.00")
    assert ledger_audit() == []


@pytest.mark.django_db
def test_the_one_pair_fallback_stops_after_as_many_conflicts_as_attempts(buyer, offer, caplog):
    # given six open demands in one batch, and the database refusing any reservation of the
    # first three with a deadlock error every time (a row every pair needs, held by a stuck
    # session: each refusal may have waited ``lock_timeout``)
    caplog.set_level(logging.WARNING, logger="marketplace.matching")
    demands, matches = one_gpu_hours(buyer, offer, 6)
    _refuse_reservations_of([d.pk for d in demands[:WRITE_ATTEMPTS]], "deadlock_detected")
    before = _wallet(buyer)
    # when the cycle writes them
    outcome = matches_write(matches, now=timezone.now(), batch=6)
    # then after the batch's attempts the pairs go one at a time until as many conflicts as
    # attempts; the pairs after them are not tried, left open with ``write_conflict``, and
    # nothing of them is written
    assert outcome.made == []
    assert outcome.dropped == {str(d.pk): "write_conflict" for d in demands}
    assert {Demand.objects.get(pk=d.pk).unmatched_reason for d in demands} == {"write_conflict"}
    assert {Demand.objects.get(pk=d.pk).status for d in demands} == {"open"}
    assert any("3 matches left unwritten" in r.getMessage() for r in caplog.records)
    assert not Reservation.objects.exists()
    assert _wallet(buyer) == before
    assert ledger_audit() == []


@pytest.mark.django_db
def test_a_database_error_that_is_not_transient_still_ends_the_write(buyer, offer, caplog):
    # given the database cancelling any reservation of the second demand (57014, what
    # ``statement_timeout`` raises: an OperationalError, but not a conflict to run again)
    caplog.set_level(logging.WARNING, logger="marketplace.matching")
    demands, matches = one_gpu_hours(buyer, offer, 3)
    _refuse_reservations_of([demands[1].pk], "query_canceled")
    # when the cycle writes them, then the error propagates at once, nothing written or retried
    with pytest.raises(OperationalError) as raised:
        matches_write(matches, now=timezone.now())
    assert raised.value.__cause__.sqlstate == "57014"  # type: ignore[union-attr]
    assert _retries(caplog) == []
    assert not Reservation.objects.exists()


@pytest.mark.django_db
def test_a_split_demand_the_database_keeps_refusing_transiently_is_left_open(
    buyer, provider, site, caplog
):
    # given two split demands of 16 GPUs, each matched in two 8-GPU parts, and the database
    # refusing any reservation of the first with a deadlock error, every time
    caplog.set_level(logging.WARNING, logger="marketplace.matching")
    offers = [OfferFactory.create(provider=provider, site=site) for _ in range(4)]
    start = next_hour(2)
    demands = open_demands(buyer, 2, gpus=16, hours=2, start=start, split="site")
    matches = [
        Match(str(d.pk), str(o.pk), hour_index(start), "", ZERO, ZERO, gpus=8)
        for d, pair in zip(demands, (offers[:2], offers[2:]), strict=True)
        for o in pair
    ]
    _refuse_reservations_of([demands[0].pk], "deadlock_detected")
    # when the cycle writes them
    outcome = matches_write(matches, now=timezone.now())
    # then the first ran its attempts and was left open with ``write_conflict``, nothing of
    # it written, and the second was written in full
    retries = _retries(caplog)
    assert len(retries) == WRITE_ATTEMPTS - 1
    assert all("40P01" in r and f"parts of demand {demands[0].pk}" in r for r in retries)
    assert outcome.dropped == {str(demands[0].pk): "write_conflict"}
    assert len(outcome.made) == 2
    first, second = (Demand.objects.get(pk=d.pk) for d in demands)
    assert (first.status, first.unmatched_reason) == ("open", "write_conflict")
    assert second.status == "reserved"
    assert [offer_peak_reserved(o) for o in offers] == [0, 0, 8, 8]
    assert ledger_audit() == []


@pytest.mark.django_db
def test_a_cycle_whose_write_keeps_conflicting_is_recorded_with_what_it_made(buyer, offer, site):
    # given two open demands of the hub the engine places, the database refusing any
    # reservation of the first with a lock timeout, every time
    demands, _ = one_gpu_hours(buyer, offer, 2)
    _refuse_reservations_of([demands[0].pk], "lock_not_available")
    # when the hub's cycle runs
    cycle = matching_cycle_run(site.hub_id)
    # then it is recorded, with the one reservation it made; the other demand waits for the
    # next cycle with its reason
    assert cycle is not None and cycle.reservations_made == 1
    assert (cycle.pairs_chosen, cycle.write_refusals) == (2, {"write_conflict": 1})
    assert Demand.objects.get(pk=demands[0].pk).unmatched_reason == "write_conflict"
    assert Demand.objects.get(pk=demands[1].pk).status == "reserved"
    assert ledger_audit() == []
