"""A live replay's records as the simulator's ``SimResult``, so one report serves both.

The live stack runs in wall time, ``time_scale`` times slower than the profile (replay
latencies x K, SLO x K, plan period x K...). A live run is turned into profile time here:
every wall time is taken relative to the replay's start ``t0`` and divided by K, so its
SLO violation ratio, FID windows, latencies and time series read like the simulator's run
of the same trace (``SimResult.summary()`` and ``sim.report`` apply unchanged).

Per arrival, what the stack said becomes the simulator's outcome:

- ``served`` / ``late``: the query is ``done``, finished by or after its deadline (the
  front door's ``received_at + slo_s``, as the stack judged it);
- ``dropped``: dropped or failed by the stack, refused by the front door (4xx/5xx: a 503 or
  429 is an arrival the stack did not take), a connection error, or still open when the
  replay stopped waiting (the simulator's "still queued at the end").

The path (light, direct, rerouted) and the pair in force at arrival (the query's plan)
feed the FID windows exactly as ``sim.engine`` counts them: a window holds the images
*finished* in it, keyed by the pair of the plan that routed them at arrival.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from planner.registry import Registry
from planner.status import QueryStatus
from sim.engine import DROPPED, LATE, PATHS, SERVED, STATUS_NAMES, SimResult, SimSettings
from sim.fid import FidSurface


@dataclass
class LiveRecord:
    """One arrival of a replay: its POST and, for an accepted query, its final state."""

    index: int  # arrival number in the (sorted) trace
    t_s: float  # trace seconds from the replay's start (profile time)
    prompt_index: int
    scheduled_at: float  # epoch seconds the arrival was due at
    sent_at: float | None = None  # epoch seconds the POST began (None: never sent)
    responded_at: float | None = None
    http_status: int = 0  # 0: no HTTP answer (connection error or not sent)
    error: str | None = None  # the API's error code and message, or the connection error
    id: str | None = None
    route: str | None = None  # light | heavy (the front door's decision)
    hardness: float | None = None  # the router's score
    theta: float | None = None  # θ of the plan that routed it
    plan_id: int | None = None
    slo_s: float | None = None  # wall seconds, as the stack applied it
    received_at: float | None = None
    deadline: float | None = None
    added_ms: float | None = None  # front door: request in to message sent
    status: str = "unsent"  # the stack's status when last read (done, dropped, ...)
    models: list[int] = field(default_factory=list)  # model ids that ran, in order
    served_model: int | None = None
    quality: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    model_s: float | None = None
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.http_status == 202 and self.id is not None

    @property
    def send_lag_s(self) -> float | None:
        return None if self.sent_at is None else self.sent_at - self.scheduled_at


def outcome(r: LiveRecord) -> tuple[int, str | None]:
    """``(SERVED | LATE | DROPPED, reason)`` of one arrival (see the module doc)."""
    if r.sent_at is None:
        return DROPPED, "not sent (the replay was interrupted)"
    if not r.accepted:
        if r.http_status:
            return DROPPED, f"HTTP {r.http_status}: {r.error or 'refused'}"
        return DROPPED, f"no answer: {r.error or 'connection error'}"
    if r.status == QueryStatus.DONE and r.finished_at is not None and r.deadline is not None:
        return (SERVED if r.finished_at <= r.deadline + 1e-9 else LATE), None
    if r.status in (QueryStatus.DROPPED, QueryStatus.FAILED):
        return DROPPED, r.reason or r.status
    return DROPPED, f"still {r.status} when the replay stopped waiting"


def path_of(r: LiveRecord) -> int:
    """Index into ``PATHS``: direct when routed heavy, rerouted when a light query ran on a
    second model, light otherwise; -1 when the query never got a route."""
    if not r.accepted or r.route is None:
        return -1
    if r.route == "heavy":
        return PATHS.index("direct")
    return PATHS.index("rerouted") if len(r.models) >= 2 else PATHS.index("light")


def plan_epoch(plan: Mapping) -> float:
    """A plan's creation time (``created``, ISO 8601; naive means UTC) as epoch seconds."""
    created = plan.get("created")
    if not created:
        return math.nan
    dt = datetime.fromisoformat(str(created))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def plan_pair(plan: Mapping) -> tuple[int, int]:
    """(light, heavy) model ids of an API plan (``{"light": {"id": ..}, ...}``)."""
    def mid(x) -> int:
        return int(x["id"]) if isinstance(x, Mapping) else int(x)

    return mid(plan["light"]), mid(plan["heavy"])


