"""Reimbursement statements in the API (issue 3): providers read their own, operators read all and
mark them paid (idempotent); strict filters by programme, period and status; detail with lines;
CSV download. Errors are problem details naming the parameter."""

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import Organisation, User
from ledger.audit import ledger_audit
from ledger.models import Account, IdempotencyKey, Transaction
from ledger.services import organisation_account, system_account, transaction_post
from marketplace.services import reservation_refund
from tests.api.conftest import error_of
from tests.factories import (
    CatalogueEntryFactory,
    OfferFactory,
    ProgrammeFactory,
    ProviderFactory,
    UserFactory,
    settled_reservation,
)
from vouchers.models import Statement
from vouchers.services import programme_fund, statement_issue, voucher_issue

pytestmark = pytest.mark.django_db

URL = "/api/v1/statements/"


@pytest.fixture
def statements(buyer, provider, offer, voucher, programme, site, accelerator):  # type: ignore[no-untyped-def]
    """This month's statements (issued as if a month had passed) of two programmes for the
    provider (one with a refund's negative line) and one of another provider."""
    later = timezone.now() + timedelta(days=40)
    today = timezone.now().date()
    first = settled_reservation(buyer, offer, voucher)
    settled_reservation(buyer, offer, voucher, hours_ahead=3)
    reservation_refund(reservation_id=first.pk, amount=Decimal("10.00"))
    beijing = ProgrammeFactory.create(code="beijing", max_share=Decimal("0.2000"))
    programme_fund(beijing)
    CatalogueEntryFactory.create(programme=beijing, provider=provider)
    settled_reservation(
        buyer,
        offer,
        voucher_issue(programme=beijing, owner=buyer, face_value=Decimal(100)),
        hours_ahead=5,
    )
    other = ProviderFactory.create(name="Other DC", home_site=site)
    CatalogueEntryFactory.create(programme=programme, provider=other)
    settled_reservation(
        buyer, OfferFactory.create(provider=other, site=site, accelerator=accelerator), voucher
    )
    issued = {
        (p.code, who.name): statement_issue(
            programme_id=p.pk, provider_id=who.pk, period_start=today, now=later
        )
        for p, who in ((programme, provider), (beijing, provider), (programme, other))
    }
    return issued


