"""Front-door and pipeline benchmark, against bare Celery in the same run.

``python -m bench.frontdoor`` (Redis on 127.0.0.1; it uses and flushes only database 7,
``--redis`` to change; PostgreSQL at ``--postgres`` in a schema of its own, dropped after,
or ``--database sqlite``). The front door runs as in production: ``python -m webapp``
(gunicorn, ``--web-workers`` x ``--web-threads``). Every request carries a prompt no other
request of the run had (no cache can answer). One line per phase on stderr, with the load
average; the last line is one JSON object:

- ``frontdoor_rps``: sustained requests/s through the front door (HTTP, JSON parse, router,
  SQL row, Celery message into Redis) with ``--threads`` keep-alive clients for
  ``--seconds``; no worker consumes, so this is the rate *into* Redis (requests that
  arrive together at a front-door process are accepted as one batch: ``docs/web.md``);
  ``frontdoor_vs_bare``: that rate over ``bare_apply_async_rps``;
- ``frontdoor_added_ms_p50/p99``: per request, request in to message enqueued (the
  ``X-Hadis-Added-Ms`` header the front door measures), under that load; the
  ``frontdoor_one_client_*`` figures are the same with one client (no contention);
  ``*_http_ms_p50/p99``: the client's whole round trip;
- ``bare_apply_async_rps`` and ``bare_apply_async_ms_p50/p99``: a bare ``send_task`` loop;
- ``pipeline_overhead_ms_p50/p99``: at ``--rate`` queries/s through the front door and two
  replay workers (plan batch ``--batch``: a worker drains up to B queued queries, it never
  waits to fill a batch): enqueue to done (SQL ``finished_at - enqueued_at``) minus the
  model time of the query's batch (``--pipeline-seconds 0`` skips it);
- ``bare_celery_overhead_ms_p50/p99``: the same for bare ``apply_async`` of a task that
  sleeps the same model time (send to the task's end, minus the sleep);
- ``cpu_ms_per_request``: CPU milliseconds per request in each phase, the whole machine's
  (``/proc/stat``), the clients' (this process) and the rest (front door, SQL, Redis);
  ``cpu_bound_ratio``: bare CPU per send over the front door's per request, the most
  ``frontdoor_vs_bare`` could be on a machine whose CPU is the limit;
- ``load_avg_1m``: the 1-minute load average after each phase (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CPU_KEYS = ("cpu_ms_machine", "cpu_ms_client", "cpu_ms_server")


def _pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs, float), q)), 3) if xs else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prompts:
    """Distinct prompts, handed out once each across every phase of the run: the reference
    captions, then the same with a variant number."""

    def __init__(self, n: int) -> None:
        from planner.reference import read_prompts, reference_path

        try:
            base = read_prompts(reference_path("prompts", "imagenet1k_captions_5k.txt"))
        except Exception:
            base = [f"a photo of object {i} on a table" for i in range(1000)]
        base = list(dict.fromkeys(base))
        self.items = [base[i % len(base)] + ("" if i < len(base) else f" (variant {i})")
                      for i in range(n)]
        assert len(set(self.items)) == len(self.items)
        self.i = 0
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            if self.i >= len(self.items):
                raise RuntimeError("out of distinct prompts: raise the count")
            self.i += 1
            return self.items[self.i - 1]


def _spawn(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p: subprocess.Popen) -> None:
    from hadis_celery.procs import stop_group

    stop_group(p)


def _post(conn: http.client.HTTPConnection, prompt: str) -> tuple[int, float, str, float]:
    body = json.dumps({"prompt": prompt})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/generations", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    http_ms = (time.perf_counter() - t0) * 1000
    added = float(resp.getheader("X-Hadis-Added-Ms") or "nan")
    qid = json.loads(data).get("id", "") if resp.status == 202 else ""
    return resp.status, added, qid, http_ms


class CpuMeter:
    """CPU seconds spent over a phase: the whole machine's (``/proc/stat``: every process,
    the front door, PostgreSQL and Redis included) and this benchmark process's own (the
    clients), so a phase's cost per request can be split into client and server."""

    def __init__(self) -> None:
        self.machine0, self.self0 = self._machine(), self._self()

    @staticmethod
    def _machine() -> float:
        try:
            with open("/proc/stat") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return float("nan")
        idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
        return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _self() -> float:
        t = os.times()
        return t.user + t.system

    def per_request_ms(self, n: int) -> dict:
        """Milliseconds of CPU per request since construction: machine, client, server
        (machine minus client: the front door, SQL, Redis, and whatever else ran)."""
        machine = self._machine() - self.machine0
        client = self._self() - self.self0
        k = 1000.0 / max(n, 1)
        return {"cpu_ms_machine": round(machine * k, 3), "cpu_ms_client": round(client * k, 3),
                "cpu_ms_server": round((machine - client) * k, 3)}


