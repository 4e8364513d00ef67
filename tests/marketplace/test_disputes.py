"""Disputes: a party opens one about a started reservation; an operator decides it."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from marketplace.errors import Conflict, NotFound, ValidationFailed
from marketplace.models import Dispute
from marketplace.services import (
    dispute_decide,
    dispute_open,
    reservation_create,
    reservations_advance,
)
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def started(buyer, offer):  # type: ignore[no-untyped-def]
    demand = DemandFactory.create(buyer=buyer)
    reservation = reservation_create(
        demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start
    )
    reservations_advance(now=reservation.start)
    reservation.refresh_from_db()
    assert reservation.status == "active"
    return reservation


def test_buyer_and_provider_may_open_one_dispute_at_a_time(started, buyer, provider):
    dispute = dispute_open(reservation_id=started.pk, organisation=buyer, reason="GPUs idle")
    assert (dispute.status, dispute.opened_by) == ("open", buyer)
    with pytest.raises(Conflict) as refused:
        dispute_open(reservation_id=started.pk, organisation=provider, reason="not so")
    assert refused.value.code == "dispute_open"
    dispute_decide(dispute_id=dispute.pk, outcome="rejected", resolution="logs show use")
    again = dispute_open(reservation_id=started.pk, organisation=provider, reason="late payment")
    assert Dispute.objects.filter(reservation=started).count() == 2
    assert again.status == "open"


def test_another_organisation_cannot_open_a_dispute(started, other_buyer):
    with pytest.raises(NotFound):
        dispute_open(reservation_id=started.pk, organisation=other_buyer, reason="x")
    with pytest.raises(NotFound):
        dispute_open(reservation_id="not-a-uuid", organisation=other_buyer, reason="x")
    assert not Dispute.objects.exists()


def test_a_reservation_not_started_cannot_be_disputed(buyer, offer):
    demand = DemandFactory.create(buyer=buyer)
    booked = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    with pytest.raises(Conflict) as refused:
        dispute_open(reservation_id=booked.pk, organisation=buyer, reason="changed my mind")
    assert refused.value.code == "not_disputable"
    assert not Dispute.objects.exists()


@pytest.mark.parametrize("reason", ["", "   ", "x" * 1001])
def test_reason_must_be_given_and_bounded(started, buyer, reason):
    with pytest.raises(ValidationFailed) as refused:
        dispute_open(reservation_id=started.pk, organisation=buyer, reason=reason)
    assert refused.value.field == "reason"
    assert not Dispute.objects.exists()


def test_a_decided_dispute_cannot_be_decided_again(started, buyer):
    dispute = dispute_open(reservation_id=started.pk, organisation=buyer, reason="slow")
    dispute_decide(dispute_id=dispute.pk, outcome="resolved", resolution="credited")
    with pytest.raises(Conflict):
        dispute_decide(dispute_id=dispute.pk, outcome="rejected")
    with pytest.raises(ValidationFailed):
        dispute_decide(dispute_id=dispute.pk, outcome="open")
    dispute.refresh_from_db()
    assert (dispute.status, dispute.resolution) == ("resolved", "credited")


def test_web_ui_opens_a_dispute_and_the_operator_sees_and_resolves_it(started, buyer, buyer_user):
    web = Client()
    web.force_login(buyer_user)
    page = web.get(f"/reservations/{started.pk}/")
    assert b"Open a dispute" in page.content
    response = web.post(f"/reservations/{started.pk}/dispute/", {"reason": "half the GPUs idle"})
    assert response.status_code == 302
    dispute = Dispute.objects.get()
    assert (dispute.opened_by, dispute.reason) == (buyer, "half the GPUs idle")

    operator = get_user_model().objects.create_superuser("op", "op@example.com", "pw-x-123456")
    admin = Client()
    admin.force_login(operator)
    dashboard = admin.get("/admin/dashboard/").content.decode()
    assert "Open disputes (1)" in dashboard and "half the GPUs idle" in dashboard
    admin.post(
        reverse("admin:marketplace_dispute_changelist"),
        {"action": "resolve_disputes", "_selected_action": [str(dispute.pk)]},
    )
    dispute.refresh_from_db()
    assert (dispute.status, dispute.resolved_by) == ("resolved", operator)
    assert "Open disputes (0)" in admin.get("/admin/dashboard/").content.decode()


def test_web_ui_refusal_in_chinese_changes_nothing(buyer, buyer_user, offer):
    demand = DemandFactory.create(buyer=buyer)
    booked = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    web = Client(headers={"accept-language": "zh-hans"})
    web.force_login(buyer_user)
    response = web.post(f"/reservations/{booked.pk}/dispute/", {"reason": "x"}, follow=True)
    assert "此预订当前不能提出争议" in response.content.decode()
    assert not Dispute.objects.exists()
