"""How many clients waiting on ``POST /v1/images/generations`` one front-door process holds.

``python -m bench.openai_wait`` (Redis database 6 on 127.0.0.1, flushed before and after;
SQLite in a temporary folder, or ``--database postgresql``): one gunicorn process of the
front door (``python -m webapp``, ``--web-threads`` app threads) and, for the served phase,
one replay worker. Phases:

1. ``hold``: ``--n`` concurrent image requests whose queue no worker consumes, so each
   waits until its deadline (``--slo`` s) plus the grace, then gets 504
   ``deadline_exceeded``. Once all are parked (``hadis_parked_requests`` on ``/metrics``)
   ``--probes`` new requests (``GET /v1/models`` and ``POST /v1/generations``) are timed;
2. ``served``: a replay worker starts; ``--n`` concurrent image requests all get their
   image (200, b64 PNGs); the peak of parked requests and the wall time are reported;
3. ``baseline`` (the same run): gunicorn's ``gthread`` worker with the same threads, where
   a waiting request holds its thread: ``--n`` requests (each given ``--slo`` + 15 s; status
   0: no answer by then), then the same probes, each given ``--probe-timeout`` s.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.frontdoor import _database, _free_port, _pct, _spawn, _stop, _wait

PARKED_RE = re.compile(r'^hadis_parked_requests\{kind="(now|peak)"\} ([0-9.e+]+)$', re.M)


async def parked(client, base: str) -> dict[str, float]:
    """The front door's parked-request gauges (0 where the poller does not exist)."""
    text = (await client.get(f"{base}/metrics")).text
    return {k: float(v) for k, v in PARKED_RE.findall(text)}


async def _probe(client, base: str, i: int, timeout_s: float) -> tuple[int, float]:
    t0 = time.monotonic()
    try:
        if i % 2:
            r = await client.get(f"{base}/v1/models", timeout=timeout_s)
        else:
            r = await client.post(f"{base}/v1/generations", timeout=timeout_s,
                                  json={"prompt": f"a probe lantern number {i}"})
        return r.status_code, (time.monotonic() - t0) * 1000
    except Exception:
        return 0, (time.monotonic() - t0) * 1000  # 0: no answer within the timeout


