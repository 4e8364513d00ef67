"""The Celery application. Broker: Redis (``REDIS_URL``); without it tasks run in-process."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings.local")

# Every task gets the reliable base class (transient-error retries, failed-task records).
app = Celery("marketplace", task_cls="ops.tasks:ReliableTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
