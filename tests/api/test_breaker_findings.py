"""Inputs a second independent review (the "breaker") found crashing or silently ignored: each
is now a 4xx naming the parameter or field, and nothing changes."""

import pytest

from tests.api.conftest import error_of
from tests.factories import DemandFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("period", ["0000-01", "0000-12"])
def test_statement_period_of_year_zero_is_a_400_not_a_500(operator_client, period):
    response = operator_client.get("/api/v1/statements/", {"period": period})
    assert error_of(response) == (400, "invalid", "period")


@pytest.mark.parametrize(
    ("url", "query", "field"),
    [
        ("/api/v1/demands/", "status=open&status=cancelled", "status"),
        ("/api/v1/offers/", "min_gpus=1&min_gpus=64", "min_gpus"),
        ("/api/v1/reservations/", "role=buyer&role=provider", "role"),
        ("/api/v1/demands/", "page=1&page=2", "page"),
        ("/api/v1/demands/", "page_size=1&page_size=2", "page_size"),
    ],
)
def test_a_query_parameter_given_twice_is_a_400_not_its_last_value(
    buyer_client, buyer, offer, url, query, field
):
    # given a demand of the caller's, so that a list that ignored the first value is not empty
    DemandFactory.create(buyer=buyer)
    # when a filter is given twice (the list would use only the last value)
    response = buyer_client.get(f"{url}?{query}")
    # then it is refused, naming the parameter
    assert error_of(response) == (400, "invalid", field)
