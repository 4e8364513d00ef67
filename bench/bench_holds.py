"""Reservation holds per second through the service layer on PostgreSQL, next to pgbench.

Issue 3's proof: holds/s through one ``marketplace.services.reservation_create`` call must reach
at least 10 % of pgbench's TPC-B rate measured in the same run on the same server, with at most
10 database round trips per hold; the matcher's bulk path at least 30 %.

What it does, in one run:

1. creates its own database (``suanli_bench_holds``), migrates it and builds a market:
   providers with one large offer each (ample capacity over a long window), buyers with funded
   wallets, two voucher programmes with every provider approved in their catalogues, one voucher
   per buyer, and open demands (one per hold to make, spread over the window's hours);
2. times holds through ``reservation_create`` — without and with a voucher, one client, then
   ``--clients`` processes at once (each on its own buyers and offers, all sharing the two
   programmes' rows, the escrow account and the tables);
3. counts the SQL statements each hold sends (``connection.execute_wrapper``) — the round
   trips are those plus ``BEGIN`` and ``COMMIT``, which psycopg sends as messages of their own
   (``execute_wrapper`` sees neither);
4. runs ``pgbench -i`` and ``pgbench -c N -j N -T 20`` (TPC-B) against
   ``suanli_pgbench_holds`` on the same server, for one client and for ``--clients``, before
   and again after the holds; the ratio is taken against the mean of the two (on a shared
   machine the load drifts during a run: both rates are printed);
5. prints the table with the ratios, checks ``ledger_audit`` and drops both databases.

Run: ``make bench-holds`` (or ``.venv/bin/python bench/bench_holds.py --help``). Needs the
local PostgreSQL (``PGHOST``/``PGPORT``/``PGUSER``, default 127.0.0.1:5432 postgres) and the
``pgbench`` client. Numbers depend on the machine; compare the ratios, not the rates.
"""

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ``BENCH_DB_SUFFIX`` keeps the databases of runs sharing one server apart (e.g. ``_alice``).
DB_SUFFIX = re.sub(r"[^a-z0-9_]", "", os.environ.get("BENCH_DB_SUFFIX", "").lower())
BENCH_DB = f"suanli_bench_holds{DB_SUFFIX}"
PGBENCH_DB = f"suanli_pgbench_holds{DB_SUFFIX}"
HOST = os.environ.get("PGHOST", "127.0.0.1")
PORT = os.environ.get("PGPORT", "5432")
USER = os.environ.get("PGUSER", "postgres")


def admin_sql(*statements: str) -> None:
    """Run statements on the server's ``postgres`` database in autocommit (CREATE/DROP DATABASE)."""
    import psycopg

    with psycopg.connect(
        host=HOST, port=PORT, user=USER, dbname="postgres", autocommit=True
    ) as conn:
        for sql in statements:
            conn.execute(sql)  # type: ignore[arg-type]


def setup_django() -> None:
    os.environ["DATABASE_URL"] = f"postgres://{USER}@{HOST}:{PORT}/{BENCH_DB}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "marketplace.settings.test"
    os.environ.setdefault("CELERY_TASK_ALWAYS_EAGER", "1")
    import django

    django.setup()


# --- The market ------------------------------------------------------------------------------


@dataclass
class Job:
    """One hold to make: ``reservation_create(demand_id, offer_id, start)``."""

    demand_id: Any
    offer_id: Any
    start: datetime


@dataclass
class Market:
    """Jobs per scenario and client: ``jobs[(with_voucher, client)]``."""

    jobs: dict[tuple[bool, int], list[Job]]


