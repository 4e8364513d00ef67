"""Users, organisations (identified by their unified social credit code) and memberships."""

import uuid

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models

from .credit_code import CreditCodeError, validate_credit_code


class User(AbstractUser):
    """A person. Belongs to organisations through ``Membership``; operators are ``is_staff``."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)


def credit_code_validator(value: str) -> None:
    try:
        validate_credit_code(value)
    except CreditCodeError as exc:
        raise ValidationError(str(exc), code="invalid_credit_code") from exc


class Organisation(models.Model):
    """A company on the market: provider, SME (buyer) or both (PRODUCT.md §1)."""

    class Kind(models.TextChoices):
        PROVIDER = "provider", "Provider"
        SME = "sme", "SME (buyer)"
        BOTH = "both", "Provider and buyer"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending approval"
        APPROVED = "approved", "Approved"
        SUSPENDED = "suspended", "Suspended"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    credit_code = models.CharField(
        "unified social credit code", max_length=18, unique=True, validators=[credit_code_validator]
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    home_site = models.ForeignKey(
        "marketplace.Site", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Related parties (same group, shared control): no voucher part on trades between them (§5.6).
    related = models.ManyToManyField("self", blank=True, symmetrical=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_provider(self) -> bool:
        return self.kind in (self.Kind.PROVIDER, self.Kind.BOTH)

    @property
    def is_buyer(self) -> bool:
        return self.kind in (self.Kind.SME, self.Kind.BOTH)


class Membership(models.Model):
    """A user's place in an organisation."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Administrator"
        MEMBER = "member", "Member"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "organisation"], name="uniq_membership"),
        ]

    def __str__(self) -> str:
        return f"{self.user} @ {self.organisation}"


class ApiToken(models.Model):
    """An API token of a user, stored hashed.

    The secret (``sx_`` + 43 URL-safe characters, 256 random bits) is shown once, when created;
    only its SHA-256 digest is stored, with the first characters (``prefix``) to tell tokens
    apart in lists. A plain hash (not a password hash) is enough for a random 256-bit secret.
    Revoking sets ``revoked_at``; a revoked token no longer authenticates.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"
