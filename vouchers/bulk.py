"""The voucher/cash split for many holds at once (§5.4, §5.6), for the matcher's bulk write path
(``marketplace.matching.bulk``).

``vouchers.services.voucher_split`` reads, per hold, the voucher's balance, its programme's
budget and the buyer's cap left (``programme_limits_left``), the share tiers, the catalogue,
the region and the buyer's related organisations — about ten queries a hold. ``SplitFacts``
loads all of that once for a batch, under the batch's row locks (vouchers, their ledger
accounts, then the programme rows), and ``SplitFacts.split`` applies the same rules in the same
order in memory; ``SplitFacts.count`` then books a hold's voucher part against the balance,
budget and cap, so the next hold of the batch sees it, as the next ``voucher_split`` call
would see the previous hold's rows. ``tests/marketplace/test_bulk_write_rules.py`` checks the
two paths agree on every rule.
"""

from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.db.models import Q, Value

from accounts.models import Organisation
from marketplace.money import ZERO, quantize_money

from .models import CatalogueEntry, Programme, ProgrammeUsage, ShareTier, Voucher
from .services import (
    BillLine,
    Split,
    programme_in_effect,
    programme_year,
    split_lines,
    voucher_part_check,
)


@dataclass(frozen=True)
class _Tier:
    max_share: Decimal
    domestic_accelerator: bool | None
    accelerators: frozenset[UUID]
    buyers: frozenset[UUID]


@dataclass
class SplitFacts:
    """What the splits of one batch read, loaded once (``split_facts_load``) at ``at``.

    ``balances`` (CNY by voucher id) and the ``*_used`` sums (CNY by programme id, and by
    programme id and buyer id, for the programme year of ``at``) change as ``count`` books
    each hold."""

    at: datetime
    programmes: dict[UUID, Programme]
    balances: dict[UUID, Decimal]
    budget_used: dict[UUID, Decimal]
    buyer_used: dict[tuple[UUID, UUID], Decimal]
    approved: set[tuple[UUID, UUID]]
    related: dict[UUID, set[UUID]]
    regions: dict[UUID, tuple[set[UUID], set[UUID], set[UUID]]]
    tiers: dict[UUID, list[_Tier]]

    def limits_left(self, programme: Programme, buyer_id: UUID) -> tuple[Decimal, Decimal]:
        """``(budget left, buyer's cap left)`` CNY, as ``programme_limits_left``."""
        return (
            quantize_money(programme.annual_budget - self.budget_used[programme.pk]),
            quantize_money(programme.buyer_annual_cap - self.buyer_used[programme.pk, buyer_id]),
        )

    def ineligibility(
        self, voucher: Voucher, *, buyer: Organisation, provider: Organisation, site: object
    ) -> str:
        """``voucher_ineligibility`` on the loaded facts: the same rules in the same order."""
        programme = self.programmes[voucher.programme_id]
        if voucher.owner_id != buyer.pk:
            return "voucher_not_owned"
        if voucher.status != Voucher.Status.ACTIVE or self.at >= voucher.expires_at:
            return "voucher_expired"
        if not programme_in_effect(programme, self.at):
            return "programme_not_in_effect"
        if buyer.pk == provider.pk or provider.pk in self.related.get(buyer.pk, ()):
            return "related_party"
        if (programme.pk, provider.pk) not in self.approved:
            return "provider_not_in_catalogue"
        hubs, clusters, sites = self.regions[programme.pk]
        if (hubs or clusters or sites) and not (
            site.hub_id in hubs  # type: ignore[attr-defined]
            or (site.cluster_id is not None and site.cluster_id in clusters)  # type: ignore[attr-defined]
            or site.pk in sites  # type: ignore[attr-defined]
        ):
            return "site_outside_region"
        return ""

    def share(self, programme: Programme, *, buyer_id: UUID, accelerator: object) -> Decimal:
        """``programme_share`` on the loaded tiers."""
        share = programme.max_share
        for tier in self.tiers.get(programme.pk, ()):
            if tier.domestic_accelerator is not None and (
                accelerator is None
                or bool(getattr(accelerator, "is_domestic", False)) != tier.domestic_accelerator
            ):
                continue
            if tier.accelerators and getattr(accelerator, "pk", None) not in tier.accelerators:
                continue
            if tier.buyers and buyer_id not in tier.buyers:
                continue
            share = max(share, tier.max_share)
        return share

    def split(
        self,
        voucher: Voucher | None,
        *,
        bill: Decimal,
        buyer: Organisation,
        provider: Organisation,
        site: object,
        accelerator: object | None = None,
    ) -> Split:
        """``voucher_split`` of a one-line (GPU time) bill of ``bill`` CNY at ``at``, on the
        loaded facts. Raises what ``voucher_part_check`` raises (never for a split it made)."""
        if voucher is None:
            return Split(bill=bill, voucher_part=ZERO, cash_part=bill)
        reason = self.ineligibility(voucher, buyer=buyer, provider=provider, site=site)
        if reason:
            return Split(bill=bill, voucher_part=ZERO, cash_part=bill, note=reason)
        programme = self.programmes[voucher.programme_id]
        budget_left, cap_left = self.limits_left(programme, buyer.pk)
        share = self.share(programme, buyer_id=buyer.pk, accelerator=accelerator)
        lines = [BillLine("gpu_time", bill)]
        split = split_lines(
            lines,
            share,
            self.balances.get(voucher.pk, ZERO),
            budget_left,
            cap_left,
            eligible=programme.eligible_categories or (),
        )
        voucher_part_check(
            voucher,
            split.voucher_part,
            buyer=buyer,
            accelerator=accelerator,
            lines=lines,
            share=share,
        )
        return split

    def count(self, voucher: Voucher, buyer_id: UUID, voucher_part: Decimal) -> None:
        """Book a hold's ``voucher_part`` CNY: off the voucher's balance and onto the
        programme's budget and the buyer's cap used in the programme year of ``at`` (every hold
        counts in the year it is made: ``ledger.models.Hold.programme_year``)."""
        self.balances[voucher.pk] = self.balances.get(voucher.pk, ZERO) - voucher_part
        self.budget_used[voucher.programme_id] += voucher_part
        self.buyer_used[voucher.programme_id, buyer_id] += voucher_part


