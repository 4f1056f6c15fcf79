"""Fixtures of the serving-stack tests: a dedicated Redis database (flushed before and after,
never another one), SQLite files and a dedicated PostgreSQL schema (dropped after), and real
Celery workers started as subprocesses (replay backend at a high time factor), always
stopped by process group at teardown."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from hadis_celery import db
from hadis_celery.procs import stop_group as stop_process
from hadis_celery.settings import Settings

REPO = Path(__file__).resolve().parents[2]
REDIS_DB = 5
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
CLOSED_REDIS = "redis://127.0.0.1:1/0"
PG = "postgresql://postgres@127.0.0.1:5432/test"
CLOSED_PG = "postgresql://postgres@127.0.0.1:1/test"
TIME_FACTOR = 0.01  # SD3.5-Large batch 1: 0.27 s


def wait_for(pred: Callable[[], object], timeout_s: float = 30.0, every_s: float = 0.1,
             what: str = "condition"):
    """Poll ``pred`` until truthy; fail the test after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def make_settings(db_url: str, image_dir: Path, **kw) -> Settings:
    base = dict(database_url=db_url, broker_url=BROKER, redis_url="", image_dir=image_dir,
                time_factor=TIME_FACTOR, heartbeat_s=1.0, plan_period_s=1.0,
                rate_limit_per_min=0, api_keys=(), solver="highs")
    base.update(kw)
    return Settings(**base)


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that makes a subprocess see settings ``s``."""
    env = dict(os.environ)
    env.update(s.to_env())
    env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextmanager
def celery_worker(s: Settings, queues: str, log_dir: Path, app) -> Iterator[WorkerProc]:
    """A real ``celery -A hadis_celery worker`` on ``queues`` (prefork, one child)."""
    name = f"w{uuid.uuid4().hex[:6]}@test"
    log = log_dir / f"{name.split('@')[0]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "hadis_celery", "worker", "-Q", queues,
             "-c", "1", "-n", name, "--without-mingle", "--without-gossip", "-l", "info"],
            cwd=REPO, env=settings_env(s), stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    w = WorkerProc(name, proc, log)
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{w.tail()}")
            return app.control.ping(destination=[name], timeout=0.5)

        wait_for(ready, 60, 0.2, "the Celery worker to answer ping")
        yield w
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def redis_db() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(BROKER)
    r.ping()
    r.flushdb()
    yield r
    r.flushdb()


@pytest.fixture(scope="session")
def router():
    from hadis_celery.deployment import load_router
    from webapp import one_blas_thread

    one_blas_thread()
    return load_router(Settings())


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or a PostgreSQL schema of its own."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'hadis.sqlite'}"
        e = db.make_engine(url)
        db.upgrade(e)
        e.dispose()
        yield url
        return
    with db.temporary_schema(PG, "hadis_stack") as url:
        yield url


def plan_for(light: int, heavy: int, *, theta: float = math.inf, tau: float = -math.inf,
             workers: dict[str, int] | None = None, batch: dict[int, int] | None = None,
             routing: str = "score", router_ratio: float = 0.5):
    """A hand-made plan (what the beat publishes), to steer queries deterministically."""
    from planner.cascade import CascadeConfig
    from planner.plan import Plan

    cfg = CascadeConfig(light=light, heavy=heavy, router_ratio=router_ratio, theta=theta,
                        disc_ratio=0.3, tau=tau, fid=20.0)
    return Plan(planner="test", config=cfg, workers=dict(workers or {}),
                batch=dict(batch or {light: 1, heavy: 1}), fid=20.0, utilisation={},
                demand=0.0, slo_s=60.0, budget=1, routing=routing)
