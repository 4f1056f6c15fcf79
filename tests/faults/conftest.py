"""The fault tests' stack: a private ``redis-server`` (so it can be killed and restarted
without touching the shared one), PostgreSQL behind a loopback TCP proxy that can be cut
(or a SQLite file), real Celery workers and the planner's worker with embedded beat as
subprocesses, and the real Flask front door in this process.

Every fault test ends with ``account``: each query the front door accepted (202) is read
back from SQL; lost = accepted - (done + dropped + failed) after a bounded wait, and must be
0. The line ``accepted=.. completed=.. dropped=.. (reasons) failed=.. lost=..`` is printed
and stored under the fault's name in ``out/fault-report.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from hadis_celery import db
from hadis_celery.settings import Settings
from hadis_celery.tables import QueryRow
from tests.stack.conftest import REPO, stop_process, wait_for

REPORT = REPO / "out" / "fault-report.json"
FINAL = ("done", "dropped", "failed")
TIME_FACTOR = 0.03  # SD3.5-Large: 0.81 s at batch 1, 2.75 s at batch 4
PROMPTS = [f"a watercolor painting of a {thing} near a {place}"
           for thing in ("lighthouse", "red fox", "sailboat", "windmill", "teapot", "violin",
                         "bicycle", "castle", "hot air balloon", "owl")
           for place in ("river", "mountain", "market", "forest", "harbor", "desert")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[-1].split()[1])


# -- infrastructure that can fail on purpose --------------------------------------------------
class PrivateRedis:
    """A ``redis-server`` of our own on a free port, without persistence: a restart loses
    every queue, the plan and every counter, as a crashed cache-mode Redis would."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2,
                           socket_connect_timeout=1)

    def start(self) -> None:
        with open(self.dir / "redis.log", "ab") as fh:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                 "--protected-mode", "no"],
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            try:
                return self.client().ping()
            except redis.exceptions.ConnectionError:
                assert self.proc.poll() is None, (self.dir / "redis.log").read_text()
                return False

        wait_for(up, 20, 0.05, "the private redis-server")

    def kill(self) -> None:
        """SIGKILL (a crash): nothing is saved."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)


class TcpProxy:
    """A loopback TCP proxy in front of PostgreSQL. ``cut()`` closes the listening socket
    (new connections are refused) and resets every open connection, which is what clients
    see when the server dies; ``restore()`` listens again on the same port. The shared
    PostgreSQL itself is never touched."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:  # cut meanwhile
                    client.close()
                    upstream.close()
                    continue
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket, reset: bool = False) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self) -> None:
        with self._lock:
            ls, self._listener = self._listener, None
            conns = list(self._conns)
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        for s in conns:
            self._close(s, reset=True)

    def close(self) -> None:
        self.cut()


# -- processes --------------------------------------------------------------------------
@dataclass
class Proc:
    """A Celery worker subprocess (its own process group) and its log file."""

    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def events(self, name: str | None = None) -> list[dict]:
        """The structured log records (JSON lines) of this worker, optionally one event."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if name is None or rec.get("event") == name:
                out.append(rec)
        return out

    def kill_group(self) -> None:
        """SIGKILL the worker and its pool children (the whole host died)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc, 5)


