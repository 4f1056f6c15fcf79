"""The operator dashboard: read the stack's state (``collect``, the imperative shell), turn it
into display strings and plot geometry (``view`` and ``profile_view``, pure).

The page (``/ui/dashboard``) and its live update (``/ui/dashboard.json``) are built from the
same ``view``, so what a reload shows and what ``static/dashboard.js`` writes in place are
the same strings. Redis or SQL being down is shown on the page, never raised.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.exceptions
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from hadis_celery import store
from hadis_celery.deployment import model_queues
from hadis_celery.live import BEAT_KEY
from hadis_celery.tables import PlanRow, QueryRow
from planner.cascade import CascadeConfig
from planner.pareto import pareto_indices
from planner.policy import ActivePlan
from planner.registry import Registry
from planner.table import ProfileTable
from webapp.frontdoor import FrontDoor, describe_plan, model_name
from webapp.plots import (
    Outcome,
    ScatterPoint,
    line_geometry,
    per_minute,
    svg_scatter,
)
from webapp.readiness import model_readiness

FINAL = ("done", "dropped", "failed")
WINDOW_S = 3600.0  # the plots show the last hour
BUCKET_S = 60.0
SERIES_ROWS = 5000  # at most this many finished queries are read for the plots
HISTORY = 20
PLOT_IDS = ("plot-violations", "plot-quality")
RATIO_EPS = 1e-6


def fmt(v: object, spec: str = ".3g") -> str:
    """Numbers for humans: None and NaN are '-', infinities ±∞ (also as "inf" strings)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return {"inf": "∞", "-inf": "-∞", "nan": "-"}.get(v, v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)



def _pairs(d: dict | None) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted((d or {}).items())) or "-"


@dataclass
class State:
    """What the dashboard read from Redis and SQL at ``now`` (``errors``: what was down)."""

    now: float
    errors: list[str] = field(default_factory=list)
    plan: ActivePlan | None = None
    plan_row: PlanRow | None = None
    queues: dict[str, int] = field(default_factory=dict)
    beat: dict = field(default_factory=dict)
    workers: dict[str, dict] = field(default_factory=dict)
    history: list[PlanRow] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)  # webapp.readiness.model_readiness


def collect(door: FrontDoor, now: float | None = None) -> State:
    """One Redis round trip or three, three SQL reads; an outage becomes a line in errors."""
    st = State(now=time.time() if now is None else now)
    try:
        st.plan = door.live.get_plan()
        st.queues = door.live.queue_lengths(model_queues(door.registry))
        st.beat = door.live.get_json(BEAT_KEY) or {}
        st.workers = door.live.live_workers()
        st.models = model_readiness(door.registry, st.plan, st.workers)
    except (redis.exceptions.RedisError, OSError, ValueError) as exc:
        st.errors.append(f"Redis unavailable ({type(exc).__name__})")
    try:
        st.history = store.latest_plans(door.engine, HISTORY)
        if st.plan is not None and st.plan.plan_id:
            st.plan_row = next((p for p in st.history if p.id == st.plan.plan_id), None) \
                or store.get_plan(door.engine, st.plan.plan_id)
        since = st.now - WINDOW_S
        with door.engine.connect() as c:
            rows = c.execute(select(QueryRow.status, QueryRow.updated_at, QueryRow.finished_at,
                                    QueryRow.deadline, QueryRow.quality)
                             .where(QueryRow.status.in_(FINAL), QueryRow.updated_at >= since)
                             .order_by(QueryRow.updated_at.desc()).limit(SERIES_ROWS)).all()
        st.outcomes = [Outcome(*r) for r in rows]
    except DBAPIError as exc:
        st.errors.append(f"database unavailable ({type(exc).__name__})")
    return st


def active_config(st: State) -> tuple[int, int, float, float] | None:
    """(light, heavy, router ratio, reject ratio) of the plan in force, from its SQL row."""
    if st.plan is None or st.plan_row is None or not isinstance(st.plan_row.body, dict):
        return None
    body = st.plan_row.body
    try:
        return (st.plan.light, st.plan.heavy, float(body["router_ratio"]),
                float(body["disc_ratio"]))
    except (KeyError, TypeError, ValueError):
        return None


def row_key(i: int) -> str:
    return f"cfg-{i}"


def active_row(table: ProfileTable, cfg: tuple[int, int, float, float] | None) -> str | None:
    """The key of the table row the active plan runs (same pair and ratios), if any."""
    if cfg is None:
        return None
    light, heavy, rr, dr = cfg
    for i, c in enumerate(table.rows):
        if (c.light, c.heavy) == (light, heavy) and abs(c.router_ratio - rr) < RATIO_EPS \
                and abs(c.disc_ratio - dr) < RATIO_EPS:
            return row_key(i)
    return None


