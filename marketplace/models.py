"""Hubs, sites, accelerators, offers, demands, reservations (PRODUCT.md §2–4, §5.3).

Times are UTC. Reservation windows are half-open ``[start, end)`` on whole hours.
Money is ``Decimal``: CNY, prices per GPU-hour to 4 places, amounts to the fen (2 places).
"""

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from marketplace.search_generation import SearchInvalidatingQuerySet

MATCHING_TIME_LIMIT_MAX = 120  # seconds; see Hub.matching_time_limit


class Hub(models.Model):
    """A national hub node of "East Data, West Computing"."""

    class Policy(models.TextChoices):
        GREEDY = "greedy", "Greedy (price-time priority)"
        OPTIMAL = "optimal", "Optimal (batch MILP, HiGHS)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    name_zh = models.CharField(max_length=100, blank=True)
    is_west = models.BooleanField(default=False, help_text="West (computing) vs East (data) hub.")
    matching_policy = models.CharField(max_length=10, choices=Policy.choices, default="greedy")
    # At most MATCHING_TIME_LIMIT_MAX: the cycle's solve must end well inside the Celery task's
    # soft time limit (CELERY_TASK_SOFT_TIME_LIMIT, 240 s), which also covers the snapshot and
    # the bulk write, or the worker would cut the cycle off before it books anything.
    matching_time_limit = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(MATCHING_TIME_LIMIT_MAX)],
        help_text="Seconds (1 to 120) the optimal policy may spend on one cycle, greedy "
        "included; it then keeps the best answer found: the greedy result at worst when greedy "
        "alone fits in 90 % of the limit, else the demands greedy did not reach wait for the "
        "next cycle.",
    )
    # Bulk writes mark the offer search stale (marketplace.search_generation).
    objects = SearchInvalidatingQuerySet.as_manager()

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(matching_time_limit__gte=1)
                & Q(matching_time_limit__lte=MATCHING_TIME_LIMIT_MAX),
                name="hub_matching_time_limit_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Cluster(models.Model):
    """A national data-centre cluster inside a hub."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    name_zh = models.CharField(max_length=100, blank=True)
    hub = models.ForeignKey(Hub, on_delete=models.PROTECT, related_name="clusters")

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.name


class HubLatency(models.Model):
    """Average round-trip latency between two hubs, in milliseconds (symmetric rows stored)."""

    from_hub = models.ForeignKey(Hub, on_delete=models.CASCADE, related_name="+")
    to_hub = models.ForeignKey(Hub, on_delete=models.CASCADE, related_name="+")
    latency_ms = models.DecimalField(max_digits=6, decimal_places=2)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["from_hub", "to_hub"], name="uniq_hub_latency"),
            models.CheckConstraint(condition=Q(latency_ms__gte=0), name="hub_latency_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.from_hub_id} → {self.to_hub_id}: {self.latency_ms} ms"


class Site(models.Model):
    """A data centre (or an SME's home location) in a city, metro area and hub.

    ``provider`` is set for a provider's own data centre; reference sites have none.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=150)
    city = models.CharField(max_length=60)
    metro_area = models.CharField(max_length=60)
    hub = models.ForeignKey(Hub, on_delete=models.PROTECT, related_name="sites")
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="sites"
    )
    provider = models.ForeignKey(
        "accounts.Organisation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="sites",
    )
    # Bulk writes mark the offer search stale (marketplace.search_generation).
    objects = SearchInvalidatingQuerySet.as_manager()

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return f"{self.name} ({self.city})"


