"""`manage.py load_reference`: the reference data of PRODUCT.md §2, loaded idempotently."""

from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import Avg, F, Max

from ledger.models import Account, Transaction
from marketplace import reference
from marketplace.models import Accelerator, Cluster, Hub, HubLatency, Site
from marketplace.services import accelerators_resolve, reservation_create
from tests.factories import DemandFactory, OfferFactory
from vouchers.models import Programme

pytestmark = pytest.mark.django_db

PROGRAMME_CODES = {"chengdu-2025", "chengdu-2023", "beijing", "shenzhen", "hangzhou", "qingyang"}


def _load() -> str:
    out = StringIO()
    call_command("load_reference", stdout=out)
    return out.getvalue()


def _snapshot() -> dict[str, list[Any]]:
    return {
        "hubs": sorted(Hub.objects.values_list("pk", "code", "is_west")),
        "clusters": sorted(Cluster.objects.values_list("pk", "code", "hub_id")),
        "sites": sorted(
            Site.objects.values_list("pk", "code", "city", "metro_area", "hub_id", "cluster_id")
        ),
        "latencies": sorted(
            HubLatency.objects.values_list("pk", "from_hub_id", "to_hub_id", "latency_ms")
        ),
        "accelerators": sorted(Accelerator.objects.values_list("pk", "code", "bf16_tflops")),
        "programmes": sorted(
            Programme.objects.values_list("pk", "code", "annual_budget", "effective_from")
        ),
        "accounts": sorted(Account.objects.values_list("pk", "kind", "balance")),
        "transactions": sorted(Transaction.objects.values_list("pk", flat=True)),
    }


def test_loads_hubs_clusters_sites_catalogue_and_programmes():
    # when the reference data is loaded into an empty database
    out = _load()
    # then there are the 8 hubs and 10 clusters, four of the hubs western
    assert Hub.objects.count() == 8
    assert set(Hub.objects.filter(is_west=True).values_list("code", flat=True)) == {
        "inner-mongolia",
        "guizhou",
        "gansu",
        "ningxia",
    }
    assert Cluster.objects.count() == 10
    assert Cluster.objects.get(code="tianfu").hub.code == "chengdu-chongqing"
    # reference sites in at least 20 cities, none owned by a provider
    assert Site.objects.values("city").distinct().count() >= 20
    assert not Site.objects.filter(provider__isnull=False).exists()
    tianfu = Site.objects.get(code="chengdu-tianfu")
    assert (
        tianfu.city,
        tianfu.metro_area,
        tianfu.hub.code,
        tianfu.cluster.code if tianfu.cluster else None,
    ) == ("Chengdu", "Chengdu", "chengdu-chongqing", "tianfu")
    assert Site.objects.get(code="deyang").metro_area == "Chengdu"
    cities = set(Site.objects.values_list("city", flat=True))
    assert {
        "Beijing",
        "Tianjin",
        "Zhangjiakou",
        "Langfang",
        "Shanghai",
        "Suzhou",
        "Hangzhou",
        "Wuhu",
        "Nanjing",
        "Guangzhou",
        "Shenzhen",
        "Shaoguan",
        "Foshan",
        "Chengdu",
        "Deyang",
        "Meishan",
        "Chongqing",
        "Hohhot",
        "Ulanqab",
        "Guiyang",
        "Qingyang",
        "Lanzhou",
        "Zhongwei",
        "Yinchuan",
    } <= cities
    # every cluster hosts at least one site of its own hub
    for cluster in Cluster.objects.all():
        assert Site.objects.filter(cluster=cluster, hub=cluster.hub_id).exists(), cluster.code
    # the catalogue holds every required code and the undisclosed trace codes
    codes = set(Accelerator.objects.values_list("code", flat=True))
    assert set(reference.REQUIRED_ACCELERATOR_CODES) <= codes
    assert {"G1", "G2", "G3"} <= codes
    g2 = Accelerator.objects.get(code="G2")
    assert (g2.vendor, g2.memory_gb, g2.bf16_tflops) == ("undisclosed (Alibaba trace)", None, None)
    assert list(Accelerator.objects.filter(is_domestic=True).values_list("code", flat=True)) == [
        "Ascend910B-64G"
    ]
    # six programmes, each budget account funded exactly once with its annual budget
    assert set(Programme.objects.values_list("code", flat=True)) == PROGRAMME_CODES
    for programme in Programme.objects.all():
        account = Account.objects.get(kind=Account.Kind.PROGRAMME, programme=programme)
        assert account.balance == programme.annual_budget
        assert account.entries.count() == 1
    # and the command says so in one line
    assert out.count("\n") == 1
    assert "hubs 8 (created 8)" in out


def test_second_run_changes_nothing():
    # given a loaded database
    _load()
    before = _snapshot()
    # when the command runs again
    out = _load()
    # then every row, id, balance and transaction is the same and nothing was created
    assert _snapshot() == before
    assert "created" not in out and "updated" not in out and "funded" not in out
    assert Transaction.objects.filter(reason=Transaction.Reason.PROGRAMME_FUNDING).count() == 6


def test_reload_restores_shipped_values_and_keeps_ids():
    # given an operator edited a shipped hub name
    _load()
    hub = Hub.objects.get(code="guizhou")
    Hub.objects.filter(pk=hub.pk).update(name="Renamed")
    # when the command runs again
    out = _load()
    # then the shipped value is back on the same row
    hub_after = Hub.objects.get(code="guizhou")
    assert (hub_after.pk, hub_after.name) == (hub.pk, "Guizhou")
    assert "hubs 8 (unchanged 7, updated 1)" in out