def view(st: State, reg: Registry, table: ProfileTable, refresh_s: int = 0) -> dict:
    """Display strings, table rows and plot geometry of ``st`` (JSON-safe: no NaN or inf)."""
    p, row = st.plan, st.plan_row
    desc = describe_plan(row, reg) if row is not None else None
    text = {
        "plan-id": str(p.plan_id) if p else "-",
        "plan-pair": f"{model_name(reg, p.light)} → {model_name(reg, p.heavy)}" if p else "-",
        "plan-theta": fmt(p.theta) if p else "-",
        "plan-tau": fmt(p.tau) if p else "-",
        "plan-routing": f"{p.routing} (router ratio {fmt(p.router_ratio)}, reject ratio "
                        f"{fmt(desc['disc_ratio']) if desc else '-'})" if p else "-",
        "plan-workers": _pairs(dict(p.workers)) if p else "-",
        "plan-batch": (_pairs({model_name(reg, int(k)): v for k, v in p.batch.items()})
                       if p else "-"),
        "plan-fid": fmt(desc["fid"]) if desc else "-",
        "plan-overloaded": ("yes" if desc["overloaded"] else "no") if desc else "-",
        "demand": fmt(st.beat.get("demand")),
        "live-workers": str(len(st.workers)),
        "worker-names": ", ".join(sorted(st.workers)) or "-",
        "updated": datetime.fromtimestamp(st.now, UTC).strftime("%H:%M:%S UTC"),
    }
    viol, qual = per_minute(st.outcomes, st.now - WINDOW_S, BUCKET_S)
    text["violation-ratio"] = fmt(sum(v for _, v in viol.points) / len(viol.points)
                                  if viol.points else None)
    plots = [line_geometry(pid, sr, st.now - WINDOW_S, st.now)
             for pid, sr in zip(PLOT_IDS, (viol, qual), strict=True)]
    history = []
    for h in st.history:
        d = describe_plan(h, reg)
        history.append([str(d["id"]), h.created.strftime("%Y-%m-%d %H:%M:%S")
                        if h.created else "", d["planner"],
                        f"{d['light']['name']} → {d['heavy']['name']}",
                        fmt((h.live or {}).get("theta")), fmt((h.live or {}).get("tau")),
                        _pairs(d["workers"]), fmt(d["demand"]), fmt(d["fid"]),
                        "yes" if d["overloaded"] else "no"])
    active = active_row(table, active_config(st))
    text["active-row-note"] = (" (the active plan's configuration is not a row of this "
                               "table)" if p is not None and active is None else "")
    return {
        "now": round(st.now, 3), "refresh_s": refresh_s, "errors": list(st.errors),
        "text": text, "hidden": {"plan-table": p is None, "no-plan": p is not None},
        "queues": [[q, str(n)] for q, n in sorted(st.queues.items())],
        "models": [readiness_row(m) for m in st.models],
        "history": history, "plot_titles": [viol.title, qual.title],
        "plots": [g.to_json() for g in plots], "geometry": plots,
        "active_row": active,
        "active_pair": [p.light, p.heavy] if p else None,
    }


def readiness_row(m: dict) -> list[str]:
    """A model's line on the dashboard: name, workers per queue (live / planned), in the
    plan, and its readiness word."""
    queues = "; ".join(f"{q}: {v['live_workers']} live / {v['planned_workers']} planned"
                       for q, v in m["queues"].items()
                       if v["live_workers"] or v["planned_workers"]) or "no worker"
    word = "ready" if m["ready"] else ("NOT READY" if m["in_plan"] else "idle")
    return [m["name"], queues, "yes" if m["in_plan"] else "no", word]


def json_view(v: dict) -> dict:
    """What ``/ui/dashboard.json`` sends: the view without the objects only pages use."""
    return {k: val for k, val in v.items() if k not in ("geometry",)}


def quality_label(table: ProfileTable) -> str:
    return "FID" if table.metric == "fid" else "1 - disc. score"


@dataclass(frozen=True)
class PairView:
    """One pair's block of the configuration table: rows, front and scatter plot."""

    light: str
    heavy: str
    rows: list[dict]
    n_front: int
    active_pair: bool
    plot: object  # Markup


def _gpu(c: CascadeConfig) -> tuple[float, float]:
    g = c.gpu_s_per_query()
    return g.get(c.light, 0.0), (g.get(c.heavy, 0.0) if c.heavy != c.light else 0.0)


def profile_view(table: ProfileTable, active: str | None,
                 active_pair: tuple[int, int] | None) -> list[PairView]:
    """Per pair (the active pair first): every row with its ratios, θ, τ, quality and
    GPU-seconds per query, the front on quality vs service seconds per query
    (``planner.pareto`` with ``cost="total"``) flagged, and the scatter plot."""
    reg = table.registry
    by_pair: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(table.rows):
        by_pair.setdefault(c.pair, []).append(i)
    ylabel = quality_label(table)
    out = []
    for pair in sorted(by_pair, key=lambda pr: (pr != active_pair, pr)):
        idx = by_pair[pair]
        configs = [table.rows[i] for i in idx]
        try:
            front = {idx[k] for k in pareto_indices(configs, cost="total").kept}
        except ValueError:  # a row without a finite quality: no front to draw
            front = set()
        rows, points = [], []
        for i, c in zip(idx, configs, strict=True):
            gl, gh = _gpu(c)
            key = row_key(i)
            rows.append({"key": key, "front": i in front, "router_ratio": fmt(c.router_ratio),
                         "disc_ratio": fmt(c.disc_ratio), "theta": fmt(c.theta),
                         "tau": fmt(c.tau), "fid": fmt(c.fid, ".4g"), "gpu_light": fmt(gl),
                         "gpu_heavy": fmt(gh), "service_s": fmt(c.service_s)})
            points.append(ScatterPoint(key, c.service_s, c.fid, i in front,
                                       f"r={c.router_ratio:g} d={c.disc_ratio:g}: "
                                       f"{ylabel} {c.fid:.4g}, {c.service_s:.3g} s/query"))
        light, heavy = model_name(reg, pair[0]), model_name(reg, pair[1])
        plot = svg_scatter(f"{light} → {heavy}: {ylabel} vs service seconds per query",
                           points, active, "service seconds per query (batch 1)", ylabel)
        out.append(PairView(light, heavy, rows, len(front), pair == active_pair, plot))
    return out
