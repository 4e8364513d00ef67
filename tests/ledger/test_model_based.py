"""A model-based test of the money side (hypothesis ``RuleBasedStateMachine``): random
sequences of posting offers and demands, matching, confirming, running, settling, refunding
after settlement, cancelling, failing, expiring and retrying the same call — with every ledger
invariant (``ledger_audit``) and the capacity invariant checked after every step."""

import contextlib
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from ledger.audit import ledger_audit
from marketplace.errors import DomainError
from marketplace.models import Offer, Reservation
from marketplace.services import (
    offer_peak_reserved,
    reservation_accept,
    reservation_cancel,
    reservation_create,
    reservation_fail,
    reservation_refund,
    reservation_report_usage,
    reservation_settle,
    reservations_advance,
    reservations_expire_unaccepted,
)
from tests.factories import DemandFactory, OfferFactory, next_hour


@pytest.mark.django_db
def test_random_money_histories_keep_the_ledger_clean(buyer, provider, site, voucher):
    class Market(RuleBasedStateMachine):
        offers = Bundle("offers")
        demands = Bundle("demands")
        reservations = Bundle("reservations")

        @rule(target=offers, gpus=st.integers(1, 8), price=st.sampled_from(["3.3333", "10"]))
        def post_offer(self, gpus: int, price: str) -> Offer:
            return OfferFactory.create(
                provider=provider, site=site, gpu_count=gpus, price_per_gpu_hour=Decimal(price)
            )

        @rule(
            target=demands,
            gpus=st.integers(1, 4),
            hours=st.integers(1, 3),
            with_voucher=st.booleans(),
            auto=st.booleans(),
            ahead=st.sampled_from([1, 30]),
        )
        def post_demand(
            self, gpus: int, hours: int, with_voucher: bool, auto: bool, ahead: int
        ) -> object:
            start = next_hour(ahead)
            return DemandFactory.create(
                buyer=buyer,
                voucher=voucher if with_voucher else None,
                gpu_count=gpus,
                duration_hours=hours,
                auto_accept=auto,
                earliest_start=start,
                latest_end=start + timedelta(hours=24),
            )

        @rule(target=reservations, demand=consumes(demands), offer=offers)
        def match(self, demand: object, offer: Offer) -> object:
            try:
                return reservation_create(
                    demand_id=demand.pk,  # type: ignore[attr-defined]
                    offer_id=offer.pk,
                    start=demand.earliest_start,  # type: ignore[attr-defined]
                )
            except DomainError:
                return None

        def _fresh(self, r: object) -> Reservation | None:
            return None if r is None else Reservation.objects.get(pk=r.pk)  # type: ignore[attr-defined]

        @rule(r=reservations, twice=st.booleans())
        def confirm(self, r: object, twice: bool) -> None:
            for _ in range(2 if twice else 1):
                if (fresh := self._fresh(r)) is not None:
                    with contextlib.suppress(DomainError):
                        reservation_accept(reservation_id=fresh.pk, buyer=buyer)

        @rule(r=reservations, twice=st.booleans())
        def cancel(self, r: object, twice: bool) -> None:
            for _ in range(2 if twice else 1):
                if (fresh := self._fresh(r)) is not None:
                    with contextlib.suppress(DomainError):
                        reservation_cancel(reservation_id=fresh.pk, buyer=buyer)

        @rule(r=reservations)
        def provider_fails(self, r: object) -> None:
            if (fresh := self._fresh(r)) is not None:
                with contextlib.suppress(DomainError):
                    reservation_fail(reservation_id=fresh.pk, provider=provider)

        @rule(r=reservations, share=st.sampled_from([None, 0, 1, 2]), twice=st.booleans())
        def run_and_settle(self, r: object, share: int | None, twice: bool) -> None:
            fresh = self._fresh(r)
            if fresh is None:
                return
            reservations_advance(now=fresh.start)
            fresh.refresh_from_db()
            if share is not None and fresh.status == "active":
                delivered = min(fresh.gpu_hours, share * fresh.gpu_count)
                reservation_report_usage(
                    reservation_id=fresh.pk, provider=provider, delivered_gpu_hours=delivered
                )
            reservations_advance(now=fresh.end)
            for _ in range(2 if twice else 1):
                with contextlib.suppress(DomainError):
                    reservation_settle(reservation_id=fresh.pk)

        @rule(
            r=reservations,
            amount=st.sampled_from(["0.01", "3.33", "10.00", "1000.00"]),
            twice=st.booleans(),
        )
        def refund_after_settlement(self, r: object, amount: str, twice: bool) -> None:
            # an operator's decision on a dispute: refused unless settled and within what is left
            if (fresh := self._fresh(r)) is not None:
                for _ in range(2 if twice else 1):
                    with contextlib.suppress(DomainError):
                        reservation_refund(reservation_id=fresh.pk, amount=Decimal(amount))

        @rule(runs=st.integers(1, 2))
        def expire(self, runs: int) -> None:
            later = next_hour(0) + timedelta(hours=1)
            for _ in range(runs):
                reservations_expire_unaccepted(now=later)

        @invariant()
        def ledger_is_clean(self) -> None:
            assert ledger_audit() == []

        @invariant()
        def no_offer_is_overbooked(self) -> None:
            for offer in Offer.objects.all():
                assert offer_peak_reserved(offer) <= offer.gpu_count

    run_state_machine_as_test(
        Market,
        settings=settings(
            max_examples=5,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
