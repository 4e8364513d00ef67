"""The REST API under gunicorn and load on loopback: requests/s and p50/p99 latency.

Issue 5's target: offer search at 50 concurrent clients reaches at least 30 % of the rate of a
bare Django "hello" view measured in the same run (same server, same middleware, no database,
no DRF), with a p99 under 100 ms. Demand create and reservation list are measured next to them.

What it does, in one run:

1. creates its own PostgreSQL database (``suanli_bench_api`` plus ``BENCH_DB_SUFFIX``, as the
   other benches; ``--database`` or ``BENCH_API_DB``), migrates it, loads the reference
   data (``load_reference``: hubs, sites, the accelerator catalogue) and seeds a market: one
   provider per public site with one active offer per accelerator model (``--offers-per-site``
   sizes of each), an SME at ``chengdu-tianfu`` with a funded wallet, an API token and
   ``--reservations`` confirmed reservations;
2. starts ``gunicorn`` (pinned in ``pyproject.toml``) with the product's
   ``docker/gunicorn.conf.py`` (``--workers`` and ``--threads`` default to its own: sync
   workers, 2 per CPU; ``--threads`` above 1 for gthread workers; workers are not recycled
   during the runs) on 127.0.0.1 with ``bench.api_settings``
   (the production settings on plain HTTP, with the bench URLconf that adds ``/bench/hello/``),
   Redis as cache and Celery broker (a queue of its own, deleted afterwards); write
   rate limits are lifted through the environment (``API_RATE_WRITE_USER``/
   ``API_RATE_WRITE_IP``) so the bench measures the API, not a 429;
3. runs ``wrk`` (Debian package ``wrk``) with ``--connections`` (50) connections for
   ``--duration`` seconds per endpoint after a short warm-up, ``--rounds`` (2) times: hello, the
   cheapest authenticated call (``GET /api/v1/organisations/me/``), offer search
   (``GET /api/v1/offers/?accelerator=T4&tier=region``: after the first request, pages of the
   offer search cache), the same search with a random ``max_price`` on every request (``search
   (cold keys)``: the cache never answers, so the row measures the search itself), demand create
   (``POST
   /api/v1/demands/``, no Idempotency-Key), reservation list (``GET /api/v1/reservations/``);
   any non-2xx answer or socket error fails the run. Next to each rate it records the server's
   CPU milliseconds per request (gunicorn workers and PostgreSQL backends, from /proc): wrk,
   gunicorn, PostgreSQL and Redis share the machine's cores (and, on a shared machine, other
   people's work does too), so rates move with the machine's load; the CPU cost does not;
4. prints the table with each rate as a share of hello's, and drops the database.

Run: ``make bench-api`` (or ``.venv/bin/python bench/bench_api.py --help``). Exit status 1 when
the target is missed. Numbers depend on the machine (wrk, gunicorn and PostgreSQL share its
cores); compare the ratios.
"""

import argparse
import json
import os
import runpy
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_holds import DB_SUFFIX, HOST, PORT, USER, admin_sql  # noqa: E402

BENCH_DB = os.environ.get("BENCH_API_DB", f"suanli_bench_api{DB_SUFFIX}")  # --database
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUEUE = f"bench-api-{os.getpid()}"
HOME_SITE = "chengdu-tianfu"
SEARCH = "/api/v1/offers/?accelerator=T4&tier=region"
LOAD_BEFORE = " / ".join(f"{x:.1f}" for x in os.getloadavg())

WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


# Every request of a "cold keys" run asks another question (a random max_price of 50-100 CNY,
# above every seeded price, so the answer's rows are the same): the offer search's page cache
# misses, and the row measures the search itself.
COLD_KEYS = """
local thread_count = 0
setup = function(thread)
  thread_count = thread_count + 1
  thread:set("seed", thread_count)
end
init = function(args)
  math.randomseed(os.time() * 1000 + seed)
end
request = function()
  local price = string.format("%d.%04d", math.random(50, 99), math.random(0, 9999))
  return wrk.format(nil, wrk.path .. "&max_price=" .. price)
end
"""


