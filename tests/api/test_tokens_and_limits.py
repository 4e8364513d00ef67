"""Hashed API tokens (create, list, revoke), the login lock-out, write rate limits, the
provider lists, and the deployment checks of the production settings."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from accounts.models import ApiToken
from accounts.tokens import token_digest
from ledger.models import Transaction
from marketplace.models import Reservation
from marketplace.services import reservation_report_usage
from tests.api.conftest import error_of
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/api/v1/auth/token/"


def _login(client, password: str = "pw-Secret-123", username: str = "buyer", ip: str = "127.0.0.1"):  # type: ignore[no-untyped-def]
    return client.post(
        LOGIN, {"username": username, "password": password}, format="json", REMOTE_ADDR=ip
    )


def test_token_is_stored_hashed_listed_without_secret_and_revocable(anon_client, buyer_user):
    # when the user creates a token
    created = anon_client.post(
        LOGIN, {"username": "buyer", "password": "pw-Secret-123", "name": "ci"}, format="json"
    ).json()
    secret = created["token"]
    # then only its digest is stored
    row = ApiToken.objects.get(pk=created["id"])
    assert (row.digest, row.name, row.prefix) == (token_digest(secret), "ci", secret[:10])
    assert not ApiToken.objects.filter(digest=secret).exists()
    # and it authenticates; the list shows it without the secret
    anon_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    listed = anon_client.get("/api/v1/auth/tokens/").json()
    assert [t["id"] for t in listed] == [created["id"]]
    assert secret not in str(listed)
    # when it is revoked it stops working at once
    assert anon_client.delete(f"/api/v1/auth/tokens/{created['id']}/").status_code == 204
    assert error_of(anon_client.get("/api/v1/auth/tokens/"))[:2] == (401, "authentication_failed")
    row.refresh_from_db()
    assert row.revoked_at is not None


def test_unknown_token_is_401(anon_client):
    anon_client.credentials(HTTP_AUTHORIZATION="Token sx_" + "a" * 43)
    assert error_of(anon_client.get("/api/v1/hubs/"))[:2] == (401, "authentication_failed")


def test_login_locks_out_after_repeated_failures_even_with_the_right_password(
    anon_client, buyer_user, settings
):
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert error_of(_login(anon_client, "wrong"))[:2] == (400, "invalid_credentials")
    response = _login(anon_client)
    assert error_of(response)[:2] == (429, "login_locked")
    assert 0 < int(response["Retry-After"]) <= settings.LOGIN_LOCKOUT_SECONDS
    assert ApiToken.objects.count() == 0
    # another username is not affected
    UserFactory.create(username="someone")
    assert _login(anon_client, username="someone").status_code == 201


def test_failures_from_one_ip_do_not_lock_the_user_out_elsewhere(anon_client, buyer_user, settings):
    # given a stranger fails the buyer's password from one address until that pair is locked
    settings.LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert _login(anon_client, "wrong", ip="203.0.113.9").status_code == 400
    assert error_of(_login(anon_client, ip="203.0.113.9"))[:2] == (429, "login_locked")
    # then the buyer still logs in from its own address
    assert _login(anon_client, ip="198.51.100.7").status_code == 201
    # and the stranger's address stays locked, even for the username spelled otherwise
    assert error_of(_login(anon_client, username=" Buyer", ip="203.0.113.9"))[:2] == (
        429,
        "login_locked",
    )
    assert ApiToken.objects.count() == 1


def test_failures_from_many_ips_lock_the_username_everywhere(anon_client, buyer_user, settings):
    # given guesses spread over many addresses, each under the per-pair limit
    settings.LOGIN_MAX_FAILURES = 3
    settings.LOGIN_MAX_FAILURES_PER_USERNAME = 6
    for n in range(6):
        assert _login(anon_client, "wrong", ip=f"192.0.2.{n}").status_code == 400
    # then the username is locked from every address, also one never seen
    response = _login(anon_client, ip="198.51.100.7")
    assert error_of(response)[:2] == (429, "login_locked")
    assert int(response["Retry-After"]) > 0
    assert ApiToken.objects.count() == 0
    # and other usernames are not
    UserFactory.create(username="someone")
    assert _login(anon_client, username="someone", ip="192.0.2.1").status_code == 201


def test_a_successful_login_resets_only_its_own_pair(anon_client, buyer_user, settings):
    settings.LOGIN_MAX_FAILURES = 3
    settings.LOGIN_MAX_FAILURES_PER_USERNAME = 100
    for _ in range(2):
        assert _login(anon_client, "wrong", ip="192.0.2.1").status_code == 400
    assert _login(anon_client, ip="192.0.2.1").status_code == 201
    # the pair's count restarted: two more failures do not lock it
    for _ in range(2):
        assert _login(anon_client, "wrong", ip="192.0.2.1").status_code == 400
    assert _login(anon_client, ip="192.0.2.1").status_code == 201


def test_login_is_rate_limited_per_ip(anon_client, buyer_user, settings):
    settings.API_RATES = {**settings.API_RATES, "login_ip": "2/min"}
    assert _login(anon_client).status_code == 201
    assert _login(anon_client).status_code == 201
    response = _login(anon_client)
    assert error_of(response)[:2] == (429, "throttled")
    assert int(response["Retry-After"]) > 0


def test_writes_are_rate_limited_per_user_with_retry_after(buyer_client, settings):
    settings.API_RATES = {**settings.API_RATES, "write_user": "2/min"}
    for _ in range(2):
        assert buyer_client.post("/api/v1/wallet/deposits/", {"amount": "1"}).status_code == 201
    response = buyer_client.post("/api/v1/wallet/deposits/", {"amount": "1"})
    assert error_of(response)[:2] == (429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert Transaction.objects.filter(reason="deposit").count() == 3  # fixture's + 2
    # reads are not limited
    assert buyer_client.get("/api/v1/wallet/").status_code == 200


def test_writes_are_rate_limited_per_ip(buyer_client, other_client, settings):
    settings.API_RATES = {**settings.API_RATES, "write_ip": "2/min"}
    assert buyer_client.post("/api/v1/wallet/deposits/", {"amount": "1"}).status_code == 201
    assert other_client.post("/api/v1/wallet/deposits/", {"amount": "1"}).status_code == 201
    assert error_of(other_client.post("/api/v1/wallet/deposits/", {"amount": "1"}))[0] == 429


def test_provider_lists_show_own_usage_reports_and_refuse_buyers(
    provider_client, buyer_client, reservation, provider_user
):
    # given the provider's reservation ran and the provider reported half its GPU-hours
    Reservation.objects.filter(pk=reservation.pk).update(status="active")
    reservation_report_usage(
        reservation_id=reservation.pk,
        provider=reservation.provider,
        delivered_gpu_hours=4,
        actor=provider_user,
    )
    body = provider_client.get("/api/v1/provider/usage-reports/").json()
    assert [
        (r["reservation"], r["gpu_hours"], r["delivered_gpu_hours"], r["reported_by_provider"])
        for r in body["results"]
    ] == [(str(reservation.pk), 8, 4, True)]
    for url in ("sites", "usage-reports", "payouts", "reimbursement-claims"):
        assert provider_client.get(f"/api/v1/provider/{url}/").status_code == 200
        assert error_of(buyer_client.get(f"/api/v1/provider/{url}/"))[:2] == (
            403,
            "not_a_provider",
        )


def test_schema_validates_with_an_openapi_validator(anon_client, buyer_client):
    from openapi_spec_validator import validate

    response = buyer_client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    validate(schema)
    # every error response is problem details
    for item in schema["paths"].values():
        for operation in item.values():
            for code, answer in operation["responses"].items():
                if int(code) >= 400:
                    assert list(answer["content"]) == ["application/problem+json"]
    docs = anon_client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content


def test_check_deploy_passes_with_production_settings():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/suanli",
        "REDIS_URL": "redis://127.0.0.1:6379/14",
        "DJANGO_ALLOWED_HOSTS": "api.example.cn",
    }
    manage = Path(django_settings.BASE_DIR) / "manage.py"
    result = subprocess.run(
        [sys.executable, str(manage), "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_sets_security_headers(client, settings):
    settings.SECURE_SSL_REDIRECT = False  # the test client speaks plain HTTP
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_REFERRER_POLICY = "same-origin"
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "csp.middleware.CSPMiddleware"]
    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "csp"]
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'self'"]}}
    response = client.get("/api/docs/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert "default-src 'self'" in response["Content-Security-Policy"]
