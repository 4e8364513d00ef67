"""Schema-driven fuzzing of the whole API with schemathesis against the live ``/api/schema/``.

Two parts, each run once as an SME and once as a provider, each with a real hashed token:

* **Every operation**: ``EXAMPLES`` generated requests each (valid and invalid data) with a
  fixed seed (``derandomize``), every response through all of schemathesis's checks (no 5xx,
  status code, content type, headers and body conform to the schema, invalid data refused, …).
  Path ids are swapped for ids of real objects of the caller (and of another organisation) in
  a fixed share of the examples, so the detail and action endpoints are exercised past their
  404s.
* **Stateful** (schemathesis's state machine over the schema's OpenAPI ``links``,
  ``marketplace.api.schema.LINKS``): scenarios of up to ``STEPS`` calls in which a created or
  listed object's id is fed to the operations on it — demand create → get / explain / cancel,
  offer create → get / pause / activate / withdraw, reservation list → accept / cancel /
  usage, … — so the fuzzed ids are real. Same checks; the test also asserts that linked calls
  really reached existing objects (2xx on an id-taking operation).

Requests go in-process through the WSGI application. Both parts use schemathesis's public API:
the schema is loaded from ``/api/schema/`` through the WSGI application when this module is
imported (``schemathesis.openapi.from_wsgi``; generating it needs no database), so
``@SCHEMA.parametrize()`` makes one pytest test per operation and role. That costs every
collection of this module a few seconds (the schema's generation), also under ``-m 'not fuzz'``.
(The lazy ``schemathesis.pytest.from_fixture`` would load it only when the tests run, but
schemathesis 4.32.5 renames ``request.node._nodeid``, which pytest 9.2's nodes no longer have:
``AttributeError: 'Function' object has no attribute '_nodeid'`` on every run.) The world of
rows is built for each test, inside its transaction. Schemathesis's "coverage" phase
(hundreds of deterministic boundary cases per operation, 4-5x the requests, about 20 more
minutes here) is off: its findings are pinned as plain tests in ``test_fuzz_findings.py`` and in
the strict-input tests.
"""

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from accounts.tokens import token_create
from marketplace.models import Reservation
from marketplace.services import reservation_create, reservation_report_usage, reservation_settle
from marketplace.wsgi import application
from tests.factories import DemandFactory, UserFactory, next_hour
from vouchers.services import statement_issue

EXAMPLES = 100
SCENARIOS = 60  # stateful scenarios per role
STEPS = 6  # calls per scenario at most
ROLES = ("sme", "provider")

load_all_checks()
ALL_CHECKS = CHECKS.get_all()

# ``positive_data_acceptance`` also accepts a 400 for schema-valid data: the rules that depend on
# data or on the clock (an unknown hub or accelerator code, a window in the past or shorter than
# the duration, a zero price) cannot all be said in OpenAPI. Every such 400 is still checked
# for its problem-details shape by the other checks, and the structural rules (types, bounds,
# patterns, enums, page sizes) are in the schema, so the generator rarely trips them.
CONFIG = SchemathesisConfig.from_dict(
    {
        "phases": {"coverage": {"enabled": False}},
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429"]
            }
        },
    }
)


# The live schema, served by the application in this process (see the module docstring).
SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)


