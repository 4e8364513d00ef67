"""One whole matching cycle on PostgreSQL writing N reservations with their payment holds and
ledger entries (the bulk write path, ``marketplace.matching.bulk``), next to pgbench TPC-B.

Usage: ``make bench-cycle`` (``CYCLE_N=10000``) or ``python bench/bench_cycle.py --n 2000``.
Creates its own databases ``suanli_bench_cycle`` and ``suanli_pgbench_cycle`` on the local
server and drops them at the end. Prints reservations/s over the write phase, DB time (sum of
every statement's round trip, measured by a connection execute wrapper) and pgbench's TPC-B tps
with one client, measured in the same run. Target: 10k reservations in < 2 s of DB time.
"""

import argparse
import os
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_holds  # noqa: E402

BENCH_DB = "suanli_bench_cycle"
bench_holds.BENCH_DB = BENCH_DB
bench_holds.PGBENCH_DB = "suanli_pgbench_cycle"


class DbTimer:
    """Execute wrapper adding up the wall time of every statement (DB time incl. round trip)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.statements = 0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - t0
            self.statements += 1


def build(n: int) -> Any:
    """One hub, N/4 offers of 8 GPUs, N buyers' demands of 2 GPUs × 4 h (every demand fits),
    one buyer in ten with a voucher."""
    from django.utils import timezone

    from accounts.models import Organisation
    from marketplace.models import Accelerator, Demand, Hub, Offer, Site
    from marketplace.services import wallet_deposit
    from marketplace.timeutil import from_hour_index, hour_index_ceil
    from vouchers.models import CatalogueEntry, Programme
    from vouchers.services import programme_fund, voucher_issue

    hub = Hub.objects.create(code="chengdu-chongqing", name="Chengdu-Chongqing")
    site = Site.objects.create(
        code="chengdu-tianfu", name="Tianfu DC", city="Chengdu", metro_area="Chengdu", hub=hub
    )
    acc = Accelerator.objects.create(
        code="A100-80G", vendor="NVIDIA", memory_gb=80, bf16_tflops=Decimal("312.0")
    )
    from accounts.credit_code import make_credit_code

    provider = Organisation.objects.create(
        name="Bench DC",
        credit_code=make_credit_code("91510100999999999"),
        kind=Organisation.Kind.PROVIDER,
        status=Organisation.Status.APPROVED,
        home_site=site,
    )
    programme = Programme.objects.create(
        code="bench",
        name="Bench programme",
        issuer_city="Chengdu",
        effective_from=timezone.now().date().replace(month=1, day=1),
        annual_budget=Decimal("1000000000.00"),
        max_share=Decimal("0.6000"),
        buyer_annual_cap=Decimal("10000000.00"),
        validity_months=12,
    )
    programme_fund(programme)
    CatalogueEntry.objects.create(programme=programme, provider=provider, year=timezone.now().year)
    first = hour_index_ceil(timezone.now()) + 1
    start = from_hour_index(first)
    Offer.objects.bulk_create(
        Offer(
            provider=provider,
            site=site,
            accelerator=acc,
            gpu_count=8,
            gpus_per_node=8,
            available_from=start,
            available_until=start + timedelta(hours=4),
            price_per_gpu_hour=Decimal("10.0000"),
            min_duration_hours=1,
            status=Offer.Status.ACTIVE,
        )
        for _ in range((n + 3) // 4)
    )
    buyers = []
    for i in range(n // 10 or 1):
        b = Organisation.objects.create(
            name=f"SME {i}",
            credit_code=make_credit_code(f"91510100{i:09d}"),
            kind=Organisation.Kind.SME,
            status=Organisation.Status.APPROVED,
            home_site=site,
        )
        wallet_deposit(organisation=b, amount=Decimal("1000000.00"))
        voucher = voucher_issue(programme=programme, owner=b, face_value=Decimal("100.00"))
        buyers.append((b, voucher))
    demands = Demand.objects.bulk_create(
        Demand(
            buyer=buyers[i % len(buyers)][0],
            origin_site=site,
            voucher=buyers[i % len(buyers)][1] if i % 10 == 0 else None,
            gpu_count=2,
            duration_hours=4,
            earliest_start=start,
            latest_end=start + timedelta(hours=4),
            max_price_per_gpu_hour=Decimal("20.0000"),
            locality_limit="city",
        )
        for i in range(n)
    )
    Demand.accelerators.through.objects.bulk_create(
        Demand.accelerators.through(demand_id=d.pk, accelerator_id=acc.pk) for d in demands
    )
    return hub


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=int(os.environ.get("CYCLE_N", "2000")))
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    args = parser.parse_args()
    bench_holds.admin_sql(
        f"DROP DATABASE IF EXISTS {BENCH_DB}",
        f"DROP DATABASE IF EXISTS {bench_holds.PGBENCH_DB}",
        f"CREATE DATABASE {BENCH_DB}",
        f"CREATE DATABASE {bench_holds.PGBENCH_DB}",
    )
    try:
        bench_holds.setup_django()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0)
        hub = build(args.n)
        from ledger.audit import ledger_audit
        from marketplace.matching import bulk
        from marketplace.matching.cycle import matching_cycle_run
        from marketplace.models import Reservation

        timer = DbTimer()
        writes = DbTimer()
        original = bulk.matches_write

        def timed_write(*a: Any, **k: Any) -> Any:
            with connection.execute_wrapper(writes):
                t0 = time.perf_counter()
                out = original(*a, **k)
                timed_write.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
                return out

        bulk.matches_write = timed_write  # type: ignore[assignment]
        import marketplace.matching.cycle as cycle_module

        cycle_module.matches_write = timed_write  # type: ignore[assignment]
        t0 = time.perf_counter()
        with connection.execute_wrapper(timer):
            cycle = matching_cycle_run(hub.pk)
        wall = time.perf_counter() - t0
        assert cycle is not None
        made = Reservation.objects.count()
        audit = ledger_audit()
        bench_holds.pgbench_init(10)
        tps = bench_holds.pgbench(1, args.pgbench_seconds, 10)
        write_s = timed_write.seconds  # type: ignore[attr-defined]
        print(f"demands {args.n}, reservations made {made} (with holds and ledger entries)")
        print(f"{'phase':<22}{'wall s':>9}{'DB s':>9}{'stmts':>9}{'res/s (wall)':>14}")
        print(
            f"{'whole cycle':<22}{wall:>9.2f}{timer.seconds:>9.2f}{timer.statements:>9}"
            f"{made / wall:>14.0f}"
        )
        print(
            f"{'bulk write':<22}{write_s:>9.2f}{writes.seconds:>9.2f}{writes.statements:>9}"
            f"{made / write_s:>14.0f}"
        )
        print(f"pgbench TPC-B, 1 client, scale 10: {tps:.0f} tps")
        print(
            f"reservations/s over write wall time ÷ pgbench tps = {made / write_s / tps:.2f}; "
            f"DB time for 10k at this rate ≈ {writes.seconds / made * 10000:.1f} s (target < 2 s)"
        )
        print(f"ledger audit: {'clean' if not audit else audit[:3]}")
    finally:
        from django.db import connections

        connections.close_all()
        bench_holds.admin_sql(
            f"DROP DATABASE IF EXISTS {BENCH_DB}",
            f"DROP DATABASE IF EXISTS {bench_holds.PGBENCH_DB}",
        )


if __name__ == "__main__":
    main()
