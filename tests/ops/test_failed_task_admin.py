"""Failed tasks are visible to operators in the admin, read-only."""

import pytest
from django.test import Client

from accounts.models import User
from ops.models import FailedTask

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw-Secret-123"))
    return client


def test_operator_sees_failed_tasks_and_cannot_change_them(operator_client):
    failed = FailedTask.objects.create(
        task_id="t-1",
        task_name="marketplace.tasks.settle_reservation",
        args=["r-1"],
        reason=FailedTask.Reason.RETRIES_EXHAUSTED,
        exception="OperationalError",
        message="connection refused",
        retries=5,
        request_id="req-9",
    )
    page = operator_client.get("/admin/ops/failedtask/")
    assert page.status_code == 200
    assert "marketplace.tasks.settle_reservation" in page.content.decode()
    detail = operator_client.get(f"/admin/ops/failedtask/{failed.pk}/change/")
    assert detail.status_code == 200
    assert "connection refused" in detail.content.decode()
    # read-only: no add, no delete, a POST changes nothing
    assert operator_client.get("/admin/ops/failedtask/add/").status_code == 403
    operator_client.post(f"/admin/ops/failedtask/{failed.pk}/delete/", {"post": "yes"})
    assert FailedTask.objects.filter(pk=failed.pk).exists()


def test_failed_task_is_recorded_once_per_task_id():
    from django.db import IntegrityError, transaction

    FailedTask.objects.create(task_id="t-2", task_name="x", reason=FailedTask.Reason.ERROR)
    with pytest.raises(IntegrityError), transaction.atomic():
        FailedTask.objects.create(task_id="t-2", task_name="x", reason=FailedTask.Reason.ERROR)
    assert FailedTask.objects.filter(task_id="t-2").count() == 1