class Accelerator(models.Model):
    """A catalogue accelerator model. Free-text names are resolved to ``code`` via ``aliases``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.CharField(max_length=40, unique=True)
    vendor = models.CharField(max_length=40)
    memory_gb = models.PositiveIntegerField(null=True, blank=True)
    bf16_tflops = models.DecimalField(
        "dense BF16/FP16 TFLOPS", max_digits=8, decimal_places=1, null=True, blank=True
    )
    interconnect = models.CharField(max_length=40, blank=True)
    is_domestic = models.BooleanField(default=False)
    aliases = models.JSONField(default=list, blank=True)
    note = models.CharField(max_length=200, blank=True)
    # Bulk writes mark the offer search stale (marketplace.search_generation).
    objects = SearchInvalidatingQuerySet.as_manager()

    class Meta:
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class Offer(models.Model):
    """Capacity a provider sells: ``gpu_count`` GPUs of one model at one site (§3)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        WITHDRAWN = "withdrawn", "Withdrawn"
        EXPIRED = "expired", "Expired"

    TRANSITIONS: dict[str, set[str]] = {
        "draft": {"active", "withdrawn"},
        "active": {"paused", "withdrawn", "expired"},
        "paused": {"active", "withdrawn", "expired"},
        "withdrawn": set(),
        "expired": set(),
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the unique (provider, id) index below leads with it.
    provider = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="offers", db_index=False
    )
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="offers")
    accelerator = models.ForeignKey(Accelerator, on_delete=models.PROTECT, related_name="offers")
    gpu_count = models.PositiveIntegerField()
    gpus_per_node = models.PositiveIntegerField(default=8)
    interconnect = models.CharField(max_length=40, blank=True)
    available_from = models.DateTimeField()
    available_until = models.DateTimeField()
    price_per_gpu_hour = models.DecimalField(max_digits=12, decimal_places=4)
    min_duration_hours = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Bulk writes mark the offer search stale (marketplace.search_generation).
    objects = SearchInvalidatingQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["status", "accelerator"]),
            # The offer search (API, console): active offers of some models, oldest first.
            models.Index(
                fields=["accelerator", "created_at", "id"],
                condition=Q(status="active"),
                name="offer_active_search",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gt=0), name="offer_gpu_count_pos"),
            models.CheckConstraint(condition=Q(gpus_per_node__gt=0), name="offer_gpn_pos"),
            models.CheckConstraint(condition=Q(price_per_gpu_hour__gt=0), name="offer_price_pos"),
            models.CheckConstraint(
                condition=Q(available_until__gt=F("available_from")), name="offer_window_valid"
            ),
            models.CheckConstraint(condition=Q(min_duration_hours__gte=1), name="offer_min_dur"),
            # What a reservation's composite foreign key (offer, provider) refers to; it also
            # serves the provider's offers (the foreign key's index).
            models.UniqueConstraint(fields=["provider", "id"], name="offer_provider_id_key"),
        ]

    def __str__(self) -> str:
        """``8× A100-80G @ Tianfu DC (Chengdu)``; lists showing offers select ``accelerator``
        and ``site`` with them."""
        return f"{self.gpu_count}× {self.accelerator.code} @ {self.site}"


class LocalityTier(models.TextChoices):
    """How far a demand may go from its home site, nearest first (§2)."""

    CITY = "city", "Same city"
    METRO = "metro", "Same metropolitan area"
    REGION = "region", "Same hub region"
    NATIONAL = "national", "Any hub"


TIER_ORDER = [LocalityTier.CITY, LocalityTier.METRO, LocalityTier.REGION, LocalityTier.NATIONAL]


class SplitScope(models.TextChoices):
    """Whether a demand's GPUs may be split across several offers (partial fills, §4).

    ``none`` (the default): all GPUs on one offer. ``site``: across offers at one site.
    ``hub``: across offers at sites of one hub. Every part runs over the same hours; the demand
    is served only when all its GPUs are placed (one reservation per offer).
    """

    NONE = "none", "All GPUs on one offer"
    SITE = "site", "Split across offers at one site"
    HUB = "hub", "Split across sites of one hub"


