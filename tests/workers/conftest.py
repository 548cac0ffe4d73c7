"""A real Celery worker process on the real Redis, reading the test database."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_REDIS = os.environ.get("REDIS_URL", "")  # `make test` sets redis://127.0.0.1:6379/14


@pytest.fixture
def broker():
    """The test Redis database, emptied before and after."""
    import redis

    from workers.celery import app

    if not TEST_REDIS.startswith("redis://") or app.conf.broker_url != TEST_REDIS:
        pytest.fail("worker tests need a real Redis: run `make test`, or set REDIS_URL=redis://127.0.0.1:6379/14")
    client = redis.Redis.from_url(TEST_REDIS)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {TEST_REDIS}: run scripts/test-prereqs.sh")
    yield client
    client.flushdb()


class PrivateRedis:
    """A redis-server of our own on a free port, without persistence, that a test may stop and start again."""

    def __init__(self, tmp_path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = tmp_path / f"redis-{self.port}.log"
        self.proc = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self._ping(redis), 20, f"redis-server on port {self.port}")

    def _ping(self, redis) -> bool:
        try:
            return redis.Redis(port=self.port, socket_timeout=1).ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def private_redis(tmp_path):
    """Its own redis-server (the shared test Redis is never restarted), and this process's Celery app
    sending to it; restored afterwards."""
    from workers.celery import app

    server = PrivateRedis(tmp_path)
    server.start()
    before = app.conf.broker_url

    def use(url):
        app.conf.broker_url = url
        app._pool = None  # the connection and producer pools are keyed by URL: drop the cached ones
        app.amqp._producer_pool = None

    use(server.url)
    yield server
    use(before)
    server.stop()


def worker_env(tmp_path, **extra) -> dict:
    from django.db import connection

    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": TEST_REDIS,
        "DATA_DIR": str(tmp_path),
        "RUN_HEARTBEAT_EVERY": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


class Worker:
    def __init__(self, tmp_path, **env):
        self.log = tmp_path / f"worker-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "gpu,default", "--pool", "solo",
             "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=worker_env(tmp_path, **env), stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, sig=None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def start_worker(tmp_path, broker):
    workers: list[Worker] = []

    def start(**env) -> Worker:
        worker = Worker(tmp_path, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def wait_for(predicate, timeout: float, what: str, worker: Worker | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    if worker is None:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
    code = worker.proc.poll()
    state = "still running" if code is None else f"exited with code {code}"
    log_lines = worker.output().splitlines()
    # the worker's own ERROR/CRITICAL/WARNING lines first (a traceback's tail alone hides what the worker did next)
    events = [line for line in log_lines if ": ERROR/" in line or ": CRITICAL/" in line or ": WARNING/" in line]
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; the worker is {state}\n"
                         f"--- worker's errors and warnings (last 20) ---\n" + "\n".join(events[-20:]) +
                         "\n--- worker log (tail) ---\n" + "\n".join(log_lines)[-4000:])


def execute(executor, run):
    """Run an executor the way the worker does, without the queue: take the run (its execution token),
    execute, and finish it with its outputs stored in run_finish's transaction. Returns the finished run."""
    from labelapp.models import TrainingRun
    from labelapp.services.runs import run_begin, run_finish

    run, token = run_begin(run_id=run.pk)
    outcome = executor(run, lambda *a: None)
    return run_finish(run_id=run.pk, token=token, status=TrainingRun.Status.SUCCEEDED, result=outcome.result,
                      output_model=outcome.model, store=outcome.store)
