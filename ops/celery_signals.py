"""Carry the request id from the code that enqueues a task into the task's logs.

Publish side: the current request id goes into the message headers (``request_id``). Worker side:
the header is put back into the context variable for the task's run, with the task id.
"""

from typing import Any

from celery import signals

from .context import request_id_var, task_id_var


@signals.before_task_publish.connect
def _stamp_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    rid = request_id_var.get()
    if headers is not None and rid and not headers.get("request_id"):
        headers["request_id"] = rid


@signals.task_prerun.connect
def _enter_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is None or task.request.is_eager:
        return  # in-process run: the caller's context already holds the request id
    request_id_var.set(getattr(task.request, "request_id", None) or "")
    task_id_var.set(task_id or "")


@signals.task_postrun.connect
def _leave_task(task: Any = None, **_: Any) -> None:
    if task is None or task.request.is_eager:
        return
    request_id_var.set("")
    task_id_var.set("")