def throughput(port: int, prompts: Prompts, threads: int, seconds: float) -> dict:
    """Closed loop: ``threads`` keep-alive clients posting for ``seconds``."""
    added: list[float] = []
    http_ms: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            status, ms, _, rt = _post(conn, prompts.take())
            with lock:
                if status == 202:
                    added.append(ms)
                    http_ms.append(rt)
                else:
                    errors[0] += 1
        conn.close()

    t0 = time.monotonic()
    cpu = CpuMeter()
    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    return {"rps": round(len(added) / wall, 1), "n": len(added), "errors": errors[0],
            "p50": _pct(added, 50), "p99": _pct(added, 99),
            "http_p50": _pct(http_ms, 50), "http_p99": _pct(http_ms, 99),
            **cpu.per_request_ms(len(added) + errors[0]),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def bare_send(app, n: int) -> dict:
    times = []
    t0 = time.perf_counter()
    cpu = CpuMeter()
    for _ in range(n):
        t = time.perf_counter()
        app.send_task("hadis.bench_sleep", args=[0.0], queue="bench_idle", ignore_result=True)
        times.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t0
    return {"rps": round(n / wall, 1), "p50": _pct(times, 50), "p99": _pct(times, 99),
            **cpu.per_request_ms(n), "load_avg_1m": round(os.getloadavg()[0], 2)}


def open_loop(rate: float, seconds: float, fire) -> None:
    """Call ``fire(i)`` at ``rate`` per second for ``seconds`` (evenly spaced)."""
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fire(i)


@contextlib.contextmanager
def _database(kind: str, pg: str) -> Iterator[str]:
    """A migrated, empty database: a PostgreSQL schema of its own (dropped after) or a
    SQLite file in a temporary folder."""

    from hadis_celery import db

    if kind == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="hadis-bench-db-"))
        url = f"sqlite:///{tmp / 'bench.sqlite'}"
        e = db.make_engine(url)
        db.upgrade(e)
        e.dispose()
        try:
            yield url
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with db.temporary_schema(pg, "hadis_bench") as url:
        yield url


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.frontdoor")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/7")
    ap.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--seconds", type=float, default=8.0, help="throughput phase length")
    ap.add_argument("--one-client-seconds", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=4, help="clients of the throughput phase")
    ap.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes")
    ap.add_argument("--web-threads", type=int, default=4, help="app threads per process")
    ap.add_argument("--rate", type=float, default=20.0, help="pipeline phase, queries/s")
    ap.add_argument("--pipeline-seconds", type=float, default=10.0, help="0: no pipeline phase")
    ap.add_argument("--batch", type=int, default=4,
                    help="B of the pipeline phase's plan (workers drain up to B queued)")
    ap.add_argument("--time-factor", type=float, default=0.1,
                    help="replay factor (the example's fastest model: 0.5 s x factor)")
    args = ap.parse_args(argv)
    with _database(args.database, args.postgres) as url:
        return _run(args, url)


