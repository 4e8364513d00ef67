"""``Idempotency-Key``: scoped to organisation and user, permissions checked again before a
replay, nothing stored for a refused request, kept ≥ 7 days then pruned (PRODUCT.md §6.1)."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Membership
from ledger.models import Account, IdempotencyKey
from ledger.services import idempotency_keys_prune, organisation_account
from ledger.tasks import prune_idempotency_keys
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def deposit(user, amount: str = "10.00", key: str = "k"):  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(user)
    return client.post(
        "/api/v1/wallet/deposits/", {"amount": amount}, format="json", HTTP_IDEMPOTENCY_KEY=key
    )


def test_two_users_of_one_organisation_do_not_share_keys(buyer):
    alice = UserFactory.create(username="alice", organisation=buyer)
    bob = UserFactory.create(username="bob", organisation=buyer)
    assert deposit(alice).status_code == 201
    second = deposit(bob)
    assert second.status_code == 201
    assert second.get("Idempotent-Replayed") is None
    assert organisation_account(buyer, Account.Kind.WALLET).balance == Decimal("100020.00")
    assert IdempotencyKey.objects.filter(key="k").count() == 2


def test_a_replay_checks_the_caller_again(buyer):
    alice = UserFactory.create(username="alice", organisation=buyer)
    assert deposit(alice).status_code == 201
    Membership.objects.filter(user=alice).delete()
    again = deposit(alice)
    assert again.status_code == 403
    assert again.json()["code"] == "no_organisation"
    assert again.get("Idempotent-Replayed") is None


def test_a_4xx_stores_nothing(buyer):
    alice = UserFactory.create(username="alice", organisation=buyer)
    assert deposit(alice, amount="-1").status_code == 400
    assert not IdempotencyKey.objects.exists()


@override_settings(IDEMPOTENCY_KEY_TTL=timedelta(days=1))
def test_keys_are_kept_at_least_seven_days_then_pruned(buyer):
    alice = UserFactory.create(username="alice", organisation=buyer)
    deposit(alice, key="old")
    deposit(alice, key="new")
    IdempotencyKey.objects.filter(key="old").update(
        created_at=timezone.now() - timedelta(days=7, minutes=1)
    )
    IdempotencyKey.objects.filter(key="new").update(
        created_at=timezone.now() - timedelta(days=6, hours=23)
    )
    assert prune_idempotency_keys() == 1  # a 1-day setting is raised to the 7-day floor
    assert list(IdempotencyKey.objects.values_list("key", flat=True)) == ["new"]
    assert idempotency_keys_prune() == 0
