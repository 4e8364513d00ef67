"""Input fields and parsers that refuse what DRF would otherwise guess at."""

from datetime import datetime
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import serializers
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class AwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 instant with an explicit offset (``Z`` or ``+08:00``), returned in UTC.

    A naive time is refused (code ``naive_datetime``) instead of being read as UTC silently.
    """

    default_error_messages = {
        **serializers.DateTimeField.default_error_messages,
        "naive_datetime": "must include a time zone offset, e.g. 2026-12-01T08:00:00Z",
    }

    def to_internal_value(self, value: Any) -> datetime:
        if isinstance(value, str):
            if not value.isascii():  # Django's parser reads full-width and other digits
                self.fail("invalid", format="ISO 8601 with an offset, e.g. 2026-12-01T08:00:00Z")
            parsed = parse_iso(value)
            if parsed is not None and parsed.tzinfo is None:
                self.fail("naive_datetime")
        return super().to_internal_value(value)


def parse_iso(raw: str) -> datetime | None:
    """``parse_datetime``, but an impossible date (30 February, month 13) is ``None`` (left to
    the field's own "invalid" error) instead of a ``ValueError`` that would be a 500, and so
    is text with other than ASCII characters (``datetime.fromisoformat``, Django's fallback,
    reads full-width and other Unicode digits)."""
    if not raw.isascii():
        return None
    try:
        return parse_datetime(raw.strip())
    except ValueError:
        return None


def is_naive_iso(raw: str | None) -> bool:
    """Whether a query-string time parses as ISO 8601 but has no offset."""
    if not raw:
        return False
    parsed = parse_iso(raw)
    return parsed is not None and parsed.tzinfo is None


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, also refusing bodies nested too deeply for Python's recursion limit
    (a 400 ``parse_error`` instead of a 500)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
