"""Input and output serializers of the marketplace API.

Units: money in CNY as decimal strings (prices per GPU-hour to 4 places, amounts to 2),
durations in hours, capacity in GPUs and GPU-hours, times ISO 8601 in UTC. Input serializers only
check shape and type (NaN, Infinity and excess decimal places are refused here); the market rules
live in ``marketplace.services`` and come back as errors naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from marketplace.models import (
    Accelerator,
    Cluster,
    Demand,
    Hub,
    LocalityTier,
    Offer,
    Reservation,
    Site,
    SplitScope,
)
from marketplace.services import MAX_GPUS, MAX_HOURS, MAX_PRICE
from vouchers.models import BILL_CATEGORIES

from .base import StrictSerializer
from .fields import AwareDateTimeField


def price_field(**kwargs: Any) -> serializers.DecimalField:
    """CNY per GPU-hour: positive, at most 4 decimal places, finite."""
    return serializers.DecimalField(
        max_digits=12, decimal_places=4, min_value=0, max_value=MAX_PRICE, **kwargs
    )


def amount_field(**kwargs: Any) -> serializers.DecimalField:
    """A CNY amount: at most 2 decimal places (fen), finite."""
    return serializers.DecimalField(max_digits=14, decimal_places=2, **kwargs)


# --- Reference data -------------------------------------------------------------------------


class HubSerializer(serializers.ModelSerializer):
    """A national hub node."""

    class Meta:
        model = Hub
        fields = ["id", "code", "name", "name_zh", "is_west"]


class SiteSerializer(serializers.ModelSerializer):
    """A data centre or home location; ``hub`` and ``cluster`` are codes."""

    hub: serializers.SlugRelatedField[Hub] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    cluster: serializers.SlugRelatedField[Cluster] = serializers.SlugRelatedField(
        slug_field="code", read_only=True, allow_null=True
    )

    class Meta:
        model = Site
        fields = ["id", "code", "name", "city", "metro_area", "hub", "cluster"]


class AcceleratorSerializer(serializers.ModelSerializer):
    """A catalogue accelerator: memory in GB, dense BF16/FP16 TFLOPS."""

    aliases = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Accelerator
        fields = [
            "id",
            "code",
            "vendor",
            "memory_gb",
            "bf16_tflops",
            "interconnect",
            "is_domestic",
            "aliases",
        ]


# --- Offers ---------------------------------------------------------------------------------


class OfferSerializer(serializers.ModelSerializer):
    """An offer: ``gpu_count`` GPUs of ``accelerator`` at ``site`` over
    ``[available_from, available_until)`` (UTC) at ``price_per_gpu_hour`` CNY."""

    provider = serializers.UUIDField(source="provider_id", read_only=True)
    provider_name = serializers.CharField(source="provider.name", read_only=True)
    site: serializers.SlugRelatedField[Site] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    site_id = serializers.UUIDField(read_only=True)
    hub = serializers.CharField(source="site.hub.code", read_only=True)
    city = serializers.CharField(source="site.city", read_only=True)
    accelerator = serializers.CharField(source="accelerator.code", read_only=True)

    class Meta:
        model = Offer
        fields = [
            "id",
            "provider",
            "provider_name",
            "site",
            "site_id",
            "hub",
            "city",
            "accelerator",
            "gpu_count",
            "gpus_per_node",
            "interconnect",
            "available_from",
            "available_until",
            "price_per_gpu_hour",
            "min_duration_hours",
            "status",
            "created_at",
            "updated_at",
        ]


# The offer list's lean path: the columns ``OfferSerializer`` shows, read with ``values()`` in
# the list's one query (site, hub, provider and accelerator joined), and turned into exactly
# what ``OfferSerializer`` would output (tests/api/test_offer_search_lean.py holds them equal).
OFFER_VALUES = (
    "id",
    "provider_id",
    "provider__name",
    "site__code",
    "site_id",
    "site__hub__code",
    "site__city",
    "accelerator__code",
    "gpu_count",
    "gpus_per_node",
    "interconnect",
    "available_from",
    "available_until",
    "price_per_gpu_hour",
    "min_duration_hours",
    "status",
    "created_at",
    "updated_at",
)
_PRICE_PLACES = Decimal("0.0001")


def _iso(value: datetime, zone: tzinfo) -> str:
    """A datetime as DRF's ``DateTimeField`` writes it: in the current time zone (UTC here),
    ISO 8601, ``Z`` for UTC."""
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def offer_values_representation(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``OfferSerializer(many=True).data`` for rows of ``Offer.objects.values(*OFFER_VALUES)``,
    without building model instances or serializer fields: ids as strings, times as ISO 8601
    UTC, ``price_per_gpu_hour`` as a 4-place decimal string (CNY)."""
    zone = timezone.get_current_timezone()
    return [
        {
            "id": str(row["id"]),
            "provider": str(row["provider_id"]),
            "provider_name": row["provider__name"],
            "site": row["site__code"],
            "site_id": str(row["site_id"]),
            "hub": row["site__hub__code"],
            "city": row["site__city"],
            "accelerator": row["accelerator__code"],
            "gpu_count": row["gpu_count"],
            "gpus_per_node": row["gpus_per_node"],
            "interconnect": row["interconnect"],
            "available_from": _iso(row["available_from"], zone),
            "available_until": _iso(row["available_until"], zone),
            "price_per_gpu_hour": f"{row['price_per_gpu_hour'].quantize(_PRICE_PLACES):f}",
            "min_duration_hours": row["min_duration_hours"],
            "status": row["status"],
            "created_at": _iso(row["created_at"], zone),
            "updated_at": _iso(row["updated_at"], zone),
        }
        for row in rows
    ]


