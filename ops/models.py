"""Rows operators look at: tasks that gave up."""

from django.db import models


class FailedTask(models.Model):
    """A Celery task that failed for good: a non-transient error, transient errors past the
    retry limit, or a message whose worker died too many times (a poison message). The task is
    not run again by itself; an operator reads the error here and re-drives the work (the
    periodic sweeps re-scan state, so most work comes back on its own once the cause is fixed).
    """

    class Reason(models.TextChoices):
        ERROR = "error", "non-transient error"
        RETRIES_EXHAUSTED = "retries_exhausted", "transient errors past the retry limit"
        WORKER_LOST = "worker_lost", "worker died on every delivery"

    task_id = models.CharField(max_length=64)
    task_name = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    exception = models.CharField(max_length=200, blank=True)
    message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    retries = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=64, blank=True)
    failed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-failed_at", "-id"]
        constraints = [
            # A redelivered copy of the same failing message is recorded once.
            models.UniqueConstraint(fields=["task_id"], name="failed_task_once_per_task_id"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.reason}"
