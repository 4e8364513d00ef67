"""Operator dashboard in the Django admin (PRODUCT.md §6.4): programme budgets, vouchers by
status, GPU-hours matched per hub per day, the inter-hub trade matrix and unserved demand by
reason, with server-rendered SVG charts (no CDN, works offline). Staff only (``admin_view``);
each section only for staff with the view permission of what it summarises (``SECTIONS``).
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


# Each section shows only to staff holding the view permission of what it summarises, the
# permission its admin list asks for (so the matrix here and the admin's matrix page and the
# API's matrix follow one rule).
SECTIONS = {
    "budgets": "vouchers.view_programme",
    "vouchers": "vouchers.view_voucher",
    "hub_days": "marketplace.view_reservation",
    "trades": "marketplace.view_interhubtrade",
    "unserved": "marketplace.view_demand",
    "disputes": "marketplace.view_dispute",
}


def _dashboard(request: HttpRequest) -> HttpResponse:
    show = {name: request.user.has_perm(perm) for name, perm in SECTIONS.items()}
    context = {
        **admin.site.each_context(request),
        "title": _("Operator dashboard"),
        "show": show,
        "show_any": any(show.values()),
        "window_days": DAYS,
    }
    if show["budgets"]:
        budgets = selectors.programme_budgets()
        context["budgets"] = budgets
        context["budget_chart"] = bar_chart(
            _("Programme budgets"),
            [b.programme.code for b in budgets],
            [
                (_("redeemed"), "s0", [b.redeemed for b in budgets]),
                (_("held"), "s1", [b.held for b in budgets]),
                (_("left"), "s2", [b.left for b in budgets]),
            ],
            unit="CNY",
        )
    if show["vouchers"]:
        context["vouchers"] = [(label(s), n, v) for s, n, v in selectors.vouchers_by_status()]
    if show["hub_days"]:
        since = timezone.now() - timedelta(days=DAYS)
        days, hubs, cells = selectors.gpu_hours_by_hub_day(since=since)
        context["hub_chart"] = bar_chart(
            _("GPU-hours matched per day"),
            [d[5:] for d in days],
            [
                (hub, f"s{i % 8}", [Decimal(cells.get((d, hub), 0)) for d in days])
                for i, hub in enumerate(hubs)
            ],
            unit=_("GPU-hours"),
        )
        context["hubs"] = hubs
        context["hub_rows"] = [(d, [cells.get((d, h), 0) for h in hubs]) for d in days]
    if show["trades"]:
        trade_hubs, trade_cells = selectors.trade_matrix()
        context["trade_hubs"] = trade_hubs
        context["matrix"] = [
            (exp, [trade_cells.get((exp.pk, imp.pk)) for imp in trade_hubs]) for exp in trade_hubs
        ]
    if show["unserved"]:
        context["unserved"] = [(code, label(code), n) for code, n in selectors.unserved_by_reason()]
    if show["disputes"]:
        context["open_dispute_count"] = selectors.open_disputes().count()
        context["open_disputes"] = selectors.open_disputes()[:10]
    return TemplateResponse(request, "admin/dashboard.html", context)


operator_dashboard = admin.site.admin_view(_dashboard)