class OfferCreateInputSerializer(StrictSerializer):
    """A new offer. ``site``: UUID of a reference site or one of the provider's own;
    ``accelerator``: catalogue code or alias; times whole UTC hours; ``price_per_gpu_hour``
    CNY (≤ 4 places); ``activate`` false keeps it a draft."""

    site = serializers.PrimaryKeyRelatedField(queryset=Site.objects.all())
    accelerator = serializers.CharField(max_length=80)
    gpu_count = serializers.IntegerField(min_value=1, max_value=MAX_GPUS)
    gpus_per_node = serializers.IntegerField(min_value=1, max_value=64, default=8)
    interconnect = serializers.CharField(max_length=40, allow_blank=True, default="")
    available_from = AwareDateTimeField()
    available_until = AwareDateTimeField()
    price_per_gpu_hour = price_field()
    min_duration_hours = serializers.IntegerField(min_value=1, max_value=MAX_HOURS, default=1)
    activate = serializers.BooleanField(default=True)


class OfferUpdateInputSerializer(StrictSerializer):
    """Fields of an offer to change (all optional; same units as creation)."""

    gpu_count = serializers.IntegerField(min_value=1, max_value=MAX_GPUS, required=False)
    gpus_per_node = serializers.IntegerField(min_value=1, max_value=64, required=False)
    interconnect = serializers.CharField(max_length=40, allow_blank=True, required=False)
    available_from = AwareDateTimeField(required=False)
    available_until = AwareDateTimeField(required=False)
    price_per_gpu_hour = price_field(required=False)
    min_duration_hours = serializers.IntegerField(min_value=1, max_value=MAX_HOURS, required=False)


# --- Demands --------------------------------------------------------------------------------


class DemandSerializer(serializers.ModelSerializer):
    """A demand: ``gpu_count`` GPUs for ``duration_hours`` inside
    ``[earliest_start, latest_end)`` (UTC) at most ``max_price_per_gpu_hour`` CNY."""

    accelerators: serializers.SlugRelatedField[Accelerator] = serializers.SlugRelatedField(
        slug_field="code", many=True, read_only=True
    )
    origin_site: serializers.SlugRelatedField[Site] = serializers.SlugRelatedField(
        slug_field="code", read_only=True
    )
    voucher = serializers.UUIDField(source="voucher_id", read_only=True, allow_null=True)
    single_site = serializers.BooleanField(
        read_only=True,
        help_text="Deprecated, derived from split: true unless split is hub.",
    )

    class Meta:
        model = Demand
        fields = [
            "id",
            "status",
            "accelerators",
            "min_memory_gb",
            "min_tflops",
            "gpu_count",
            "duration_hours",
            "earliest_start",
            "latest_end",
            "max_price_per_gpu_hour",
            "locality_limit",
            "split",
            "min_gpus_per_part",
            "single_site",
            "voucher",
            "auto_accept",
            "origin_site",
            "unmatched_reason",
            "created_at",
        ]


