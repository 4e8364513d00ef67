"""A reservation's composite foreign keys on PostgreSQL (migration ``marketplace/0010``):
(demand, buyer) → the demand's (id, buyer) and (offer, provider) → the offer's (id, provider).
They refuse what the four single-column keys refused (a missing demand or offer) and also a
buyer or provider that is not the demand's or the offer's."""

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from marketplace.models import Demand, Offer, Reservation
from marketplace.services import reservation_create, wallet_deposit
from tests.factories import DemandFactory, OrganisationFactory, ProviderFactory, next_hour


@pytest.fixture
def reservation(buyer, offer) -> Reservation:  # type: ignore[no-untyped-def]
    wallet_deposit(organisation=buyer, amount=Decimal("1000.00"))
    start = next_hour(2)
    demand = DemandFactory.create(
        buyer=buyer,
        gpu_count=1,
        duration_hours=1,
        earliest_start=start,
        latest_end=start + timedelta(hours=4),
    )
    return reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=start)


def _refused(change: Callable[[], object]) -> None:
    """``change`` raises IntegrityError once the keys are checked, and is rolled back."""
    with pytest.raises(IntegrityError), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        change()


@pytest.mark.django_db
def test_the_reservation_table_has_the_two_composite_keys_and_the_voucher_key() -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, "marketplace_reservation")
    keys = sorted(
        (tuple(c["columns"]), c["foreign_key"][0]) for c in constraints.values() if c["foreign_key"]
    )
    assert keys == [
        (("buyer_id", "demand_id"), "marketplace_demand"),
        (("provider_id", "offer_id"), "marketplace_offer"),
        (("voucher_id",), "vouchers_voucher"),
    ]


@pytest.mark.django_db
def test_a_buyer_other_than_the_demands_is_refused(reservation: Reservation) -> None:
    stranger = OrganisationFactory.create(name="Stranger")
    _refused(lambda: Reservation.objects.filter(pk=reservation.pk).update(buyer=stranger))
    assert Reservation.objects.get(pk=reservation.pk).buyer_id == reservation.demand.buyer_id


@pytest.mark.django_db
def test_a_provider_other_than_the_offers_is_refused(reservation: Reservation) -> None:
    other = ProviderFactory.create(name="Other DC")
    _refused(lambda: Reservation.objects.filter(pk=reservation.pk).update(provider=other))
    assert Reservation.objects.get(pk=reservation.pk).provider_id == reservation.offer.provider_id


@pytest.mark.django_db
@pytest.mark.parametrize("column", ["demand_id", "offer_id"])
def test_a_missing_demand_or_offer_is_refused(reservation: Reservation, column: str) -> None:
    _refused(lambda: Reservation.objects.filter(pk=reservation.pk).update(**{column: uuid.uuid4()}))
    assert getattr(Reservation.objects.get(pk=reservation.pk), column) == getattr(
        reservation, column
    )


@pytest.mark.django_db
def test_a_reserved_demand_or_offer_keeps_its_buyer_or_provider(
    reservation: Reservation,
) -> None:
    stranger = OrganisationFactory.create(name="Stranger")
    other = ProviderFactory.create(name="Other DC")
    _refused(lambda: Demand.objects.filter(pk=reservation.demand_id).update(buyer=stranger))
    _refused(lambda: Offer.objects.filter(pk=reservation.offer_id).update(provider=other))
    assert Demand.objects.get(pk=reservation.demand_id).buyer_id == reservation.buyer_id
    assert Offer.objects.get(pk=reservation.offer_id).provider_id == reservation.provider_id