def live_result(records: Sequence[LiveRecord], plans: Mapping[int, Mapping], *,
                t0: float, time_scale: float, surface: FidSurface | None,
                settings: SimSettings | None = None, name: str = "live",
                model_of_queue: Mapping[str, int] | None = None,
                fallback: tuple[int, float] | None = None) -> SimResult:
    """The replay as a ``SimResult`` in profile time (see the module doc). ``plans``: API
    plan objects by id; ``surface``: the profiled FID grid (None: FID unknown, NaN);
    ``fallback``: ``sim.fid.fallback_model``'s (model, FID) for ``fid_all`` (None: NaN)."""
    if not time_scale > 0:
        raise ValueError(f"time scale must be positive, got {time_scale!r}")
    k = float(time_scale)
    settings = settings or SimSettings()
    recs = sorted(records, key=lambda r: (r.t_s, r.index))
    n = len(recs)
    arrival = np.array([r.t_s for r in recs], dtype=float)
    finish = np.full(n, np.nan)
    status = np.full(n, DROPPED, dtype=int)
    path = np.full(n, -1, dtype=int)
    model = np.full(n, -1, dtype=int)
    quality = np.full(n, np.nan)
    reasons: list[str | None] = []
    executions: dict[int, int] = {}
    windows: dict[int, dict[tuple[int, int], dict[str, int]]] = {}
    end_wall = max([t for r in recs for t in (r.finished_at, r.responded_at, r.scheduled_at)
                    if t is not None], default=t0)
    for i, r in enumerate(recs):
        st, why = outcome(r)
        status[i], path[i] = st, path_of(r)
        reasons.append(why)
        # when it ended: finished, refused (the answer), or still open at the end
        wall = r.finished_at if r.finished_at is not None else (
            r.responded_at if not r.accepted and r.responded_at is not None else end_wall)
        finish[i] = (wall - t0) / k
        for m in r.models:
            executions[int(m)] = executions.get(int(m), 0) + 1
        if st == DROPPED:
            continue
        model[i] = -1 if r.served_model is None else int(r.served_model)
        quality[i] = np.nan if r.quality is None else float(r.quality)
        plan = plans.get(r.plan_id) if r.plan_id is not None else None
        if plan is None or path[i] < 0:
            continue
        win = int(finish[i] // settings.fid_window_s)
        counts = windows.setdefault(win, {}).setdefault(plan_pair(plan), {})
        p = PATHS[path[i]]
        counts[p] = counts.get(p, 0) + 1
    fid_windows = [{"t": w * settings.fid_window_s,
                    "images": sum(sum(c.values()) for c in windows[w].values()),
                    "fid": surface.mix_fid(windows[w]) if surface is not None else math.nan}
                   for w in sorted(windows)]
    return SimResult(
        arrival_s=arrival, finish_s=finish, status=status, path=path, served_model=model,
        served_quality=quality, drop_reason=reasons,
        timeline=plan_timeline(plans, t0=t0, time_scale=k, end_s=(end_wall - t0) / k,
                               model_of_queue=model_of_queue),
        fid_windows=fid_windows, executions=executions, settings=settings, planner_name=name,
        solve_ms=[float(p["solve_ms"]) for p in plans.values()
                  if isinstance(p.get("solve_ms"), int | float)],
        **({"fallback_model": fallback[0], "fallback_fid": fallback[1]} if fallback else {}),
    )


def plan_timeline(plans: Mapping[int, Mapping], *, t0: float, time_scale: float,
                  end_s: float, model_of_queue: Mapping[str, int] | None = None
                  ) -> list[dict]:
    """The plans in force during the replay, in the simulator's timeline shape (profile
    seconds; the plan in force at the start is dated 0)."""
    rows = sorted(((plan_epoch(p), pid, p) for pid, p in plans.items()
                   if math.isfinite(plan_epoch(p))), key=lambda x: (x[0], x[1]))
    before = [x for x in rows if x[0] < t0]
    during = [x for x in rows if t0 <= x[0] <= t0 + end_s * time_scale]
    out = []
    for when, pid, p in before[-1:] + during:
        workers: dict[str, int] = {}
        for q, n in dict(p.get("workers") or {}).items():
            key = str(model_of_queue[q]) if model_of_queue and q in model_of_queue else q
            workers[key] = workers.get(key, 0) + int(n)
        demand = p.get("demand")
        out.append({
            "t": max(0.0, (when - t0) / time_scale), "plan_id": pid,
            "demand_estimate": float(demand) * time_scale if isinstance(demand, int | float)
            else math.nan,
            "pair": list(plan_pair(p)), "router_ratio": p.get("router_ratio"),
            "disc_ratio": p.get("disc_ratio"), "planned_fid": p.get("fid"),
            "overloaded": bool(p.get("overloaded")), "workers": workers,
            "batch": dict(p.get("batch") or {}),
        })
    return out


def grid_surface(profile_dir: str | Path, registry: Registry) -> FidSurface:
    """The FID surface of a profiled hybrid grid (``config_results_hybrid.csv`` of an
    artifact-layout folder, model ids of the deployment's ``registry``): the simulator's
    FID estimate, read the same way."""
    from planner.cascade import CascadeConfig
    from planner.reference_table import HYBRID_CSV, read_hybrid_csv

    rows = read_hybrid_csv(Path(profile_dir) / HYBRID_CSV, registry)
    return FidSurface(CascadeConfig(light=r["light"], heavy=r["heavy"],
                                    router_ratio=r["router_ratio"], theta=math.nan,
                                    disc_ratio=r["disc_ratio"], tau=math.nan, fid=r["fid"])
                      for r in rows)


# -- comparison ------------------------------------------------------------------------------

def _pct(xs: Sequence[float], q: float) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return round(float(np.percentile(xs, q)), 3) if xs else None


def overheads(records: Sequence[LiveRecord], swap_wall_s: float | None = None) -> dict:
    """What the live machinery added, in wall milliseconds: the open-loop generator's send
    lag (sent minus due), the front door's added time (request in to message sent,
    ``X-Hadis-Added-Ms``), the HTTP round trip, and a batch's own work beyond the model
    (claimed to finished minus model seconds, one-model queries: SQL, PNG, plan read).
    A batch that loaded another model first also holds the swap delay; with
    ``swap_wall_s`` those (overhead of at least 90% of it) are counted apart."""
    lag = [r.send_lag_s * 1000 for r in records if r.send_lag_s is not None]
    added = [r.added_ms for r in records if r.added_ms is not None]
    rtt = [(r.responded_at - r.sent_at) * 1000 for r in records
           if r.sent_at is not None and r.responded_at is not None]
    batch = [(r.finished_at - r.started_at - r.model_s) * 1000 for r in records
             if r.status == QueryStatus.DONE and len(r.models) == 1 and None not in
             (r.finished_at, r.started_at, r.model_s)]
    swapped = [] if not swap_wall_s else [b for b in batch if b >= 900.0 * swap_wall_s]
    if swapped:
        batch = [b for b in batch if b < 900.0 * swap_wall_s]
    return {
        "send_lag_ms_p50": _pct(lag, 50), "send_lag_ms_p99": _pct(lag, 99),
        "send_lag_ms_max": _pct(lag, 100),
        "frontdoor_added_ms_p50": _pct(added, 50), "frontdoor_added_ms_p99": _pct(added, 99),
        "http_rtt_ms_p50": _pct(rtt, 50), "http_rtt_ms_p99": _pct(rtt, 99),
        "batch_overhead_ms_p50": _pct(batch, 50), "batch_overhead_ms_p99": _pct(batch, 99),
        **({"queries_behind_a_swap": len(swapped)} if swap_wall_s else {}),
    }


def pair_shares(res: SimResult) -> dict[str, float]:
    """Share of arrivals under each pair (the plan in force at arrival, from the timeline)."""
    plans = [t for t in res.timeline if "pair" in t]
    if not plans or res.n == 0:
        return {}
    ts = np.array([t["t"] for t in plans])
    k = np.clip(np.searchsorted(ts, res.arrival_s, side="right") - 1, 0, len(plans) - 1)
    out: dict[str, float] = {}
    for j in k:
        key = ":".join(map(str, plans[j]["pair"]))
        out[key] = out.get(key, 0) + 1
    return {p: round(c / res.n, 4) for p, c in sorted(out.items())}


def path_shares(res: SimResult) -> dict[str, float]:
    """Share of served (on time or late) queries by path."""
    ok = res.status != DROPPED
    n = int(ok.sum())
    return {p: round(float(np.sum(res.path[ok] == i)) / n, 4) if n else 0.0
            for i, p in enumerate(PATHS)}


def compare(live: SimResult, sim: SimResult, *, slo_points: float = 2.0,
            fid_pct: float = 3.0) -> dict:
    """Both runs' headline figures, their differences and whether they meet the targets
    (SLO violation ratios within ``slo_points`` points, FID within ``fid_pct`` percent)."""
    dv = 100.0 * (live.slo_violation_ratio - sim.slo_violation_ratio)
    df = 100.0 * (live.fid - sim.fid) / sim.fid if math.isfinite(sim.fid) and sim.fid else math.nan
    return {
        "slo_violation_ratio_live": round(live.slo_violation_ratio, 5),
        "slo_violation_ratio_sim": round(sim.slo_violation_ratio, 5),
        "slo_violation_diff_points": round(dv, 3),
        "fid_live": round(live.fid, 4), "fid_sim": round(sim.fid, 4),
        "fid_diff_pct": round(df, 3),
        "within_target": bool(abs(dv) <= slo_points and math.isfinite(df)
                              and abs(df) <= fid_pct),
        "target": {"slo_points": slo_points, "fid_pct": fid_pct},
        "pair_share_live": pair_shares(live), "pair_share_sim": pair_shares(sim),
        "path_share_live": path_shares(live), "path_share_sim": path_shares(sim),
    }


# -- the report (files) -----------------------------------------------------------------------

QUERY_COLUMNS = [f.name for f in fields(LiveRecord)] + [
    "outcome", "path", "outcome_reason", "send_lag_ms", "latency_s", "latency_profile_s"]


def query_rows(records: Sequence[LiveRecord], time_scale: float) -> list[dict]:
    """One CSV row per arrival: the record, its outcome and path, and latencies."""
    rows = []
    for r in sorted(records, key=lambda r: (r.t_s, r.index)):
        st, why = outcome(r)
        p = path_of(r)
        lat = (r.finished_at - r.received_at) if None not in (r.finished_at,
                                                              r.received_at) else None
        d = asdict(r)
        d["models"] = ",".join(map(str, r.models))
        d.update(outcome=STATUS_NAMES[st], path=PATHS[p] if p >= 0 else "",
                 outcome_reason=why or "",
                 send_lag_ms=None if r.send_lag_s is None else round(r.send_lag_s * 1000, 3),
                 latency_s=lat, latency_profile_s=None if lat is None else lat / time_scale)
        rows.append({k: ("" if v is None else v) for k, v in d.items()})
    return rows


def write_report(out: str | Path, runs: Mapping[str, SimResult], records: Sequence[LiveRecord],
                 *, time_scale: float, summary: Mapping, title: str, notes: str = "",
                 bin_s: float = 10.0) -> list[Path]:
    """``queries.csv`` (every arrival), ``summary.json``, ``timeseries.csv``,
    ``timeseries.png`` (demand, FID and SLO violations over time) and ``report.md``."""
    from sim.report import markdown_table, plot_timeseries, timeseries_rows, write_csv

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = query_rows(records, time_scale)
    with (out / "queries.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=QUERY_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    write_csv(out / "timeseries.csv", timeseries_rows(runs, bin_s))
    write_csv(out / "plans.csv", [
        {"run": name, **{k: (json.dumps(v) if isinstance(v, dict | list) else v)
                         for k, v in t.items()}}
        for name, r in runs.items() for t in r.timeline])
    plot_timeseries(out / "timeseries.png", runs, bin_s, title)
    table = [{**r.summary(), "run": name} for name, r in runs.items()]
    cols = ["run", "queries", "served", "late", "dropped", "slo_violation_ratio", "fid",
            "mean_quality", "latency_p50_s", "latency_p99_s", "plan_changes"]
    (out / "report.md").write_text(
        f"# {title}\n\n{markdown_table(table, cols)}\n"
        f"Times are profile seconds (wall seconds / time scale {time_scale:g}).\n\n{notes}\n"
        "Files: `queries.csv` (every arrival), `summary.json`, `timeseries.csv`, "
        "`plans.csv` (the plans in force, per run), "
        "`timeseries.png` (demand, FID per 30 s window, SLO violations per 10 s).\n")
    return [out / n for n in ("queries.csv", "summary.json", "timeseries.csv", "plans.csv",
                              "timeseries.png", "report.md")]