def build_market(*, clients: int, holds: int, offers_per_client: int) -> Market:
    """Providers, offers, buyers with wallets and vouchers, programmes, catalogues, demands.

    Each client (process) gets its own buyers and offers so clients contend only on what a real
    market shares: the programme rows and budget accounts, the escrow account, the tables and
    their indexes. Every client makes ``holds`` holds per scenario and run; demands are spread
    over the offers' hours so each capacity check sees a realistic number of overlapping
    reservations.
    """
    from django.utils import timezone

    from accounts.credit_code import make_credit_code
    from accounts.models import Organisation
    from marketplace.models import Accelerator, Demand, Hub, Offer, Site
    from marketplace.services import wallet_deposit
    from marketplace.timeutil import HOUR, from_hour_index, hour_index_ceil
    from vouchers.models import CatalogueEntry, Programme
    from vouchers.services import programme_fund, voucher_issue

    hub = Hub.objects.create(code="chengdu-chongqing", name="Chengdu-Chongqing")
    site = Site.objects.create(
        code="chengdu-tianfu", name="Tianfu DC", city="Chengdu", metro_area="Chengdu", hub=hub
    )
    acc = Accelerator.objects.create(
        code="A100-80G", vendor="NVIDIA", memory_gb=80, bf16_tflops=Decimal("312.0")
    )
    today = timezone.now().date()
    programmes = [
        Programme.objects.create(
            code=f"bench-{i}",
            name=f"Bench programme {i}",
            issuer_city="Chengdu",
            effective_from=today.replace(month=1, day=1),
            annual_budget=Decimal("1000000000.00"),
            max_share=Decimal("0.6000"),
            buyer_annual_cap=Decimal("10000000.00"),
            validity_months=12,
        )
        for i in range(2)
    ]
    for p in programmes:
        programme_fund(p)
    first_hour = hour_index_ceil(timezone.now()) + 1
    window_hours = 24 * 60
    available_from = from_hour_index(first_hour)
    available_until = from_hour_index(first_hour + window_hours)
    # one scenario = ``holds`` holds per client; runs: warm-up + single client + all clients
    per_client = holds * 3
    market: dict[tuple[bool, int], list[Job]] = {}
    serial = 0
    for client in range(clients):
        offers = []
        for _ in range(offers_per_client):
            serial += 1
            provider = Organisation.objects.create(
                name=f"Provider {serial}",
                credit_code=make_credit_code(f"91510100{serial:09d}"),
                kind=Organisation.Kind.PROVIDER,
                status=Organisation.Status.APPROVED,
                home_site=site,
            )
            for p in programmes:
                CatalogueEntry.objects.create(
                    programme=p,
                    provider=provider,
                    year=today.year,
                    status=CatalogueEntry.Status.APPROVED,
                )
            offers.append(
                Offer.objects.create(
                    provider=provider,
                    site=site,
                    accelerator=acc,
                    gpu_count=100_000,
                    gpus_per_node=8,
                    available_from=available_from,
                    available_until=available_until,
                    price_per_gpu_hour=Decimal("10.0000"),
                    min_duration_hours=1,
                    status=Offer.Status.ACTIVE,
                )
            )
        for with_voucher in (False, True):
            serial += 1
            buyer = Organisation.objects.create(
                name=f"Buyer {serial}",
                credit_code=make_credit_code(f"91510100{serial:09d}"),
                kind=Organisation.Kind.SME,
                status=Organisation.Status.APPROVED,
                home_site=site,
            )
            wallet_deposit(organisation=buyer, amount=Decimal("100000000.00"))
            voucher = None
            if with_voucher:
                voucher = voucher_issue(
                    programme=programmes[client % len(programmes)],
                    owner=buyer,
                    face_value=Decimal("5000000.00"),
                )
            demands = Demand.objects.bulk_create(
                Demand(
                    buyer=buyer,
                    origin_site=site,
                    voucher=voucher,
                    gpu_count=1 + i % 4,
                    duration_hours=2,
                    earliest_start=available_from,
                    latest_end=available_until,
                    max_price_per_gpu_hour=Decimal("20.0000"),
                )
                for i in range(per_client)
            )
            market[(with_voucher, client)] = [
                Job(
                    demand_id=d.pk,
                    offer_id=offers[i % len(offers)].pk,
                    start=available_from + (i * 7 % (window_hours - 2)) * HOUR,
                )
                for i, d in enumerate(demands)
            ]
    return Market(jobs=market)


# --- Timing holds ----------------------------------------------------------------------------


@contextmanager
def counting_statements() -> Iterator[list[str]]:
    """Collect every SQL statement sent on the default connection while inside."""
    from django.db import connection

    seen: list[str] = []

    def wrapper(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        yield seen


def make_holds(jobs: list[Job]) -> tuple[float, int]:
    """Make every hold in ``jobs`` with one ``reservation_create`` call each; return
    (elapsed seconds, SQL statements sent)."""
    from marketplace.services import reservation_create

    with counting_statements() as seen:
        t0 = time.perf_counter()
        for job in jobs:
            reservation_create(demand_id=job.demand_id, offer_id=job.offer_id, start=job.start)
        elapsed = time.perf_counter() - t0
    return elapsed, len(seen)


def _client(jobs: list[Job], start_at: float, out: "mp.Queue[tuple[float, float, int]]") -> None:
    from django.db import connections

    connections.close_all()  # never share the parent's socket
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    t0 = time.perf_counter()
    elapsed, statements = make_holds(jobs)
    out.put((t0, t0 + elapsed, statements))
    connections.close_all()


def concurrent_holds(batches: list[list[Job]]) -> tuple[float, int, int]:
    """One process per batch, started together; return (wall seconds, holds, statements)."""
    from django.db import connections

    connections.close_all()
    ctx = mp.get_context("fork")
    out: mp.Queue[tuple[float, float, int]] = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [ctx.Process(target=_client, args=(b, start_at, out)) for b in batches]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
        if p.exitcode != 0:
            raise SystemExit(f"client process failed with exit code {p.exitcode}")
    # perf_counter is CLOCK_MONOTONIC on Linux: comparable across processes
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return wall, sum(len(b) for b in batches), sum(r[2] for r in results)


# --- pgbench ---------------------------------------------------------------------------------


def pgbench(clients: int, seconds: int, scale: int) -> float:
    """TPC-B (pgbench's built-in) transactions per second with ``clients`` clients."""
    env = {**os.environ, "PGHOST": HOST, "PGPORT": PORT, "PGUSER": USER}
    cmd = ["pgbench", "-n", "-c", str(clients), "-j", str(clients), "-T", str(seconds)]
    run = subprocess.run([*cmd, PGBENCH_DB], env=env, check=True, capture_output=True, text=True)
    match = re.search(r"tps = ([0-9.]+)", run.stdout)
    if match is None:
        raise SystemExit(f"cannot read pgbench output:\n{run.stdout}\n{run.stderr}")
    return float(match.group(1))


def pgbench_init(scale: int) -> None:
    env = {**os.environ, "PGHOST": HOST, "PGPORT": PORT, "PGUSER": USER}
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale), PGBENCH_DB],
        env=env,
        check=True,
        capture_output=True,
    )