def environment() -> dict[str, str]:
    """The environment of every Django process of the bench (seeding and gunicorn)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.api_settings",
        "DJANGO_SECRET_KEY": os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
        "DATABASE_URL": f"postgres://{USER}@{HOST}:{PORT}/{BENCH_DB}",
        "REDIS_URL": REDIS,
        "CELERY_TASK_DEFAULT_QUEUE": QUEUE,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "API_RATE_WRITE_USER": "100000000/min",
        "API_RATE_WRITE_IP": "100000000/min",
        "PYTHONPATH": str(ROOT),
    }


def manage(*args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=environment(), check=True)


def seed(*, offers_per_site: int, reservations: int) -> str:
    """The market (see the module docstring); returns the SME's API token secret."""
    os.environ.update(environment())
    import django

    django.setup()
    from django.utils import timezone

    from accounts.credit_code import make_credit_code
    from accounts.models import Membership, Organisation, User
    from accounts.tokens import token_create
    from marketplace.models import Accelerator, Demand, Offer, Site
    from marketplace.services import reservation_create, wallet_deposit
    from marketplace.timeutil import from_hour_index, hour_index_ceil

    first_hour = hour_index_ceil(timezone.now()) + 2
    start, until = from_hour_index(first_hour), from_hour_index(first_hour + 24 * 30)
    accelerators = list(Accelerator.objects.order_by("code"))
    sites = list(Site.objects.filter(provider__isnull=True).order_by("code"))
    home = next(s for s in sites if s.code == HOME_SITE)
    serial = 0
    offers = []
    for site in sites:
        serial += 1
        provider = Organisation.objects.create(
            name=f"Provider at {site.code}",
            credit_code=make_credit_code(f"91510100{serial:09d}"),
            kind=Organisation.Kind.PROVIDER,
            status=Organisation.Status.APPROVED,
            home_site=site,
        )
        for acc in accelerators:
            for size in range(offers_per_site):
                offers.append(
                    Offer(
                        provider=provider,
                        site=site,
                        accelerator=acc,
                        gpu_count=8 * (size + 1) * 4,
                        gpus_per_node=8,
                        available_from=start,
                        available_until=until,
                        price_per_gpu_hour=Decimal("4.0000") + Decimal(serial % 7) / 2,
                        min_duration_hours=1,
                        status=Offer.Status.ACTIVE,
                    )
                )
    Offer.objects.bulk_create(offers)
    serial += 1
    buyer = Organisation.objects.create(
        name="Bench SME",
        credit_code=make_credit_code(f"91510100{serial:09d}"),
        kind=Organisation.Kind.SME,
        status=Organisation.Status.APPROVED,
        home_site=home,
    )
    wallet_deposit(organisation=buyer, amount=Decimal("1000000000.00"))
    user = User.objects.create_user(username="bench-sme", password=secrets.token_urlsafe(16))
    Membership.objects.create(user=user, organisation=buyer, role=Membership.Role.ADMIN)
    near = list(Offer.objects.filter(site__hub=home.hub, accelerator__code="T4"))
    for i in range(reservations):
        offer = near[i % len(near)]
        demand = Demand.objects.create(
            buyer=buyer,
            origin_site=home,
            gpu_count=1,
            duration_hours=2,
            earliest_start=start,
            latest_end=until,
            max_price_per_gpu_hour=Decimal("50.0000"),
        )
        demand.accelerators.add(offer.accelerator)
        reservation_create(demand_id=demand.pk, offer_id=offer.pk, start=start)
    _, secret = token_create(user=user, name="bench")
    from django.db import connection

    with connection.cursor() as cursor:  # fresh statistics, as autovacuum would have them
        cursor.execute("ANALYZE")
    return secret


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(master: int) -> float:
    """CPU seconds used so far by the gunicorn workers of ``master`` and the PostgreSQL
    backends serving the bench database (workers keep their connections, CONN_MAX_AGE)."""
    workers = [
        int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == master
    ]
    import psycopg

    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname="postgres") as conn:
        backends = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (BENCH_DB,)
            )
        ]
    return sum(_cpu_seconds(pid) for pid in [*workers, *backends])


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def wait_until_up(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  # loopback
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def wrk(
    url: str,
    *,
    token: str,
    connections: int,
    seconds: int,
    body: str | None = None,
    master: int | None = None,
    cold: bool = False,
) -> dict[str, float]:
    """One ``wrk`` run; returns requests/s, p50 and p99 in ms, socket errors and non-2xx, and
    (with the gunicorn ``master`` pid) the server's CPU milliseconds per request: gunicorn
    workers and PostgreSQL backends, measured from /proc, so it does not depend on what else
    runs on the machine as the rates do."""
    cpu_before = server_cpu(master) if master is not None else 0.0
    lua = f'wrk.headers["Authorization"] = "Token {token}"\n'
    if body is not None:
        lua += 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        lua += f"wrk.body = {json.dumps(body)}\n"
    if cold:
        lua += COLD_KEYS
    lua += WRK_DONE
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t",
                "2",
                "-c",
                str(connections),
                "-d",
                f"{seconds}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    cpu = server_cpu(master) - cpu_before if master is not None else 0.0
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "cpu_ms": 1000 * cpu / max(raw["requests"], 1),
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": raw["requests"],
        "errors": raw["socket_errors"],
        "non_2xx": raw["non_2xx"],
    }


