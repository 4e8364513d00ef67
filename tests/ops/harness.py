"""Real processes for the fault tests: Celery workers and beats on the *test* database, a
private redis-server, a TCP proxy that delays or cuts the database connection, gunicorn.

Every process is started in its own session and stopped by its pid (never by name).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from marketplace import celery_app

ROOT = Path(settings.BASE_DIR)


def wait_for(predicate: Callable[[], Any], timeout: float = 60, step: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds
    (a bound on waiting, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url(host: str | None = None, port: int | None = None) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{host or db['HOST']}:{port or db['PORT']}/{db['NAME']}"


def process_env(queue: str, broker: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "marketplace.settings.test",
        "DATABASE_URL": database_url(),
        "REDIS_URL": broker or settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        # Fault tests run every task on the test's own queue; per-hub routing has its own
        # tests (tests/marketplace/test_scale_out.py, test_real_worker.py).
        "MATCH_HUB_QUEUES": "false",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.update(extra)
    return env


class Proc:
    """A child process in its own session, with its output in a file."""

    def __init__(self, args: list[str], env: dict[str, str], name: str, tmp: Path) -> None:
        self.log_path = tmp / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)
        self.popen.wait(30)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        # and its children (pool processes, gunicorn workers): gone, with their database sessions
        deadline = time.monotonic() + 10
        while _group_alive(self.popen.pid):
            if time.monotonic() > deadline:
                os.killpg(self.popen.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Gunicorn:
    """gunicorn serving the project with the production settings on a free loopback port."""

    def __init__(self, tmp: Path, workers: int = 2, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "marketplace.settings.production",
            "DJANGO_SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.CELERY_BROKER_URL,
            "CELERY_TASK_DEFAULT_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "LOG_LEVEL": "INFO",
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(workers),
            **env,
        }
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        args = [sys.executable, "-m", "gunicorn", "marketplace.wsgi:application",
                "--config", str(ROOT / "docker" / "gunicorn.conf.py")]  # fmt: skip
        self.proc = Proc(args, full_env, "gunicorn", tmp)
        wait_for(self._up, 60, 0.2)

    def _up(self) -> bool:
        assert self.proc.alive(), self.proc.output()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.stop()


class Cluster:
    """Workers and beats for one test, on a queue of its own; stops them all at the end."""

    def __init__(self, tmp: Path, broker: str | None = None) -> None:
        self.queue = f"test-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.broker = broker or settings.CELERY_BROKER_URL
        self.procs: list[Proc] = []

    def worker(self, *, pool: str = "solo", concurrency: int = 1, **env: str) -> Proc:
        args = [
            sys.executable, "-m", "celery", "-A", "marketplace", "worker",
            "-P", pool, "-c", str(concurrency), "-Q", self.queue,
            "--include", "tests.ops.fault_tasks",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            "-n", f"w{len(self.procs)}-{uuid.uuid4().hex[:4]}@%h",
            "-l", "INFO",
        ]  # fmt: skip
        proc = Proc(args, process_env(self.queue, self.broker, **env), "worker", self.tmp)
        self.procs.append(proc)
        wait_for(lambda: (proc.alive() and "ready." in proc.output()) or not proc.alive(), 60)
        assert proc.alive(), proc.output()
        return proc

    def beat(self, **env: str) -> Proc:
        schedule = self.tmp / f"beat-{uuid.uuid4().hex[:6]}"
        args = [
            sys.executable, "-m", "celery", "-A", "marketplace", "beat",
            "-s", str(schedule), "-l", "INFO",
        ]  # fmt: skip
        proc = Proc(args, process_env(self.queue, self.broker, **env), "beat", self.tmp)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@contextmanager
def publishing_to(queue: str, broker: str | None = None) -> Iterator[None]:
    """Make this (test) process publish tasks to ``queue`` on ``broker`` instead of running them
    in-process."""
    conf = celery_app.conf
    old = (conf.task_always_eager, conf.task_default_queue, conf.broker_url)
    conf.task_always_eager = False
    conf.task_default_queue = queue
    if broker:
        conf.broker_url = broker
        _reset_pools()
    try:
        yield
    finally:
        conf.task_always_eager, conf.task_default_queue, conf.broker_url = old
        if broker:
            _reset_pools()


def _reset_pools() -> None:
    """Drop the app's broker connection and producer pools so the next publish connects to the
    broker now configured (what celery itself does after a fork)."""
    celery_app._after_fork()


class RedisServer:
    """A private redis-server (no persistence) on a port of its own: restarting it breaks no
    one else's tests."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server not installed"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_for(self._answers, 20)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL in a thread: holds every chunk the client sends for
    ``delay`` seconds before passing it on, so each round trip to the database takes ``delay``
    longer."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, self.delay), self._pipe(up_reader, writer, 0.0)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def stop(self) -> None:
        def _shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(_shutdown)
        self._thread.join(10)
