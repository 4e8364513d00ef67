"""``manage.py demo``: the marketplace on the real Alibaba trace, end to end (PRODUCT.md §8)."""

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.models import Count, Sum
from django.utils import timezone
from tqdm import tqdm

from accounts.credit_code import make_credit_code
from accounts.models import Organisation, User
from accounts.services import organisation_register, organisation_set_status
from ledger.audit import ledger_audit
from marketplace import demo
from marketplace.errors import DomainError
from marketplace.models import (
    Accelerator,
    Demand,
    InterHubTrade,
    MatchingCycle,
    Offer,
    Reservation,
    Site,
)
from marketplace.money import quantize_money
from marketplace.services import (
    demand_create,
    offer_create,
    reservation_report_usage,
    wallet_deposit,
)
from marketplace.tasks import (
    advance_reservations,
    expire_demands,
    expire_unaccepted,
    match_all_hubs,
    settle_completed,
)
from vouchers.models import CatalogueEntry, Programme, ReimbursementClaim, Voucher
from vouchers.services import (
    site_in_region,
    voucher_application_approve,
    voucher_application_submit,
)
from web.selectors import inter_hub_trade_matrix

DEMO_PASSWORD = "suanli-demo-2026"  # noqa: S105 — printed for the local demo on purpose
SLOT_HOURS = 4  # simulated hours between matching cycles