async def hold(base: str, n: int, slo_s: float, *, probes: int = 10,
               probe_timeout_s: float = 5.0, settle_s: float = 60.0,
               headers: dict | None = None, tag: str = "hold",
               request_timeout_s: float | None = None) -> dict:
    """Send ``n`` concurrent image requests, probe the server while they wait, then collect
    every answer. Returns the figures (statuses, parked counts, probe latencies)."""
    import httpx

    limits = httpx.Limits(max_connections=n + probes + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(limits=limits, headers=headers or {},
                                 timeout=request_timeout_s or slo_s + 120) as client:
        async def one(i: int) -> tuple[int, float, dict]:
            t0 = time.monotonic()
            try:
                r = await client.post(f"{base}/v1/images/generations", json={
                    "prompt": f"a {tag} lighthouse number {i} in the fog", "slo_s": slo_s})
                body = r.json()
            except Exception as exc:
                return 0, time.monotonic() - t0, {"error": repr(exc)}
            return r.status_code, time.monotonic() - t0, body

        t0 = time.monotonic()
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        seen = {"now": 0.0, "peak": 0.0}
        end = time.monotonic() + settle_s
        while time.monotonic() < end and not all(t.done() for t in tasks):
            try:
                seen = await parked(client, base) or seen
            except Exception:
                pass
            if seen.get("now", 0) >= n:
                break
            await asyncio.sleep(0.2)
        parked_at_probe = seen.get("now", 0.0)
        answered_before_probe = sum(t.done() for t in tasks)
        got = await asyncio.gather(*[_probe(client, base, i, probe_timeout_s)
                                     for i in range(probes)])
        results = await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        try:
            seen = await parked(client, base) or seen
        except Exception:
            pass
    statuses: dict[str, int] = {}
    for st, _, _ in results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    codes = sorted({b.get("error", {}).get("code") for st, _, b in results
                    if st != 200 and isinstance(b.get("error"), dict)} - {None})
    images = sum(len(b.get("data", [])) for st, _, b in results if st == 200)
    probe_ms = [ms for _, ms in got]
    return {
        "n": n, "slo_s": slo_s, "wall_s": round(wall, 2),
        "parked_when_probed": parked_at_probe, "parked_peak": seen.get("peak", 0.0),
        "answered_before_probe": answered_before_probe, "statuses": statuses,
        "error_codes": codes, "images": images,
        "wait_s_p50": _pct([w for _, w, _ in results], 50),
        "wait_s_max": round(max(w for _, w, _ in results), 2),
        "probes": probes, "probes_answered": sum(1 for st, _ in got if st in (200, 202)),
        "probe_ms_p50": _pct(probe_ms, 50), "probe_ms_max": round(max(probe_ms), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.openai_wait")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/6")
    ap.add_argument("--database", choices=("postgresql", "sqlite"), default="sqlite")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--n", type=int, default=300, help="concurrent waiting requests")
    ap.add_argument("--slo", type=float, default=8.0, help="slo_s of the held requests")
    ap.add_argument("--web-threads", type=int, default=4)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--probe-timeout", type=float, default=5.0)
    ap.add_argument("--time-factor", type=float, default=0.01,
                    help="served phase replay factor (fastest model: 0.5 s x factor)")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)
    with _database(args.database, args.postgres) as url:
        return _run(args, url)


def _run(args, url: str) -> dict:
    import redis

    from hadis_celery.celery import make_app
    from hadis_celery.live import LiveState
    from hadis_celery.settings import Settings
    from planner.policy import ActivePlan

    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="hadis-openai-wait-"))
    s = Settings(database_url=url, broker_url=args.redis, redis_url="",
                 image_dir=tmp / "images", time_factor=args.time_factor,
                 rate_limit_per_min=0, api_keys=(), web_workers=1,
                 web_threads=args.web_threads, heartbeat_s=1.0)
    env = dict(os.environ, **s.to_env(), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    plan = ActivePlan(plan_id=0, light=0, heavy=0, light_queue="light_sdxl",
                      heavy_queue="light_sdxl", theta=float("inf"), tau=float("-inf"),
                      routing="none", router_ratio=0.0, batch={0: 8})
    LiveState.from_url(args.redis).publish_plan(plan)
    procs = []
    out: dict = {"record": "postgresql" if url.startswith("postgresql") else "sqlite",
                 "server": f"gunicorn 1 x BufferedWorker, {args.web_threads} threads",
                 "cpus": os.cpu_count()}
    try:
        port = _free_port()
        procs.append(_spawn(["-m", "webapp", "--port", str(port)], env, tmp / "fd.log"))
        _wait(port, procs[-1])
        base = f"http://127.0.0.1:{port}"
        out["hold"] = asyncio.run(hold(base, args.n, args.slo, probes=args.probes,
                                       probe_timeout_s=args.probe_timeout))
        print(f"hold: {out['hold']}", file=sys.stderr)
        procs.append(_spawn(["-m", "celery", "-A", "hadis_celery", "worker", "-Q",
                             "light_sdxl", "-c", "1", "-n", "waitbench@%h",
                             "--without-mingle", "--without-gossip", "-l", "warning"],
                            env, tmp / "worker.log"))
        app = make_app(s)
        end = time.monotonic() + 90
        while not app.control.ping(timeout=0.5):
            if time.monotonic() > end:
                raise RuntimeError("the replay worker did not start")
        out["served"] = asyncio.run(hold(base, args.n, 60.0, probes=args.probes,
                                         probe_timeout_s=args.probe_timeout, settle_s=5.0,
                                         tag="served"))
        print(f"served: {out['served']}", file=sys.stderr)
        _stop(procs.pop(0))
        if not args.no_baseline:  # the same wait on gunicorn's gthread worker
            _stop(procs.pop())  # no worker: the requests wait to their deadline again
            port = _free_port()
            genv = dict(env, HADIS_WEB_WORKER_CLASS="gthread")
            procs.append(_spawn(["-m", "webapp", "--port", str(port)], genv,
                                tmp / "fd-gthread.log"))
            _wait(port, procs[-1])
            out["baseline_gthread"] = asyncio.run(hold(
                f"http://127.0.0.1:{port}", args.n, args.slo, probes=args.probes,
                probe_timeout_s=args.probe_timeout, settle_s=3.0 + args.slo / 4,
                tag="baseline", request_timeout_s=args.slo + 15))
            print(f"baseline (gthread): {out['baseline_gthread']}", file=sys.stderr)
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    finally:
        for p in procs:
            _stop(p)
        r.flushdb()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