class DemandCreateInputSerializer(StrictSerializer):
    """A new demand. ``accelerators``: catalogue codes or aliases (empty = any model meeting
    ``min_memory_gb``/``min_tflops``); times UTC; ``max_price_per_gpu_hour`` CNY (≤ 4 places);
    ``voucher``: UUID of one of the caller's vouchers."""

    accelerators = serializers.ListField(
        child=serializers.CharField(max_length=80), max_length=50, default=list
    )
    min_memory_gb = serializers.IntegerField(
        min_value=1, max_value=10_000, required=False, allow_null=True
    )
    min_tflops = serializers.DecimalField(
        max_digits=8, decimal_places=1, min_value=0, required=False, allow_null=True
    )
    gpu_count = serializers.IntegerField(min_value=1, max_value=MAX_GPUS)
    duration_hours = serializers.IntegerField(min_value=1, max_value=MAX_HOURS)
    earliest_start = AwareDateTimeField()
    latest_end = AwareDateTimeField()
    max_price_per_gpu_hour = price_field()
    locality_limit = serializers.ChoiceField(
        choices=LocalityTier.choices, default=LocalityTier.NATIONAL
    )
    split = serializers.ChoiceField(
        choices=SplitScope.choices,
        required=False,
        help_text="Partial fills: none (default, all GPUs on one offer), site (split across "
        "offers at one site) or hub (across sites of one hub). Every part runs over the same "
        "hours; the demand is served whole or not at all, one reservation per offer.",
    )
    min_gpus_per_part = serializers.IntegerField(
        min_value=1,
        max_value=MAX_GPUS,
        default=1,
        help_text="Fewest GPUs on any one offer when split (e.g. 8 for whole 8-GPU nodes); at "
        "most gpu_count.",
    )
    single_site = serializers.BooleanField(
        required=False,
        help_text="Deprecated, use split: true means split none, false means split hub. Given "
        "with split, the two must agree.",
    )
    voucher = serializers.UUIDField(required=False, allow_null=True)
    auto_accept = serializers.BooleanField(default=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """``split`` from the deprecated ``single_site`` when only that is given."""
        single_site = attrs.pop("single_site", None)
        split = attrs.get("split")
        if single_site is not None:
            implied = SplitScope.NONE if single_site else SplitScope.HUB
            if split is None:
                attrs["split"] = implied
            elif single_site != (split != SplitScope.HUB):
                raise serializers.ValidationError(
                    {"single_site": [f"contradicts split {split!r} (use split alone)"]}
                )
        attrs.setdefault("split", SplitScope.NONE)
        return attrs


class DemandPartSerializer(serializers.ModelSerializer):
    """One reservation of a demand (a part, when the demand was split across offers): its
    offer and site, GPUs, hours ``[start, end)`` (UTC), status, bill and split (CNY)."""

    offer = serializers.UUIDField(source="offer_id", read_only=True)
    site = serializers.CharField(source="offer.site.code", read_only=True)
    voucher = serializers.UUIDField(source="voucher_id", read_only=True, allow_null=True)

    class Meta:
        model = Reservation
        fields = [
            "id",
            "status",
            "offer",
            "site",
            "locality_tier",
            "gpu_count",
            "start",
            "end",
            "price_per_gpu_hour",
            "bill",
            "voucher",
            "voucher_part",
            "cash_part",
        ]
        read_only_fields = fields


class DemandDetailSerializer(DemandSerializer):
    """A demand with its reservations (``parts``, oldest first): one for a whole demand, one
    per offer for a split one; live parts hold capacity (held, confirmed, active, completed,
    settled), the others are history (cancelled, expired, failed)."""

    parts = DemandPartSerializer(source="reservations", many=True, read_only=True)

    class Meta(DemandSerializer.Meta):
        fields = [*DemandSerializer.Meta.fields, "parts"]


# --- Quotes ---------------------------------------------------------------------------------


EXTRA_CATEGORIES = tuple(c for c in BILL_CATEGORIES if c != "gpu_time")


class QuoteExtraLineSerializer(StrictSerializer):
    """Another item of the purchase priced by the provider: ``category`` (``storage``,
    ``network``, ``software``) and ``amount`` CNY (> 0, at most 2 places)."""

    category = serializers.ChoiceField(choices=EXTRA_CATEGORIES)
    amount = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=Decimal("0.01"), max_value=Decimal("1000000000")
    )


