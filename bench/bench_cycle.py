"""One whole matching cycle on PostgreSQL writing N reservations with their events, payment
holds, HOLD ledger transactions and entries and inter-hub trades (the bulk write path,
``marketplace.matching.bulk``), next to pgbench TPC-B on the same server in the same run.

Usage: ``make bench-cycle`` (``CYCLE_N=10000``) or ``python bench/bench_cycle.py --n 2000``
(``--batch`` sets ``MATCH_WRITE_BATCH``). Creates its own databases
``suanli_bench_cycle<suffix>`` and ``suanli_pgbench_cycle<suffix>`` (suffix from
``--db-suffix`` or ``BENCH_DB_SUFFIX``) on the local server and drops them at the end.

The market (``world_build``, ``market_round``): two hubs, N/10 buyers, ⌈N/4⌉ offers that fit
all N demands exactly; one demand in ten pays partly with a voucher, one in ten docks at the
other hub. A first, unmeasured cycle of ``--warmup`` demands (default N) fills the tables, then
``ANALYZE`` (what autovacuum does on a live server), then N new demands and offers and the
measured cycle.

DB time is measured two ways:

* client side, per phase: the wall time of every statement (a connection execute wrapper, which
  also sees the COPYs of ``marketplace.bulkrows``) plus every COMMIT and ROLLBACK (the
  connection's ``_commit``/``_rollback``, which the wrapper does not see: deferred foreign-key
  checks and the WAL flush happen there), round trips included; tallied by statement kind;
* server side, per phase: the growth of ``pg_stat_database.active_time`` of the bench database
  (time its backends spent executing statements, COMMIT included), read after the phase's
  connection has closed so its statistics are flushed; and the CPU time of the phase's server
  process from ``/proc`` (its own work, without the waits for a CPU or the disk that a shared
  machine adds). The measured cycle runs the steps of
  ``matching_cycle_run`` (snapshot and solve, then ``matches_write``) on a connection each.

pgbench TPC-B (1 client, scale 10) runs before and after the cycle; the ratio uses their mean.
Targets (issues 3 and 4): 10k reservations in < 2 s of DB time; the bulk path's reservations/s
over the write phase ≥ 30 % of pgbench's tps. The machine is shared: compare within one run.
"""

import argparse
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_holds  # noqa: E402

BENCH_DB = "suanli_bench_cycle"


def _kind(sql: str) -> str:
    """A statement's kind for the tally: verb and first table (``SELECT … FOR UPDATE`` apart)."""
    verb = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
    match = re.search(r'(?:^\s*COPY|FROM|INTO|UPDATE)\s+"?(\w+)"?', sql, re.IGNORECASE)
    table = match.group(1) if match else ""
    if verb == "SELECT" and "FOR UPDATE" in sql.upper():
        verb = "SELECT FOR UPDATE"
    return f"{verb} {table}".strip()


def _run_ns(pid: int | None) -> int:
    """Nanoseconds process ``pid`` has run on a CPU so far (``/proc/<pid>/schedstat``); 0
    where that cannot be read."""
    if pid is None:
        return 0
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class DbTimer:
    """Client-side DB time: every statement's wall time (execute wrapper) plus COMMIT and
    ROLLBACK (the connection's ``_commit``/``_rollback``), round trip included; and, given
    the server process's ``pid``, the CPU time that process spent on each (its run time from
    ``/proc``, so the waits for a CPU or the disk of a shared machine are left out)."""

    def __init__(self, pid: int | None = None) -> None:
        self.seconds = 0.0
        self.statements = 0
        self.pid = pid
        # kind → [count, client s, server CPU s]
        self.by_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    def _add(self, kind: str, seconds: float, cpu_ns: int) -> None:
        self.seconds += seconds
        self.statements += 1
        self.by_kind[kind][0] += 1
        self.by_kind[kind][1] += seconds
        self.by_kind[kind][2] += cpu_ns / 1e9

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        c0, t0 = _run_ns(self.pid), time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            t1 = time.perf_counter()
            self._add(_kind(sql), t1 - t0, _run_ns(self.pid) - c0)

    @contextmanager
    def measuring(self, connection: Any) -> Iterator[None]:
        """Time everything ``connection`` sends to the server inside the block."""
        patched: dict[str, Any] = {}
        for name in ("_commit", "_rollback"):
            # an outer ``measuring`` block may have patched it already: restore exactly that
            patched[name] = connection.__dict__.get(name)
            original = getattr(connection, name)

            def timed(original: Any = original, name: str = name) -> Any:
                c0, t0 = _run_ns(self.pid), time.perf_counter()
                try:
                    return original()
                finally:
                    t1 = time.perf_counter()
                    self._add(name[1:].upper(), t1 - t0, _run_ns(self.pid) - c0)

            setattr(connection, name, timed)
        try:
            with connection.execute_wrapper(self):
                yield
        finally:
            for name, before in patched.items():
                if before is None:
                    delattr(connection, name)  # back to the class's method
                else:
                    setattr(connection, name, before)

    def top(self, n: int = 8) -> list[tuple[str, int, float, float]]:
        """The ``n`` statement kinds that took the most client time: (kind, count, client s,
        server CPU s)."""
        rows = sorted(self.by_kind.items(), key=lambda kv: -kv[1][1])[:n]
        return [(k, int(c), s, cpu) for k, (c, s, cpu) in rows]


