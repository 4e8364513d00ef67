"""Load test: gunicorn + 2 Celery workers + beat on PostgreSQL/Redis (loopback), driven by
Locust: 200 SMEs posting, polling and cancelling demands and 20 providers re-pricing offers.

    make bench-load                       # 5 minutes (BENCH_DURATION=300)
    BENCH_DURATION=60 make bench-load     # a shorter run

Steps: a fresh database ``suanli_bench`` (migrate, load_reference), 20 providers with two
offers each (through the API), 200 funded SMEs; then gunicorn (production settings, 2
processes), 2 workers consuming every hub's matching queue and the default queue, one beat
(MATCH_INTERVAL=10), matching routed to per-hub queues (MATCH_HUB_QUEUES); Locust headless
for BENCH_DURATION seconds; the queues drain; then the
report: requests/s, p50/p95/p99 per endpoint and each p50 against the ``/healthz`` baseline of
the same run, the status-code mix (5xx target 0), matching lag (demand posted → reservation,
p50/p99) and ``ledger_audit``. Output files go to ``artifacts/bench-load/`` (git-ignored).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "artifacts" / "bench-load"
PY = sys.executable
DB_NAME = os.environ.get("BENCH_DATABASE", "suanli_bench")
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
DURATION = int(os.environ.get("BENCH_DURATION", "300"))
SMES, PROVIDERS = 200, 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"{PG}/{DB_NAME}",
        "REDIS_URL": REDIS,
        "CELERY_TASK_DEFAULT_QUEUE": QUEUE,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.local",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
        "MATCH_INTERVAL": "10",
        "MATCH_HUB_QUEUES": "true",
        # 220 simulated organisations share 127.0.0.1: the per-IP write limit (600/min) would
        # throttle them as one client; per-user limits stay as configured.
        "API_RATE_WRITE_IP": "100000/min",
        **extra,
    }


QUEUE = f"bench-{uuid.uuid4().hex[:8]}"


def _run(args: list[str], **env: str) -> str:
    return subprocess.run(
        args, cwd=ROOT, env=_env(**env), check=True, capture_output=True, text=True
    ).stdout


def _start(name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
    log = (OUT / f"{name}.log").open("wb")
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=_env(**env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def _api(base: str, method: str, path: str, token: str | None, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Token {token}"
    req = urllib.request.Request(  # noqa: S310 (loopback)
        base + path,
        method=method,
        headers=headers,
        data=json.dumps(body).encode() if body is not None else None,
    )
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
        return json.loads(resp.read() or b"{}")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # --- a fresh database ----------------------------------------------------------------
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    _run([PY, "manage.py", "migrate", "--noinput"])
    _run([PY, "manage.py", "load_reference"])

    os.environ.update(_env())
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connection
    from django.db.models import Count

    from accounts.credit_code import make_credit_code
    from accounts.models import Membership, Organisation, User
    from accounts.tokens import token_create
    from ledger.audit import ledger_audit
    from marketplace.models import Accelerator, Demand, Reservation, Site
    from marketplace.services import wallet_deposit

    sites = list(Site.objects.order_by("code"))
    models = ["A100-80G", "H100-SXM5-80G", "L40S-48G", "Ascend910B-64G"]
    assert Accelerator.objects.filter(code__in=models).count() == len(models)

    def org(n: int, kind: str, site: Site) -> tuple[Organisation, str]:
        o = Organisation.objects.create(
            name=f"bench {kind} {n}",
            credit_code=make_credit_code(f"91510100{n:09d}"),
            kind=kind,
            status=Organisation.Status.APPROVED,
            home_site=site,
        )
        user = User.objects.create_user(username=f"bench-{kind}-{n}")
        Membership.objects.create(user=user, organisation=o, role=Membership.Role.ADMIN)
        return o, token_create(user=user)[1]

    providers = [
        org(i, Organisation.Kind.PROVIDER, sites[i % len(sites)]) for i in range(PROVIDERS)
    ]
    smes = []
    for i in range(SMES):
        o, token = org(1000 + i, Organisation.Kind.SME, sites[(i * 7) % len(sites)])
        wallet_deposit(organisation=o, amount=Decimal("1000000.00"))
        smes.append({"token": token})
    connection.close()

    procs: list[subprocess.Popen[bytes]] = []
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        queues = _run([PY, "manage.py", "worker_queues", "--with-default"]).strip()
        web_env = {
            "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "GUNICORN_WORKERS": os.environ.get("BENCH_WEB_WORKERS", "2"),
            "LOG_FORMAT": "text",
        }
        procs.append(
            _start(
                "web",
                [
                    PY,
                    "-m",
                    "gunicorn",
                    "marketplace.wsgi:application",
                    "--config",
                    "docker/gunicorn.conf.py",
                ],
                **web_env,
            )
        )
        for i in range(2):
            procs.append(
                _start(
                    f"worker{i}",
                    [
                        PY,
                        "-m",
                        "celery",
                        "-A",
                        "marketplace",
                        "worker",
                        "-Q",
                        queues,
                        "-c",
                        "1",
                        "-n",
                        f"bench{i}@%h",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                )
            )
        procs.append(
            _start(
                "beat",
                [PY, "-m", "celery", "-A", "marketplace", "beat", "-s", str(OUT / "beat-schedule")],
            )
        )
        for _ in range(120):
            try:
                _api(base, "GET", "/healthz", None)
                break
            except OSError:
                time.sleep(0.5)

        # offers through the API: two per provider, 16 GPUs, from the next hour for 7 days
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        creds: dict = {"smes": smes, "providers": [], "accelerators": models}
        for i, (o, token) in enumerate(providers):
            offers = []
            for j in range(2):
                price = Decimal(20 + (i * 3 + j * 5) % 25)
                made = _api(
                    base,
                    "POST",
                    "/api/v1/offers/",
                    token,
                    {
                        "site": str(o.home_site_id),
                        "accelerator": models[(i + j) % len(models)],
                        "gpu_count": 16,
                        "available_from": start.isoformat(),
                        "available_until": (start + timedelta(days=7)).isoformat(),
                        "price_per_gpu_hour": str(price),
                    },
                )
                offers.append({"id": made["id"], "price": str(price)})
            creds["providers"].append({"token": token, "offers": offers})
        cred_path = OUT / "credentials.json"
        cred_path.write_text(json.dumps(creds))

        # --- the load ---------------------------------------------------------------------
        t_start = datetime.now(UTC)
        status_path = OUT / "status.json"
        subprocess.run(
            [
                str(Path(PY).parent / "locust"),
                "-f",
                "bench/locustfile_market.py",
                "--headless",
                "-u",
                str(SMES + PROVIDERS),
                "-r",
                "20",
                "-t",
                f"{DURATION}s",
                "--host",
                base,
                "--csv",
                str(OUT / "locust"),
                "--only-summary",
                "--stop-timeout",
                "10",
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env={
                **os.environ,
                "BENCH_CREDENTIALS": str(cred_path),
                "BENCH_STATUS_OUT": str(status_path),
            },
            check=False,
        )
        t_end = datetime.now(UTC)
        # let the workers drain the queues (bounded)
        import redis

        client = redis.Redis.from_url(REDIS)
        for _ in range(120):
            if sum(client.llen(q) for q in queues.split(",")) == 0:
                break
            time.sleep(1)
        time.sleep(12)  # one more sweep (MATCH_INTERVAL=10) for demands posted last
    finally:
        _stop(procs)

    # --- the report -----------------------------------------------------------------------
    rows = list(csv.DictReader((OUT / "locust_stats.csv").open()))
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    baseline = next(
        (float(r["50%"]) for r in rows if r["Name"] == "GET healthz (baseline)"), float("nan")
    )
    print(
        f"\nLoad: {SMES} SMEs + {PROVIDERS} providers for {DURATION} s against gunicorn "
        f"(2 processes) + 2 Celery workers + beat on PostgreSQL/Redis (loopback)\n"
    )
    print(
        f"{'endpoint':28} {'requests':>9} {'fail':>5} {'req/s':>7} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'p50/baseline':>13}"
    )
    for r in rows:
        ratio = float(r["50%"]) / baseline if baseline else float("nan")
        print(
            f"{r['Name']:28} {r['Request Count']:>9} {r['Failure Count']:>5} "
            f"{float(r['Requests/s']):7.1f} {r['50%']:>7} {r['95%']:>7} {r['99%']:>7} "
            f"{ratio:13.1f}"
        )
    total = sum(status.values())
    fivexx = sum(n for code, n in status.items() if code.startswith("5"))
    errors = sum(n for code, n in status.items() if not code[:1].isdigit())
    print(f"\nstatus codes: {dict(sorted(status.items()))}")
    print(
        f"5xx: {fivexx} of {total} ({100 * fivexx / max(total, 1):.3f} %); "
        f"connection errors: {errors}"
    )

    connection.connect()
    posted = Demand.objects.filter(created_at__gte=t_start, created_at__lte=t_end)
    lags = [
        (r_at - d_at).total_seconds()
        for d_at, r_at in Reservation.objects.filter(demand__in=posted).values_list(
            "demand__created_at", "created_at"
        )
    ]
    by_status = dict(posted.values_list("status").annotate(n=Count("id")))
    print(f"demands posted during the run: {posted.count()} {by_status}")
    print(
        f"matching lag (posted → reservation) over {len(lags)} reservations: "
        f"p50 {_pct(lags, 50):.2f} s, p99 {_pct(lags, 99):.2f} s, max {max(lags or [0]):.2f} s"
    )
    problems = ledger_audit()
    print(f"ledger_audit: {'clean' if not problems else problems[:10]}")
    (OUT / "report.json").write_text(
        json.dumps(
            {
                "duration_s": DURATION,
                "status": status,
                "lag_p50_s": _pct(lags, 50),
                "lag_p99_s": _pct(lags, 99),
                "ledger_audit": problems,
                "endpoints": rows,
            },
            default=str,
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
