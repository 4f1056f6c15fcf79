"""Testbed: the live stack against the simulator, on the same trace and the same settings.

``python -m bench.testbed`` (Redis database 12, flushed before and after; a temporary
SQLite file) starts the full stack with ``hadis up`` (front door, 16 replay workers, the
planner worker with beat running the HADIS planner), replays ``azure_multi_1to20qps``
open loop at time scale K with ``hadis_celery.loadgen`` (what ``hadis replay`` runs),
stops the stack, runs the simulator on the same arrivals with the same settings, writes
the report of both runs under ``--out`` and prints one JSON object as its last line: both
runs' figures, their differences, and the live machinery's measured overheads.

Scaled time (docs/testbed.md): arrivals at t x K, replay latencies x K, SLO 60 K, plan
period 5 K, demand half-life 10 K, swap delay 10 profile seconds (the worker sleeps it
x K). Every live figure is converted back to profile seconds (wall / K) before it is
compared. Both runs plan over the same table (the scenario's full profiled grid, written
to a temporary profile file the stack loads) with the same planner and solver, from the
same state (an idle stack: demand estimate 0), with the trace started just after a beat
tick so that plans fall on the simulator's period boundaries.

``sim_jittered`` reruns the simulator with every arrival delayed by a uniform draw up to
what the live front door added (p99): how much the simulator's own figures move under a
perturbation that small. ``replay`` plans the live run's recorded planner inputs again
(``hadis plan replay``): periods where the planner, given what the beat saw, decides
otherwise than it did live. ``--runs N`` repeats the whole run N times (a fresh stack
each) and prints each run and the spread (min / median / max) of the violation ratio, FID
and plan changes, live and simulated. HADIS runs with its switch-cost check on both
sides, as the live stack does by default (``--no-switch-cost``: the paper's wrapper, which
flip-flops between pairs on this trace; docs/testbed.md). ``--planner`` (any of ``PLANNERS``),
``--start/--duration/--limit`` (a slice) and ``--keep`` (keep the database and logs) are
for investigations.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACE = "azure_multi_1to20qps.txt"
TIME_SCALE = 2.0  # see docs/testbed.md: the 2-core machine keeps up, a run takes ~13 min


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGINT ``hadis up`` (it stops its children), SIGKILL its group if it lingers."""
    from hadis_celery.procs import stop_group

    stop_group(proc, grace_s, signal.SIGINT)


