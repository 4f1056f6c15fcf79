"""Fixtures of the testbed tests: a real front door (``python -m webapp``) and a real Celery
replay worker as subprocesses, on Redis database 11 (flushed before and after, never
another one) and a SQLite file, with a hand-made plan published (no beat: the plan stays
put, so every query's route is known)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from hadis_celery.procs import stop_group

REPO = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/11"
TIME_FACTOR = 0.05  # SDXL-Lightning batch 1: 25 ms, SD3.5-Large-Turbo: 65 ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], object], timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    stop_group(proc)


@dataclass
class Stack:
    url: str
    live: object  # hadis_celery.live.LiveState on database 11
    plan: object  # the published policy.ActivePlan
    logs: Path

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:]
                         for p in sorted(self.logs.glob("*.log")))


@pytest.fixture(scope="session")
def redis11() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(BROKER)
    r.ping()
    r.flushdb()
    yield r
    r.flushdb()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis11) -> Iterator[Stack]:
    """Front door + one replay worker on the light and heavy queues of pair (0, 1), under a
    published plan: θ at the router's median (about half the prompts go heavy), τ at the
    light model's 30% score quantile (some light images are rerouted)."""
    from hadis_celery import db, store
    from hadis_celery.live import LiveState
    from hadis_celery.settings import DEFAULT_ROUTER_PROFILE
    from hadis_celery.tables import PlanRow
    from planner.policy import ActivePlan
    from planner.router import RouterProfile
    from workers.backends.replay import load_score_table

    tmp = tmp_path_factory.mktemp("testbed")
    url = f"sqlite:///{tmp / 'hadis.sqlite'}"
    engine = db.make_engine(url)
    db.upgrade(engine)
    theta = RouterProfile.load(DEFAULT_ROUTER_PROFILE).threshold_for(0.5)
    scores = load_score_table()
    tau = float(scores.quantiles[0][int(0.3 * (len(scores.probs) - 1))])
    workers = {"light_sdxl": 1, "heavy_sd35_large_turbo": 1}
    plan_id = store.save_plan(engine, PlanRow(
        planner="test", light=0, heavy=1, demand=0.0, fid=25.0, overloaded=False,
        body={"router_ratio": 0.5, "disc_ratio": 0.3, "workers": workers,
              "batch": {"0": 4, "1": 4}}, live={}, bindings={}))
    engine.dispose()
    plan = ActivePlan(plan_id=plan_id, light=0, heavy=1, light_queue="light_sdxl",
                      heavy_queue="heavy_sd35_large_turbo", theta=theta, tau=tau,
                      routing="score", router_ratio=0.5, batch={0: 4, 1: 4}, workers=workers)
    live = LiveState.from_url(BROKER)
    redis11.flushdb()
    live.publish_plan(plan)
    logs = tmp / "logs"
    logs.mkdir()
    env = dict(os.environ, HADIS_DATABASE_URL=url, HADIS_BROKER_URL=BROKER, HADIS_REDIS_URL="",
               HADIS_IMAGE_DIR=str(tmp / "images"), HADIS_TIME_FACTOR=str(TIME_FACTOR),
               HADIS_SWAP_DELAY_S="0", HADIS_RATE_LIMIT_PER_MIN="0", HADIS_HEARTBEAT_S="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO))
    port = free_port()
    procs = []
    try:
        for name, args in (
                ("frontdoor", ["-m", "webapp", "--port", str(port)]),
                ("worker", ["-m", "celery", "-A", "hadis_celery", "worker", "-Q",
                            "light_sdxl,heavy_sd35_large_turbo", "-c", "1", "-n",
                            "testbed@%h", "--without-mingle", "--without-gossip",
                            "-l", "warning"])):
            with open(logs / f"{name}.log", "wb") as fh:
                procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                              stdout=fh, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            for p in procs:
                assert p.poll() is None, Stack(base, live, plan, logs).tail()
            try:
                with urllib.request.urlopen(f"{base}/v1/health", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(healthy, 90, "the front door")
        wait_for(lambda: live.live_workers(), 90, "the worker's heartbeat")
        yield Stack(base, live, plan, logs)
    finally:
        for p in procs:
            stop(p)
        redis11.flushdb()


def write_trace(path: Path, rows: list[tuple[float, int]]) -> Path:
    path.write_text("".join(f"{ms:g},{i}\n" for ms, i in rows))
    return path


def finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
