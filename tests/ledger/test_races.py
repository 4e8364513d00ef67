"""Races on PostgreSQL with 24 real threads at once (PRODUCT.md §9): the last voucher balance,
the last programme budget (at issue and at hold time), the last buyer cap, the last GPUs of an
offer, two kinds of refund of one reservation, refunds of one settled reservation, one expiry
job run many times at once, one statement paid many times at once, and one Idempotency-Key sent
many times at once. Exactly the allowed number succeed, the others get a clean domain error,
and ``ledger_audit`` stays clean."""

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from ledger.audit import ledger_audit
from ledger.models import Account, Hold, IdempotencyKey, Refund, Transaction
from ledger.services import organisation_account, voucher_account
from marketplace.errors import DomainError
from marketplace.models import Reservation
from marketplace.services import (
    reservation_cancel,
    reservation_create,
    reservation_fail,
    reservation_refund,
    reservation_settle,
    reservations_advance,
    reservations_expire_unaccepted,
    wallet_deposit,
)
from tests.factories import (
    CatalogueEntryFactory,
    DemandFactory,
    OrganisationFactory,
    ProgrammeFactory,
    UserFactory,
)
from vouchers.models import Programme, ProgrammeUsage, Voucher
from vouchers.services import (
    programme_fund,
    statement_issue,
    statement_mark_paid,
    voucher_issue,
)

N = 24
race = pytest.mark.django_db(transaction=True)


