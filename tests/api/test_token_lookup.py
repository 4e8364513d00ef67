"""Token authentication reads the token, the user, the organisation and its home site in one
query (``accounts.tokens.token_authenticate`` through ``marketplace.prepared``), keeps the
organisation for the rest of the request, and caches nothing across requests: a revoked token,
a deactivated user or a changed membership shows on the very next request."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import ApiToken, Membership
from accounts.tokens import token_authenticate, token_create
from marketplace.models import Accelerator
from marketplace.prepared import PreparedQuery
from tests.factories import OfferFactory, OrganisationFactory, UserFactory

pytestmark = pytest.mark.django_db


def _client(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


def test_one_query_finds_user_token_organisation_and_home_site(buyer_user, buyer):
    token, secret = token_create(user=buyer_user, name="t")
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    with CaptureQueriesContext(connection) as ctx:
        user, found, organisation = token_authenticate(secret)
    assert len(ctx.captured_queries) == 1
    assert (user, found.pk, found.name, found.prefix) == (buyer_user, token.pk, "t", token.prefix)
    assert organisation == buyer
    with CaptureQueriesContext(connection) as ctx:  # joined, not loaded afterwards
        assert organisation is not None and organisation.home_site == buyer.home_site
        assert user.is_active and user.username == buyer_user.username
    assert ctx.captured_queries == []


def test_the_organisation_is_read_once_per_request(buyer_user, provider, site):
    # given a buyer's token and offers in its region
    _, secret = token_create(user=buyer_user)
    OfferFactory.create(provider=provider, site=site)
    client = _client(secret)
    client.get("/api/v1/offers/")  # last_used_at is written on first use
    # when it searches within its region (the tier filter needs the home site)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/api/v1/offers/?tier=region")
    # then: the token query (organisation and home site joined) and the search, nothing else
    assert response.status_code == 200 and response.json()["count"] == 1
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert len(sqls) == 2, sqls
    assert "accounts_apitoken" in sqls[0] and "marketplace_offer" in sqls[1]


def test_revocation_and_deactivation_take_effect_on_the_next_request(buyer_user):
    token, secret = token_create(user=buyer_user)
    client = _client(secret)
    assert client.get("/api/v1/organisations/me/").status_code == 200
    # revoked: refused at once
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert client.get("/api/v1/organisations/me/").status_code == 401
    # another token of a user then deactivated: refused at once too
    _, other = token_create(user=buyer_user)
    client = _client(other)
    assert client.get("/api/v1/organisations/me/").status_code == 200
    type(buyer_user).objects.filter(pk=buyer_user.pk).update(is_active=False)
    assert client.get("/api/v1/organisations/me/").status_code == 401


def test_a_membership_change_shows_on_the_next_request(buyer_user, buyer):
    _, secret = token_create(user=buyer_user)
    client = _client(secret)
    assert client.get("/api/v1/organisations/me/").json()["id"] == str(buyer.pk)
    # the user now acts for another organisation (its first membership is gone)
    other = OrganisationFactory.create()
    Membership.objects.filter(user=buyer_user).delete()
    Membership.objects.create(user=buyer_user, organisation=other)
    assert client.get("/api/v1/organisations/me/").json()["id"] == str(other.pk)
    # and without any membership the token still authenticates, with no organisation
    Membership.objects.filter(user=buyer_user).delete()
    response = client.get("/api/v1/organisations/me/")
    assert response.status_code == 403
    assert response.json()["code"] == "no_organisation"


def test_a_user_of_two_organisations_acts_for_the_first_membership(buyer_user, buyer):
    Membership.objects.create(user=buyer_user, organisation=OrganisationFactory.create())
    _, secret = token_create(user=buyer_user)
    assert token_authenticate(secret)[2] == buyer


def test_unknown_token_reads_nothing_else():
    with CaptureQueriesContext(connection) as ctx:
        response = _client("sx_not-a-token").get("/api/v1/organisations/me/")
    assert response.status_code == 401
    assert len(ctx.captured_queries) == 2  # the joined lookup, then the token alone


def test_prepared_query_returns_what_the_orm_returns(accelerator):
    query = PreparedQuery(lambda code: Accelerator.objects.filter(code=code).order_by("pk"))
    assert query.all(accelerator.code) == list(Accelerator.objects.filter(code=accelerator.code))
    found = query.first(accelerator.code)
    assert found is not None and found.__dict__.keys() == accelerator.__dict__.keys()
    assert (found.pk, found.code, found.aliases) == (
        accelerator.pk,
        accelerator.code,
        accelerator.aliases,
    )
    assert query.first("no such code") is None
    rows = PreparedQuery(lambda code: Accelerator.objects.filter(code=code).values_list("id"))
    assert rows.rows(accelerator.code) == [[accelerator.pk]]


def test_prepared_query_refuses_a_value_its_sql_does_not_take(accelerator):
    # ``icontains`` wraps the value in %...%: the placeholder does not reach the parameters
    query = PreparedQuery(lambda code: Accelerator.objects.filter(code__icontains=code))
    with pytest.raises(ValueError, match="placeholder"):
        query.all("T4")
    # a query with no value at all runs without one
    assert PreparedQuery(lambda _: Accelerator.objects.all()).all() == [accelerator]


def test_inactive_users_token_is_refused_even_without_an_organisation():
    user = UserFactory.create(username="loner", is_active=False)
    _, secret = token_create(user=user)
    assert _client(secret).get("/api/v1/organisations/me/").status_code == 401