def server_environment(args: argparse.Namespace) -> dict[str, str]:
    """gunicorn's settings for ``docker/gunicorn.conf.py`` (the product's own configuration)."""
    return {
        **environment(),
        "GUNICORN_BIND": f"127.0.0.1:{args.port}",
        "GUNICORN_WORKERS": str(args.workers),
        "GUNICORN_THREADS": str(args.threads),
        "GUNICORN_MAX_REQUESTS": str(args.max_requests),
        "GUNICORN_ACCESS_LOG": "0",
        "LOG_LEVEL": "WARNING",
    }


def main() -> int:
    global BENCH_DB
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    product = runpy.run_path(str(ROOT / "docker" / "gunicorn.conf.py"))  # its defaults
    parser.add_argument(
        "--workers",
        type=int,
        default=product["workers"],
        help="gunicorn worker processes (default: docker/gunicorn.conf.py's, %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=product["threads"],
        help="threads per worker (1: sync workers; default: docker/gunicorn.conf.py's, "
        "%(default)s)",
    )
    parser.add_argument(
        "--max-requests",
        type=int,
        default=0,
        help="gunicorn max_requests (0: workers are not recycled during the short runs)",
    )
    parser.add_argument("--connections", type=int, default=50, help="concurrent clients")
    parser.add_argument("--duration", type=int, default=15, help="seconds per endpoint")
    parser.add_argument("--rounds", type=int, default=2, help="runs of all four endpoints")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--database", default=BENCH_DB, help="own database (dropped after)")
    parser.add_argument("--offers-per-site", type=int, default=2)
    parser.add_argument("--reservations", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--cases",
        default="",
        help="comma-separated rows to run besides hello and offer search (default: all), "
        "e.g. 'search (cold keys),organisation (me)'",
    )
    args = parser.parse_args()
    BENCH_DB = args.database
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2

    admin_sql(f"DROP DATABASE IF EXISTS {BENCH_DB}", f"CREATE DATABASE {BENCH_DB}")
    server = None
    rounds: list[list[tuple[str, dict[str, float]]]] = []
    try:
        manage("migrate", "-v", "0")
        manage("load_reference")
        token = seed(offers_per_site=args.offers_per_site, reservations=args.reservations)
        from django.db import connection

        connection.close()
        base = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "marketplace.wsgi:application",
                "--config",
                str(ROOT / "docker" / "gunicorn.conf.py"),
                "--backlog",
                "2048",
                "--log-level",
                "warning",
            ],
            env=server_environment(args),
            cwd=ROOT,
        )
        wait_until_up(f"{base}/bench/hello/")
        for path in (SEARCH, "/api/v1/reservations/"):
            request = urllib.request.Request(  # noqa: S310  # loopback
                base + path, headers={"Authorization": f"Token {token}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                page = json.load(response)
            print(f"GET {path}: {page['count']} rows, {len(page['results'])} on the page")
        tomorrow = time.time() + 2 * 86400
        window = (
            time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(tomorrow)),
            time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(tomorrow + 3 * 86400)),
        )
        demand = json.dumps(
            {
                "accelerators": ["T4"],
                "gpu_count": 2,
                "duration_hours": 4,
                "earliest_start": window[0],
                "latest_end": window[1],
                "max_price_per_gpu_hour": "9.5000",
                "locality_limit": "region",
            }
        )
        cases = [
            ("hello (bare Django)", f"{base}/bench/hello/", None),
            # the cheapest authenticated API call: DRF, the token query, a small serializer
            ("organisation (me)", f"{base}/api/v1/organisations/me/", None),
            ("offer search", f"{base}{SEARCH}", None),
            # the same search, each request with another max_price: no cached page to serve
            ("search (cold keys)", f"{base}{SEARCH}", None),
            ("demand create", f"{base}/api/v1/demands/", demand),
            ("reservation list", f"{base}/api/v1/reservations/", None),
        ]
        if args.cases:
            wanted = {"hello (bare Django)", "offer search", *args.cases.split(",")}
            cases = [case for case in cases if case[0] in wanted]
        for _ in range(args.rounds):
            rows = []
            for name, url, body in cases:
                cold = name == "search (cold keys)"
                wrk(
                    url, token=token, connections=args.connections, seconds=3, body=body, cold=cold
                )  # warm-up
                rows.append(
                    (
                        name,
                        wrk(
                            url,
                            token=token,
                            connections=args.connections,
                            seconds=args.duration,
                            body=body,
                            master=server.pid,
                            cold=cold,
                        ),
                    )
                )
            rounds.append(rows)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        try:
            import redis

            redis.Redis.from_url(REDIS).delete(QUEUE)
        except Exception as exc:
            print(f"could not delete the Redis queue {QUEUE}: {exc}", file=sys.stderr)
        if not args.keep:
            from django.db import connections

            connections.close_all()
            admin_sql(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")

    kind = "sync" if args.threads == 1 else f"gthread, {args.threads} threads each"
    print(
        f"\nAPI under gunicorn (docker/gunicorn.conf.py: {args.workers} workers, {kind}), "
        f"wrk 2 threads x {args.connections} connections, {args.duration} s per endpoint, "
        f"loopback. wrk, gunicorn, PostgreSQL and Redis share this machine's {cpus} CPUs "
        f"(load average before the run: {LOAD_BEFORE})."
    )
    failed = False
    verdicts = []
    for number, rows in enumerate(rounds, 1):
        hello = rows[0][1]["rps"]
        print(f"\nround {number}")
        print(
            f"{'endpoint':<22}{'req/s':>10}{'of hello':>10}{'p50 ms':>10}{'p99 ms':>10}"
            f"{'requests':>10}{'errors':>8}{'CPU ms/req':>12}"
        )
        for name, r in rows:
            print(
                f"{name:<22}{r['rps']:>10.0f}{r['rps'] / hello:>10.0%}{r['p50_ms']:>10.1f}"
                f"{r['p99_ms']:>10.1f}{r['requests']:>10.0f}{r['errors'] + r['non_2xx']:>8.0f}"
                f"{r['cpu_ms']:>12.2f}"
            )
            failed |= bool(r["errors"] or r["non_2xx"])
        search = dict(rows)["offer search"]
        met = search["rps"] >= 0.30 * hello and search["p99_ms"] < 100
        verdicts.append(met)
        print(
            f"target: offer search >= 30 % of hello and p99 < 100 ms: "
            f"{search['rps'] / hello:.0%}, p99 {search['p99_ms']:.1f} ms -> "
            f"{'met' if met else 'MISSED'}"
        )
    if failed:
        print("some requests failed (socket errors or non-2xx answers)")
    return 0 if all(verdicts) and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
