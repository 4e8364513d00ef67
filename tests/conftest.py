"""Shared fixtures. Tests run against PostgreSQL (marketplace.settings.test)."""

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from accounts.models import Organisation
from marketplace.services import wallet_deposit
from tests.factories import (
    AcceleratorFactory,
    CatalogueEntryFactory,
    OfferFactory,
    OrganisationFactory,
    ProgrammeFactory,
    ProviderFactory,
    SiteFactory,
    UserFactory,
)
from vouchers.models import Voucher
from vouchers.services import programme_fund, voucher_issue


@pytest.fixture
def site():  # type: ignore[no-untyped-def]
    return SiteFactory.create(code="chengdu-tianfu", city="Chengdu", metro_area="Chengdu")


@pytest.fixture
def buyer(site) -> Organisation:  # type: ignore[no-untyped-def]
    org = OrganisationFactory.create(name="Buyer SME", home_site=site)
    wallet_deposit(organisation=org, amount=Decimal("100000.00"))
    return org


@pytest.fixture
def other_buyer(site) -> Organisation:  # type: ignore[no-untyped-def]
    org = OrganisationFactory.create(name="Other SME", home_site=site)
    wallet_deposit(organisation=org, amount=Decimal("100000.00"))
    return org


@pytest.fixture
def provider(site) -> Organisation:  # type: ignore[no-untyped-def]
    return ProviderFactory.create(name="Provider DC", home_site=site)


@pytest.fixture
def accelerator():  # type: ignore[no-untyped-def]
    return AcceleratorFactory.create(aliases=["NVIDIA A100 80GB", "a100"])


@pytest.fixture
def offer(provider, site, accelerator):  # type: ignore[no-untyped-def]
    return OfferFactory.create(provider=provider, site=site, accelerator=accelerator)


@pytest.fixture
def programme(provider):  # type: ignore[no-untyped-def]
    programme = ProgrammeFactory.create()
    programme_fund(programme)
    CatalogueEntryFactory.create(programme=programme, provider=provider)
    return programme


@pytest.fixture
def voucher(programme, buyer) -> Voucher:  # type: ignore[no-untyped-def]
    return voucher_issue(programme=programme, owner=buyer, face_value=Decimal("1000.00"))


@pytest.fixture
def buyer_user(buyer):  # type: ignore[no-untyped-def]
    return UserFactory.create(username="buyer", organisation=buyer)


@pytest.fixture
def provider_user(provider):  # type: ignore[no-untyped-def]
    return UserFactory.create(username="provider", organisation=provider)


@pytest.fixture
def buyer_client(buyer_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(buyer_user)
    return client


@pytest.fixture
def provider_client(provider_user) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_authenticate(provider_user)
    return client


@pytest.fixture
def operator():  # type: ignore[no-untyped-def]
    """A superuser ``operator`` (the operators' admin)."""
    from accounts.models import User

    return User.objects.create_superuser("operator", "op@example.com", "pw-Secret-123")


@pytest.fixture
def operator_client(operator):  # type: ignore[no-untyped-def]
    """A Django test client logged in as ``operator``."""
    from django.test import Client

    client = Client()
    client.force_login(operator)
    return client
