"""gunicorn settings for the web process (docker/start-web.sh); all from the environment."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Threaded workers (gthread): every request waits on PostgreSQL or Redis for part of its time
# (the API's busiest call, an offer search served from the cache, waits on both), and a
# worker's other threads use the core meanwhile; they also keep connections alive between
# requests (``keepalive``), which sync workers cannot (they close the connection after each
# answer, so every request of a client or proxy pays a new TCP connection). Two workers per
# core with four threads each served the most requests per second and the cheapest on the
# 2-core development machine (bench/bench_api.py, 50 connections: a quarter to a third less
# server CPU per request than four sync workers, for the bare hello view and the offer search
# alike; 2 or 4 workers with 2 or 4 threads in between). The price is a longer tail: a kept-alive
# connection stays with the worker that accepted it, so p99 is a larger multiple of p50 than
# with sync workers' one shared accept queue. GUNICORN_THREADS=1 gives sync workers. Each
# thread holds its own database connection: workers x threads of them per web process.
workers = int(os.environ.get("GUNICORN_WORKERS") or 2 * (os.cpu_count() or 1))
threads = int(os.environ.get("GUNICORN_THREADS") or 4)
worker_class = "gthread" if threads > 1 else "sync"
# A request is bounded by the database statement/lock timeouts first; this is the backstop.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = 200
accesslog = "-" if os.environ.get("GUNICORN_ACCESS_LOG", "0") == "1" else None
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
