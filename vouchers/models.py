"""Voucher programmes, provider catalogues, applications, vouchers, reimbursement claims (§5.6).

Money is CNY ``Decimal`` to the fen. A voucher expires at the end of its last valid day in the
programme's time zone (Asia/Shanghai); ``expires_at`` stores that instant in UTC.
"""

import uuid

from django.db import models
from django.db.models import Q

BILL_CATEGORIES = ("gpu_time", "storage", "network", "software")


def default_eligible_categories() -> list[str]:
    return ["gpu_time"]


class Programme(models.Model):
    """A city's compute-voucher programme, as data (issuer, budget, share, caps, region)."""

    class RedemptionMode(models.TextChoices):
        POINT_OF_SALE = "point_of_sale", "Point of sale (provider deducts, is reimbursed)"
        REIMBURSEMENT = "reimbursement", "Reimbursement (buyer pays in full, is repaid)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=150)
    issuer_city = models.CharField(max_length=60)
    effective_from = models.DateField()
    effective_until = models.DateField(null=True, blank=True)
    annual_budget = models.DecimalField(max_digits=16, decimal_places=2)
    max_share = models.DecimalField(max_digits=5, decimal_places=4)
    buyer_annual_cap = models.DecimalField(max_digits=14, decimal_places=2)
    min_voucher_amount = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    validity_months = models.PositiveIntegerField(default=12)
    hubs = models.ManyToManyField("marketplace.Hub", blank=True, related_name="+")
    clusters = models.ManyToManyField("marketplace.Cluster", blank=True, related_name="+")
    sites = models.ManyToManyField("marketplace.Site", blank=True, related_name="+")
    redemption_mode = models.CharField(
        max_length=20, choices=RedemptionMode.choices, default=RedemptionMode.POINT_OF_SALE
    )

    class StatementPeriod(models.TextChoices):
        MONTHLY = "monthly", "Monthly"
        QUARTERLY = "quarterly", "Quarterly"

    statement_period = models.CharField(
        max_length=10, choices=StatementPeriod.choices, default=StatementPeriod.MONTHLY
    )
    time_zone = models.CharField(max_length=40, default="Asia/Shanghai")
    # Bill line categories the voucher may pay for (the eligible base of §5.4); a programme that
    # funds compute only leaves storage and network lines to cash (Beijing).
    eligible_categories = models.JSONField(default=default_eligible_categories, blank=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_share__gt=0) & Q(max_share__lte=1), name="programme_share_range"
            ),
            models.CheckConstraint(condition=Q(annual_budget__gte=0), name="programme_budget_nn"),
            models.CheckConstraint(condition=Q(buyer_annual_cap__gte=0), name="programme_cap_nn"),
        ]

    def __str__(self) -> str:
        return self.name


class ShareTier(models.Model):
    """A higher ``max_share`` where a programme defines one (§5.6), as data: it applies when
    every condition set on it holds — the accelerator is domestic (``domestic_accelerator``),
    the accelerator is one of ``accelerators``, the buyer is one of ``buyers`` (e.g. certified
    startups). The split uses the largest share among the programme's own and matching tiers.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    programme = models.ForeignKey(Programme, on_delete=models.CASCADE, related_name="tiers")
    name = models.CharField(max_length=80)
    max_share = models.DecimalField(max_digits=5, decimal_places=4)
    domestic_accelerator = models.BooleanField(null=True, blank=True)
    accelerators = models.ManyToManyField("marketplace.Accelerator", blank=True, related_name="+")
    buyers = models.ManyToManyField("accounts.Organisation", blank=True, related_name="+")

    class Meta:
        ordering = ["programme", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_share__gt=0) & Q(max_share__lte=1), name="tier_share_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.programme.code}: {self.name} ({self.max_share})"


class CatalogueEntry(models.Model):
    """A provider admitted to a programme's catalogue for one year (§5.6)."""

    class Status(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved"
        SUSPENDED = "suspended", "Suspended"

    # proposed → approved ⇄ suspended; a suspended provider may be reinstated for the year.
    TRANSITIONS: dict[str, set[str]] = {
        "proposed": {"approved", "suspended"},
        "approved": {"suspended"},
        "suspended": {"approved"},
    }

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    programme = models.ForeignKey(Programme, on_delete=models.CASCADE, related_name="catalogue")
    provider = models.ForeignKey(
        "accounts.Organisation", on_delete=models.CASCADE, related_name="catalogue_entries"
    )
    year = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PROPOSED)

    class Meta:
        verbose_name_plural = "catalogue entries"
        constraints = [
            models.UniqueConstraint(
                fields=["programme", "provider", "year"], name="uniq_catalogue_entry"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} in {self.programme} ({self.year})"


class VoucherApplication(models.Model):
    """A buyer's request for a voucher of ``amount`` CNY from a programme."""

    class Status(models.TextChoices):
        SUBMITTED = "submitted", "Submitted"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="applications")
    buyer = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="voucher_applications"
    )
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    purpose = models.CharField(max_length=300, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.SUBMITTED)
    decision_note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="application_amount_pos"),
        ]

    def __str__(self) -> str:
        return f"application {self.id} ({self.amount} CNY)"