def limits_used(
    programmes: dict[UUID, Programme], buyer_ids: Collection[UUID], at: datetime
) -> tuple[defaultdict[UUID, Decimal], defaultdict[tuple[UUID, UUID], Decimal]]:
    """What ``programme_limits_left`` subtracts, for many programmes and buyers at once:
    ``(CNY used by programme id, CNY used by (programme id, buyer id))`` in the programme year
    of ``at`` — the programmes' usage rows (``vouchers.models.ProgrammeUsage``: voucher parts
    still held plus those redeemed, after refunds). One query."""
    budget_used: defaultdict[UUID, Decimal] = defaultdict(Decimal)
    buyer_used: defaultdict[tuple[UUID, UUID], Decimal] = defaultdict(Decimal)
    if not programmes:
        return budget_used, buyer_used
    rows = Q()
    for pk, p in programmes.items():
        rows |= Q(programme_id=pk, year=programme_year(p, at))
    for pk, buyer_id, used in ProgrammeUsage.objects.filter(
        rows, Q(buyer__isnull=True) | Q(buyer_id__in=list(buyer_ids))
    ).values_list("programme_id", "buyer_id", "used"):
        if buyer_id is None:
            budget_used[pk] += used
        else:
            buyer_used[pk, buyer_id] += used
    return budget_used, buyer_used


def region_scopes(
    programme_ids: Iterable[UUID],
) -> dict[UUID, tuple[set[UUID], set[UUID], set[UUID]]]:
    """Each programme's region scope, ``(hub ids, cluster ids, site ids)`` (all empty: no
    limit), for many programmes in one query."""
    ids = list(programme_ids)
    regions: dict[UUID, tuple[set[UUID], set[UUID], set[UUID]]] = {
        pk: (set(), set(), set()) for pk in ids
    }
    if not ids:
        return regions
    scopes = (
        Programme.hubs.through.objects.filter(programme_id__in=ids)
        .values_list("programme_id", Value(0), "hub_id")
        .union(
            Programme.clusters.through.objects.filter(programme_id__in=ids).values_list(
                "programme_id", Value(1), "cluster_id"
            ),
            Programme.sites.through.objects.filter(programme_id__in=ids).values_list(
                "programme_id", Value(2), "site_id"
            ),
            all=True,
        )
    )
    for pk, scope, target_id in scopes:
        regions[pk][scope].add(target_id)
    return regions


def split_facts_load(
    vouchers: Collection[Voucher],
    *,
    balances: dict[UUID, Decimal],
    buyer_ids: Iterable[UUID],
    provider_ids: Iterable[UUID],
    at: datetime,
) -> SplitFacts:
    """Load what splitting holds on ``vouchers`` (each with ``programme`` loaded) for
    ``buyer_ids`` with ``provider_ids``' capacity at ``at`` reads. ``balances`` are the
    vouchers' ledger balances (CNY by voucher id) the caller read under its locks. As
    ``voucher_split``, it reads the budget and cap used without the programme rows' locks
    unless the caller holds them: a caller that does not books them under the locks at the end
    (``vouchers.usage.usage_book``, which grows the usage only within the limits).

    Queries (none without vouchers): the programmes' usage rows (1), approved catalogue entries
    (1), the buyers' related organisations (1), the region scopes (1) and the share tiers (1,
    plus 2 when there are tiers).
    """
    programmes = {v.programme_id: v.programme for v in vouchers}
    buyers, providers = set(buyer_ids), set(provider_ids)
    facts = SplitFacts(
        at=at,
        programmes=programmes,
        balances=dict(balances),
        budget_used=defaultdict(Decimal),
        buyer_used=defaultdict(Decimal),
        approved=set(),
        related={},
        regions={pk: (set(), set(), set()) for pk in programmes},
        tiers={},
    )
    if not programmes:
        return facts
    facts.budget_used, facts.buyer_used = limits_used(programmes, buyers, at)
    for pk, provider_id, year in CatalogueEntry.objects.filter(
        programme_id__in=list(programmes),
        provider_id__in=providers,
        status=CatalogueEntry.Status.APPROVED,
    ).values_list("programme_id", "provider_id", "year"):
        if year == programme_year(programmes[pk], at):
            facts.approved.add((pk, provider_id))
    through = Organisation.related.through
    for a, b in through.objects.filter(from_organisation_id__in=buyers).values_list(
        "from_organisation_id", "to_organisation_id"
    ):
        facts.related.setdefault(a, set()).add(b)
    facts.regions = region_scopes(programmes)
    for tier in ShareTier.objects.filter(programme_id__in=list(programmes)).prefetch_related(
        "accelerators", "buyers"
    ):
        facts.tiers.setdefault(tier.programme_id, []).append(
            _Tier(
                max_share=tier.max_share,
                domestic_accelerator=tier.domestic_accelerator,
                accelerators=frozenset(a.pk for a in tier.accelerators.all()),
                buyers=frozenset(b.pk for b in tier.buyers.all()),
            )
        )
    return facts