class QuoteInputSerializer(StrictSerializer):
    """``gpu_count`` GPUs x ``hours`` on ``offer`` (UUID), optionally paid with ``voucher``;
    ``extra_lines``: other items of the purchase to split with it (one per category; a
    reservation itself bills GPU time only)."""

    offer = serializers.UUIDField()
    gpu_count = serializers.IntegerField(min_value=1, max_value=MAX_GPUS)
    hours = serializers.IntegerField(min_value=1, max_value=MAX_HOURS)
    voucher = serializers.UUIDField(required=False, allow_null=True)
    extra_lines = serializers.ListField(
        child=QuoteExtraLineSerializer(), required=False, max_length=len(EXTRA_CATEGORIES)
    )

    def validate_extra_lines(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        categories = [line["category"] for line in value]
        if len(set(categories)) != len(categories):
            raise serializers.ValidationError("one line per category")
        return value


class QuoteLineSerializer(serializers.Serializer):
    """One line of the bill: ``category`` and ``amount`` CNY, ``eligible`` when the voucher's
    programme funds that category, and the line's ``voucher_part`` and ``cash_part`` (they add
    up to ``amount``; the lines add up to the bill and its parts, exactly)."""

    category = serializers.CharField()
    amount = amount_field()
    eligible = serializers.BooleanField()
    voucher_part = amount_field()
    cash_part = amount_field()


class QuoteSerializer(serializers.Serializer):
    """The bill in CNY and its split: ``voucher_part + cash_part == bill``; ``voucher_note``
    says why the voucher part is smaller than it could be (empty when it applies in full);
    ``lines`` the bill by category (``gpu_time`` first) with each line's voucher-eligible part."""

    bill = amount_field()
    voucher_part = amount_field()
    cash_part = amount_field()
    voucher_note = serializers.CharField(source="note")
    lines = QuoteLineSerializer(many=True)


# --- Reservations ---------------------------------------------------------------------------


class ReservationSerializer(serializers.ModelSerializer):
    """A reservation over ``[start, end)`` (UTC, whole hours) with its bill and split (CNY).
    ``voucher`` is shown to the buyer only (it is the buyer's own object; the provider sees the
    voucher part, not which voucher paid it): the views pass ``organisation`` in the context."""

    demand = serializers.UUIDField(source="demand_id", read_only=True)
    offer = serializers.UUIDField(source="offer_id", read_only=True)
    buyer = serializers.UUIDField(source="buyer_id", read_only=True)
    provider = serializers.UUIDField(source="provider_id", read_only=True)
    voucher = serializers.UUIDField(source="voucher_id", read_only=True, allow_null=True)
    hours = serializers.IntegerField(read_only=True)
    locality_tier = serializers.CharField(
        read_only=True, help_text="city, metro, region or national: offer site vs home site."
    )
    gpu_hours = serializers.IntegerField(read_only=True)

    class Meta:
        model = Reservation
        fields = [
            "id",
            "status",
            "demand",
            "offer",
            "buyer",
            "provider",
            "start",
            "end",
            "gpu_count",
            "hours",
            "gpu_hours",
            "price_per_gpu_hour",
            "bill",
            "voucher",
            "voucher_part",
            "cash_part",
            "voucher_note",
            "locality_tier",
            "delivered_gpu_hours",
            "created_at",
            "updated_at",
        ]

    def to_representation(self, instance: Reservation) -> dict[str, Any]:
        data = super().to_representation(instance)
        caller = self.context.get("organisation")
        if caller is None or caller.pk != instance.buyer_id:
            data["voucher"] = None
        return data


# The reservation list's lean path, as the offer list's (tests/api/test_lean_lists.py): every
# column of the row, by attribute name (``demand_id``, not ``demand``).
RESERVATION_VALUES = tuple(field.attname for field in Reservation._meta.concrete_fields)
_FEN = Decimal("0.01")


def reservation_values_representation(
    rows: Iterable[dict[str, Any]], *, organisation: Any = None
) -> list[dict[str, Any]]:
    """``ReservationSerializer(many=True, context={"organisation": organisation}).data`` for
    rows of ``Reservation.objects.values(*RESERVATION_VALUES)``: ids as strings, times ISO 8601
    UTC, ``hours`` and ``gpu_hours`` derived as the model does, prices to 4 places and amounts
    to 2 (CNY, decimal strings), the voucher shown to the buyer only."""
    zone = timezone.get_current_timezone()
    caller = None if organisation is None else organisation.pk
    out = []
    for row in rows:
        hours = int((row["end"] - row["start"]).total_seconds() // 3600)
        voucher = row["voucher_id"] if row["buyer_id"] == caller else None
        out.append(
            {
                "id": str(row["id"]),
                "status": row["status"],
                "demand": str(row["demand_id"]),
                "offer": str(row["offer_id"]),
                "buyer": str(row["buyer_id"]),
                "provider": str(row["provider_id"]),
                "start": _iso(row["start"], zone),
                "end": _iso(row["end"], zone),
                "gpu_count": row["gpu_count"],
                "hours": hours,
                "gpu_hours": hours * row["gpu_count"],
                "price_per_gpu_hour": f"{row['price_per_gpu_hour'].quantize(_PRICE_PLACES):f}",
                "bill": f"{row['bill'].quantize(_FEN):f}",
                "voucher": None if voucher is None else str(voucher),
                "voucher_part": f"{row['voucher_part'].quantize(_FEN):f}",
                "cash_part": f"{row['cash_part'].quantize(_FEN):f}",
                "voucher_note": row["voucher_note"],
                "locality_tier": row["locality_tier"],
                "delivered_gpu_hours": row["delivered_gpu_hours"],
                "created_at": _iso(row["created_at"], zone),
                "updated_at": _iso(row["updated_at"], zone),
            }
        )
    return out


class UsageInputSerializer(StrictSerializer):
    """GPU-hours the provider delivered (0 … the reservation's GPU-hours)."""

    delivered_gpu_hours = serializers.IntegerField(min_value=0, max_value=MAX_GPUS * MAX_HOURS)


# --- Matching: "why no match" and the inter-hub trade matrix (appended by issue 4) ----------


class NearMissSerializer(serializers.Serializer):
    """An offer that nearly fits: ``over_limit_by`` (CNY per GPU-hour) for the cheapest offer
    over the limit; ``start``/``end`` (UTC) and ``inside_window`` for the earliest fit."""

    offer = serializers.UUIDField()
    site = serializers.CharField()
    tier = serializers.CharField()
    price_per_gpu_hour = serializers.DecimalField(max_digits=12, decimal_places=4)
    over_limit_by = serializers.DecimalField(max_digits=12, decimal_places=4, required=False)
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)
    inside_window = serializers.BooleanField(required=False)


class NearMissesSerializer(serializers.Serializer):
    """``cheapest_over_limit``: the cheapest offer blocked by the price alone — it passes
    model, locality, self trade and minimum duration and has a start in the demand's window
    with the GPUs free for the whole duration, so a limit raised to its price would make the
    demand fit there (null: no such offer). ``earliest_fit``: the earliest start at which an
    offer passing model, price, locality, self trade and minimum duration holds the whole
    demand, even past its window."""

    cheapest_over_limit = NearMissSerializer(allow_null=True)
    earliest_fit = NearMissSerializer(allow_null=True)


class SplitGroupSerializer(serializers.Serializer):
    """One site (``split`` = ``site``) or hub (``hub``), by code: its eligible offers and the
    most GPUs they hold together over one window starting at ``start`` (UTC; null: none)."""

    group = serializers.CharField(help_text="site code or hub code")
    offers = serializers.IntegerField()
    gpus_together = serializers.IntegerField()
    start = serializers.DateTimeField(allow_null=True)


class SplitReachSerializer(serializers.Serializer):
    """For a demand that may split: the best groups (at most 3), most GPUs together first."""

    scope = serializers.ChoiceField(choices=["site", "hub"])
    min_gpus_per_part = serializers.IntegerField()
    gpus_needed = serializers.IntegerField()
    groups = SplitGroupSerializer(many=True)


class DemandExplainSerializer(serializers.Serializer):
    """Active offers counted by the first rule blocking each (``blocked``: model, price,
    locality, self_trade, window, capacity, fragmentation, voucher, funds) for the whole demand
    on one offer, those that fit, the near misses, and for a demand that may split (partial
    fills) how many GPUs the best sites or hubs hold together (``split``; null otherwise)
    (``marketplace.matching.explain``)."""

    demand = serializers.UUIDField()
    status = serializers.CharField()
    unmatched_reason = serializers.CharField()
    offers_considered = serializers.IntegerField()
    blocked = serializers.DictField(child=serializers.IntegerField())
    fits = serializers.IntegerField()
    near_misses = NearMissesSerializer()
    split = SplitReachSerializer(allow_null=True)


# --- Inter-hub trade matrix (appended by issue 4) ------------------------------------------


class TradeHubSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    code = serializers.CharField()
    name = serializers.CharField()


class TradeCellSerializer(serializers.Serializer):
    """One (exporting hub, importing hub) pair with at least one trade: reservations whose offer
    is in ``exporting_hub`` and whose demand's home site is in ``importing_hub``."""

    exporting_hub = serializers.CharField(help_text="hub code")
    importing_hub = serializers.CharField(help_text="hub code")
    trades = serializers.IntegerField()
    gpu_hours = serializers.IntegerField()
    value = serializers.DecimalField(max_digits=16, decimal_places=2, help_text="CNY")


class InterHubTradeMatrixSerializer(serializers.Serializer):
    """Every hub (by code) and the non-empty cells of the exporting × importing matrix, with
    the totals over all cells."""

    hubs = TradeHubSerializer(many=True)
    cells = TradeCellSerializer(many=True)
    trades = serializers.IntegerField()
    gpu_hours = serializers.IntegerField()
    value = serializers.DecimalField(max_digits=16, decimal_places=2, help_text="CNY")
