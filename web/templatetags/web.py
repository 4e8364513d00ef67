"""Template filters of the web UI: ¥ amounts, Asia/Shanghai times, translated status labels,
server-rendered SVG charts."""

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from django import template
from django.utils import timezone

from web import charts
from web.labels import label

register = template.Library()

SHANGHAI = ZoneInfo("Asia/Shanghai")


@register.filter
def yuan(value: Any) -> str:
    """``Decimal("1234567.5")`` → ``"¥1,234,567.50"``; negatives as ``"−¥12.00"``; blank for
    ``None``. Always two places (fen), never a float."""
    if value is None or value == "":
        return ""
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return str(value)
    sign = "−" if amount < 0 else ""
    return f"{sign}¥{abs(amount):,.2f}"


@register.filter
def price(value: Any) -> str:
    """A price per GPU-hour, up to 4 places, with thousands separators: ``"¥12.5000"``."""
    if value is None or value == "":
        return ""
    amount = Decimal(str(value))
    return f"¥{amount:,.4f}"


@register.filter
def shanghai(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC instant shown in Asia/Shanghai (``"2026-05-01 08:00"``)."""
    if value is None:
        return ""
    return timezone.localtime(value, SHANGHAI).strftime(fmt)


@register.filter
def status_label(value: str) -> str:
    """A status, tier or reason code in the current language."""
    return str(label(value))


@register.inclusion_tag("web/chart.html")
def bar_chart(chart: charts.BarChart) -> dict[str, Any]:
    return {"chart": chart}