class Command(BaseCommand):
    help = "Run the marketplace on the real Alibaba GPU trace and print a report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--demands",
            type=int,
            default=2000,
            help="GPU tasks of the trace to replay (default 2000)",
        )
        parser.add_argument(
            "--fresh",
            action="store_true",
            help="empty the database first (SQLite demo database only)",
        )
        parser.add_argument("--report", default="demo-report.json")

    def handle(self, *args: Any, **options: Any) -> None:
        began = time.perf_counter()
        if options["fresh"]:
            if connection.vendor != "sqlite":
                raise CommandError("--fresh only empties the embedded SQLite database")
            call_command("flush", interactive=False, verbosity=0)
        call_command("migrate", verbosity=0)
        call_command("load_reference", verbosity=0)
        if Organisation.objects.filter(name=demo.PROVIDERS[0][1]).exists():
            raise CommandError("demo data already present: run with --fresh")
        self.stdout.write("Building the market from the Alibaba GPU fleet…")
        calendar_start = (timezone.now() + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        providers = self._providers(calendar_start)
        smes = self._smes(providers)
        self._replay(smes, calendar_start, options["demands"])
        report = self._report(began)
        Path(options["report"]).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        self._print(report, options["report"])
        if not report["ledger_audit_ok"]:
            raise CommandError("ledger audit failed")

    # --- building -----------------------------------------------------------------------

    def _site_in(self, city: str) -> Site:
        site = Site.objects.filter(provider=None, city=city).order_by("code").first()
        if site is None:
            raise CommandError(f"reference data has no site in {city}")
        return site

    def _org(self, username: str, name: str, city: str, kind: str, seq: int) -> Organisation:
        user = User.objects.create_user(username=username, password=DEMO_PASSWORD)
        home = self._site_in(city)
        code = make_credit_code(f"91{demo.DIVISION[city]}MA{seq:07d}")
        org = organisation_register(
            user=user, name=name, credit_code=code, kind=kind, home_site=home
        )
        return organisation_set_status(organisation_id=org.pk, status=Organisation.Status.APPROVED)

    def _providers(self, calendar_start: datetime) -> list[Organisation]:
        prices = demo.reference_prices()
        providers = []
        for i, (city, name, _factor, _models) in enumerate(demo.PROVIDERS):
            org = self._org(
                "provider-demo" if i == 0 else f"provider-{i}",
                name,
                city,
                Organisation.Kind.PROVIDER,
                100 + i,
            )
            ref = self._site_in(city)
            Site.objects.create(
                code=f"{ref.code}-p{i}",
                name=f"{name} DC",
                city=ref.city,
                metro_area=ref.metro_area,
                hub=ref.hub,
                cluster=ref.cluster,
                provider=org,
            )
            providers.append(org)
        catalogue = {a.code: a for a in Accelerator.objects.all()}
        until = calendar_start + timedelta(days=demo.OFFER_DAYS)
        for group in demo.fleet_offers():
            org = providers[group.provider_index]
            factor = demo.PROVIDERS[group.provider_index][2]
            offer_create(
                provider=org,
                site=org.sites.get(),
                accelerator=catalogue[group.model],
                gpu_count=group.gpu_count,
                gpus_per_node=group.gpus_per_node,
                available_from=calendar_start,
                available_until=until,
                price_per_gpu_hour=(prices[group.model] * factor).quantize(Decimal("0.0001")),
                min_duration_hours=1,
            )
        year = timezone.now().year
        for programme in Programme.objects.all():
            for org in providers:
                if site_in_region(programme, org.sites.get()):
                    for y in (year, year + 1):
                        CatalogueEntry.objects.get_or_create(
                            programme=programme,
                            provider=org,
                            year=y,
                            defaults={"status": CatalogueEntry.Status.APPROVED},
                        )
        return providers

    def _smes(self, providers: list[Organisation]) -> list[Organisation]:
        smes = []
        for i, (city, name, programme_code, face) in enumerate(demo.SMES):
            org = self._org(
                "sme-demo" if i == 0 else f"sme-{i}", name, city, Organisation.Kind.SME, 200 + i
            )
            # one buyer is short of cash, so "funds short" shows in the report
            wallet_deposit(
                organisation=org,
                amount=Decimal("3000.00") if i == 7 else Decimal("2000000.00"),
                memo="demo funding",
            )
            programme = Programme.objects.filter(code=programme_code).first()
            if programme is not None and face > 0:
                application = voucher_application_submit(
                    buyer=org, programme=programme, amount=face, purpose="demo"
                )
                voucher_application_approve(application_id=application.pk)
            smes.append(org)
        if not User.objects.filter(username="operator").exists():
            User.objects.create_superuser("operator", "operator@example.invalid", DEMO_PASSWORD)
        return smes

    # --- replay -------------------------------------------------------------------------

    def _replay(self, smes: list[Organisation], calendar_start: datetime, n: int) -> None:
        prices = demo.reference_prices()
        vouchers = {v.owner_id: v for v in Voucher.objects.all()}
        tasks = demo.trace_demands(n, calendar_start)
        slots: dict[int, list[demo.TraceDemand]] = {}
        for task in tasks:
            slot = int((task.arrival - calendar_start).total_seconds() // 3600) // SLOT_HOURS
            slots.setdefault(slot, []).append(task)
        last_slot = max(slots) if slots else 0
        rejected: Counter[str] = Counter()
        with tqdm(total=len(tasks), desc="replaying trace", unit="demand") as bar:
            for slot in range(last_slot + 1):
                cycle_at = calendar_start + timedelta(hours=(slot + 1) * SLOT_HOURS)
                for task in slots.get(slot, []):
                    h = demo.stable_hash(task.name)
                    buyer = smes[h % len(smes)]
                    start = task.arrival.replace(minute=0, second=0, microsecond=0)
                    models = task.models or tuple(demo.PRICE_ROWS)
                    limit_price = max(prices[m] for m in models) * demo.MARKUPS[(h >> 8) % 4]
                    try:
                        demand_create(
                            buyer=buyer,
                            accelerators=task.models,
                            voucher=vouchers.get(buyer.pk),
                            gpu_count=task.gpu_count,
                            duration_hours=task.duration_hours,
                            earliest_start=start,
                            latest_end=start
                            + timedelta(hours=task.duration_hours + demo.SLACK_HOURS),
                            max_price_per_gpu_hour=limit_price.quantize(Decimal("0.0001")),
                            locality_limit=demo.LIMITS[(h >> 16) % len(demo.LIMITS)],
                            enqueue_matching=False,
                        )
                    except DomainError as exc:
                        rejected[exc.code] += 1
                    bar.update(1)
                self._tick(cycle_at)
        end = calendar_start + timedelta(days=demo.OFFER_DAYS + 1)
        self._tick(end)
        self._tick(end + timedelta(hours=demo.MAX_HOURS + demo.SLACK_HOURS))
        self.rejected = dict(rejected)

    def _tick(self, at: datetime) -> None:
        """One simulated beat at ``at``: match every hub through Celery, then move
        reservations on (a few providers report partial delivery), settle, expire."""
        iso = at.isoformat()
        expire_demands.delay(iso)
        match_all_hubs.delay(iso)
        expire_unaccepted.delay(iso)
        advance_reservations.delay(iso)
        # Every 25th active reservation in the order its demand and offer were posted (one by
        # one, so their times differ; ids are random, and a batch's reservations share a time),
        # so the same trace gives the same report run after run.
        for i, r in enumerate(
            Reservation.objects.filter(status=Reservation.Status.ACTIVE)
            .select_related("provider")
            .order_by("demand__created_at", "offer__created_at", "start")
        ):
            if i % 25 == 0 and r.gpu_hours > 1:
                reservation_report_usage(
                    reservation_id=r.pk, provider=r.provider, delivered_gpu_hours=r.gpu_hours // 2
                )
        settle_completed.delay()

    # --- report -------------------------------------------------------------------------

    def _report(self, began: float) -> dict[str, Any]:
        settled = Reservation.objects.filter(status=Reservation.Status.SETTLED)
        billed = settled.aggregate(bill=Sum("bill"))
        from ledger.models import Entry, Transaction

        refunds = quantize_money(
            Entry.objects.filter(
                transaction__reason=Transaction.Reason.SETTLEMENT,
                account__kind__in=["wallet", "voucher"],
            ).aggregate(s=Sum("amount"))["s"]
            or Decimal(0)
        )
        claims = quantize_money(
            ReimbursementClaim.objects.aggregate(s=Sum("amount"))["s"] or Decimal(0)
        )
        charged = quantize_money(billed["bill"] or Decimal(0)) - refunds
        voucher_paid = claims
        cash_paid = charged - voucher_paid
        unserved = Counter(
            Demand.objects.exclude(
                status__in=[Demand.Status.RESERVED, Demand.Status.MATCHED]
            ).values_list("unmatched_reason", flat=True)
        )
        # What was traded, as the API, the admin and the dashboard count it
        # (``inter_hub_trade_matrix``: cancelled, expired and failed reservations left out,
        # the rest as delivered, less refunds after settlement).
        matrix = inter_hub_trade_matrix()
        budget = []
        for p in Programme.objects.order_by("code"):
            issued = quantize_money(p.vouchers.aggregate(s=Sum("face_value"))["s"] or Decimal(0))
            redeemed = quantize_money(p.claims.aggregate(s=Sum("amount"))["s"] or Decimal(0))
            budget.append(
                {
                    "programme": p.code,
                    "issued": str(issued),
                    "redeemed": str(redeemed),
                    "budget_left": str(p.accounts.get(kind="programme").balance),
                }
            )
        cycles = MatchingCycle.objects.aggregate(n=Count("id"), s=Sum("seconds"))
        gpu_hours = sum(
            r.delivered_gpu_hours if r.delivered_gpu_hours is not None else r.gpu_hours
            for r in settled.only("start", "end", "gpu_count", "delivered_gpu_hours")
        )
        problems = ledger_audit()
        posted = Demand.objects.count()
        served = Demand.objects.filter(status=Demand.Status.RESERVED).count()
        return {
            "demands_posted": posted,
            "demands_rejected_at_entry": getattr(self, "rejected", {}),
            "demands_served": served,
            "demands_unserved": posted - served,
            "unserved_by_reason": dict(sorted(unserved.items())),
            "offers": Offer.objects.count(),
            "gpus_offered": Offer.objects.aggregate(s=Sum("gpu_count"))["s"],
            "reservations_settled": settled.count(),
            "gpu_hours_served": gpu_hours,
            "bill_total": str(charged),
            "voucher_total": str(voucher_paid),
            "cash_total": str(cash_paid),
            "refunded_undelivered": str(refunds),
            "budget_by_programme": budget,
            "inter_hub_trades_booked": InterHubTrade.objects.count(),
            "inter_hub_trades": matrix["trades"],
            "inter_hub_matrix": [
                {
                    "exporting": c["exporting_hub"],
                    "importing": c["importing_hub"],
                    "trades": c["trades"],
                    "gpu_hours": c["gpu_hours"],
                    "value": str(c["value"]),
                }
                for c in matrix["cells"]
            ],
            "matching_cycles": cycles["n"],
            "seconds_per_cycle": round(float(cycles["s"] or 0.0) / max(1, cycles["n"] or 1), 4),
            "ledger_audit_ok": not problems,
            "ledger_audit_problems": problems[:20],
            "usd_cny_rate": str(demo.USD_CNY),
            "database": connection.vendor,
            "celery_eager": bool(settings.CELERY_TASK_ALWAYS_EAGER),
            "seconds_total": round(time.perf_counter() - began, 1),
            "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _print(self, r: dict[str, Any], path: str) -> None:
        w = self.stdout.write
        w("")
        w("Suanli Exchange — demo on the Alibaba GPU trace")
        w(
            f"  demands posted        {r['demands_posted']:>10}   (refused at entry: "
            f"{r['demands_rejected_at_entry'] or 'none'})"
        )
        w(f"  demands served        {r['demands_served']:>10}")
        w(f"  demands unserved      {r['demands_unserved']:>10}   {r['unserved_by_reason']}")
        w(f"  offers / GPUs         {r['offers']:>10} / {r['gpus_offered']}")
        w(f"  GPU-hours served      {r['gpu_hours_served']:>10}")
        w(f"  bill total (CNY)      {r['bill_total']:>14}")
        w(f"    voucher part        {r['voucher_total']:>14}")
        w(f"    cash part           {r['cash_total']:>14}")
        w(f"    refunded undelivered{r['refunded_undelivered']:>14}")
        for b in r["budget_by_programme"]:
            w(
                f"  programme {b['programme']:<14} issued {b['issued']:>12}  redeemed "
                f"{b['redeemed']:>11}  budget left {b['budget_left']}"
            )
        w(
            f"  inter-hub trades      {r['inter_hub_trades']:>10}   "
            f"({r['inter_hub_trades_booked']} booked; cancelled, expired, failed not counted)"
        )
        for t in r["inter_hub_matrix"]:
            w(
                f"    {t['exporting']:>22} → {t['importing']:<22} {t['trades']:>4} trades "
                f"{t['gpu_hours']:>6} GPU-h  ¥{t['value']}"
            )
        w(
            f"  matching cycles       {r['matching_cycles']:>10}   "
            f"{r['seconds_per_cycle']} s per cycle"
        )
        w(f"  ledger audit          {'clean' if r['ledger_audit_ok'] else 'FAILED'}")
        w(f"  took                  {r['seconds_total']} s   (report: {path})")
        w("")
        w(
            f"Log in at http://127.0.0.1:8000/ — SME: sme-demo / {DEMO_PASSWORD}; provider "
            f"console /console/: provider-demo / {DEMO_PASSWORD}; operator /admin/: operator / "
            f"{DEMO_PASSWORD}"
        )