def backend_pid(connection: Any) -> int:
    """The process id of the server process behind ``connection`` (connecting if need be)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    return int(pid)


def backend_cpu_seconds(connection: Any) -> float | None:
    """CPU time (user + system) the server process behind ``connection`` has used so far, from
    ``/proc`` (the server runs on this machine); ``None`` where that cannot be read. Unlike
    ``active_time`` it leaves out time spent waiting for a CPU or for the disk, so it shows the
    server's own work when the machine is shared."""
    pid = backend_pid(connection)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_active_seconds() -> float:
    """``pg_stat_database.active_time`` of the bench database, in seconds, once no other
    backend is connected to it (a closed backend flushes its statistics as it exits)."""
    import psycopg

    with psycopg.connect(
        host=bench_holds.HOST,
        port=bench_holds.PORT,
        user=bench_holds.USER,
        dbname=BENCH_DB,
        autocommit=True,
    ) as conn:
        for _ in range(100):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT active_time FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return float(row[0] or 0) / 1000 if row is not None else 0.0


@dataclass
class World:
    """The bench market's fixed parts (hubs, sites, models, provider, programme, buyers)."""

    hub: Any
    site: Any
    remote: Any
    acc: Any
    ascend: Any
    provider: Any
    buyers: list[tuple[Any, Any]]  # (organisation, its voucher)


