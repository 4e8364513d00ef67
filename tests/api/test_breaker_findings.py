"""Inputs a second independent review (the "breaker") found crashing or silently ignored: each
is now a 4xx naming the parameter or field, and nothing changes."""

import pytest

from tests.api.conftest import error_of

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("period", ["0000-01", "0000-12"])
def test_statement_period_of_year_zero_is_a_400_not_a_500(operator_client, period):
    response = operator_client.get("/api/v1/statements/", {"period": period})
    assert error_of(response) == (400, "invalid", "period")
