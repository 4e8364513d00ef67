"""Reads about who is calling."""

from accounts.models import Organisation, User


def organisation_of(user: User) -> Organisation | None:
    """The organisation a user acts for (their first membership), or ``None``."""
    membership = user.memberships.select_related("organisation").order_by("pk").first()
    return membership.organisation if membership else None
