"""``manage.py worker_queues [--hubs all|code,code] [--with-default]``: print the comma-separated
Celery queues a worker should consume — the per-hub matching queues of the named hubs (all hubs
by default), and the default queue with ``--with-default``. Used by ``docker/start-worker.sh``."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from marketplace.models import Hub
from marketplace.tasks import hub_queue


class Command(BaseCommand):
    help = "Print the Celery queues for a worker: per-hub matching queues (and the default one)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hubs", default="all", help="'all' or comma-separated hub codes")
        parser.add_argument("--with-default", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        hubs = Hub.objects.order_by("code")
        wanted = options["hubs"].strip()
        if wanted and wanted != "all":
            codes = [c.strip() for c in wanted.split(",") if c.strip()]
            hubs = hubs.filter(code__in=codes)
            missing = sorted(set(codes) - set(hubs.values_list("code", flat=True)))
            if missing:
                raise CommandError(f"unknown hub codes: {', '.join(missing)}")
        queues = [hub_queue(code) for code in hubs.values_list("code", flat=True)]
        if options["with_default"]:
            queues.insert(0, settings.CELERY_TASK_DEFAULT_QUEUE)
        if not queues:
            raise CommandError("no queues: load the reference data (manage.py load_reference)")
        self.stdout.write(",".join(queues))