def run_at_once(jobs: list[Callable[[], Any]]) -> Counter[str]:
    """Start every job in its own thread behind one barrier; count outcomes ("ok" or the
    domain error's code). Any other exception fails the test."""
    barrier = threading.Barrier(len(jobs))
    outcomes: list[str] = []
    crashes: list[BaseException] = []

    def run(job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            result = job()
            outcomes.append(result if isinstance(result, str) else "ok")
        except DomainError as exc:
            outcomes.append(exc.code)
        except BaseException as exc:
            crashes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert crashes == []
    assert len(outcomes) == len(jobs)
    return Counter(outcomes)


def _hold_all_at_once(offer, demands):  # type: ignore[no-untyped-def]
    """``reservation_create`` of every demand on ``offer`` at its earliest start, all at once
    on their own connections; ``{outcome: count}``."""
    return run_at_once(
        [
            partial(reservation_create, demand_id=d.pk, offer_id=offer.pk, start=d.earliest_start)
            for d in demands
        ]
    )


def _assert_voucher_parts_took_exactly_100() -> None:
    """Voucher parts of ¥12 wanted per hold: eight whole parts, one ¥4 remainder, ¥100 in all."""
    parts = list(Reservation.objects.values_list("voucher_part", flat=True))
    assert sum(parts) == Decimal("100.00")
    assert sorted(parts, reverse=True)[:9] == [Decimal("12.00")] * 8 + [Decimal("4.00")]


@race
def test_last_programme_budget(site):
    programme = ProgrammeFactory.create(code="small", annual_budget=Decimal("1000.00"))
    programme_fund(programme)
    buyers = [OrganisationFactory.create(home_site=site) for _ in range(N)]
    outcomes = run_at_once(
        [
            partial(voucher_issue, programme=programme, owner=b, face_value=Decimal("100.00"))
            for b in buyers
        ]
    )
    assert outcomes == {"ok": 10, "programme_budget_exhausted": N - 10}
    assert Voucher.objects.count() == 10
    assert Account.objects.get(kind="programme", programme=programme).balance == 0
    assert ledger_audit() == []


@race
def test_last_buyer_cap(buyer):
    programme = ProgrammeFactory.create(code="capped", buyer_annual_cap=Decimal("1000.00"))
    programme_fund(programme)
    outcomes = run_at_once(
        [
            lambda: voucher_issue(programme=programme, owner=buyer, face_value=Decimal("100.00"))
            for _ in range(N)
        ]
    )
    assert outcomes == {"ok": 10, "buyer_cap_exceeded": N - 10}
    assert sum(v.face_value for v in Voucher.objects.filter(owner=buyer)) == Decimal("1000.00")
    assert ledger_audit() == []


@race
def test_last_voucher_balance(buyer, offer, programme):
    # given a ¥100 voucher and 24 one-GPU demands of ¥20 each (voucher part wanted: ¥12)
    voucher = voucher_issue(programme=programme, owner=buyer, face_value=Decimal("100.00"))
    offer.gpu_count = N
    offer.save()
    demands = [
        DemandFactory.create(buyer=buyer, voucher=voucher, gpu_count=1, duration_hours=2)
        for _ in range(N)
    ]
    outcomes = _hold_all_at_once(offer, demands)
    # then every hold succeeds, the voucher pays exactly its ¥100 and cash the rest
    assert outcomes == {"ok": N}
    _assert_voucher_parts_took_exactly_100()
    assert voucher_account(voucher.pk).balance == 0
    assert ledger_audit() == []


@race
def test_last_gpus_of_an_offer(buyer, offer):
    demands = [DemandFactory.create(buyer=buyer, gpu_count=1) for _ in range(N)]
    outcomes = run_at_once(
        [
            partial(
                reservation_create,
                demand_id=d.pk,
                offer_id=offer.pk,
                start=demands[0].earliest_start,
            )
            for d in demands
        ]
    )
    assert outcomes == {"ok": 8, "capacity_exhausted": N - 8}
    assert Reservation.objects.count() == 8
    assert ledger_audit() == []


@race
def test_cancel_and_failure_of_one_reservation_refund_once(buyer, provider, offer, voucher):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    jobs: list[Callable[[], Any]] = []
    for i in range(N):
        if i % 2:
            jobs.append(lambda: reservation_cancel(reservation_id=r.pk, buyer=buyer))
        else:
            jobs.append(lambda: reservation_fail(reservation_id=r.pk, provider=provider))
    outcomes = run_at_once(jobs)
    assert outcomes["ok"] == 1
    assert outcomes["illegal_transition"] == N - 1
    refund = Refund.objects.get()
    fee = Transaction.objects.filter(reason="cancel_fee").count()
    assert refund.voucher_amount == r.voucher_part
    assert refund.cash_amount + (Decimal("8.00") if fee else 0) == r.cash_part
    assert voucher_account(voucher.pk).balance == Decimal("1000.00")
    assert ledger_audit() == []


@race
def test_the_expiry_job_run_many_times_at_once_voids_each_hold_once(buyer, offer, voucher):
    for _ in range(3):
        d = DemandFactory.create(buyer=buyer, voucher=voucher, auto_accept=False, gpu_count=2)
        reservation_create(demand_id=d.pk, offer_id=offer.pk, start=d.earliest_start)
    later = timezone.now() + timedelta(hours=1)
    outcomes = run_at_once(
        [lambda: str(reservations_expire_unaccepted(now=later)) for _ in range(N)]
    )
    assert sum(int(k) * v for k, v in outcomes.items()) == 3
    assert Hold.objects.filter(status="voided").count() == 3
    assert Refund.objects.count() == 3
    assert voucher_account(voucher.pk).balance == Decimal("1000.00")
    assert ledger_audit() == []


@race
def test_a_statement_paid_many_times_at_once_posts_once(buyer, provider, offer, voucher, programme):
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    reservation_settle(reservation_id=r.pk)
    statement = statement_issue(
        programme_id=programme.pk,
        provider_id=provider.pk,
        period_start=timezone.now().date(),
        now=timezone.now() + timedelta(days=95),
    )
    outcomes = run_at_once(
        [lambda: statement_mark_paid(statement_id=statement.pk) for _ in range(N)]
    )
    assert outcomes == {"ok": 1, "already_paid": N - 1}
    assert Transaction.objects.filter(reason="claim_paid").count() == 1
    assert organisation_account(provider, Account.Kind.PAYABLE).balance == r.bill
    assert ledger_audit() == []


@race
def test_one_idempotency_key_sent_many_times_at_once_has_one_effect(buyer):
    user = UserFactory.create(username="racer", organisation=buyer)

    def post() -> str:
        client = APIClient()
        client.force_authenticate(user)
        response = client.post(
            "/api/v1/wallet/deposits/",
            {"amount": "10.00"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="race-1",
        )
        if response.status_code == 201:
            return "replayed" if response.get("Idempotent-Replayed") else "created"
        return f"{response.status_code} {response.json()['code']}"

    outcomes = run_at_once([post for _ in range(N)])
    assert outcomes["created"] == 1
    assert set(outcomes) <= {"created", "replayed", "409 idempotency_key_in_progress"}
    wallet = organisation_account(buyer, Account.Kind.WALLET)
    assert wallet.balance == Decimal("100010.00")
    assert IdempotencyKey.objects.filter(key="race-1").count() == 1
    assert ledger_audit() == []


@race
def test_refunds_of_one_settled_reservation_racing_never_pass_what_was_paid(
    buyer, provider, offer, voucher
):
    # given a settled ¥80 reservation (¥48 voucher, ¥32 cash)
    demand = DemandFactory.create(buyer=buyer, voucher=voucher)
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    reservations_advance(now=r.start)
    reservations_advance(now=r.end)
    reservation_settle(reservation_id=r.pk)
    # when 24 operators refund ¥10 each at once (a dispute and SLA credits)
    outcomes = run_at_once(
        [
            partial(
                reservation_refund,
                reservation_id=r.pk,
                amount=Decimal("10.00"),
                kind="dispute" if i % 2 else "sla_credit",
            )
            for i in range(N)
        ]
    )
    # then exactly eight succeed, the others are refused cleanly, and each part got back exactly
    # what it paid — ¥6 + ¥4 a time, ¥48 to the voucher and ¥32 to the wallet in all
    assert outcomes == {"ok": 8, "refund_exceeds_paid": N - 8}
    hold = Hold.objects.get(reservation=r)
    assert (hold.refunded_voucher, hold.refunded_cash) == (Decimal("48.00"), Decimal("32.00"))
    refunds = Refund.objects.filter(hold=hold)
    assert sorted({(x.voucher_amount, x.cash_amount) for x in refunds}) == [
        (Decimal("6.00"), Decimal("4.00"))
    ]
    assert voucher_account(voucher.pk).balance == Decimal("1000.00")
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100000.00")
    assert ledger_audit() == []


@race
def test_the_last_of_a_programme_years_budget_taken_by_holds_at_once(site, offer, provider):
    # given a programme with ¥100 of this year's budget and two buyers holding ¥100 vouchers
    # issued in earlier years (each year's issue within its budget), so the vouchers could pay
    # ¥200 this year but the budget allows ¥100
    today = timezone.now()
    programme = ProgrammeFactory.create(
        code="year-budget",
        annual_budget=Decimal("1000.00"),
        validity_months=36,
        effective_from=today.date().replace(year=today.year - 3, month=1, day=1),
    )
    programme_fund(programme)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    vouchers = []
    for years_ago in (1, 2):
        buyer = OrganisationFactory.create(home_site=site)
        wallet_deposit(organisation=buyer, amount=Decimal("1000.00"))
        vouchers.append(
            voucher_issue(
                programme=programme,
                owner=buyer,
                face_value=Decimal("100.00"),
                now=today.replace(year=today.year - years_ago),
            )
        )
    Programme.objects.filter(pk=programme.pk).update(annual_budget=Decimal("100.00"))
    offer.gpu_count = N
    offer.save()
    demands = [
        DemandFactory.create(
            buyer=vouchers[i % 2].owner, voucher=vouchers[i % 2], gpu_count=1, duration_hours=2
        )
        for i in range(N)
    ]
    # when 24 holds, each wanting ¥12 of voucher, are made at once
    outcomes = _hold_all_at_once(offer, demands)
    # then every hold is made, the voucher parts take exactly the ¥100 left and cash the rest
    assert outcomes == {"ok": N}
    _assert_voucher_parts_took_exactly_100()
    used = ProgrammeUsage.objects.get(programme=programme, buyer__isnull=True).used
    assert used == Decimal("100.00")
    assert ledger_audit() == []
