"""Token login and organisation registration through the API."""

import pytest

from accounts.models import Membership, Organisation
from tests.api.conftest import error_of
from tests.factories import credit_code

pytestmark = pytest.mark.django_db


def test_token_for_right_credentials_authenticates_later_calls(anon_client, buyer_user):
    # given a user with a password
    # when they ask for a token
    response = anon_client.post(
        "/api/v1/auth/token/", {"username": "buyer", "password": "pw-Secret-123"}, format="json"
    )
    # then a token comes back and works as "Authorization: Token ..."
    assert response.status_code == 201
    token = response.json()["token"]
    anon_client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anon_client.get("/api/v1/organisations/me/").json()["name"] == "Buyer SME"


def test_token_for_wrong_password_is_400_invalid_credentials(anon_client, buyer_user):
    response = anon_client.post(
        "/api/v1/auth/token/", {"username": "buyer", "password": "nope"}, format="json"
    )
    assert error_of(response) == (400, "invalid_credentials", None)


def test_token_without_password_names_the_field(anon_client):
    response = anon_client.post("/api/v1/auth/token/", {"username": "x"}, format="json")
    assert error_of(response) == (400, "invalid", "password")


def test_anonymous_is_401(anon_client):
    for url in (
        "/api/v1/organisations/me/",
        "/api/v1/offers/",
        "/api/v1/demands/",
        "/api/v1/wallet/",
        "/api/v1/ledger/",
        "/api/v1/hubs/",
    ):
        response = anon_client.get(url)
        assert error_of(response)[:2] == (401, "not_authenticated"), url


def test_register_organisation_makes_caller_its_admin(orphan_client, site):
    # given a user without an organisation and a valid credit code
    code = credit_code()
    # when they register
    response = orphan_client.post(
        "/api/v1/organisations/",
        {
            "name": "New SME",
            "credit_code": code,
            "kind": "sme",
            "home_site": str(site.pk),
        },
        format="json",
    )
    # then the organisation is pending, at the home site, with the caller as admin
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["name"], body["credit_code"], body["status"], body["home_site"]) == (
        "New SME",
        code,
        "pending",
        site.code,
    )
    membership = Membership.objects.get(organisation_id=body["id"])
    assert membership.role == Membership.Role.ADMIN
    assert orphan_client.get("/api/v1/organisations/me/").json()["id"] == body["id"]


def test_register_with_wrong_check_character_is_400_credit_code(orphan_client):
    # given a code whose check character is wrong
    good = credit_code()
    bad = good[:17] + ("0" if good[17] != "0" else "1")
    # when registering with it
    response = orphan_client.post(
        "/api/v1/organisations/",
        {"name": "Bad Code Ltd", "credit_code": bad, "kind": "sme"},
        format="json",
    )
    # then it is refused naming the field and nothing is created
    assert error_of(response) == (400, "invalid_credit_code", "credit_code")
    assert not Organisation.objects.filter(name="Bad Code Ltd").exists()


def test_register_twice_is_409(buyer_client, buyer):
    before = Organisation.objects.count()
    response = buyer_client.post(
        "/api/v1/organisations/",
        {"name": "Second", "credit_code": credit_code(), "kind": "sme"},
        format="json",
    )
    assert error_of(response) == (409, "already_member", None)
    assert Organisation.objects.count() == before


def test_me_without_organisation_is_403(orphan_client):
    assert error_of(orphan_client.get("/api/v1/organisations/me/")) == (
        403,
        "no_organisation",
        None,
    )


def test_register_unknown_field_is_400_naming_it(orphan_client):
    response = orphan_client.post(
        "/api/v1/organisations/",
        {"name": "X", "credit_code": credit_code(), "kind": "sme", "status": "approved"},
        format="json",
    )
    assert error_of(response) == (400, "invalid", "status")
    assert not Organisation.objects.filter(name="X").exists()
