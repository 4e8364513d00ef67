"""Schema-driven fuzzing of the whole API with schemathesis against the live ``/api/schema/``.

Every operation gets at least ``EXAMPLES`` generated requests (valid and invalid data) with a
fixed seed (``derandomize``), once as an SME and once as a provider, each with a real hashed
token; every response goes through all of schemathesis's checks (no 5xx, status code, content
type, headers and body conform to the schema, invalid data refused, …). Path ids are swapped for
ids of real objects of the caller (and of another organisation) in a fixed share of the examples,
so the detail and action endpoints are exercised past their 404s.
"""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from accounts.tokens import token_create
from marketplace.wsgi import application
from tests.factories import DemandFactory, UserFactory

EXAMPLES = 100

load_all_checks()
ALL_CHECKS = CHECKS.get_all()

# ``positive_data_acceptance`` also accepts a 400 for schema-valid data: the rules that depend on
# data or on the clock (an unknown hub or accelerator code, a window in the past or shorter than
# the duration, a zero price) cannot all be said in OpenAPI. Every such 400 is still checked
# for its problem-details shape by the other checks, and the structural rules (types, bounds,
# patterns, enums, page sizes) are in the schema, so the generator rarely trips them.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429"]
            }
        }
    }
)


def _load_schema():  # type: ignore[no-untyped-def]
    """The live schema from ``/api/schema/``, fetched through the WSGI application in this
    process at collection (schema generation reads no rows)."""
    return schemathesis.openapi.from_wsgi("/api/schema/", application, config=CONFIG)


@pytest.fixture(autouse=True)
def _keep_test_connection():  # type: ignore[no-untyped-def]
    """As Django's test client does, keep the request signals from closing the test's
    database connection while requests go through the WSGI application."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


schema = _load_schema()


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
    ids = [
        str(offer.pk),
        str(voucher.pk),
        str(reservation.pk),
        str(reservation.demand_id),
        str(foreign.pk),
        str(voucher.programme_id),
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


@pytest.mark.fuzz
@schema.parametrize()
@HYPOTHESIS
def test_api_conforms_to_its_schema_as_sme(case, world):  # type: ignore[no-untyped-def]
    _call(case, world["sme"], world["ids"])


@pytest.mark.fuzz
@schema.parametrize()
@HYPOTHESIS
def test_api_conforms_to_its_schema_as_provider(case, world):  # type: ignore[no-untyped-def]
    _call(case, world["provider"], world["ids"])