def world_build(n: int) -> World:
    """Two hubs: A (the cycle's, Chengdu) and B (Gansu, 25 ms away); one provider with a site in
    each; a Chengdu-like programme (60 % share) with the provider approved; N/10 buyers at hub
    A, each with ¥1,000,000 in its wallet and a ¥1,000 voucher."""
    from django.utils import timezone

    from accounts.credit_code import make_credit_code
    from accounts.models import Organisation
    from marketplace.models import Accelerator, Hub, HubLatency, Site
    from marketplace.services import wallet_deposit
    from vouchers.models import CatalogueEntry, Programme
    from vouchers.services import programme_fund, voucher_issue

    hub = Hub.objects.create(code="chengdu-chongqing", name="Chengdu-Chongqing")
    far = Hub.objects.create(code="gansu", name="Gansu", is_west=True)
    HubLatency.objects.create(from_hub=hub, to_hub=far, latency_ms=Decimal("25"))
    HubLatency.objects.create(from_hub=far, to_hub=hub, latency_ms=Decimal("25"))
    site = Site.objects.create(
        code="chengdu-tianfu", name="Tianfu DC", city="Chengdu", metro_area="Chengdu", hub=hub
    )
    remote = Site.objects.create(
        code="qingyang-east", name="Qingyang DC", city="Qingyang", metro_area="Qingyang", hub=far
    )
    acc = Accelerator.objects.create(
        code="A100-80G", vendor="NVIDIA", memory_gb=80, bf16_tflops=Decimal("312.0")
    )
    ascend = Accelerator.objects.create(
        code="Ascend-910B",
        vendor="Huawei",
        memory_gb=64,
        bf16_tflops=Decimal("320.0"),
        is_domestic=True,
    )
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
    CatalogueEntry.objects.create(
        programme=programme,
        provider=provider,
        year=timezone.now().year,
        status=CatalogueEntry.Status.APPROVED,
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
        voucher = voucher_issue(programme=programme, owner=b, face_value=Decimal("1000.00"))
        buyers.append((b, voucher))
    return World(hub, site, remote, acc, ascend, provider, buyers)


def market_round(world: World, n: int, first_hour: int) -> None:
    """N open demands of 2 GPUs × 4 h from hour ``first_hour`` (an hour index) and offers that
    fit every one of them exactly: ⌈N/4⌉ offers of 8 GPUs × 4 h, one in ten at hub B with
    Ascend 910B, the rest A100 at hub A. One demand in ten pays with its buyer's voucher; one
    in ten (as many as hub B has room for) asks for Ascend 910B with a national limit, so it
    docks at hub B (an inter-hub trade); the others stay in their city."""
    from marketplace.models import Demand, Offer
    from marketplace.timeutil import from_hour_index

    start = from_hour_index(first_hour)
    offers = (n + 3) // 4
    Offer.objects.bulk_create(
        Offer(
            provider=world.provider,
            site=world.remote if j % 10 == 0 else world.site,
            accelerator=world.ascend if j % 10 == 0 else world.acc,
            gpu_count=8,
            gpus_per_node=8,
            available_from=start,
            available_until=start + timedelta(hours=4),
            price_per_gpu_hour=Decimal("10.0000"),
            min_duration_hours=1,
            status=Offer.Status.ACTIVE,
        )
        for j in range(offers)
    )
    remote_slots = 4 * len(range(0, offers, 10))
    docking = [i % 10 == 5 and i // 10 < remote_slots for i in range(n)]
    buyers = world.buyers
    demands = Demand.objects.bulk_create(
        Demand(
            buyer=buyers[i % len(buyers)][0],
            origin_site=world.site,
            voucher=buyers[i % len(buyers)][1] if i % 10 == 0 else None,
            gpu_count=2,
            duration_hours=4,
            earliest_start=start,
            latest_end=start + timedelta(hours=4),
            max_price_per_gpu_hour=Decimal("20.0000"),
            locality_limit="national" if docking[i] else "city",
        )
        for i in range(n)
    )
    Demand.accelerators.through.objects.bulk_create(
        Demand.accelerators.through(
            demand_id=d.pk, accelerator_id=world.ascend.pk if docking[i] else world.acc.pk
        )
        for i, d in enumerate(demands)
    )


def main() -> None:
    global BENCH_DB
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=int(os.environ.get("CYCLE_N", "10000")))
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument(
        "--db-suffix",
        default=os.environ.get("BENCH_DB_SUFFIX", ""),
        help="appended to the bench databases' names (parallel runs on one server)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="demands of a first, unmeasured cycle (default: --n)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="MATCH_WRITE_BATCH (default: the setting's)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    if args.warmup is None:
        args.warmup = args.n
    if not re.fullmatch(r"[a-z0-9_]*", args.db_suffix):
        parser.error("--db-suffix: lower-case letters, digits and _ only")
    BENCH_DB = f"suanli_bench_cycle{args.db_suffix}"
    bench_holds.BENCH_DB = BENCH_DB
    bench_holds.PGBENCH_DB = f"suanli_pgbench_cycle{args.db_suffix}"
    drop = (
        f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)",
        f"DROP DATABASE IF EXISTS {bench_holds.PGBENCH_DB} WITH (FORCE)",
    )
    bench_holds.admin_sql(
        *drop, f"CREATE DATABASE {BENCH_DB}", f"CREATE DATABASE {bench_holds.PGBENCH_DB}"
    )
    try:
        run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            bench_holds.admin_sql(*drop)


def run(args: argparse.Namespace) -> None:
    bench_holds.setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.utils import timezone

    from marketplace.matching import bulk
    from marketplace.matching import cycle as cycle_module
    from marketplace.timeutil import hour_index_ceil

    if args.batch:
        settings.MATCH_WRITE_BATCH = args.batch
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    world = world_build(max(args.n, args.warmup))
    first = hour_index_ceil(timezone.now()) + 1
    if args.warmup:
        # A first cycle fills the tables the measured one reads and writes (its rows are what
        # a running market has), then ANALYZE gives the planner their statistics, as
        # autovacuum does on a live server.
        market_round(world, args.warmup, first)
        assert cycle_module.matching_cycle_run(world.hub.pk) is not None
        with connections["default"].cursor() as cursor:
            cursor.execute("ANALYZE")
    market_round(world, args.n, first + 4)
    print(
        f"market built in {time.perf_counter() - t0:.1f} s "
        f"(warm-up cycle of {args.warmup} demands first)"
    )
    bench_holds.pgbench_init(10)
    tps_before = bench_holds.pgbench(1, args.pgbench_seconds, 10)
    from ledger.audit import ledger_audit
    from ledger.models import Entry, Hold, Transaction
    from marketplace.models import Hub, HubLatency, InterHubTrade, Reservation, ReservationEvent

    counted = (Reservation, ReservationEvent, Hold, Transaction, Entry, InterHubTrade)
    before = {m: m.objects.count() for m in counted}
    connection = connections["default"]
    batch_write = bulk._batch_write
    batch_wall: list[float] = []

    def timed_batch(*a: Any, **k: Any) -> None:
        t0 = time.perf_counter()
        try:
            batch_write(*a, **k)
        finally:
            batch_wall.append(time.perf_counter() - t0)

    bulk._batch_write = timed_batch  # type: ignore[assignment]
    # The measured cycle runs the steps of ``matching_cycle_run`` one by one, each phase on a
    # connection of its own, so each phase's server-side DB time can be read once it closed.
    hub = Hub.objects.get(pk=world.hub.pk)
    connections.close_all()
    server = [server_active_seconds()]
    cpu: list[float | None] = []
    load, writes = DbTimer(), DbTimer()
    cpu_start = backend_cpu_seconds(connection)
    load.pid = backend_pid(connection)
    t0 = time.perf_counter()
    with load.measuring(connection):
        now = timezone.now()
        demands, offers = cycle_module.snapshot_load(hub, now)
        latency = {
            (str(a), str(b)): float(ms)
            for a, b, ms in HubLatency.objects.values_list("from_hub_id", "to_hub_id", "latency_ms")
        }
        result = cycle_module.engine_solve(
            hub.matching_policy, demands, offers, latency, hub.matching_time_limit
        )
    load_wall = time.perf_counter() - t0
    cpu_end = backend_cpu_seconds(connection)
    cpu.append(cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None)
    connections.close_all()
    server.append(server_active_seconds())
    cpu_start = backend_cpu_seconds(connection)
    writes.pid = backend_pid(connection)
    t0 = time.perf_counter()
    with writes.measuring(connection):
        outcome = bulk.matches_write(result.matches, now=now)
    write_wall = time.perf_counter() - t0
    cpu_end = backend_cpu_seconds(connection)
    cpu.append(cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None)
    connections.close_all()
    server.append(server_active_seconds())
    load_server, write_server = server[1] - server[0], server[2] - server[1]
    tps_after = bench_holds.pgbench(1, args.pgbench_seconds, 10)
    tps = (tps_before + tps_after) / 2

    after = {m: m.objects.count() - before[m] for m in counted}
    made = after[Reservation]
    assert made == len(outcome.made) == args.n, (made, len(outcome.made), outcome.dropped)
    rows = {
        "reservations": made,
        "events": after[ReservationEvent],
        "holds": after[Hold],
        "ledger transactions": after[Transaction],
        "ledger entries": after[Entry],
        "inter-hub trades": after[InterHubTrade],
    }
    audit = ledger_audit()
    print(
        f"demands {args.n}; written: "
        + ", ".join(f"{v} {k}" for k, v in rows.items())
        + f"; batches of {settings.MATCH_WRITE_BATCH}"
    )
    print(
        f"{'phase':<18}{'wall s':>8}{'DB s client':>13}{'DB s server':>13}{'server CPU s':>14}"
        f"{'stmts':>7}{'res/s':>8}{'÷ pgbench':>11}"
    )

    def cpu_text(x: float | None) -> str:
        return f"{x:.2f}" if x is not None else "n/a"

    total_cpu = None if None in cpu else sum(c for c in cpu if c is not None)
    phases = (
        ("snapshot + solve", load_wall, load.seconds, load_server, cpu[0], load.statements),
        ("bulk write", write_wall, writes.seconds, write_server, cpu[1], writes.statements),
        (
            "whole cycle",
            load_wall + write_wall,
            load.seconds + writes.seconds,
            load_server + write_server,
            total_cpu,
            load.statements + writes.statements,
        ),
    )
    for label, seconds, client, server_s, cpu_s, statements in phases:
        print(
            f"{label:<18}{seconds:>8.2f}{client:>13.2f}{server_s:>13.2f}{cpu_text(cpu_s):>14}"
            f"{statements:>7}{made / seconds:>8.0f}{made / seconds / tps:>10.0%}"
        )
    print(
        f"{len(batch_wall)} batches; the longest held its row locks (demands, offers, wallets, "
        f"vouchers, programmes) for {max(batch_wall) * 1000:.0f} ms"
    )
    print(
        f"pgbench TPC-B, 1 client, scale 10: {tps_before:.0f} tps before, {tps_after:.0f} after "
        f"(mean {tps:.0f})"
    )
    per_10k = 10000 / made
    print(
        f"bulk write: {made / write_wall:.0f} reservations/s = {made / write_wall / tps:.0%} of "
        f"pgbench (target ≥ 30 %); DB time per 10k reservations (target < 2 s): "
        f"{write_server * per_10k:.2f} s server-side (active), "
        f"{writes.seconds * per_10k:.2f} s client-side (statements + COMMIT, round trips and the "
        f"client's COPY formatting included), server CPU {cpu_text(cpu[1])} s for {made}"
    )
    print("bulk write statements by kind (count, client s, server CPU s):")
    for kind, count, seconds, cpu_s in writes.top(12):
        print(f"  {kind:<44}{count:>6}{seconds:>8.3f}{cpu_s:>8.3f}")
    print(f"ledger audit: {'clean' if not audit else audit[:3]}")


if __name__ == "__main__":
    main()
