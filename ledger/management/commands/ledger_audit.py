"""``manage.py ledger_audit``: check every ledger invariant; exit 1 on any breach."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.audit import ledger_audit


class Command(BaseCommand):
    help = "Check every ledger invariant (PRODUCT.md §5.2); exits non-zero on any breach."

    def handle(self, *args: Any, **options: Any) -> None:
        problems = ledger_audit()
        for line in problems:
            self.stderr.write(line)
        if problems:
            raise CommandError(f"ledger audit failed: {len(problems)} problem(s)")
        self.stdout.write(self.style.SUCCESS("ledger audit: clean"))
