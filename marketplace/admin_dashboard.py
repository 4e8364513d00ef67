"""Operator dashboard in the Django admin (PRODUCT.md §6.4): programme budgets, vouchers by
status, GPU-hours matched per hub per day, the inter-hub trade matrix and unserved demand by
reason, with server-rendered SVG charts (no CDN, works offline). Staff only (``admin_view``).
"""

from datetime import timedelta
from decimal import Decimal

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from web import selectors
from web.charts import bar_chart
from web.labels import label

DAYS = 14

# The admin index links to the dashboard.
admin.site.index_template = "admin/operator_index.html"


def _dashboard(request: HttpRequest) -> HttpResponse:
    budgets = selectors.programme_budgets()
    since = timezone.now() - timedelta(days=DAYS)
    days, hubs, cells = selectors.gpu_hours_by_hub_day(since=since)
    hub_chart = bar_chart(
        _("GPU-hours matched per day"),
        [d[5:] for d in days],
        [
            (hub, f"s{i % 8}", [Decimal(cells.get((d, hub), 0)) for d in days])
            for i, hub in enumerate(hubs)
        ],
        unit=_("GPU-hours"),
    )
    budget_chart = bar_chart(
        _("Programme budgets"),
        [b.programme.code for b in budgets],
        [
            (_("redeemed"), "s0", [b.redeemed for b in budgets]),
            (_("held"), "s1", [b.held for b in budgets]),
            (_("left"), "s2", [b.left for b in budgets]),
        ],
        unit="CNY",
    )
    trade_hubs, trade_cells = selectors.trade_matrix()
    matrix = [
        (exp, [trade_cells.get((exp.pk, imp.pk)) for imp in trade_hubs]) for exp in trade_hubs
    ]
    unserved = [(code, label(code), n) for code, n in selectors.unserved_by_reason()]
    context = {
        **admin.site.each_context(request),
        "title": _("Operator dashboard"),
        "budgets": budgets,
        "budget_chart": budget_chart,
        "vouchers": [(label(s), n, v) for s, n, v in selectors.vouchers_by_status()],
        "days": days,
        "hubs": hubs,
        "hub_rows": [(d, [cells.get((d, h), 0) for h in hubs]) for d in days],
        "hub_chart": hub_chart,
        "trade_hubs": trade_hubs,
        "matrix": matrix,
        "unserved": unserved,
        "window_days": DAYS,
        "open_dispute_count": selectors.open_disputes().count(),
        "open_disputes": selectors.open_disputes()[:10],
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


operator_dashboard = admin.site.admin_view(_dashboard)
