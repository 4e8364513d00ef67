"""Tenant isolation: every route of ``/api/v1/`` and every method it serves, called as each kind
of caller, against objects of one SME and one provider.

The table ``MATRIX`` is checked against the URLconf first (``test_matrix_covers_every_route``):
a new route or method without a row fails the suite. Then each (route, method, caller) runs on a
fresh world and must answer the status in the table; a refused call (≥ 400) must leave every
row of the market, vouchers, ledger and accounts unchanged; and no response may contain an id
of another organisation's private object (demands, vouchers, applications, tokens, a paused
offer, ledger accounts). Bodies carry foreign keys of the owning organisation (its voucher, its
own site), so another caller meets them as 404s.

Callers: ``anon`` (no credentials), ``sme`` (owns the demand, voucher, application and buys the
reservation), ``other_sme``, ``provider`` (owns the offers and the site and sells the
reservation), ``other_provider``, ``operator`` (staff user without an organisation: operators act
in the admin, so the API's organisation-scoped views refuse it with 403; it holds the admin's
permissions on statements and inter-hub trades, which the operators' API views ask for).
"""

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken, Membership, Organisation
from accounts.tokens import token_create
from ledger.models import Account, Entry, IdempotencyKey, Transaction
from marketplace.models import Demand, Offer, Reservation, Site
from marketplace.services import reservation_create
from tests.factories import (
    DemandFactory,
    OfferFactory,
    ProviderFactory,
    SiteFactory,
    UserFactory,
    next_hour,
    settled_reservation,
)
from vouchers.models import (
    ProgrammeUsage,
    ReimbursementClaim,
    Statement,
    Voucher,
    VoucherApplication,
)
from vouchers.services import statement_issue, voucher_application_submit

pytestmark = pytest.mark.django_db

ROLES = ("anon", "sme", "other_sme", "provider", "other_provider", "operator")
MEMBERS = ("sme", "other_sme", "provider", "other_provider")
API_PREFIX = "api/v1/"


def _everyone(authenticated: int, *, operator: int | None = None) -> dict[str, int]:
    """401 for anonymous, ``authenticated`` for the others (``operator`` may differ)."""
    row = dict.fromkeys(ROLES, authenticated)
    row["anon"] = 401
    if operator is not None:
        row["operator"] = operator
    return row


def _row(anon: int = 401, operator: int = 403, **members: int) -> dict[str, int]:
    row = {"anon": anon, "operator": operator, **members}
    assert set(row) == set(ROLES), row
    return row


# (route name, method) -> (path object or None, body builder name or None, {role: status})
MATRIX: dict[tuple[str, str], tuple[str | None, str | None, dict[str, int]]] = {
    ("auth-token", "post"): (None, "bad_login", dict.fromkeys(ROLES, 400)),
    ("auth-tokens", "get"): (None, None, _everyone(200)),
    ("auth-token-revoke", "delete"): (
        "sme_token",
        None,
        _row(sme=204, other_sme=404, provider=404, other_provider=404, operator=404),
    ),
    ("organisations", "post"): (
        None,
        "bad_organisation",
        _row(sme=409, other_sme=409, provider=409, other_provider=409, operator=400),
    ),
    ("organisation-me", "get"): (None, None, _everyone(200, operator=403)),
    ("hubs", "get"): (None, None, _everyone(200)),
    ("sites", "get"): (None, None, _everyone(200)),
    ("accelerators", "get"): (None, None, _everyone(200)),
    ("offers", "get"): (None, None, _everyone(200)),
    ("offers", "post"): (
        None,
        "offer",
        _row(sme=403, other_sme=403, provider=201, other_provider=404),
    ),
    ("offer-detail", "get"): ("offer", None, _everyone(200)),
    ("offer-detail", "patch"): (
        "offer",
        "offer_change",
        _row(sme=404, other_sme=404, provider=200, other_provider=404, operator=404),
    ),
    ("offer-pause", "post"): (
        "offer",
        None,
        _row(sme=404, other_sme=404, provider=200, other_provider=404),
    ),
    ("offer-activate", "post"): (
        "paused_offer",
        None,
        _row(sme=404, other_sme=404, provider=200, other_provider=404),
    ),
    ("offer-withdraw", "post"): (
        "offer",
        None,
        _row(sme=404, other_sme=404, provider=200, other_provider=404),
    ),
    ("demands", "get"): (None, None, _everyone(200, operator=403)),
    ("demands", "post"): (
        None,
        "demand",
        _row(sme=201, other_sme=404, provider=403, other_provider=403),
    ),
    ("demand-detail", "get"): (
        "demand",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("demand-cancel", "post"): (
        "demand",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("demand-explain", "get"): (
        "demand",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("quotes", "post"): (
        None,
        "quote",
        _row(sme=200, other_sme=404, provider=403, other_provider=403),
    ),
    ("reservations", "get"): (None, None, _everyone(200, operator=403)),
    ("reservation-detail", "get"): (
        "reservation",
        None,
        _row(sme=200, other_sme=404, provider=200, other_provider=404),
    ),
    ("reservation-accept", "post"): (
        "held_reservation",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("reservation-cancel", "post"): (
        "reservation",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("reservation-usage", "post"): (
        "reservation",
        "usage",
        # the provider's own reservation is confirmed, not active yet: 409, still refused
        _row(sme=404, other_sme=404, provider=409, other_provider=404),
    ),
    ("provider-sites", "get"): (
        None,
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=200),
    ),
    ("provider-usage-reports", "get"): (
        None,
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=200),
    ),
    ("provider-payouts", "get"): (
        None,
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=200),
    ),
    ("provider-reimbursement-claims", "get"): (
        None,
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=200),
    ),
    ("programmes", "get"): (None, None, _everyone(200)),
    ("programme-detail", "get"): ("programme", None, _everyone(200)),
    ("vouchers", "get"): (None, None, _everyone(200, operator=403)),
    ("voucher-detail", "get"): (
        "voucher",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("voucher-applications", "get"): (None, None, _everyone(200, operator=403)),
    ("voucher-applications", "post"): (
        None,
        "application",
        _row(sme=201, other_sme=201, provider=403, other_provider=403),
    ),
    ("voucher-application-detail", "get"): (
        "application",
        None,
        _row(sme=200, other_sme=404, provider=404, other_provider=404),
    ),
    ("statements", "get"): (
        None,
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=200, operator=200),
    ),
    ("statement-detail", "get"): (
        "statement",
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=404, operator=200),
    ),
    ("statement-csv", "get"): (
        "statement",
        None,
        _row(sme=403, other_sme=403, provider=200, other_provider=404, operator=200),
    ),
    ("statement-mark-paid", "post"): (
        "statement",
        None,
        _row(sme=403, other_sme=403, provider=403, other_provider=403, operator=200),
    ),
    ("wallet", "get"): (None, None, _everyone(200, operator=403)),
    ("inter-hub-trade-matrix", "get"): (None, None, _everyone(403, operator=200)),
    ("wallet-deposits", "post"): (
        None,
        "deposit",
        _row(sme=201, other_sme=201, provider=403, other_provider=403),
    ),
    ("ledger", "get"): (None, None, _everyone(200, operator=403)),
}

HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def _api_routes() -> set[tuple[str, str]]:
    """(route name, method) for every route under /api/v1/ and each method its view serves."""
    found: set[tuple[str, str]] = set()

    def walk(patterns: list[Any], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(API_PREFIX):
                view = getattr(pattern.callback, "view_class", None) or pattern.callback.cls  # type: ignore[attr-defined]
                for method in HTTP_METHODS:
                    if hasattr(view, method):
                        found.add((str(pattern.name), method))

    walk(get_resolver().url_patterns, "")
    return found


def test_matrix_covers_every_route() -> None:
    routes = _api_routes()
    assert routes - set(MATRIX) == set(), "routes without a row in MATRIX"
    assert set(MATRIX) - routes == set(), "rows in MATRIX for routes that are gone"


# --- The world ------------------------------------------------------------------------------


@pytest.fixture
def world(settings, buyer, other_buyer, provider, offer, voucher, programme):  # type: ignore[no-untyped-def]
    settings.API_RATES = {"write_user": None, "write_ip": None, "login_ip": None}
    other_provider = ProviderFactory.create(name="Other DC", home_site=offer.site)
    own_site = SiteFactory.create(provider=provider, hub=offer.site.hub)
    paused = OfferFactory.create(
        provider=provider, site=offer.site, accelerator=offer.accelerator, status="paused"
    )
    # a settled reservation paid partly with the voucher, on the provider's statement (first: its
    # life is moved along by the clock, which would move the reservations below too)
    settled_reservation(buyer, offer, voucher, hours_ahead=5)
    demand = DemandFactory.create(buyer=buyer)
    bought = DemandFactory.create(buyer=buyer)
    bought.accelerators.add(offer.accelerator)
    reservation = reservation_create(
        demand_id=bought.pk, offer_id=offer.pk, start=bought.earliest_start
    )
    held_demand = DemandFactory.create(buyer=buyer, auto_accept=False)
    held = reservation_create(
        demand_id=held_demand.pk, offer_id=offer.pk, start=held_demand.earliest_start
    )
    application = voucher_application_submit(
        buyer=buyer, programme=programme, amount=Decimal("500.00")
    )
    statement = statement_issue(
        programme_id=programme.pk,
        provider_id=provider.pk,
        period_start=timezone.now().date(),
        now=timezone.now() + timedelta(days=40),
    )
    foreign_demand = DemandFactory.create(buyer=other_buyer)
    users = {
        "sme": UserFactory.create(username="m-sme", organisation=buyer),
        "other_sme": UserFactory.create(username="m-other-sme", organisation=other_buyer),
        "provider": UserFactory.create(username="m-provider", organisation=provider),
        "other_provider": UserFactory.create(username="m-other-dc", organisation=other_provider),
        "operator": UserFactory.create(username="m-operator", is_staff=True),
    }
    # operators hold the admin's permissions on what the API lets them see and do
    users["operator"].user_permissions.set(
        Permission.objects.filter(
            codename__in=("view_statement", "change_statement", "view_interhubtrade")
        )
    )
    tokens = {role: token_create(user=user) for role, user in users.items()}
    organisation_of = {
        "sme": buyer,
        "other_sme": other_buyer,
        "provider": provider,
        "other_provider": other_provider,
    }
    # ids private to one organisation (shared objects such as the reservation are left out)
    private = {
        "sme": {demand.pk, voucher.pk, application.pk, tokens["sme"][0].pk},
        "other_sme": {foreign_demand.pk, tokens["other_sme"][0].pk},
        "provider": {paused.pk, tokens["provider"][0].pk},
        "other_provider": {tokens["other_provider"][0].pk},
        "operator": {tokens["operator"][0].pk},
    }
    for role, organisation in organisation_of.items():
        private[role] |= set(
            Account.objects.filter(organisation=organisation).values_list("pk", flat=True)
        )
    return {
        "tokens": {role: secret for role, (_, secret) in tokens.items()},
        "private": private,
        "objects": {
            "sme_token": tokens["sme"][0].pk,
            "offer": offer.pk,
            "paused_offer": paused.pk,
            "demand": demand.pk,
            "reservation": reservation.pk,
            "held_reservation": held.pk,
            "programme": programme.pk,
            "voucher": voucher.pk,
            "application": application.pk,
            "statement": statement.pk,
        },
        "bodies": {
            "bad_login": {"username": "nobody", "password": "wrong"},
            "bad_organisation": {"name": "X", "credit_code": "X" * 18, "kind": "sme"},
            "offer": {
                "site": str(own_site.pk),
                "accelerator": offer.accelerator.code,
                "gpu_count": 8,
                "available_from": next_hour(0).isoformat(),
                "available_until": next_hour(48).isoformat(),
                "price_per_gpu_hour": "6.5",
            },
            "offer_change": {"price_per_gpu_hour": "9.5"},
            "demand": {
                "accelerators": [offer.accelerator.code],
                "gpu_count": 2,
                "duration_hours": 2,
                "earliest_start": next_hour(1).isoformat(),
                "latest_end": next_hour(12).isoformat(),
                "max_price_per_gpu_hour": "20",
                "voucher": str(voucher.pk),
            },
            "quote": {
                "offer": str(offer.pk),
                "gpu_count": 1,
                "hours": 2,
                "voucher": str(voucher.pk),
            },
            "usage": {"delivered_gpu_hours": 1},
            "application": {"programme": str(programme.pk), "amount": "100.00"},
            "deposit": {"amount": "10.00"},
        },
    }


SNAPSHOT_MODELS = (
    Organisation,
    Membership,
    ApiToken,
    Site,
    Offer,
    Demand,
    Reservation,
    Voucher,
    VoucherApplication,
    Account,
    Transaction,
    Entry,
    IdempotencyKey,
    Statement,
    ReimbursementClaim,
    ProgrammeUsage,
)


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row of the models a caller could change, as plain values (a token's
    ``last_used_at`` is bookkeeping of the call itself and left out)."""
    rows = {}
    for model in SNAPSHOT_MODELS:
        fields = [f.attname for f in model._meta.concrete_fields if f.attname != "last_used_at"]
        rows[model.__name__] = list(model.objects.order_by("pk").values(*fields))
    return rows


def _path(name: str, obj: object | None) -> str:
    from django.urls import reverse

    return reverse(name, kwargs={"id": str(obj)} if obj is not None else {})


CASES = [(name, method, role) for (name, method) in sorted(MATRIX) for role in ROLES]


@pytest.mark.parametrize(("name", "method", "role"), CASES)
def test_matrix(world, name, method, role):  # type: ignore[no-untyped-def]
    target, body_name, expected = MATRIX[(name, method)]
    client = APIClient()
    if role != "anon":
        client.credentials(HTTP_AUTHORIZATION=f"Token {world['tokens'][role]}")
    path = _path(name, world["objects"][target] if target else None)
    body = world["bodies"][body_name] if body_name else None
    before = snapshot()

    response = getattr(client, method)(path, body, format="json")

    assert response.status_code == expected[role], (path, role, response.content[:500])
    if response.status_code >= 400:
        assert response["Content-Type"] == "application/problem+json"
        assert snapshot() == before, "a refused call changed something"
    text = response.content.decode()
    foreign = set().union(*(ids for who, ids in world["private"].items() if who != role))
    leaked = sorted(str(pk) for pk in foreign if str(pk) in text)
    assert leaked == [], f"{role} saw another organisation's ids"
