"""Whole-hour UTC arithmetic for reservation windows (half-open ``[start, end)``)."""

from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def hour_index(at: datetime) -> int:
    """Whole hours since the Unix epoch, rounding down."""
    return int((at - EPOCH).total_seconds() // 3600)


def hour_index_ceil(at: datetime) -> int:
    """Whole hours since the Unix epoch, rounding up."""
    seconds = (at - EPOCH).total_seconds()
    return int(-(-seconds // 3600))


def from_hour_index(index: int) -> datetime:
    return EPOCH + index * HOUR


def is_whole_hour(at: datetime) -> bool:
    return at.minute == 0 and at.second == 0 and at.microsecond == 0