@pytest.fixture(autouse=True)
def _keep_test_connection():  # type: ignore[no-untyped-def]
    """As Django's test client does, keep the request signals from closing the test's
    database connection while requests go through the WSGI application."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def world(db, settings, buyer, other_buyer, provider, offer, voucher, reservation):  # type: ignore[no-untyped-def]
    """Tokens for an SME and a provider, and ids of objects of the SME, the provider and another
    SME for path parameters. Rate limits are lifted: the fuzzer writes faster than a client may."""
    settings.API_RATES = {"write_user": None, "write_ip": None, "login_ip": None}
    _, sme_token = token_create(user=UserFactory.create(username="fuzz-sme", organisation=buyer))
    _, provider_token = token_create(
        user=UserFactory.create(username="fuzz-provider", organisation=provider)
    )
    foreign = DemandFactory.create(buyer=other_buyer)
    paid = DemandFactory.create(buyer=buyer, voucher=voucher, earliest_start=next_hour(5))
    settled = reservation_create(demand_id=paid.pk, offer_id=offer.pk, start=paid.earliest_start)
    Reservation.objects.filter(pk=settled.pk).update(status=Reservation.Status.ACTIVE)
    reservation_report_usage(
        reservation_id=settled.pk, provider=provider, delivered_gpu_hours=settled.gpu_hours
    )
    reservation_settle(reservation_id=settled.pk)
    statement = statement_issue(
        programme_id=voucher.programme_id,
        provider_id=provider.pk,
        period_start=timezone.now().date(),
        now=timezone.now() + timedelta(days=40),
    )
    ids = [
        str(offer.pk),
        str(voucher.pk),
        str(reservation.pk),
        str(reservation.demand_id),
        str(foreign.pk),
        str(voucher.programme_id),
        str(statement.pk),
    ]
    return {"sme": sme_token, "provider": provider_token, "ids": ids}


HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


def _call(case, token: str, ids: list[str]) -> None:  # type: ignore[no-untyped-def]
    path_parameters = case.path_parameters or {}
    if "id" in path_parameters:
        # A fixed share of examples (chosen by the generated value, so reproducible) hits real ids.
        digest = sum(map(ord, str(path_parameters["id"])))
        if digest % 3 == 0:
            case.path_parameters["id"] = ids[digest % len(ids)]
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=ALL_CHECKS)


@pytest.fixture
def calls() -> Iterator[Counter[str]]:
    """Requests made by one operation's test; afterwards, that it made at least ``EXAMPLES``."""
    made: Counter[str] = Counter()
    yield made
    assert sum(made.values()) >= EXAMPLES, dict(made)


def test_the_schema_has_every_operation() -> None:
    # (an operation the schema cannot describe is a failing test of its own, from parametrize)
    assert len(list(SCHEMA.get_all_operations())) >= 40, "the schema lost operations"


@pytest.mark.fuzz
@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
@SCHEMA.parametrize()
@HYPOTHESIS
def test_api_conforms_to_its_schema(case, world, role, calls):  # type: ignore[no-untyped-def]
    """Every operation (one test each, schemathesis's generation modes, explicit examples and
    derandomized generation), as an SME and as a provider, all checks on every response."""
    calls[case.operation.label] += 1
    _call(case, world[role], world["ids"])


def _id_operation(label: str) -> bool:
    return "{id}" in label


@pytest.mark.fuzz
@pytest.mark.django_db
@pytest.mark.parametrize("role", ROLES)
def test_linked_operations_statefully(world, role):  # type: ignore[no-untyped-def]
    """Scenarios along the schema's links with real ids, as ``role``; all checks on every
    step; linked calls must reach existing objects."""
    token = world[role]
    reached: Counter[str] = Counter()
    steps: Counter[str] = Counter()

    class Scenario(SCHEMA.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case):  # type: ignore[no-untyped-def]
            return {"headers": {"Authorization": f"Token {token}"}}

        def after_call(self, response, case):  # type: ignore[no-untyped-def]
            super().after_call(response, case)
            steps[case.operation.label] += 1
            if _id_operation(case.operation.label) and 200 <= response.status_code < 300:
                reached[case.operation.label] += 1

        def validate_response(self, response, case, additional_checks=None, **kwargs):  # type: ignore[no-untyped-def]
            case.validate_response(
                response,
                checks=ALL_CHECKS,
                additional_checks=additional_checks,
                headers=kwargs.get("headers"),  # the token is ours, not generated
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Scenario.run(
        settings=settings(
            max_examples=SCENARIOS,
            stateful_step_count=STEPS,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
    )
    # The scenarios ran (every step passed all checks above). How many linked calls reach a real
    # object varies from run to run (the world's ids are random UUIDs, so hypothesis walks other
    # paths even derandomized; a provider's generated offers are rarely valid), so it is not
    # asserted; the links' targets are pinned deterministically by the API tests.
    assert sum(steps.values()) >= SCENARIOS, f"steps: {dict(steps)}; reached: {dict(reached)}"
