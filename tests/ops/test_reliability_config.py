"""The at-least-once configuration holds for every task of the project, including those with a
base class of their own (match_hub's per-hub routing)."""

from django.conf import settings
from django.db import IntegrityError, OperationalError

from marketplace import celery_app
from ops.tasks import TRANSIENT_ERRORS, ReliableTask

PROJECT = ("marketplace.", "vouchers.", "ledger.", "accounts.")


def _project_tasks() -> dict:
    celery_app.loader.import_default_modules()
    return {n: t for n, t in celery_app.tasks.items() if n.startswith(PROJECT)}


def test_every_project_task_is_reliable():
    tasks = _project_tasks()
    assert "marketplace.tasks.match_hub" in tasks
    for name, task in tasks.items():
        assert isinstance(task, ReliableTask), name
        assert task.acks_late and task.reject_on_worker_lost, name
        assert task.autoretry_for == TRANSIENT_ERRORS, name
        assert task.max_retries == settings.CELERY_TASK_MAX_RETRIES, name


def test_only_transient_errors_are_retried():
    assert OperationalError in TRANSIENT_ERRORS
    assert not any(issubclass(IntegrityError, e) for e in TRANSIENT_ERRORS)
    assert not any(issubclass(ValueError, e) for e in TRANSIENT_ERRORS)


def test_visibility_timeout_exceeds_time_limit_and_retry_countdowns():
    conf = celery_app.conf
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert conf.task_soft_time_limit < conf.task_time_limit < visibility
    assert visibility > settings.CELERY_TASK_RETRY_BACKOFF_MAX
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_late and conf.task_reject_on_worker_lost


def test_beat_is_single_and_every_periodic_task_exists():
    assert celery_app.conf.beat_scheduler == "ops.beat:SingleBeatScheduler"
    tasks = _project_tasks()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in tasks, entry["task"]
    sweep = settings.CELERY_BEAT_SCHEDULE["matching-cycle"]
    assert (sweep["task"], sweep["schedule"]) == (
        "marketplace.tasks.match_all_hubs",
        settings.MATCH_INTERVAL,
    )
