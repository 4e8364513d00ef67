"""Operator admin: failed tasks, read-only."""

from django.contrib import admin

from marketplace.admin_utils import ReadOnlyAdminMixin

from .models import FailedTask


@admin.register(FailedTask)
class FailedTaskAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("failed_at", "task_name", "reason", "exception", "retries", "task_id")
    list_filter = ("reason", "task_name")
    search_fields = ("task_id", "task_name", "message", "request_id")
