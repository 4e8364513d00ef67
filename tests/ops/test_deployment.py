"""The deployment files (docker/): the compose file is valid against the Compose Specification
schema (vendored in docker/schema/), every service of our image runs a script that exists in
the project and calls commands that exist, the Dockerfile builds a non-root runtime stage
without build tools, and .env.example names every variable the compose file needs."""

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.conf import settings
from django.core.management import call_command, get_commands

from tests.factories import HubFactory

ROOT = Path(settings.BASE_DIR)
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


# The vendored schema declares "http://json-schema.org/draft/2019-09/schema#", a spelling of
# draft 2019-09 that jsonschema does not look up by name: name the draft explicitly.
Validator = jsonschema.Draft201909Validator


def test_compose_file_is_valid_against_the_compose_specification(compose):
    schema = json.loads((DOCKER / "schema" / "compose-spec.json").read_text())
    Validator.check_schema(schema)
    errors = sorted(Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_the_schema_catches_a_broken_compose_file(compose):
    # the validation above can fail: an unknown service key is refused
    schema = json.loads((DOCKER / "schema" / "compose-spec.json").read_text())
    broken = {**compose, "services": {**compose["services"], "web": {"comand": ["x"]}}}
    assert not Validator(schema).is_valid(broken)


def test_compose_runs_the_required_processes(compose):
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "web",
        "worker-matching",
        "worker-default",
        "beat",
        "flower",
    } <= set(services)
    for name in ("postgres", "redis", "web", "worker-matching", "worker-default", "flower"):
        assert "healthcheck" in services[name], name
    assert set(compose["volumes"]) == {"pgdata", "redisdata"}


def _our_services(compose: dict) -> dict[str, dict]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("suanli-exchange") or "build" in svc
    }


def test_every_service_command_exists_in_the_project(compose):
    ours = _our_services(compose)
    assert set(ours) == {"migrate", "web", "worker-matching", "worker-default", "beat"}
    commands = get_commands()
    for name, svc in ours.items():
        script_in_image = svc["command"][0]
        assert script_in_image.startswith("/app/docker/"), name
        script = ROOT / script_in_image.removeprefix("/app/")
        assert script.is_file(), f"{name}: {script} missing"
        assert os.access(script, os.X_OK), f"{name}: {script} not executable"
        subprocess.run(["sh", "-n", str(script)], check=True)
        text = script.read_text()
        for command in re.findall(r"manage\.py (\w+)", text):
            assert command in commands, f"{name}: manage.py {command} does not exist"
        for path in re.findall(r"/app/(docker/[\w.\-]+)", text):
            assert (ROOT / path).is_file(), f"{name}: {path} missing"
        if "celery -A marketplace" in text:
            from marketplace.celery import app

            assert app.main == "marketplace"
        if "gunicorn marketplace.wsgi:application" in text:
            from marketplace import wsgi

            assert callable(wsgi.application)
    # the matching worker's mode is one the script knows
    worker_text = (DOCKER / "start-worker.sh").read_text()
    for name in ("worker-matching", "worker-default"):
        mode = ours[name]["command"][1]
        assert f"  {mode})" in worker_text


def test_third_party_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        if name in _our_services(compose):
            continue
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image}"


def test_dockerfile_is_multi_stage_non_root_without_build_tools():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) >= 2
    runtime = stages[-1]
    assert "COPY --from=build" in runtime
    user = re.findall(r"(?m)^USER (\S+)", runtime)
    assert user and not user[-1].startswith(("root", "0"))
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in runtime, tool
    cmd = re.search(r'(?m)^CMD \["([^"]+)"', runtime)
    assert cmd and (ROOT / cmd.group(1).removeprefix("/app/")).is_file()
    for copied in re.findall(r"(?m)^COPY (?!--from)(\S+) ", text):
        assert (ROOT / copied).exists() or copied == ".", copied


def test_env_example_names_every_variable_the_deployment_reads(compose):
    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"(?m)^([A-Z][A-Z0-9_]*)=", example))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (DOCKER / "compose.yaml").read_text()))
    assert used - names == set()
    # and the variables production settings require without a default
    prod = (ROOT / "marketplace" / "settings" / "production.py").read_text()
    required = set(re.findall(r'env(?:\.\w+)?\("([A-Z_]+)"\)', prod))
    assert required - names - {"DATABASE_URL", "REDIS_URL"} == set()  # those two compose sets
    for svc in _our_services(compose).values():
        assert {"DATABASE_URL", "REDIS_URL"} <= set(svc["environment"])


@pytest.mark.django_db
def test_worker_queues_command_lists_per_hub_queues(capsys):
    from marketplace.tasks import hub_queue

    a, b = HubFactory.create(code="aa-hub"), HubFactory.create(code="bb-hub")
    call_command("worker_queues")
    assert capsys.readouterr().out.strip() == f"{hub_queue(a.code)},{hub_queue(b.code)}"
    call_command("worker_queues", "--hubs", "bb-hub", "--with-default")
    assert capsys.readouterr().out.strip() == (
        f"{settings.CELERY_TASK_DEFAULT_QUEUE},{hub_queue(b.code)}"
    )
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="unknown hub codes: zz"):
        call_command("worker_queues", "--hubs", "bb-hub,zz")


def test_start_scripts_parse_their_arguments():
    result = subprocess.run(
        ["sh", str(DOCKER / "start-worker.sh"), "bogus"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