class Demand(models.Model):
    """What an SME wants (§4): GPUs of acceptable models for ``duration_hours`` inside a window."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        MATCHED = "matched", "Matched (awaiting acceptance)"
        RESERVED = "reserved", "Reserved"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: the unique (buyer, id) index below leads with it.
    buyer = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="demands", db_index=False
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    origin_site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    accelerators = models.ManyToManyField(Accelerator, blank=True, related_name="+")
    min_memory_gb = models.PositiveIntegerField(null=True, blank=True)
    min_tflops = models.DecimalField(max_digits=8, decimal_places=1, null=True, blank=True)
    gpu_count = models.PositiveIntegerField()
    duration_hours = models.PositiveIntegerField()
    earliest_start = models.DateTimeField()
    latest_end = models.DateTimeField()
    max_price_per_gpu_hour = models.DecimalField(max_digits=12, decimal_places=4)
    locality_limit = models.CharField(
        max_length=10, choices=LocalityTier.choices, default=LocalityTier.NATIONAL
    )
    split = models.CharField(
        max_length=4,
        choices=SplitScope.choices,
        default=SplitScope.NONE,
        help_text="May the GPUs be split across offers at one site or one hub (data-parallel "
        "jobs)? Replaces the former single_site flag (true = none, false = hub).",
    )
    min_gpus_per_part = models.PositiveIntegerField(
        default=1,
        help_text="Fewest GPUs on any one offer when the demand is split (e.g. 8 for whole "
        "8-GPU nodes); at most gpu_count.",
    )
    # Indexed only where set (``demand_voucher_idx``): most demands pay cash, and the matcher's
    # status UPDATE of each demand would otherwise add an index entry for every NULL.
    voucher = models.ForeignKey(
        "vouchers.Voucher",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    auto_accept = models.BooleanField(default=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    unmatched_reason = models.CharField(max_length=40, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(
                fields=["voucher"], condition=Q(voucher__isnull=False), name="demand_voucher_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(gpu_count__gt=0), name="demand_gpu_count_pos"),
            models.CheckConstraint(condition=Q(duration_hours__gt=0), name="demand_duration_pos"),
            models.CheckConstraint(
                condition=Q(max_price_per_gpu_hour__gt=0), name="demand_price_pos"
            ),
            models.CheckConstraint(
                condition=Q(latest_end__gt=F("earliest_start")), name="demand_window_valid"
            ),
            models.CheckConstraint(
                condition=Q(split__in=["none", "site", "hub"]), name="demand_split_valid"
            ),
            # What a reservation's composite foreign key (demand, buyer) refers to; it also
            # serves the buyer's demands (the foreign key's index).
            models.UniqueConstraint(fields=["buyer", "id"], name="demand_buyer_id_key"),
            models.CheckConstraint(
                condition=Q(min_gpus_per_part__gte=1) & Q(min_gpus_per_part__lte=F("gpu_count")),
                name="demand_min_part_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"demand {self.id} ({self.gpu_count} GPU × {self.duration_hours} h)"

    @property
    def single_site(self) -> bool:
        """The former flag, derived: every GPU at one site (``split`` is ``none`` or ``site``)."""
        return self.split != SplitScope.HUB


class Reservation(models.Model):
    """A demand matched to an offer for ``[start, end)`` with its bill and payment split (§5.3)."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        CONFIRMED = "confirmed", "Confirmed"
        ACTIVE = "active", "Active"
        COMPLETED = "completed", "Completed"
        SETTLED = "settled", "Settled"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"
        FAILED = "failed", "Failed"

    TRANSITIONS: dict[str, set[str]] = {
        "held": {"confirmed", "cancelled", "expired", "failed"},
        "confirmed": {"active", "cancelled", "failed"},
        "active": {"completed", "failed"},
        "completed": {"settled"},
        "settled": set(),
        "cancelled": set(),
        "expired": set(),
        "failed": set(),
    }
    # Statuses that occupy capacity on the offer.
    CAPACITY_STATUSES = ("held", "confirmed", "active", "completed", "settled")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # On PostgreSQL the four relations below are two composite foreign keys (migration
    # ``marketplace/0010``): (buyer, demand) → the demand's (buyer, id) and (provider, offer)
    # → the offer's (provider, id). Each checks that the row exists, as a single-column key
    # would, and also that the buyer is the demand's and the provider the offer's; the
    # organisations' own existence follows from the demand's and offer's keys. Two checks a
    # reservation instead of four (the matcher's bulk write inserts thousands per cycle).
    # ``db_constraint=False`` tells Django the single-column constraints are not there;
    # PROTECT is Django's, as before. SQLite keeps the single-column keys it was created with.
    demand = models.ForeignKey(
        Demand, on_delete=models.PROTECT, related_name="reservations", db_constraint=False
    )
    # No index of its own: the (offer, status) index below leads with it.
    offer = models.ForeignKey(
        Offer,
        on_delete=models.PROTECT,
        related_name="reservations",
        db_index=False,
        db_constraint=False,
    )
    buyer = models.ForeignKey(
        "accounts.Organisation",
        on_delete=models.PROTECT,
        related_name="purchases",
        db_constraint=False,
    )
    provider = models.ForeignKey(
        "accounts.Organisation",
        on_delete=models.PROTECT,
        related_name="sales",
        db_constraint=False,
    )
    start = models.DateTimeField()
    end = models.DateTimeField()
    gpu_count = models.PositiveIntegerField()
    price_per_gpu_hour = models.DecimalField(max_digits=12, decimal_places=4)
    bill = models.DecimalField(max_digits=14, decimal_places=2)
    # Indexed only where set (``reservation_voucher_idx``): most reservations pay cash.
    voucher = models.ForeignKey(
        "vouchers.Voucher",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reservations",
        db_index=False,
    )
    voucher_part = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    cash_part = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    voucher_note = models.CharField(max_length=60, blank=True)
    locality_tier = models.CharField(max_length=10, choices=LocalityTier.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.HELD)
    delivered_gpu_hours = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["start", "id"]
        indexes = [
            models.Index(fields=["offer", "status"]),
            models.Index(fields=["status", "start"]),
            models.Index(
                fields=["voucher"],
                condition=Q(voucher__isnull=False),
                name="reservation_voucher_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=F("start")), name="reservation_window"),
            models.CheckConstraint(condition=Q(gpu_count__gt=0), name="reservation_gpus_pos"),
            models.CheckConstraint(
                condition=Q(voucher_part__gte=0) & Q(cash_part__gte=0),
                name="reservation_parts_nonneg",
            ),
            # bill == voucher_part + cash_part is checked by services and ledger_audit, not a
            # CHECK: SQLite (the embedded default) compares decimal sums as binary floats.
        ]

    def __str__(self) -> str:
        return f"reservation {self.id}"

    @property
    def hours(self) -> int:
        return int((self.end - self.start).total_seconds() // 3600)

    @property
    def gpu_hours(self) -> int:
        return self.hours * self.gpu_count


class ReservationEvent(models.Model):
    """One status change of a reservation: the audit trail of §5.3."""

    reservation = models.ForeignKey(Reservation, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=10, blank=True)
    to_status = models.CharField(max_length=10)
    # Indexed only where set (``event_actor_idx``): the matcher's events have no actor.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    note = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [
            models.Index(fields=["actor"], condition=Q(actor__isnull=False), name="event_actor_idx")
        ]

    def __str__(self) -> str:
        return f"{self.from_status or '∅'} → {self.to_status}"


class InterHubTrade(models.Model):
    """A reservation crossing hubs: capacity one hub exports to a buyer of another (§4.3)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    reservation = models.OneToOneField(
        Reservation, on_delete=models.PROTECT, related_name="inter_hub_trade"
    )
    exporting_hub = models.ForeignKey(Hub, on_delete=models.PROTECT, related_name="exports")
    importing_hub = models.ForeignKey(Hub, on_delete=models.PROTECT, related_name="imports")
    gpu_hours = models.PositiveIntegerField()
    value = models.DecimalField(max_digits=14, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.exporting_hub_id} → {self.importing_hub_id} ({self.gpu_hours} GPU-h)"


class MatchingCycle(models.Model):
    """One matching run for one hub: what it looked at, what the engine chose, what the write
    made of it and refused, how long it took (``matching_cycle_run``).

    ``pairs_chosen``: the engine's matches (a split demand's parts counted each);
    ``reservations_made``: the reservations committed; ``write_refusals``: ``{reason code:
    demands}`` the write dropped (capacity taken meanwhile, funds short, ``write_conflict``,
    …; the demand stays open with that reason); ``unserved``: ``{engine reason: demands}``
    the engine left unserved (``engine.REASONS``)."""

    hub = models.ForeignKey(Hub, on_delete=models.PROTECT, related_name="cycles")
    policy = models.CharField(max_length=10)
    started_at = models.DateTimeField()
    seconds = models.FloatField(default=0)  # wall time, not money
    demands_considered = models.PositiveIntegerField(default=0)
    offers_considered = models.PositiveIntegerField(default=0)
    pairs_chosen = models.PositiveIntegerField(default=0)
    reservations_made = models.PositiveIntegerField(default=0)
    write_refusals = models.JSONField(default=dict, blank=True)
    unserved = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"cycle {self.hub_id} at {self.started_at:%Y-%m-%d %H:%M}"


class Dispute(models.Model):
    """A buyer's or provider's complaint about a reservation, resolved by an operator (§6.4).

    At most one dispute per reservation is open at a time. Resolving records the operator's
    decision; any money correction is a separate ledger transaction, never an edit.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        RESOLVED = "resolved", "Resolved"
        REJECTED = "rejected", "Rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    reservation = models.ForeignKey(Reservation, on_delete=models.PROTECT, related_name="disputes")
    opened_by = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="disputes_opened"
    )
    opened_by_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    reason = models.TextField(max_length=1000)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=500, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["reservation"],
                condition=Q(status="open"),
                name="one_open_dispute_per_reservation",
            ),
        ]

    def __str__(self) -> str:
        return f"dispute {self.id} ({self.status})"
