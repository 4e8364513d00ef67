"""Double-entry ledger (§5.2): accounts, transactions, entries.

Sign convention: an account's balance is the sum of its entries' ``amount``. A transfer of X from
account A to account B is two entries, A −X and B +X, so each transaction sums to zero. Wallets,
vouchers, escrow and programme budgets must stay ≥ 0 (``allow_negative`` false, checked by the
database); only the outside world may go negative (money that entered the system), and a claims
account (a receivable from a programme), which goes negative when voucher value it was already
reimbursed for is refunded after settlement (the claimant owes it back; its next statement nets
it: ``vouchers.models.ReimbursementClaim``).
"""

import uuid

from django.db import models
from django.db.models import Q


class Account(models.Model):
    """A ledger account. ``balance`` is a cache of the sum of its entries (audited)."""

    class Kind(models.TextChoices):
        WALLET = "wallet", "Buyer cash wallet"
        PAYABLE = "payable", "Provider payable"
        CLAIMS = "claims", "Provider reimbursement claims receivable"
        VOUCHER = "voucher", "Voucher balance"
        PROGRAMME = "programme", "Programme budget"
        ESCROW = "escrow", "Escrow (holds)"
        FEES = "fees", "Platform fee revenue"
        WORLD = "world", "Outside world (deposits, payouts, government funding)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    organisation = models.ForeignKey(
        "accounts.Organisation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_accounts",
    )
    voucher = models.OneToOneField(
        "vouchers.Voucher",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="account",
    )
    programme = models.ForeignKey(
        "vouchers.Programme",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="accounts",
    )
    balance = models.DecimalField(max_digits=16, decimal_places=2, default=0)
    allow_negative = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(allow_negative=True) | Q(balance__gte=0), name="account_nonneg"
            ),
            # Only the outside world and claims receivables may go negative: flipping the flag on
            # a wallet, voucher, programme or escrow account by hand cannot open the way to a
            # negative balance.
            models.CheckConstraint(
                condition=Q(allow_negative=False) | Q(kind__in=["world", "claims"]),
                name="account_negative_world_or_claims",
            ),
            models.UniqueConstraint(
                fields=["kind", "organisation"],
                condition=Q(kind__in=["wallet", "payable", "claims"]),
                name="uniq_org_account",
            ),
            models.UniqueConstraint(
                fields=["kind", "programme"],
                condition=Q(kind="programme"),
                name="uniq_programme_account",
            ),
            models.UniqueConstraint(
                fields=["kind"],
                condition=Q(kind__in=["escrow", "fees", "world"]),
                name="uniq_system_account",
            ),
        ]

    def __str__(self) -> str:
        owner = self.organisation_id or self.voucher_id or self.programme_id or "system"
        return f"{self.kind}:{owner}"