# --- Main ------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    clients: int
    holds: int
    seconds: float
    statements: int
    baseline_tps: float
    target: float

    @property
    def rate(self) -> float:
        return self.holds / self.seconds

    @property
    def ratio(self) -> float:
        return self.rate / self.baseline_tps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holds", type=int, default=400, help="holds per client per scenario")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--offers", type=int, default=20, help="offers per client")
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument("--pgbench-scale", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    if args.clients < 1 or args.holds < 1:
        parser.error("--clients and --holds must be positive")

    drop = (f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)",)
    drop_pg = (f"DROP DATABASE IF EXISTS {PGBENCH_DB} WITH (FORCE)",)
    admin_sql(*drop, *drop_pg, f"CREATE DATABASE {BENCH_DB}", f"CREATE DATABASE {PGBENCH_DB}")
    try:
        return run(args)
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            admin_sql(*drop, *drop_pg)


def run(args: argparse.Namespace) -> int:
    setup_django()
    from django.core.management import call_command
    from django.db import connection

    from ledger.audit import ledger_audit

    print(f"PostgreSQL {connection.cursor().connection.info.server_version}; ", end="")
    print(f"{os.cpu_count()} CPUs; {args.clients} clients; {args.holds} holds per client")
    t0 = time.perf_counter()
    call_command("migrate", verbosity=0)
    market = build_market(clients=args.clients, holds=args.holds, offers_per_client=args.offers)
    print(f"market built in {time.perf_counter() - t0:.1f} s")
    pgbench_init(args.pgbench_scale)

    h = args.holds
    rows: list[Row] = []
    before_1 = pgbench(1, args.pgbench_seconds, args.pgbench_scale)
    before_n = pgbench(args.clients, args.pgbench_seconds, args.pgbench_scale)
    for with_voucher in (False, True):
        label = "reservation_create, " + ("voucher + cash" if with_voucher else "cash only")
        jobs = market.jobs[(with_voucher, 0)]
        make_holds(jobs[: h // 4])  # warm-up: connection, caches, first accounts
        seconds, statements = make_holds(jobs[h : 2 * h])
        rows.append(Row(label, 1, h, seconds, statements, 0.0, 0.10))
        batches = [market.jobs[(with_voucher, c)][2 * h : 3 * h] for c in range(args.clients)]
        seconds, holds, statements = concurrent_holds(batches)
        rows.append(Row(label, args.clients, holds, seconds, statements, 0.0, 0.10))
    after_1 = pgbench(1, args.pgbench_seconds, args.pgbench_scale)
    after_n = pgbench(args.clients, args.pgbench_seconds, args.pgbench_scale)
    tps_1, tps_n = (before_1 + after_1) / 2, (before_n + after_n) / 2
    for r in rows:
        r.baseline_tps = tps_1 if r.clients == 1 else tps_n

    print()
    print(
        f"pgbench TPC-B (scale {args.pgbench_scale}, -T {args.pgbench_seconds}), tps before/after"
    )
    print(f"the holds: 1 client {before_1:.0f}/{after_1:.0f} (mean {tps_1:.0f}), ", end="")
    clients = f"{args.clients} client{'s' if args.clients > 1 else ''}"
    print(f"{clients} {before_n:.0f}/{after_n:.0f} (mean {tps_n:.0f})")
    header = (
        f"{'path':<38} {'clients':>7} {'holds':>6} {'holds/s':>8} {'stmts/hold':>10} "
        f"{'trips/hold':>10} {'pgbench tps':>11} {'ratio':>7} {'target':>7}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for r in rows:
        per_hold = r.statements / r.holds
        trips = per_hold + 2  # + BEGIN and COMMIT, which execute_wrapper does not see
        passed = r.ratio >= r.target and trips <= 10
        ok = ok and passed
        print(
            f"{r.name:<38} {r.clients:>7} {r.holds:>6} {r.rate:>8.0f} {per_hold:>10.1f} "
            f"{trips:>10.1f} {r.baseline_tps:>11.0f} {r.ratio:>6.1%} "
            f"{'≥' if passed else '<'}{r.target:.0%}"
        )
    print("matcher bulk path: see `make bench-cycle` (bench/bench_cycle.py)")
    problems = ledger_audit()
    print(f"ledger_audit: {'clean' if not problems else problems[:5]}")
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