def fault_env(s: Settings, **extra: object) -> dict[str, str]:
    """The environment that makes a worker subprocess see settings ``s`` (plus ``extra``
    variables, e.g. ``HADIS_BACKEND``)."""
    env = dict(os.environ)
    env.update(s.to_env())
    env.update({"HADIS_LOG_FORMAT": "json", "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def spawn_worker(env: dict[str, str], queues: str, log_dir: Path, prefix: str = "w",
                 beat: bool = False) -> Proc:
    """Start ``celery -A hadis_celery worker`` (prefork, one child) without waiting; with
    ``beat``, the planner's worker on ``hadis_control`` with Celery beat embedded."""
    name = f"{prefix}{uuid.uuid4().hex[:6]}@faults"
    log = log_dir / f"{name.split('@')[0]}.log"
    args = [sys.executable, "-m", "celery", "-A", "hadis_celery", "worker", "-Q", queues,
            "-c", "1", "-n", name, "--without-mingle", "--without-gossip", "-l", "info"]
    if beat:
        args += ["-B", "-s", str(log_dir / f"beat-{name.split('@')[0]}")]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Proc(name, proc, log)


def wait_ready(app, procs: list[Proc], timeout_s: float = 90) -> None:
    """Until every worker answers a ping (failing with its log if one exits)."""
    pending = {p.name: p for p in procs}

    def ready():
        for p in pending.values():
            if p.proc.poll() is not None:
                raise AssertionError(f"worker {p.name} exited early:\n{p.tail()}")
        try:
            replies = app.control.ping(destination=list(pending), timeout=0.5) or []
        except (redis.exceptions.ConnectionError, OSError):  # a connection from before a
            return False  # Redis restart: kombu replaces it on the next call
        for reply in replies:
            for name in reply:
                pending.pop(name, None)
        return not pending

    wait_for(ready, timeout_s, 0.2, f"workers {sorted(pending)} to answer ping")


def pool_children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


# -- accounting -------------------------------------------------------------------------
def normalise(reason: str | None) -> str:
    """A reason without its numbers and worker names, to count reasons by kind."""
    text = re.sub(r"\S+@\S+", "<worker>", reason or "?")
    text = re.sub(r"(?<![A-Za-z\d.])\d+(\.\d+)?", "N", text)
    return text[:140]


def wait_final(engine, ids: list[str], timeout_s: float) -> dict[str, QueryRow]:
    """Rows of ``ids`` once all are final, or as they are after ``timeout_s``."""
    def rows() -> dict[str, QueryRow]:
        with db.transaction(engine) as s:
            return {r.id: r for r in s.scalars(select(QueryRow).where(QueryRow.id.in_(ids)))}

    end = time.monotonic() + timeout_s
    while True:
        got = rows()
        if all(got.get(i) is not None and got[i].status in FINAL for i in ids):
            return got
        if time.monotonic() > end:
            return got
        time.sleep(0.25)


def account(engine, fault: str, ids: list[str], timeout_s: float = 60.0,
            **extra: object) -> dict:
    """Wait (bounded) for the accepted ``ids`` to finish, count the outcomes, print the
    report line, store it in ``out/fault-report.json`` and return it."""
    t0 = time.monotonic()
    rows = wait_final(engine, ids, timeout_s)
    status = {i: (rows[i].status if i in rows else "missing") for i in ids}
    counts = Counter(status.values())
    dropped = Counter(normalise(rows[i].reason) for i in ids if status[i] == "dropped")
    failed = Counter(normalise(rows[i].reason) for i in ids if status[i] == "failed")
    lost = [i for i in ids if status[i] not in FINAL]
    out = {"fault": fault, "accepted": len(ids), "completed": counts.get("done", 0),
           "dropped": counts.get("dropped", 0), "dropped_reasons": dict(dropped),
           "failed": counts.get("failed", 0), "failed_reasons": dict(failed),
           "lost": len(lost), "lost_ids": lost[:10],
           "lost_statuses": dict(Counter(status[i] for i in lost)),
           "wait_for_final_s": round(time.monotonic() - t0, 2), **extra,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    line = (f"[{fault}] accepted={out['accepted']} completed={out['completed']} "
            f"dropped={out['dropped']} ({dict(dropped) or 'no reasons'}) "
            f"failed={out['failed']} ({dict(failed) or 'no reasons'}) lost={out['lost']}")
    print(line)
    out["line"] = line
    _store(fault, out)
    return out


def _store(fault: str, entry: dict) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(REPORT.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[fault] = entry
    tmp = REPORT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, REPORT)


# -- the stack --------------------------------------------------------------------------
@dataclass
class FaultStack:
    """One running stack; tests post through ``client`` and break its parts."""

    s: Settings
    env: dict[str, str]
    tmp: Path
    redis: PrivateRedis
    app: object
    client: object
    loop: object
    engine: object
    queues: str
    workers: list[Proc] = field(default_factory=list)
    control: Proc | None = None
    proxy: TcpProxy | None = None  # in front of PostgreSQL, when the stack runs on it
    accepted: list[str] = field(default_factory=list)  # every 202 of this stack

    def post(self, prompt: str, slo_s: float = 120.0):
        """POST one generation: (status code, JSON body, headers)."""
        resp = self.client.post("/v1/generations", json={"prompt": prompt, "slo_s": slo_s})
        body = resp.get_json(silent=True)
        if resp.status_code == 202:
            self.accepted.append(body["id"])
        return resp.status_code, body, resp.headers

    def accept(self, prompt: str, slo_s: float = 120.0) -> str:
        code, body, _ = self.post(prompt, slo_s)
        assert code == 202, body
        return body["id"]

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.proc.poll() is None]

    def ensure_workers(self, n: int) -> None:
        """Start GPU workers until ``n`` are alive."""
        self.workers = self.live_workers()
        new = [spawn_worker(self.env, self.queues, self.tmp) for _ in range(n - len(self.workers))]
        if new:
            wait_ready(self.app, new)
            self.workers += new

    def ensure_control(self) -> Proc:
        if self.control is None or self.control.proc.poll() is not None:
            self.control = spawn_worker(self.env, "hadis_control", self.tmp, "ctl", beat=True)
            wait_ready(self.app, [self.control])
        return self.control

    def running_by_token(self) -> dict[str, list[str]]:
        """Rows running now, by the claim token of the batch holding them."""
        with db.transaction(self.engine) as s:
            rows = s.execute(select(QueryRow.id, QueryRow.worker)
                             .where(QueryRow.status == "running")).all()
        out: dict[str, list[str]] = {}
        for qid, token in rows:
            out.setdefault(token, []).append(qid)
        return out

    def logs(self) -> str:
        procs = self.workers + ([self.control] if self.control else [])
        return "\n\n".join(f"== {p.name}\n{p.tail(15)}" for p in procs)


def stack_settings(db_url: str, broker: str, tmp: Path, **kw) -> Settings:
    base = dict(database_url=db_url, broker_url=broker, redis_url="", image_dir=tmp / "images",
                time_factor=TIME_FACTOR, heartbeat_s=1.0, plan_period_s=3600.0,
                sweep_period_s=1.0, lease_s=2.0, sql_retry_s=1.0, max_attempts=5,
                rate_limit_per_min=0, api_keys=(), solver="highs", swap_delay_s=1.0)
    base.update(kw)
    return Settings(**base)


@contextmanager
def fault_stack(tmp: Path, db_url: str, router, queues: str, n_workers: int,
                **settings_kw) -> Iterator[FaultStack]:
    """Private Redis, ``n_workers`` GPU workers on ``queues``, the planner's worker with
    beat (plan period ``settings_kw['plan_period_s']``, one hour by default: the tests
    publish their own plans, the beat sweeps every second) and the front door."""
    from hadis_celery.beat import PlanLoop
    from hadis_celery.celery import make_app
    from webapp import create_app

    rds = PrivateRedis(tmp)
    procs: list[Proc] = []
    stack: FaultStack | None = None
    engine = db.make_engine(db_url)
    try:
        s = stack_settings(db_url, rds.url, tmp, **settings_kw)
        env = fault_env(s)
        app = make_app(s)
        procs = [spawn_worker(env, queues, tmp) for _ in range(n_workers)]
        control = spawn_worker(env, "hadis_control", tmp, "ctl", beat=True)
        procs.append(control)
        flask_app = create_app(s, router=router, celery_app=make_app(s, fast_fail=True))
        wait_ready(app, procs)
        stack = FaultStack(s=s, env=env, tmp=tmp, redis=rds, app=app,
                           client=flask_app.test_client(), loop=PlanLoop.from_settings(s, app),
                           engine=engine, queues=queues, workers=procs[:-1], control=control)
        # The beat adopts the fresh Redis (its epoch marker) before any query is accepted:
        # else the first sweep, a second after the beat starts, takes the empty Redis for
        # one that lost its data and re-sends every waiting row (a duplicate message each).
        stack.loop.recover()
        yield stack
    finally:
        if stack is not None:
            procs += stack.workers + ([stack.control] if stack.control else [])
        for p in {id(p): p for p in procs}.values():
            p.stop()
        rds.stop()
        engine.dispose()


@pytest.fixture(scope="session")
def router():
    from hadis_celery.deployment import load_router
    from webapp import one_blas_thread

    one_blas_thread()
    return load_router(Settings())