def test_reload_keeps_a_reserved_site_where_its_reservations_were_made(buyer, provider):
    # given a reference site an operator moved to another city while it had no reservation,
    # and then a reservation on an offer there
    _load()
    site = Site.objects.filter(provider=None).exclude(pk=buyer.home_site_id).first()
    assert site is not None
    shipped = (site.hub_id, site.cluster_id, site.city, site.metro_area)
    Site.objects.filter(pk=site.pk).update(city="Elsewhere", metro_area="Elsewhere", name="Old")
    offer = OfferFactory.create(provider=provider, site=site)
    demand = DemandFactory.create(buyer=buyer, gpu_count=4, locality_limit="national")
    demand.accelerators.add(offer.accelerator)
    reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=demand.earliest_start)
    # when the command runs again (every deploy runs it)
    out = _load()
    # then the site keeps the place its reservation was made at (its name is the shipped one)
    after = Site.objects.get(pk=site.pk)
    assert (after.hub_id, after.cluster_id, after.city, after.metro_area) == (
        shipped[0],
        shipped[1],
        "Elsewhere",
        "Elsewhere",
    )
    assert after.name != "Old"
    assert "kept in place 1" in out
    # while a moved site without reservations gets its shipped place back
    spare = Site.objects.filter(provider=None).exclude(pk__in=[site.pk, buyer.home_site_id])[0]
    city = spare.city
    Site.objects.filter(pk=spare.pk).update(city="Elsewhere")
    _load()
    assert Site.objects.get(pk=spare.pk).city == city


def test_hub_latency_average_and_max_match_product_spec():
    _load()
    # both directions of the 28 hub pairs, no diagonal
    assert HubLatency.objects.count() == 8 * 7
    assert not HubLatency.objects.filter(from_hub=F("to_hub")).exists()
    stats = HubLatency.objects.aggregate(avg=Avg("latency_ms"), max=Max("latency_ms"))
    assert stats["avg"].quantize(Decimal("0.01")) == Decimal("9.70")
    assert stats["max"] == Decimal("17.1")
    # symmetric
    for row in HubLatency.objects.all():
        assert (
            HubLatency.objects.get(from_hub=row.to_hub_id, to_hub=row.from_hub_id).latency_ms
            == row.latency_ms
        )
    # the shipped constants agree with the table
    values = [ms for _, _, ms in reference.HUB_LATENCY_MS]
    assert sum(values) / len(values) == reference.HUB_LATENCY_AVERAGE_MS
    assert max(values) == reference.HUB_LATENCY_MAX_MS


def test_aliases_resolve_to_catalogue_codes():
    _load()
    # aliases are unique across the catalogue, so resolution is unambiguous
    aliases = [a.lower() for row in reference.ACCELERATORS for a in row["aliases"]]
    codes = [row["code"].lower() for row in reference.ACCELERATORS]
    assert len(set(aliases + codes)) == len(aliases) + len(codes)
    resolved = {
        name: accelerators_resolve([name])[0].code
        for name in ("NVIDIA H100 80GB", "h100", "V100M16", "V100M32", "T4", "P100", "A10", "G2")
    }
    assert resolved == {
        "NVIDIA H100 80GB": "H100-SXM5-80G",
        "h100": "H100-SXM5-80G",
        "V100M16": "V100-16G",
        "V100M32": "V100-32G",
        "T4": "T4",
        "P100": "P100",
        "A10": "A10",
        "G2": "G2",
    }


def test_programme_region_scopes():
    _load()
    chengdu_2023 = Programme.objects.get(code="chengdu-2023")
    assert set(chengdu_2023.sites.values_list("code", flat=True)) == {
        "chengdu-tianfu",
        "chengdu-pidu",
    }
    assert not chengdu_2023.hubs.exists()
    chengdu_2025 = Programme.objects.get(code="chengdu-2025")
    assert list(chengdu_2025.hubs.values_list("code", flat=True)) == ["chengdu-chongqing"]
    assert (chengdu_2025.max_share, chengdu_2025.buyer_annual_cap) == (
        Decimal("0.6000"),
        Decimal("5000000.00"),
    )
    qingyang = Programme.objects.get(code="qingyang")
    assert (qingyang.min_voucher_amount, qingyang.validity_months) == (Decimal("5000.00"), 12)
    assert chengdu_2025.effective_from.month == 1 and chengdu_2025.effective_from.day == 1


def test_the_admin_keeps_a_hubs_code_so_a_reload_never_doubles_the_hub(client):  # type: ignore[no-untyped-def]
    # given the reference data and an operator editing a hub's matching policy in the admin
    from accounts.models import User

    _load()
    hub = Hub.objects.get(code="guizhou")
    client.force_login(User.objects.create_superuser("root", "root@suanli.example", "pw-Secret-1"))
    form = {
        "code": "guizhou-renamed",  # the code names the hub's matching queue and its reference row
        "name": hub.name,
        "name_zh": hub.name_zh,
        "matching_policy": "optimal",
        "matching_time_limit": "20",
        "clusters-TOTAL_FORMS": "0",
        "clusters-INITIAL_FORMS": "0",
        "clusters-MIN_NUM_FORMS": "0",
        "clusters-MAX_NUM_FORMS": "1000",
    }
    # when the form is sent with another code
    response = client.post(f"/admin/marketplace/hub/{hub.pk}/change/", form)
    # then the policy changes and the code does not, so a reload finds the same row
    assert response.status_code == 302
    hub.refresh_from_db()
    assert (hub.code, hub.matching_policy, hub.matching_time_limit) == ("guizhou", "optimal", 20)
    _load()
    assert Hub.objects.count() == 8
    # and a new hub still takes the code it is given
    page = client.get("/admin/marketplace/hub/add/")
    assert 'name="code"' in page.content.decode()
