"""Organisation and membership writes."""

from typing import TYPE_CHECKING

from django.db import transaction

from marketplace.errors import Conflict, ValidationFailed
from marketplace.types import ObjectId

from .credit_code import CreditCodeError, validate_credit_code
from .models import Membership, Organisation, User

if TYPE_CHECKING:
    from marketplace.models import Site


@transaction.atomic
def organisation_register(
    *,
    user: User,
    name: str,
    credit_code: str,
    kind: str,
    home_site: "Site | None" = None,
) -> Organisation:
    """Register an organisation (status ``pending``) with ``user`` as its administrator.

    Raises ``ValidationFailed`` naming ``credit_code`` for a code that fails GB 32100-2015 or is
    already registered, ``kind`` for an unknown kind, ``name`` when blank.
    """
    if not name or not name.strip():
        raise ValidationFailed("must not be blank", field="name")
    try:
        code = validate_credit_code(credit_code)
    except CreditCodeError as exc:
        raise ValidationFailed(str(exc), code="invalid_credit_code", field="credit_code") from exc
    if kind not in Organisation.Kind.values:
        raise ValidationFailed(f"must be one of {Organisation.Kind.values}", field="kind")
    if Organisation.objects.filter(credit_code=code).exists():
        raise ValidationFailed(
            "already registered", code="duplicate_credit_code", field="credit_code"
        )
    organisation = Organisation.objects.create(
        name=name.strip(), credit_code=code, kind=kind, home_site=home_site
    )
    Membership.objects.create(user=user, organisation=organisation, role=Membership.Role.ADMIN)
    return organisation


@transaction.atomic
def organisation_set_status(*, organisation_id: ObjectId, status: str) -> Organisation:
    """Approve or suspend an organisation (operator action). ``Conflict`` if unchanged."""
    organisation = Organisation.objects.select_for_update().get(pk=organisation_id)
    if status not in Organisation.Status.values:
        raise ValidationFailed("unknown status", field="status")
    if organisation.status == status:
        raise Conflict(f"organisation is already {status}", code="illegal_transition")
    organisation.status = status
    organisation.save(update_fields=["status"])
    return organisation
