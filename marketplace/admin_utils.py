"""Helpers shared by the operator admin and the provider console (PRODUCT.md §6.3, §6.4).

Admin actions call the same services as the API and never set a status themselves; a rule that
refuses (``DomainError``) becomes an error message on the page, not a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from django import forms
from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from marketplace.errors import DomainError

M = TypeVar("M", bound=Model)


def run_service_action(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[M],
    service: Callable[[M], object],
    verb: str,
) -> int:
    """Call ``service(obj)`` for each selected object, in primary-key order (the lock order).

    Each call is its own transaction (the services open it). A ``DomainError`` is reported per
    object with level ERROR and the rest still run. Returns how many succeeded, and tells the
    user that count with level SUCCESS.
    """
    done = 0
    for obj in queryset.order_by("pk"):
        try:
            service(obj)
        except DomainError as exc:
            modeladmin.message_user(
                request, f"{obj}: not {verb}: {exc.message}", level=messages.ERROR
            )
        else:
            done += 1
    if done:
        modeladmin.message_user(request, f"{done} {verb}.", level=messages.SUCCESS)
    return done


class ReadOnlyAdminMixin:
    """View-only admin: no add, change or delete (ledger rows, audit rows, service-made rows)."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SiteMoveCheckedForm(forms.ModelForm):
    """A site's change form (operator admin, provider console) that refuses moving a site
    reservations depend on: ``clean`` runs ``services.site_move_check`` on the changed fields
    and shows a refusal on the field it names (``web.errors.domain_message``: the service's
    words in English, translated otherwise). A move locks the site row there; the admin's
    ``changeform_view`` (the operator admin and the console are both ``ModelAdmin``) runs the
    check and the save in one transaction, which keeps the lock until the save commits."""

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        if self.instance.pk is not None:
            from marketplace.services import site_move_check
            from web.errors import domain_message

            try:
                site_move_check(self.instance, self.changed_data)
            except DomainError as exc:
                self.add_error(exc.field, domain_message(exc))
        return data