class Transaction(models.Model):
    """One balanced movement of money with its reason and the objects it concerns."""

    class Reason(models.TextChoices):
        DEPOSIT = "deposit", "Wallet deposit"
        PROGRAMME_FUNDING = "programme_funding", "Programme budget funded"
        VOUCHER_ISSUE = "voucher_issue", "Voucher issued"
        HOLD = "hold", "Reservation hold"
        RELEASE = "release", "Hold released (cancel/expire/fail)"
        SETTLEMENT = "settlement", "Reservation settled"
        REFUND = "refund", "Refund (undelivered hours, or after settlement)"
        CANCEL_FEE = "cancel_fee", "Cancellation fee"
        VOUCHER_LAPSE = "voucher_lapse", "Expired voucher balance lapsed"
        CLAIM_PAID = "claim_paid", "Reimbursement statement paid"
        PAYOUT = "payout", "Provider payout"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    reservation = models.ForeignKey(
        "marketplace.Reservation",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="transactions",
    )
    # Indexed only where set (``transaction_voucher_idx``): most transactions move cash.
    voucher = models.ForeignKey(
        "vouchers.Voucher",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    memo = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["voucher"],
                condition=Q(voucher__isnull=False),
                name="transaction_voucher_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.reason} {self.id}"


class Entry(models.Model):
    """One leg of a transaction: ``amount`` CNY added to ``account`` (negative = taken)."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.DecimalField(max_digits=16, decimal_places=2)

    class Meta:
        verbose_name_plural = "entries"
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="entry_nonzero")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.amount:+}"


class Hold(models.Model):
    """The two-phase payment hold of one reservation (§5.3, §5.4).

    ``pending`` while the money sits in escrow, then ``posted`` (settled) or ``voided``
    (released on cancel, expiry or provider failure) — each at most once, by a conditional
    UPDATE on the status. ``voucher_part`` left the voucher and ``cash_paid`` left the wallet
    (the cash part in ``point_of_sale`` mode, the whole bill in ``reimbursement`` mode);
    ``refunded_*`` count what went back, and CHECK constraints keep each refund within what
    that part paid, also under concurrency. ``programme_year`` is the programme year whose budget
    and buyer cap the voucher part counts against (``vouchers.models.ProgrammeUsage``; empty
    without a voucher part).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        POSTED = "posted", "Posted (settled)"
        VOIDED = "voided", "Voided (released)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    reservation = models.OneToOneField(
        "marketplace.Reservation", on_delete=models.PROTECT, related_name="hold"
    )
    mode = models.CharField(max_length=20, default="point_of_sale")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    voucher_part = models.DecimalField(max_digits=14, decimal_places=2)
    cash_paid = models.DecimalField(max_digits=14, decimal_places=2)
    refunded_voucher = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    refunded_cash = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    programme_year = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(voucher_part__gte=0) & Q(cash_paid__gte=0), name="hold_parts_nn"
            ),
            models.CheckConstraint(
                condition=Q(refunded_voucher__gte=0)
                & Q(refunded_voucher__lte=models.F("voucher_part")),
                name="hold_voucher_refund_le_paid",
            ),
            models.CheckConstraint(
                condition=Q(refunded_cash__gte=0) & Q(refunded_cash__lte=models.F("cash_paid")),
                name="hold_cash_refund_le_paid",
            ),
            models.CheckConstraint(
                condition=Q(status="pending", closed_at__isnull=True)
                | (~Q(status="pending") & Q(closed_at__isnull=False)),
                name="hold_closed_once",
            ),
        ]

    def __str__(self) -> str:
        return f"hold {self.reservation_id} ({self.status})"


class Refund(models.Model):
    """Value returned to the buyer from one reservation's hold: ``voucher_amount`` to the
    voucher (or its programme once the voucher lapsed) and ``cash_amount`` to the wallet, CNY.
    ``actor`` and ``memo`` record who decided a refund after settlement and why."""

    class Kind(models.TextChoices):
        CANCELLATION = "cancellation", "Cancelled by the buyer"
        EXPIRY = "expiry", "Not accepted in time"
        PROVIDER_FAILURE = "provider_failure", "Provider could not deliver"
        EARLY_COMPLETION = "early_completion", "Ended early"
        PARTIAL_DELIVERY = "partial_delivery", "Delivered in part"
        DISPUTE = "dispute", "Operator's decision on a dispute (after settlement)"
        SLA_CREDIT = "sla_credit", "Service-level credit (after settlement)"

    # Refunds of a settled (posted) hold, decided by an operator (``ledger.holds.hold_refund``).
    AFTER_SETTLEMENT = (Kind.DISPUTE, Kind.SLA_CREDIT)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hold = models.ForeignKey(Hold, on_delete=models.PROTECT, related_name="refunds")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    voucher_amount = models.DecimalField(max_digits=14, decimal_places=2)
    cash_amount = models.DecimalField(max_digits=14, decimal_places=2)
    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    memo = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(voucher_amount__gte=0) & Q(cash_amount__gte=0), name="refund_nn"
            ),
        ]

    def __str__(self) -> str:
        return f"refund {self.kind} {self.voucher_amount}+{self.cash_amount}"


class IdempotencyKey(models.Model):
    """A client's ``Idempotency-Key`` for one write (PRODUCT.md §6.1), stored durably.

    ``owner`` is ``org:<uuid>/user:<uuid>`` (``user:<uuid>`` for a caller without an
    organisation): a key is scoped to the caller's organisation and user;
    ``fingerprint`` is the SHA-256 of method, path and canonical JSON body. ``status_code`` and
    ``response_body`` are empty while the first request is in flight, then hold its response,
    which a retry with the same key and body replays.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.CharField(max_length=100)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["created_at"])]
        constraints = [
            models.UniqueConstraint(fields=["owner", "key"], name="uniq_idempotency_key"),
        ]

    def __str__(self) -> str:
        return f"{self.owner}:{self.key}"
