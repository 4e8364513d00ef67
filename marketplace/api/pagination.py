"""Page-number pagination that refuses bad page parameters instead of guessing, and reads a
page and its total in one query."""

from typing import Any

from django.core.paginator import Page
from django.db.models import Count, QuerySet, Window
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

# The annotation carrying the total row count on each row of a page (removed before use).
_TOTAL = "_page_total"
# Any page starting past this many rows is past the end of any table (and OFFSET is a bigint).
_MAX_OFFSET = 2**62


def _whole_number(raw: str) -> int | None:
    """``raw`` as a non-negative integer in ASCII digits, or ``None`` (``"²"`` is a digit to
    ``str.isdigit`` but not to ``int``)."""
    return int(raw) if raw.isascii() and raw.isdigit() else None


class StrictPageNumberPagination(PageNumberPagination):
    """``?page=`` (≥ 1) and ``?page_size=`` (1–200, default 50). Bad values are a 400 naming the
    parameter; a page past the end is a 404 (DRF's behaviour).

    A queryset page is read with its total in the same query (``COUNT(*) OVER ()`` on the
    page's rows, so ``count`` costs no query of its own); a page past the end comes back empty
    and is then a 404 without a count. Querysets with ``DISTINCT`` or a set operation (where a
    window would count before de-duplication) and plain lists take DRF's way (a ``COUNT``
    query, then the page)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        size = _whole_number(raw)
        if size is None or not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {"page_size": [f"must be an integer between 1 and {self.max_page_size}"]}
            )
        return size

    def paginate_queryset(self, queryset, request, view=None):  # type: ignore[no-untyped-def]
        raw = request.query_params.get(self.page_query_param)
        number = 1 if raw is None else _whole_number(raw)
        if number is None or number < 1:
            raise ValidationError({"page": ["must be a positive integer"]})
        if (
            not isinstance(queryset, QuerySet)
            or queryset.query.distinct
            or queryset.query.combinator
        ):
            return super().paginate_queryset(queryset, request, view)
        self.request = request
        size = self.get_page_size(request)
        offset = (number - 1) * size
        if offset > _MAX_OFFSET:
            raise NotFound(self.invalid_page_message)
        rows = list(queryset.annotate(**{_TOTAL: Window(Count("*"))})[offset : offset + size])
        if not rows and number > 1:
            raise NotFound(self.invalid_page_message)
        total = _pop_total(rows[0]) if rows else 0
        for row in rows[1:]:
            _pop_total(row)
        paginator = self.django_paginator_class(queryset, size)
        paginator.__dict__["count"] = total  # the cached_property, known from the page
        self.page = Page(rows, number, paginator)
        if paginator.num_pages > 1 and self.template is not None:
            self.display_page_controls = True
        return rows

    def get_schema_operation_parameters(self, view):  # type: ignore[no-untyped-def]
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                }
        return parameters


def _pop_total(row: Any) -> int:
    """Take the total off one row of a page (a ``values()`` dict or a model instance)."""
    store = row if isinstance(row, dict) else row.__dict__
    return int(store.pop(_TOTAL))
