"""factory_boy factories for the whole project. Build a market with ``market()`` in conftest."""

import itertools
from datetime import timedelta
from decimal import Decimal

import factory
from django.utils import timezone

from accounts.credit_code import make_credit_code
from accounts.models import Membership, Organisation, User
from marketplace.models import Accelerator, Cluster, Demand, Hub, Offer, Site
from marketplace.timeutil import from_hour_index, hour_index_ceil
from vouchers.models import CatalogueEntry, Programme

_codes = itertools.count(1)


def credit_code() -> str:
    """A fresh valid unified social credit code (GB 32100-2015 check character)."""
    return make_credit_code(f"91510100{next(_codes):09d}")


def next_hour(hours_ahead: int = 1):  # type: ignore[no-untyped-def]
    """The whole UTC hour ``hours_ahead`` hours after the next one."""
    return from_hour_index(hour_index_ceil(timezone.now()) + hours_ahead)


def settled_reservation(  # type: ignore[no-untyped-def]
    buyer, offer, voucher=None, *, hours_ahead: int = 1, delivered: int | None = None
):
    """A reservation of ``buyer``'s new demand (paid with ``voucher`` if given) on ``offer``,
    starting ``hours_ahead`` hours after the next whole hour, taken through its life by the
    services: held, started, delivered (``delivered`` GPU-hours reported by the provider, or the
    whole booking when the clock passes its end) and settled. Returns the settled
    ``Reservation``."""
    from marketplace.services import (
        reservation_create,
        reservation_report_usage,
        reservation_settle,
        reservations_advance,
    )

    start = next_hour(hours_ahead)
    demand = DemandFactory.create(
        buyer=buyer, voucher=voucher, earliest_start=start, latest_end=start + timedelta(hours=8)
    )
    r = reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=start)
    reservations_advance(now=r.start)
    if delivered is not None:
        reservation_report_usage(
            reservation_id=r.pk, provider=r.provider, delivered_gpu_hours=delivered
        )
    else:
        reservations_advance(now=r.end)
    return reservation_settle(reservation_id=r.pk)


def site_form(site: Site, **change: str) -> dict[str, str]:
    """The POST data of a site's change form (console or operator admin) as it stands, with
    ``change`` applied; the console's form ignores ``provider``."""
    form = {
        "code": site.code,
        "name": site.name,
        "city": site.city,
        "metro_area": site.metro_area,
        "hub": str(site.hub_id),
        "cluster": str(site.cluster_id or ""),
        "provider": str(site.provider_id or ""),
    }
    form.update(change)
    return form


class HubFactory(factory.django.DjangoModelFactory[Hub]):
    class Meta:
        model = Hub
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"hub-{n}")
    name = factory.LazyAttribute(lambda o: o.code.title())


class ClusterFactory(factory.django.DjangoModelFactory[Cluster]):
    class Meta:
        model = Cluster
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"cluster-{n}")
    name = factory.LazyAttribute(lambda o: o.code.title())
    hub = factory.SubFactory(HubFactory)


class SiteFactory(factory.django.DjangoModelFactory[Site]):
    class Meta:
        model = Site
        django_get_or_create = ("code",)

    code = factory.Sequence(lambda n: f"site-{n}")
    name = factory.LazyAttribute(lambda o: f"DC {o.code}")
    city = "Chengdu"
    metro_area = "Chengdu"
    hub = factory.SubFactory(HubFactory, code="chengdu-chongqing")


class AcceleratorFactory(factory.django.DjangoModelFactory[Accelerator]):
    class Meta:
        model = Accelerator
        django_get_or_create = ("code",)

    code = "A100-80G"
    vendor = "NVIDIA"
    memory_gb = 80
    bf16_tflops = Decimal("312.0")


class OrganisationFactory(factory.django.DjangoModelFactory[Organisation]):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Org {n}")
    credit_code = factory.LazyFunction(credit_code)
    kind = Organisation.Kind.SME
    status = Organisation.Status.APPROVED
    home_site = factory.SubFactory(SiteFactory)


class ProviderFactory(OrganisationFactory):
    kind = Organisation.Kind.PROVIDER


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-Secret-123")

    @factory.post_generation
    def organisation(self, create, extracted, **kwargs):  # type: ignore[no-untyped-def]
        if create and extracted is not None:
            Membership.objects.create(
                user=self,
                organisation=extracted,  # type: ignore[misc]
                role=Membership.Role.ADMIN,
            )


class OfferFactory(factory.django.DjangoModelFactory[Offer]):
    class Meta:
        model = Offer

    provider = factory.SubFactory(ProviderFactory)
    site = factory.SubFactory(SiteFactory)
    accelerator = factory.SubFactory(AcceleratorFactory)
    gpu_count = 8
    gpus_per_node = 8
    available_from = factory.LazyFunction(lambda: next_hour(0))
    available_until = factory.LazyFunction(lambda: next_hour(24 * 7))
    price_per_gpu_hour = Decimal("10.0000")
    min_duration_hours = 1
    status = Offer.Status.ACTIVE


class DemandFactory(factory.django.DjangoModelFactory[Demand]):
    """A demand row written directly (no service); use ``demand_create`` to test the rules."""

    class Meta:
        model = Demand

    buyer = factory.SubFactory(OrganisationFactory)
    origin_site = factory.LazyAttribute(lambda o: o.buyer.home_site)
    gpu_count = 4
    duration_hours = 2
    earliest_start = factory.LazyFunction(lambda: next_hour(1))
    latest_end = factory.LazyAttribute(lambda o: o.earliest_start + timedelta(hours=24))
    max_price_per_gpu_hour = Decimal("20.0000")


class ProgrammeFactory(factory.django.DjangoModelFactory[Programme]):
    class Meta:
        model = Programme
        django_get_or_create = ("code",)

    code = "chengdu-2025"
    name = "Chengdu compute vouchers 2025"
    issuer_city = "Chengdu"
    effective_from = factory.LazyFunction(lambda: timezone.now().date().replace(month=1, day=1))
    annual_budget = Decimal("100000000.00")
    max_share = Decimal("0.6000")
    buyer_annual_cap = Decimal("5000000.00")
    min_voucher_amount = Decimal("0.00")
    validity_months = 12


class CatalogueEntryFactory(factory.django.DjangoModelFactory[CatalogueEntry]):
    class Meta:
        model = CatalogueEntry

    programme = factory.SubFactory(ProgrammeFactory)
    provider = factory.SubFactory(ProviderFactory)
    year = factory.LazyFunction(lambda: timezone.now().year)
    status = CatalogueEntry.Status.APPROVED
