"""Reads about who is calling."""

from typing import Any

from accounts.models import Organisation, User

# Where the caller's organisation is kept on a request once looked up (see
# ``request_organisation``); ``accounts.tokens`` fills it while authenticating.
REQUEST_ORGANISATION_ATTR = "_suanli_organisation"
_MISSING = object()


def organisation_of(user: User) -> Organisation | None:
    """The organisation a user acts for (their first membership), or ``None``; its home site is
    joined (the locality rules read it). One query; ``request_organisation`` keeps the answer
    for the rest of a request."""
    membership = user.memberships.select_related("organisation__home_site").order_by("pk").first()
    return membership.organisation if membership else None


def request_organisation(request: Any) -> Organisation | None:
    """The organisation the caller of ``request`` (a Django or DRF request) acts for, looked
    up at most once per request: ``None`` for an anonymous caller or one without a membership.

    Token authentication (``accounts.tokens.HashedTokenAuthentication``) stores it while it
    reads the token, in the same query; other callers (session, ``force_authenticate`` in tests)
    pay one ``organisation_of`` query on first use. Nothing is kept across requests, so a
    membership change shows on the next request."""
    cached = getattr(request, REQUEST_ORGANISATION_ATTR, _MISSING)
    if cached is not _MISSING:
        return cached  # type: ignore[return-value]
    user = request.user
    organisation = organisation_of(user) if user.is_authenticated else None
    setattr(request, REQUEST_ORGANISATION_ATTR, organisation)
    return organisation