def _wait_lines(path: Path, proc: subprocess.Popen, marker: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        text = path.read_text(errors="replace") if path.exists() else ""
        if any(line.startswith(marker) for line in text.splitlines()):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"hadis up exited ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"hadis up did not print {marker!r} within {timeout_s:g} s")


def _wait_workers(live, n: int, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while len(live.live_workers()) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"only {len(live.live_workers())} of {n} workers came up")
        time.sleep(1.0)


def _next_tick(live, period_s: float, timeout_s: float = 120.0) -> float:
    """Epoch second of the beat's next tick: wait for a tick, add a period. Starting the
    trace just after a tick puts the live plans on the simulator's period boundaries."""
    from hadis_celery.live import BEAT_KEY

    first = (live.get_json(BEAT_KEY) or {}).get("t")
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        t = (live.get_json(BEAT_KEY) or {}).get("t")
        if t is not None and t != first:
            return float(t) + period_s
        time.sleep(0.1)
    raise RuntimeError("the beat did not tick")


def _fig(res) -> dict:
    s = res.summary()
    keys = ("queries", "served", "late", "dropped", "slo_violation_ratio", "fid",
            "mean_quality", "latency_p50_s", "latency_p99_s", "executions", "plan_changes")
    return {k: s[k] for k in keys}


SPREAD_KEYS = ("slo_violation_ratio", "fid", "plan_changes")


def spread(runs: list[dict]) -> dict:
    """Min / median / max (and every value, in run order) of the violation ratio, FID and
    plan changes, live and simulated, over ``runs``."""
    import numpy as np

    out: dict = {}
    for side in ("live", "sim"):
        out[side] = {}
        for k in SPREAD_KEYS:
            vals = [r[side][k] for r in runs]
            out[side][k] = {"min": min(vals), "median": round(float(np.median(vals)), 5),
                            "max": max(vals), "runs": vals}
    out["violation_points_apart"] = [r["diff"]["slo_violation_diff_points"] for r in runs]
    out["fid_pct_apart"] = [r["diff"]["fid_diff_pct"] for r in runs]
    out["within_target"] = [r["diff"]["within_target"] for r in runs]
    return out


def main(argv: list[str] | None = None) -> dict:
    from planner.baselines import PLANNERS

    ap = argparse.ArgumentParser(prog="python -m bench.testbed")
    ap.add_argument("--time-scale", type=float, default=TIME_SCALE,
                    help="K: wall seconds per trace second")
    ap.add_argument("--trace", default=TRACE, help="trace under the reference traces/")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--start", type=float, default=0.0, help="slice start, trace seconds")
    ap.add_argument("--duration", type=float, default=None, help="slice length, trace s")
    ap.add_argument("--limit", type=int, default=None, help="at most this many arrivals")
    ap.add_argument("--planner", default="hadis", choices=list(PLANNERS),
                    help="planner of both runs")
    ap.add_argument("--switch-cost", action=argparse.BooleanOptionalAction, default=None,
                    help="hadis only: the wrapper's switch-cost check on both sides "
                         "(HadisPlanner(switch_cost=True); live: HADIS_SWITCH_COST=1); on by "
                         "default, as in the live stack; --no-switch-cost: the paper's wrapper")
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat the whole run (a fresh stack each); print each and the spread")
    ap.add_argument("--solver", default="highs", help="MILP solver of both runs")
    ap.add_argument("--jitter-runs", type=int, default=8,
                    help="simulator runs with arrivals delayed by up to the live run's "
                         "measured front-door delay (the simulator's own sensitivity)")
    ap.add_argument("--threads", type=int, default=8, help="load generator senders")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--database", default=None, help="SQL URL (default: temporary SQLite)")
    ap.add_argument("--out", default="out/testbed", help="report folder")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary folder (database, logs) and print its path")
    args = ap.parse_args(argv)
    if not args.time_scale > 0:
        ap.error("--time-scale must be positive")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.switch_cost and args.planner != "hadis":
        ap.error("--switch-cost is an option of the hadis planner")
    args.switch_cost = args.planner == "hadis" and args.switch_cost is not False
    if args.runs == 1:
        out = one_run(args, args.out)
        print(json.dumps(out))
        return out
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1} of {args.runs}", file=sys.stderr)
        r = one_run(args, str(Path(args.out) / f"run{i + 1}"))
        runs.append(r)
        print(json.dumps({"run": i + 1, "live": r.get("live"), "sim": r.get("sim"),
                          "diff": r.get("diff"), "replay": r.get("replay")}),
              file=sys.stderr)
    done = [r for r in runs if r]
    out = {"runs": len(runs), "planner": args.planner, "trace": args.trace,
           "time_scale": args.time_scale, "workers": args.workers,
           "each": [{k: r.get(k) for k in ("live", "sim", "diff", "replay", "arrivals",
                                           "total_wall_s", "load_avg_p50")} for r in runs],
           "spread": spread(done) if done else None}
    (Path(args.out) / "runs.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return out


def one_run(args: argparse.Namespace, out_dir: str) -> dict:
    """One live run and its simulator runs (the module doc); the summary, also written
    under ``out_dir``."""
    import numpy as np
    import redis
    from tqdm import tqdm

    from hadis_celery.commands.plan import load_profile, replay_rows
    from hadis_celery.live import LiveState
    from hadis_celery.loadgen import Client, Endpoint, replay, select_arrivals
    from hadis_celery.scenario import default_scenario
    from planner.baselines import make_planner
    from planner.demand import EwmaDemand
    from planner.table import ProfileTable
    from sim.engine import Simulation, Workload
    from sim.fid import fallback_model
    from sim.live import compare, live_result, overheads, write_report
    from sim.trace import Trace, read_trace
    from sim.workload import build_workload

    k = float(args.time_scale)
    t_start = time.monotonic()
    sc = default_scenario(workers=args.workers)
    s = sc.settings
    prompts = sc.imagenet.prompts
    trace = read_trace(sc.trace_path(args.trace), n_prompts=len(prompts))
    arrivals = select_arrivals(trace.arrival_s, trace.prompt_index, start_s=args.start,
                               duration_s=args.duration, limit=args.limit)
    model_of_queue = {q: m.id for m in sc.registry for q in (m.light_queue, m.heavy_queue)}

    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    tmp = Path(tempfile.mkdtemp(prefix="hadis-testbed-"))
    table_path = tmp / "table.json"
    ProfileTable(name="testbed-sd35", registry=sc.registry, rows=tuple(sc.table),
                 source="sim.scenario.default_scenario() grid (the simulator's table)",
                 ).save(table_path)
    db_url = args.database or f"sqlite:///{tmp / 'testbed.sqlite'}"
    port = _free_port()
    env = dict(os.environ, HADIS_BROKER_URL=args.redis, HADIS_REDIS_URL="",
               HADIS_IMAGE_DIR=str(tmp / "images"), PYTHONUNBUFFERED="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               HADIS_SWITCH_COST="1" if args.switch_cost else "0")
    up_cmd = [sys.executable, "-m", "hadis_celery.cli", "up", "--workers", str(args.workers),
              "--port", str(port), "--time-factor", repr(k),
              "--plan-period", repr(s.period_s * k), "--planner", args.planner,
              "--solver", args.solver, "--slo", repr(s.slo_s * k),
              "--half-life", repr(sc.half_life_s * k), "--swap-delay", repr(s.swap_delay_s),
              "--rate-limit", "0", "--budget", str(args.workers), "--database", db_url,
              "--profile", str(table_path), "--no-flower", "--logs", str(tmp / "log")]
    up_log = tmp / "up.out"
    with open(up_log, "wb") as fh:
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # earlier runs' stacks
        up = subprocess.Popen(up_cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              start_new_session=True)
    out: dict = {}
    try:
        _wait_lines(up_log, up, "ready", 300)
        live_state = LiveState.from_url(args.redis)
        _wait_workers(live_state, args.workers, 300)
        time.sleep(2 * s.period_s * k)  # two beat ticks: every worker bound to the plan
        start_at = _next_tick(live_state, s.period_s * k) + 0.1
        print(f"stack up: {args.workers} workers, K={k:g}, {len(arrivals)} arrivals, "
              f"{time.monotonic() - t_start:.0f} s", file=sys.stderr)

        client = Client(Endpoint.parse(f"http://127.0.0.1:{port}"))
        sent = tqdm(total=len(arrivals), desc="sent", unit="q", file=sys.stderr)
        ended = tqdm(total=len(arrivals), desc="ended", unit="q", file=sys.stderr)
        load = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(5.0):
                load.append(os.getloadavg()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        run = replay(client, arrivals, prompts, time_scale=k, threads=args.threads,
                     wait_s=max(60.0, 2 * s.period_s * k), on_sent=sent.update,
                     on_collected=ended.update, start_at=start_at)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        sampling.set()
        sent.close()
        ended.close()
        _stop(up)
        stack_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)

        live = live_result(run.records, run.plans, t0=run.t0, time_scale=k,
                           surface=sc.surface, settings=s, name="live",
                           model_of_queue=model_of_queue,
                           fallback=fallback_model(sc.registry, sc.surface))
        sl = Trace(arrival_s=np.array([a.t_s for a in arrivals]),
                   prompt_index=np.array([a.prompt_index for a in arrivals]), name=args.trace)
        wl = build_workload(sl, [sc.imagenet])

        def simulate(cold: bool, w=wl):
            # cold: the live stack's state at t0 (idle, demand estimate 0); else the
            # simulator's default start (demand 1, first period's rate taken as it is)
            demand = EwmaDemand(sc.half_life_s, initial=0.0 if cold else None)
            return Simulation(w, sc.registry, sc.table,
                              make_planner(args.planner, solver=args.solver,
                                           **({"switch_cost": True} if args.switch_cost
                                              else {})), demand,
                              sc.surface, replace(s, initial_demand=0.0) if cold else s,
                              theta_for=sc.router.threshold_for, name="sim").run()

        sim, sim_default = simulate(True), simulate(False)
        diff = compare(live, sim)
        over = overheads(run.records, swap_wall_s=s.swap_delay_s * k)
        # The simulator's own sensitivity: the same run with every arrival delayed by a
        # uniform draw up to what the live front door added (p99 send lag + p99 added).
        jitter_s = ((over["send_lag_ms_p99"] or 0.0) + (over["frontdoor_added_ms_p99"] or 0.0)
                    ) / 1000.0 / k
        spread = []
        for seed in tqdm(range(args.jitter_runs), desc="simulator, jittered", unit="run",
                         file=sys.stderr):
            rng = np.random.default_rng(seed)
            t = wl.arrival_s + rng.uniform(0.0, jitter_s, len(wl))
            o = np.argsort(t, kind="stable")
            res = simulate(True, Workload(t[o], wl.router_score[o],
                                          {m: q[o] for m, q in wl.quality.items()}))
            spread.append((res.slo_violation_ratio, res.fid))
        replayed = replay_recorded(db_url, str(table_path), load_profile, replay_rows)
        lengths = replayed.pop("lengths")
        for t in live.timeline:  # what the beat saw per queue, next to the simulator's
            if t.get("plan_id") in lengths:
                t["lengths"] = lengths[t["plan_id"]]
        slo_wall_ms = s.slo_s * k * 1000
        fastest_ms = min(m.latency_b1 for m in sc.registry) * k * 1000
        # what one query can pay on top of the model: the p99 of each part, added up
        worst = sum(v for v in (over["send_lag_ms_p99"], over["frontdoor_added_ms_p99"],
                                over["batch_overhead_ms_p99"]) if v is not None)
        out = {
            "trace": args.trace, "time_scale": k, "workers": args.workers,
            "arrivals": len(arrivals), "start_s": args.start, "duration_s": args.duration,
            "settings": {"slo_s": s.slo_s, "period_s": s.period_s,
                         "half_life_s": sc.half_life_s, "swap_delay_s": s.swap_delay_s,
                         "planner": args.planner, "solver": args.solver,
                         "switch_cost": bool(args.switch_cost)},
            "t0": run.t0,
            "live": _fig(live), "sim": _fig(sim), "diff": diff,
            "sim_default_start": _fig(sim_default),
            "sim_jittered": {
                "runs": len(spread), "arrival_jitter_max_s": round(jitter_s, 4),
                "slo_violation_ratios": sorted(round(v, 4) for v, _ in spread),
                "fid_min": round(min(f for _, f in spread), 3) if spread else None,
                "fid_max": round(max(f for _, f in spread), 3) if spread else None,
            },
            "replay": replayed,
            "overheads_ms": over,
            "overhead_vs_slo": round(worst / slo_wall_ms, 5),
            "overhead_vs_fastest_model": round(worst / fastest_ms, 4),
            "http": run.http_counts(), "open_at_end": run.open_at_end,
            "loadgen_cpu_s": round((cpu1.ru_utime + cpu1.ru_stime)
                                   - (cpu0.ru_utime + cpu0.ru_stime), 1),
            "stack_cpu_s": round(stack_cpu.ru_utime + stack_cpu.ru_stime
                                 - children0.ru_utime - children0.ru_stime, 1),
            "send_wall_s": round(run.send_wall_s, 1),
            "total_wall_s": round(time.monotonic() - t_start, 1),
            "load_avg_p50": round(sorted(load)[len(load) // 2], 2) if load else None,
            "load_avg_max": round(max(load), 2) if load else None, "cpus": os.cpu_count(),
        }
        write_report(out_dir, {"live": live, "sim": sim, "sim-default-start": sim_default},
                     run.records, time_scale=k,
                     summary=out, title=f"Testbed: live stack vs simulator, {args.trace}, "
                     f"time scale {k:g}",
                     notes=f"Differences: {json.dumps(diff)}\n\nOverheads (wall ms): "
                           f"{json.dumps(over)}\n")
        (Path(out_dir) / "stack.log").write_text(up_log.read_text(errors="replace"))
        shutil.copytree(tmp / "log", Path(out_dir) / "logs", dirs_exist_ok=True)
    finally:
        _stop(up)
        r.flushdb()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def replay_recorded(db_url: str, profile: str, load_profile, replay_rows) -> dict:
    """``hadis plan replay`` over every plan the live beat recorded: how many, how many
    the planner decides otherwise when given the same inputs again, and the first few."""
    from sqlalchemy import select

    from hadis_celery import db
    from hadis_celery.tables import PlanRow
    from planner.plan import Plan

    engine = db.make_engine(db_url)
    try:
        with db.transaction(engine) as ses:
            rows = [r for r in ses.scalars(select(PlanRow).order_by(PlanRow.id)) if r.inputs]
            lookup = {r.id: Plan.from_dict(r.body) for r in ses.scalars(select(PlanRow))}
    finally:
        engine.dispose()
    table, registry, _ = load_profile(profile, None, db_url)
    out = replay_rows(rows, table, registry, lookup=lookup)
    differ = [r for r in out if r.differs]
    lengths = {r.id: {q: int(v[0]) for q, v in dict(r.inputs.get("queues") or {}).items()
                      if int(v[0])} for r in rows}
    return {"plans": len(out), "differ": len(differ),
            "first_differing": [r.to_dict() for r in differ[:5]], "lengths": lengths}


if __name__ == "__main__":
    main()