def _staff(*codenames: str) -> APIClient:
    user = UserFactory.create(username=f"staff-{len(codenames)}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = APIClient()
    client.force_authenticate(User.objects.get(pk=user.pk))  # no cached permissions
    return client


@pytest.fixture
def operator_client() -> APIClient:
    """Staff with the admin's permissions on statements (view, change: mark paid)."""
    return _staff("view_statement", "change_statement")


def test_staff_need_the_admins_permissions_on_statements(statements):
    # given staff without any permission: refused as operators (as the admin would)
    statement = statements[("chengdu-2025", "Provider DC")]
    bare = _staff()
    for response in (bare.get(URL), bare.post(f"{URL}{statement.pk}/mark-paid/")):
        assert error_of(response) == (403, "not_operator", None)
    # and staff who may only view statements see them but cannot mark one paid
    viewer = _staff("view_statement")
    assert viewer.get(URL).status_code == 200
    assert error_of(viewer.post(f"{URL}{statement.pk}/mark-paid/")) == (403, "not_operator", None)
    statement.refresh_from_db()
    assert statement.paid_at is None


def test_a_provider_lists_its_own_statements_and_an_operator_all(
    statements, provider_client, operator_client
):
    own = provider_client.get(URL).json()
    assert sorted(s["programme"] for s in own["results"]) == ["beijing", "chengdu-2025"]
    chengdu = statements[("chengdu-2025", "Provider DC")]
    row = next(s for s in own["results"] if s["programme"] == "chengdu-2025")
    # two redemptions of ¥48 and the ¥6 voucher share of a ¥10 refund after settlement
    assert (row["id"], row["total"], row["claim_count"], row["status"]) == (
        str(chengdu.pk),
        "90.00",
        3,
        "issued",
    )
    assert operator_client.get(URL).json()["count"] == 3


def test_filters_are_strict(statements, provider_client):
    month = timezone.now().strftime("%Y-%m")
    assert provider_client.get(URL, {"programme": "beijing"}).json()["count"] == 1
    assert provider_client.get(URL, {"period": month, "status": "issued"}).json()["count"] == 2
    assert provider_client.get(URL, {"status": "paid"}).json()["count"] == 0
    assert provider_client.get(URL, {"period": "1999-01"}).json()["count"] == 0
    for params, field in (
        ({"programme": "nowhere"}, "programme"),
        ({"period": "2025-13"}, "period"),
        ({"period": "June"}, "period"),
        ({"period": "٠٠٠٠-01"}, "period"),  # Arabic-Indic zeros: year 0 (was a 500)
        ({"period": "２０２６-01"}, "period"),  # full-width digits
        ({"status": "open"}, "status"),
        ({"status": ""}, "status"),
        ({"provider": "x"}, "provider"),
    ):
        response = provider_client.get(URL, params)
        status, _, named = error_of(response)
        assert (status, named) == (400, field), params


def test_detail_lists_lines_that_add_up_to_the_total(statements, provider_client):
    chengdu = statements[("chengdu-2025", "Provider DC")]
    body = provider_client.get(f"{URL}{chengdu.pk}/").json()
    amounts = [Decimal(line["amount"]) for line in body["lines"]]
    assert sorted(amounts) == [Decimal("-6.00"), Decimal("48.00"), Decimal("48.00")]
    assert sum(amounts) == Decimal(body["total"])
    assert {line["kind"] for line in body["lines"]} == {"redemption", "adjustment"}
    assert "voucher" not in body["lines"][0]  # the buyer's own object


def test_another_providers_statement_is_not_there(statements, provider_client, buyer_client):
    foreign = statements[("chengdu-2025", "Other DC")]
    for path in (f"{URL}{foreign.pk}/", f"{URL}{foreign.pk}/csv/", f"{URL}not-a-uuid/"):
        assert error_of(provider_client.get(path))[:2] == (404, "not_found")
    assert error_of(buyer_client.get(URL))[:2] == (403, "not_a_provider")
    assert error_of(APIClient().get(URL))[0] == 401


def test_the_csv_download_is_reproducible(statements, provider_client):
    chengdu = statements[("chengdu-2025", "Provider DC")]
    first = provider_client.get(f"{URL}{chengdu.pk}/csv/")
    assert first.status_code == 200
    assert first["Content-Type"] == "text/csv; charset=utf-8"
    text = first.content.decode()
    lines = text.splitlines()
    assert (
        lines[0]
        == "claim,kind,reservation,dated_at_utc,claimant_credit_code,claimant,mode,amount_cny"
    )
    assert lines[-1] == "total,,,,,,,90.00"
    assert len(lines) == 5
    # whatever the client accepts (and no ?format= override): the same CSV, or problem details
    again = provider_client.get(f"{URL}{chengdu.pk}/csv/", HTTP_ACCEPT="application/json")
    assert again.content == first.content
    assert provider_client.get(f"{URL}{chengdu.pk}/csv/?format=json").content == first.content
    missing = provider_client.get(f"{URL}{chengdu.programme_id}/csv/", HTTP_ACCEPT="text/csv")
    assert error_of(missing)[:2] == (404, "not_found")


def test_a_name_that_looks_like_a_formula_is_written_as_text(statements, provider_client):
    # given a claimant whose name (chosen at signup) would run as a spreadsheet formula
    chengdu = statements[("chengdu-2025", "Provider DC")]
    formula = '=HYPERLINK("http://example.com/x","open")'
    Organisation.objects.filter(pk=chengdu.provider_id).update(name=formula)
    # when the statement is downloaded, then the name is text and the amounts stay numbers
    text = provider_client.get(f"{URL}{chengdu.pk}/csv/").content.decode()
    rows = list(csv.reader(io.StringIO(text)))
    claimant = rows[0].index("claimant")
    assert {row[claimant] for row in rows[1:-1]} == {"'" + formula}
    assert rows[-1][-1] == "90.00"


def test_an_operator_marks_a_statement_paid_once(statements, operator_client, provider_client):
    chengdu = statements[("chengdu-2025", "Provider DC")]
    path = f"{URL}{chengdu.pk}/mark-paid/"
    refused = provider_client.post(path)
    assert error_of(refused)[:2] == (403, "not_operator")
    assert Statement.objects.get(pk=chengdu.pk).status == "issued"
    paid = operator_client.post(path, HTTP_IDEMPOTENCY_KEY="pay-1")
    assert paid.status_code == 200
    assert paid.json()["status"] == "paid"
    assert {line["status"] for line in paid.json()["lines"]} == {"paid"}
    replay = operator_client.post(path, HTTP_IDEMPOTENCY_KEY="pay-1")
    assert (replay.status_code, replay["Idempotent-Replayed"]) == (200, "true")
    assert replay.json() == paid.json()
    assert error_of(operator_client.post(path))[:2] == (409, "already_paid")
    assert Transaction.objects.filter(reason="claim_paid").count() == 1
    assert IdempotencyKey.objects.filter(key="pay-1").count() == 1
    assert ledger_audit() == []


def test_a_negative_statement_the_provider_cannot_pay_back_is_refused(
    buyer, provider, offer, voucher, programme, operator_client
):
    # given a claim paid on one statement, then refunded in full (the provider owes ¥48 back)
    # and the provider's payable emptied by a payout
    r = settled_reservation(buyer, offer, voucher)
    later = timezone.now() + timedelta(days=40)
    first = statement_issue(
        programme_id=programme.pk,
        provider_id=provider.pk,
        period_start=timezone.now().date(),
        now=later,
    )
    assert operator_client.post(f"{URL}{first.pk}/mark-paid/").status_code == 200
    reservation_refund(reservation_id=r.pk, amount=Decimal("80.00"))
    payable = organisation_account(provider, Account.Kind.PAYABLE)
    transaction_post(
        Transaction.Reason.PAYOUT,
        [(payable, -payable.balance), (system_account(Account.Kind.WORLD), payable.balance)],
    )
    second = statement_issue(  # the next period: the refund's line is late for the first
        programme_id=programme.pk,
        provider_id=provider.pk,
        period_start=later.date(),
        now=later + timedelta(days=40),
    )
    assert second.total == Decimal("-48.00")
    # when an operator marks it paid, then it is refused and nothing moved
    response = operator_client.post(f"{URL}{second.pk}/mark-paid/")
    assert error_of(response)[:2] == (422, "insufficient_funds")
    assert Statement.objects.get(pk=second.pk).status == "issued"
    assert ledger_audit() == []


def test_a_staff_member_of_a_provider_keeps_its_own_statements(statements, provider):
    # given a staff user of the provider without the operators' permission on statements
    staff = UserFactory.create(username="dc-staff", organisation=provider, is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    # then it reads its own provider's statements, as a colleague does, not all of them
    listed = client.get(URL).json()
    assert sorted(s["programme"] for s in listed["results"]) == ["beijing", "chengdu-2025"]
    # and cannot mark one paid
    statement = statements[("chengdu-2025", "Provider DC")]
    response = client.post(f"{URL}{statement.pk}/mark-paid/")
    assert error_of(response) == (403, "not_operator", None)
    statement.refresh_from_db()
    assert statement.paid_at is None


def test_a_replayed_mark_paid_is_refused_once_the_permission_is_gone(statements, provider):
    # given staff who marked a statement paid with an Idempotency-Key
    user = UserFactory.create(username="payer", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=("view_statement", "change_statement"))
    )
    statement = statements[("chengdu-2025", "Provider DC")]
    path = f"{URL}{statement.pk}/mark-paid/"

    def post():  # type: ignore[no-untyped-def]
        client = APIClient()
        client.force_authenticate(User.objects.get(pk=user.pk))
        return client.post(path, HTTP_IDEMPOTENCY_KEY="pay-once")

    assert post().status_code == 200
    assert post()["Idempotent-Replayed"] == "true"
    # when the change permission is taken away, then the replay is refused as the request is
    user.user_permissions.remove(Permission.objects.get(codename="change_statement"))
    assert error_of(post()) == (403, "not_operator", None)
