"""``manage.py load_reference``: load the shipped reference data of PRODUCT.md §2.

Idempotent: rows are matched by their code (hub pairs for latencies) and only written when a
shipped value differs, so a second run creates nothing, changes nothing and keeps every id. A
reference site that reservations are at or come from keeps its hub, cluster, city and metro
area (``site_move_check``) whatever the shipped data says; the check locks a site it would
move until the load commits, so no reservation is made at or from it meanwhile.
Programme budget accounts are funded once (``vouchers.services.programme_fund``).
"""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import models, transaction

from ledger.services import programme_account
from marketplace import reference
from marketplace.errors import DomainError
from marketplace.models import Accelerator, Cluster, Hub, HubLatency, Site
from marketplace.services import SITE_PLACE_FIELDS, site_move_check
from vouchers.models import Programme
from vouchers.services import programme_fund


def _upsert(
    model: type[models.Model],
    lookup: dict[str, Any],
    values: dict[str, Any],
    counter: Counter[str],
    *,
    create_only: dict[str, Any] | None = None,
) -> models.Model:
    """``update_or_create`` that saves only when a value differs, and counts what it did.

    ``counter`` gets ``created``/``updated``/``unchanged``; ``create_only`` values are set on
    creation and never overwritten (operator edits to them survive a reload).
    """
    obj = model._default_manager.filter(**lookup).first()
    if obj is None:
        counter["created"] += 1
        return model._default_manager.create(**lookup, **values, **(create_only or {}))
    changed = [name for name, value in values.items() if getattr(obj, name) != value]
    if changed:
        for name in changed:
            setattr(obj, name, values[name])
        obj.save(update_fields=changed)
        counter["updated"] += 1
    else:
        counter["unchanged"] += 1
    return obj


def _set_m2m(manager: Any, objs: list[models.Model]) -> bool:
    """Replace a many-to-many set when it differs; ``True`` when it changed."""
    wanted = {o.pk for o in objs}
    if set(manager.values_list("pk", flat=True)) == wanted:
        return False
    manager.set(objs)
    return True


def load_reference(*, today: date | None = None) -> dict[str, Counter[str]]:
    """Load hubs, clusters, reference sites, hub latencies, accelerators and voucher programmes.

    One atomic block: all of it or none. ``today`` (Asia/Shanghai date) decides the
    ``effective_from`` of newly created programmes (1 January of that year). Returns a counter of
    ``created``/``updated``/``unchanged``/``skipped`` per kind, plus ``funded`` for programmes.
    """
    tz = ZoneInfo(getattr(settings, "PROGRAMME_TIME_ZONE", "Asia/Shanghai"))
    today = today or datetime.now(tz).date()
    stats: dict[str, Counter[str]] = {
        kind: Counter()
        for kind in ("hubs", "clusters", "sites", "latencies", "accelerators", "programmes")
    }
    with transaction.atomic():
        hubs: dict[str, Hub] = {}
        for row in reference.HUBS:
            values = {k: v for k, v in row.items() if k != "code"}
            hubs[row["code"]] = _upsert(
                Hub,
                {"code": row["code"]},
                values,  # type: ignore[assignment]
                stats["hubs"],
            )

        clusters: dict[str, Cluster] = {}
        for row in reference.CLUSTERS:
            values = {"name": row["name"], "name_zh": row["name_zh"], "hub_id": hubs[row["hub"]].pk}
            clusters[row["code"]] = _upsert(  # type: ignore[assignment]
                Cluster, {"code": row["code"]}, values, stats["clusters"]
            )

        sites: dict[str, Site] = {}
        for row in reference.SITES:
            existing = Site.objects.filter(code=row["code"]).first()
            if existing is not None and existing.provider_id is not None:
                # A provider registered this code first: never take its site away.
                stats["sites"]["skipped"] += 1
                sites[row["code"]] = existing
                continue
            cluster = clusters[row["cluster"]].pk if row["cluster"] else None
            values = {
                "name": row["name"],
                "city": row["city"],
                "metro_area": row["metro_area"],
                "hub_id": hubs[row["hub"]].pk,
                "cluster_id": cluster,
                "provider_id": None,
            }
            if existing is not None:
                # the form's field names (``hub``) against the row's columns (``hub_id``)
                moved = [
                    name
                    for name in SITE_PLACE_FIELDS
                    if getattr(existing, column := f"{name}_id" if name == "hub" else name)
                    != values[column]
                ]
                try:
                    site_move_check(existing, moved)
                except DomainError:
                    # Reservations are at or come from it: it keeps its place (and its
                    # cluster, of that hub) as the console and the admin would.
                    for name in ("hub_id", "cluster_id", "city", "metro_area"):
                        values.pop(name)
                    stats["sites"]["kept in place"] += 1
            sites[row["code"]] = _upsert(  # type: ignore[assignment]
                Site, {"code": row["code"]}, values, stats["sites"]
            )

        for a, b, ms in reference.HUB_LATENCY_MS:
            for src, dst in ((a, b), (b, a)):
                _upsert(
                    HubLatency,
                    {"from_hub_id": hubs[src].pk, "to_hub_id": hubs[dst].pk},
                    {"latency_ms": ms},
                    stats["latencies"],
                )

        for row in reference.ACCELERATORS:
            values = {
                "vendor": row["vendor"],
                "memory_gb": row["memory_gb"],
                "bf16_tflops": row["bf16_tflops"],
                "interconnect": row["interconnect"],
                "is_domestic": row["is_domestic"],
                "aliases": list(row["aliases"]),
                "note": row.get("note", ""),
            }
            _upsert(Accelerator, {"code": row["code"]}, values, stats["accelerators"])

        for row in reference.PROGRAMMES:
            scope = ("hubs", "clusters", "sites")
            values = {k: v for k, v in row.items() if k != "code" and k not in scope}
            counter: Counter[str] = Counter()
            programme: Programme = _upsert(  # type: ignore[assignment]
                Programme,
                {"code": row["code"]},
                values,
                counter,
                create_only={"effective_from": today.replace(month=1, day=1)},
            )
            scope_changed = any(
                [
                    _set_m2m(programme.hubs, [hubs[c] for c in row["hubs"]]),
                    _set_m2m(programme.clusters, [clusters[c] for c in row["clusters"]]),
                    _set_m2m(programme.sites, [sites[c] for c in row["sites"]]),
                ]
            )
            if scope_changed and counter["unchanged"]:
                counter = Counter(updated=1)
            stats["programmes"].update(counter)
            # Funding is once per programme account: a changed annual_budget later is not
            # re-funded here (that is an operator decision with its own ledger transaction).
            if not programme_account(programme.pk).entries.exists():
                programme_fund(programme)
                stats["programmes"]["funded"] += 1
    return stats


def summary(stats: dict[str, Counter[str]]) -> str:
    """One line: ``hubs 8 (created 8), clusters 10 (unchanged 10), …``."""
    parts = []
    for kind, counter in stats.items():
        total = sum(v for k, v in counter.items() if k != "funded")
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counter.items()) if v)
        parts.append(f"{kind} {total} ({detail})")
    return "load_reference: " + "; ".join(parts)


class Command(BaseCommand):
    help = (
        "Load the shipped reference data (hubs, clusters, sites, latencies, accelerators, "
        "voucher programmes). Safe to run again."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(summary(load_reference()))
