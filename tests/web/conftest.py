"""Fixtures for the web UI tests: logged-in Django test clients."""

import pytest
from django.test import Client


@pytest.fixture
def web(buyer_user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(buyer_user)
    return client


@pytest.fixture
def web_zh(buyer_user) -> Client:  # type: ignore[no-untyped-def]
    client = Client(headers={"accept-language": "zh-hans"})
    client.force_login(buyer_user)
    return client
