"""gunicorn settings for the web process (docker/start-web.sh); all from the environment."""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
# Sync workers, two per core, by default: on the 2-core development machine (bench/bench_api.py,
# wrk with 50 connections, 2026-11-29, two rounds each, same session) they kept the API's tail
# short — offer search p99 75-89 ms at 36-37 % of the bare hello view's rate — while threaded
# workers (gthread, 4 threads each, kept-alive connections) spent a quarter less CPU per request
# but left a long tail (search p99 333-348 ms): a kept-alive connection stays with the worker
# that accepted it, whereas sync workers share one accept queue. GUNICORN_THREADS > 1 switches
# to gthread (each thread then holds its own database connection: workers x threads of them).
workers = int(os.environ.get("GUNICORN_WORKERS") or 2 * (os.cpu_count() or 1))
threads = int(os.environ.get("GUNICORN_THREADS") or 1)
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