def _run(args, url: str) -> dict:
    import redis

    from hadis_celery import db, store
    from hadis_celery.celery import make_app
    from hadis_celery.live import LiveState
    from hadis_celery.settings import Settings
    from planner.policy import ActivePlan

    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="hadis-bench-"))
    engine = db.make_engine(url)
    s = Settings(database_url=url, broker_url=args.redis, redis_url="",
                 image_dir=tmp / "images", time_factor=args.time_factor,
                 rate_limit_per_min=0, api_keys=(), web_workers=args.web_workers,
                 web_threads=args.web_threads)
    env = dict(os.environ, **s.to_env(), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    live = LiveState.from_url(args.redis)
    # one light model, every image accepted, batch 1: model time is exactly the replay sleep
    plan = ActivePlan(plan_id=0, light=0, heavy=0, light_queue="light_sdxl",
                      heavy_queue="light_sdxl", theta=float("inf"), tau=float("-inf"),
                      routing="none", router_ratio=0.0, batch={0: max(1, args.batch)})
    live.publish_plan(plan)
    app = make_app(s)
    port = _free_port()
    procs = [_spawn(["-m", "webapp", "--port", str(port)], env, tmp / "frontdoor.log")]
    out: dict = {}
    kind = "postgresql" if url.startswith("postgresql") else "sqlite"
    server = f"gunicorn {args.web_workers} x {s.web_worker_class.rsplit('.', 1)[-1]}, " \
             f"{args.web_threads} threads"
    print(f"record: {kind}; front door: {server}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", file=sys.stderr)
    try:
        _wait(port, procs[0])
        prompts = Prompts(40000)
        # every front-door process pays its first requests (parser, pools) before timing
        throughput(port, prompts, max(args.threads, 2 * args.web_workers), 2.0)
        # 1. throughput into Redis (nobody consumes light_sdxl yet)
        one = throughput(port, prompts, 1, args.one_client_seconds)
        print(f"front door, one client: {one}", file=sys.stderr)
        tp = throughput(port, prompts, args.threads, args.seconds)
        print(f"front door, {args.threads} clients: {tp}", file=sys.stderr)
        bare = bare_send(app, 2000)
        print(f"bare send_task: {bare}", file=sys.stderr)
        ratio = round(tp["rps"] / bare["rps"], 3) if bare["rps"] else float("nan")
        print(f"front door with {args.threads} clients / bare send: {ratio}x; added p50/p99 "
              f"one client {one['p50']}/{one['p99']} ms, {args.threads} clients "
              f"{tp['p50']}/{tp['p99']} ms", file=sys.stderr)
        out = {
            "record": kind, "server": server, "distinct_prompts": prompts.i,
            "frontdoor_rps": tp["rps"], "frontdoor_requests": tp["n"],
            "frontdoor_errors": tp["errors"], "frontdoor_added_ms_p50": tp["p50"],
            "frontdoor_added_ms_p99": tp["p99"], "frontdoor_http_ms_p50": tp["http_p50"],
            "frontdoor_http_ms_p99": tp["http_p99"], "client_threads": args.threads,
            "frontdoor_vs_bare": ratio,
            "frontdoor_one_client_rps": one["rps"],
            "frontdoor_one_client_added_ms_p50": one["p50"],
            "frontdoor_one_client_added_ms_p99": one["p99"],
            "frontdoor_one_client_http_ms_p50": one["http_p50"],
            "frontdoor_one_client_http_ms_p99": one["http_p99"],
            "bare_apply_async_rps": bare["rps"], "bare_apply_async_ms_p50": bare["p50"],
            "bare_apply_async_ms_p99": bare["p99"],
            # CPU per request over each phase (ms): the machine's, the clients' (this
            # process), the rest (server side); ``cpu_bound_ratio``: the front door's rate
            # over the bare rate if both were limited by the machine's CPU alone
            "cpu_ms_per_request": {"one_client": {k: one[k] for k in CPU_KEYS},
                                   "clients": {k: tp[k] for k in CPU_KEYS},
                                   "bare": {k: bare[k] for k in CPU_KEYS}},
            "cpu_bound_ratio": round(bare["cpu_ms_machine"] / tp["cpu_ms_machine"], 3)
            if tp["cpu_ms_machine"] else float("nan"),
            "load_avg_1m": {"one_client": one["load_avg_1m"], "clients": tp["load_avg_1m"],
                            "bare": bare["load_avg_1m"]},
            "cpus": os.cpu_count(),
        }
        if args.pipeline_seconds > 0:
            out.update(_pipeline(args, app, r, live, plan, port, prompts, engine, store, env,
                                 tmp, procs))
            out["load_avg_1m"]["pipeline"] = round(os.getloadavg()[0], 2)
    finally:
        for p in procs:
            _stop(p)
        r.flushdb()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))
    return out


