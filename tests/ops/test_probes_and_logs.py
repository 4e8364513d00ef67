"""Health and readiness probes, Prometheus metrics, request ids in responses and JSON logs."""

import json
import logging
import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from ledger.models import Account
from marketplace.models import MatchingCycle
from ops.context import RequestIdFilter, request_id_var
from tests.factories import HubFactory


@pytest.mark.django_db
def test_healthz_answers_without_touching_the_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_database_and_redis():
    response = Client().get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "redis": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_naming_redis_when_redis_is_unreachable(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ConnectionError")


def test_probes_refuse_writes():
    assert Client().post("/healthz").status_code == 405


@pytest.mark.django_db
def test_request_id_is_taken_from_the_caller_or_made():
    client = Client()
    given = client.get("/healthz", HTTP_X_REQUEST_ID="lb-1234.abc")
    assert given["X-Request-ID"] == "lb-1234.abc"
    made = client.get("/healthz", HTTP_X_REQUEST_ID="bad id with spaces")
    assert made["X-Request-ID"] != "bad id with spaces"
    assert len(made["X-Request-ID"]) == 32
    assert client.get("/healthz")["X-Request-ID"] != made["X-Request-ID"]


@pytest.mark.django_db
def test_metrics_expose_latency_cycles_budget_and_queue_depth(programme):
    # given one recorded matching cycle and a funded programme
    hub = HubFactory.create(code="zz-hub")
    MatchingCycle.objects.create(
        hub=hub, policy="greedy", started_at="2026-01-01T00:00Z", seconds=0.25, reservations_made=7
    )
    client = Client()
    client.get("/healthz")
    # when Prometheus scrapes
    response = client.get("/metrics")
    # then every family the operators chart is present with the recorded values
    assert response.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }
    key = (("method", "GET"), ("route", "healthz"), ("status", "2xx"))
    assert samples[("suanli_http_request_duration_seconds_count", key)] >= 1
    assert samples[("suanli_matching_cycle_last_seconds", (("hub", "zz-hub"),))] == 0.25
    assert samples[("suanli_matching_cycle_last_reservations", (("hub", "zz-hub"),))] == 7
    assert samples[("suanli_matching_reservations_last_hour", ())] == 0  # cycle is from 2026-01-01
    budget = Account.objects.get(kind=Account.Kind.PROGRAMME, programme=programme).balance
    assert budget > 0
    assert samples[("suanli_voucher_budget_left_cny", (("programme", programme.code),))] == float(
        budget
    )
    queue = (("queue", settings.CELERY_TASK_DEFAULT_QUEUE),)
    assert samples[("suanli_queue_depth", queue)] >= 0


def test_json_log_line_carries_the_request_id(capsys):
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter("%(levelname)s %(name)s %(request_id)s %(task_id)s %(message)s")
    )
    log = logging.getLogger("tests.ops.json")
    log.addHandler(handler)
    log.propagate = False
    token = request_id_var.set("rid-42")
    try:
        log.warning("demand %s posted", "d-1")
    finally:
        request_id_var.reset(token)
        log.removeHandler(handler)
    line = json.loads(capsys.readouterr().out.strip())
    assert line == {
        "levelname": "WARNING",
        "name": "tests.ops.json",
        "request_id": "rid-42",
        "task_id": "",
        "message": "demand d-1 posted",
    }


def test_production_settings_pass_check_deploy():
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "exchange.example.org",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/suanli",
        "REDIS_URL": "redis://127.0.0.1:6379/14",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_settings_refuse_to_start_without_the_secret_key():
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
        "DJANGO_ALLOWED_HOSTS": "exchange.example.org",
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/suanli",
        "REDIS_URL": "redis://127.0.0.1:6379/14",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_request_metrics_are_aggregated_across_gunicorn_workers(tmp_path):
    # two processes (like two gunicorn workers) observe requests into PROMETHEUS_MULTIPROC_DIR;
    # a third renders the sum
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    observe = (
        "from ops.metrics import REQUEST_LATENCY; "
        "REQUEST_LATENCY.labels(method='GET', route='healthz', status='2xx').observe(0.01)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", observe], env=env, check=True, cwd=settings.BASE_DIR)
    render = (
        "from prometheus_client import generate_latest; from ops.metrics import process_registry; "
        "print(generate_latest(process_registry()).decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", render],
        env=env,
        check=True,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
    ).stdout
    counts = [
        s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
        if s.name == "suanli_http_request_duration_seconds_count"
    ]
    assert counts == [2.0]
