"""Ledger periodic tasks. Each is safe to run twice."""

from celery import shared_task

from .services import idempotency_keys_prune


@shared_task(name="ledger.tasks.prune_idempotency_keys")
def prune_idempotency_keys() -> int:
    """Daily: forget ``Idempotency-Key`` responses older than ``IDEMPOTENCY_KEY_TTL``."""
    return idempotency_keys_prune()