class Voucher(models.Model):
    """A compute voucher bound to one buyer. ``balance`` caches its ledger account's balance."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        EXPIRED = "expired", "Expired (balance lapsed)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="vouchers")
    owner = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="vouchers"
    )
    application = models.OneToOneField(
        VoucherApplication, null=True, blank=True, on_delete=models.PROTECT, related_name="voucher"
    )
    face_value = models.DecimalField(max_digits=14, decimal_places=2)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)

    class Meta:
        ordering = ["issued_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(face_value__gt=0), name="voucher_face_pos"),
        ]

    def __str__(self) -> str:
        return f"voucher {self.id} ({self.programme.code})"


class Statement(models.Model):
    """A reimbursement statement: every claim line of one provider on one programme made in one
    period ``[period_start, period_end)`` (dates in the programme's time zone), with its total in
    CNY. Issued once per (programme, provider, period); marking it paid posts one ledger
    transaction (§5.6). Adjustment lines (refunds after settlement) are negative, so a total
    can be negative: the claimants then pay the programme back when it is marked paid."""

    class Status(models.TextChoices):
        ISSUED = "issued", "Issued"
        PAID = "paid", "Paid"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="statements")
    provider = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="statements"
    )
    period_start = models.DateField()
    period_end = models.DateField()
    total = models.DecimalField(max_digits=16, decimal_places=2)
    claim_count = models.PositiveIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ISSUED)
    issued_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    transaction = models.OneToOneField(
        "ledger.Transaction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-period_start", "programme", "provider"]
        constraints = [
            models.UniqueConstraint(
                fields=["programme", "provider", "period_start"], name="uniq_statement_period"
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")), name="statement_period"
            ),
            models.CheckConstraint(
                condition=Q(status="issued") | Q(transaction__isnull=False) | Q(total=0),
                name="statement_paid_has_transaction",
            ),
        ]

    def __str__(self) -> str:
        return f"statement {self.programme.code} {self.period_start}–{self.period_end}"


class ReimbursementClaim(models.Model):
    """One line of reimbursement on a programme (§5.5, §5.6).

    A ``redemption`` line is the voucher part of one settled reservation (``amount`` > 0). An
    ``adjustment`` line (``amount`` < 0) takes back voucher value a refund after settlement
    returned to the voucher (``refund``, e.g. an operator's decision on a dispute): it is dated
    when the refund was made, so it lands on the statement of *that* period — a refund after the
    original line's statement was issued or paid lowers the next statement instead of changing
    an issued one. ``claimant`` is the provider in ``point_of_sale`` mode (it deducted the voucher
    part) and the buyer in ``reimbursement`` mode (it paid in full and is repaid); ``provider``
    is always the seller, so statements are per programme, provider and period either way.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        PAID = "paid", "Paid"

    class Kind(models.TextChoices):
        REDEMPTION = "redemption", "Redemption (voucher part of a settled reservation)"
        ADJUSTMENT = "adjustment", "Adjustment (voucher value refunded after settlement)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="claims")
    provider = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="reimbursement_claims"
    )
    reservation = models.ForeignKey(
        "marketplace.Reservation", on_delete=models.PROTECT, related_name="reimbursement_claims"
    )
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.REDEMPTION)
    refund = models.OneToOneField(
        "ledger.Refund",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="claim_adjustment",
    )
    claimant = models.ForeignKey(
        "accounts.Organisation", on_delete=models.PROTECT, related_name="claims_made"
    )
    mode = models.CharField(
        max_length=20,
        choices=Programme.RedemptionMode.choices,
        default=Programme.RedemptionMode.POINT_OF_SALE,
    )
    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="claims")
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    statement = models.ForeignKey(
        Statement, null=True, blank=True, on_delete=models.PROTECT, related_name="claims"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="redemption") & Q(amount__gt=0) & Q(refund__isnull=True))
                | (Q(kind="adjustment") & Q(amount__lt=0) & Q(refund__isnull=False)),
                name="claim_amount_sign",
            ),
            models.UniqueConstraint(
                fields=["reservation"],
                condition=Q(kind="redemption"),
                name="uniq_claim_redemption",
            ),
        ]

    def __str__(self) -> str:
        return f"claim {self.id} ({self.amount} CNY)"


class ProgrammeUsage(models.Model):
    """Voucher value counted against a programme's limits in one programme year (§5.4, §5.6):
    the budget row (``buyer`` empty) and one row per buyer (the per-buyer annual cap).

    ``used`` (CNY) = Σ (voucher part − voucher value refunded) of the holds counted in that year
    (``ledger.models.Hold.programme_year``): held while the hold is pending, redeemed once it is
    settled, nothing once voided. It is a cache like a ledger balance, changed only by
    ``vouchers.usage.usage_change`` (a conditional UPDATE that never passes the limit) and checked
    against the holds by ``ledger_audit``. The budget row is the programme's shared hot row: holds
    change it last, just before the escrow balance.
    """

    programme = models.ForeignKey(Programme, on_delete=models.PROTECT, related_name="usage")
    year = models.PositiveSmallIntegerField()
    buyer = models.ForeignKey(
        "accounts.Organisation", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    used = models.DecimalField(max_digits=16, decimal_places=2, default=0)

    class Meta:
        verbose_name_plural = "programme usage"
        constraints = [
            models.UniqueConstraint(
                fields=["programme", "year"],
                condition=Q(buyer__isnull=True),
                name="uniq_usage_budget",
            ),
            models.UniqueConstraint(
                fields=["programme", "year", "buyer"],
                condition=Q(buyer__isnull=False),
                name="uniq_usage_buyer",
            ),
            models.CheckConstraint(condition=Q(used__gte=0), name="usage_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.programme_id} {self.year} {self.buyer_id or 'budget'}: {self.used}"
