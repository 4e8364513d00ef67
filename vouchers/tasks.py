"""Voucher periodic tasks. Each is safe to run twice. (The daily lapse of expired vouchers is
``vouchers.tasks.lapse_expired_vouchers``, registered in ``marketplace.tasks``.)"""

from celery import shared_task

from .services import statements_issue_due


@shared_task(name="vouchers.tasks.issue_statements")
def issue_statements() -> int:
    """Daily: issue the reimbursement statements of every period that is over."""
    return statements_issue_due()