def _pipeline(args, app, r, live, plan, port, prompts, engine, store, env, tmp,
              procs) -> dict:
    """Phase 2: the pipeline at ``--rate`` with two replay workers, then bare Celery."""
    r.flushdb()
    live.publish_plan(plan)
    for i in range(2):
        procs.append(_spawn(["-m", "celery", "-A", "hadis_celery", "worker", "-Q",
                             "light_sdxl,bench_bare", "-c", "1", "-n", f"bench{i}@%h",
                             "--without-mingle", "--without-gossip", "-l", "warning"],
                            env, tmp / f"worker{i}.log"))
    deadline = time.monotonic() + 60
    while len(app.control.ping(timeout=0.5) or []) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("bench workers did not start")
    model_s = 0.5 * args.time_factor
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    warm = [_post(conn, prompts.take())[2] for _ in range(8)]  # cold start excluded
    _wait_rows(engine, store, warm, 60)
    ids: list[str] = []
    open_loop(args.rate, args.pipeline_seconds,
              lambda i: ids.append(_post(conn, prompts.take())[2]))
    rows = _wait_rows(engine, store, ids, 120)
    over = [(x.finished_at - x.enqueued_at - x.model_s) * 1000 for x in rows
            if x.status == "done"]
    e2e = [(x.finished_at - x.received_at - x.model_s) * 1000 for x in rows
           if x.status == "done"]
    print(f"pipeline: {len(over)} done of {len(ids)}", file=sys.stderr)
    sent: list[tuple[float, object]] = []
    open_loop(args.rate, args.pipeline_seconds, lambda i: sent.append(
        (time.time(), app.send_task("hadis.bench_sleep", args=[model_s],
                                    queue="bench_bare"))))
    bare_over = []
    for t_send, res in sent:
        t_end = float(res.get(timeout=60))
        bare_over.append((t_end - t_send - model_s) * 1000)
    return {
        "rate_qps": args.rate, "batch": args.batch, "pipeline_queries": len(ids),
        "pipeline_done": len(over), "model_ms": round(model_s * 1000, 3),
        "pipeline_overhead_ms_p50": _pct(over, 50), "pipeline_overhead_ms_p99": _pct(over, 99),
        "request_to_done_minus_model_ms_p50": _pct(e2e, 50),
        "request_to_done_minus_model_ms_p99": _pct(e2e, 99),
        "bare_celery_overhead_ms_p50": _pct(bare_over, 50),
        "bare_celery_overhead_ms_p99": _pct(bare_over, 99),
    }


def _wait(port: int, proc: subprocess.Popen, timeout_s: float = 90) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("the front door exited")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/v1/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the front door did not come up")


def _wait_rows(engine, store, ids: list[str], timeout_s: float):
    from sqlalchemy import select

    from hadis_celery.db import transaction
    from hadis_celery.tables import QueryRow

    end = time.monotonic() + timeout_s
    while True:
        with transaction(engine) as s:
            rows = list(s.scalars(select(QueryRow).where(QueryRow.id.in_(ids))))
        if all(x.status in store.FINAL for x in rows) or time.monotonic() > end:
            return rows
        time.sleep(0.5)


if __name__ == "__main__":
    main()
