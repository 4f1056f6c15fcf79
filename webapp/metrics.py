"""Prometheus ``/metrics`` for the front door.

Request counts are counted in this process. Everything about the stack is read from Redis
and SQL at scrape time, so every front-door process reports the same totals whichever
served the queries, and nothing is lost on restart; a backend that is down shows as
``hadis_up 0``. No scrape reads the whole history:

- queue lengths, demand and the active plan: one Redis round trip;
- open queries by status: a count over the ``status`` index (open rows only);
- finished queries by status, SLO violations, the latency histogram, plans and plan
  changes: running totals (``Totals``) kept in Redis (``hadis:metrics:totals:<digest of
  the database URL>``). Each scrape reads only the finished rows whose ``updated_at`` is
  past the totals' watermark (the ``(status, updated_at)`` index) and the plans past the
  last plan id counted; rows older than ``SETTLE_S`` are folded into the totals, newer
  ones are counted on top without being folded (a row committed a little late is still
  counted, exactly once). Finished rows are never updated again, and pruning them does
  not lower the totals (counters). The first scrape after Redis lost the totals folds the
  whole history once.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis.exceptions
from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import case, func, select

from hadis_celery.deployment import model_queues
from hadis_celery.live import BEAT_KEY, PREFIX
from hadis_celery.store import FINAL, OPEN
from hadis_celery.tables import PlanRow, QueryRow
from webapp.frontdoor import FrontDoor, model_name
from webapp.parking import PARK_HEADER

LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOTALS_KEY = PREFIX + "metrics:totals:"  # + a digest of the database URL: one per database
SETTLE_S = 120.0  # a finished row this old is folded into the totals (commit lag, clocks)
TOTALS_VERSION = 1


def _f(x: object) -> float:
    """A SQL sum as a float: NULL (nothing summed) and NaN are 0."""
    if x is None:
        return 0.0
    x = float(x)
    return 0.0 if math.isnan(x) else x


@dataclass
class Totals:
    """Running totals of finished queries and plans up to a watermark (JSON in Redis)."""

    wm: float | None = None  # finished rows with updated_at <= wm are in the totals
    status: dict[str, int] = field(default_factory=dict)
    late: int = 0
    hist: dict[str, list[float]] = field(default_factory=dict)  # model -> [n, sum, *cum]
    plan_wm: int = 0  # plans with id <= plan_wm are counted
    plans: int = 0
    changes: int = 0
    last_pair: list[int] | None = None

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Totals | None:
        if not raw:
            return None
        try:
            d = json.loads(raw)
            if d.pop("version", None) != TOTALS_VERSION:
                return None
            return cls(**d)
        except (ValueError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps({"version": TOTALS_VERSION, **self.__dict__})

    def copy(self) -> Totals:
        return Totals.from_json(self.to_json())  # type: ignore[return-value]

    def add_group(self, status: str, model: int | None, n: int, late: int, done_n: int,
                  lat_sum: float, cum: list[int]) -> None:
        """Add one grouped row of finished queries (see ``_finished_groups``)."""
        self.status[status] = self.status.get(status, 0) + n
        self.late += late
        if done_n:
            h = self.hist.setdefault("none" if model is None else str(model),
                                     [0, 0.0] + [0] * len(LATENCY_BUCKETS))
            h[0] += done_n
            h[1] += lat_sum
            for i, c in enumerate(cum):
                h[2 + i] += c

    def add_plans(self, rows: list[tuple[int, int, int]]) -> None:
        for pid, light, heavy in rows:
            if self.last_pair is not None and self.last_pair != [light, heavy]:
                self.changes += 1
            self.last_pair = [light, heavy]
            self.plans += 1
            self.plan_wm = max(self.plan_wm, int(pid))


def _finished_groups(conn, since: float | None, settle: float) -> list:
    """Finished rows with ``updated_at > since`` grouped by (settled, status, served model):
    count, late, done with a finish time, latency sum and cumulative bucket counts."""
    lat = QueryRow.finished_at - QueryRow.received_at
    timed = (QueryRow.status == "done") & QueryRow.finished_at.is_not(None)
    settled = case((QueryRow.updated_at <= settle, 1), else_=0)
    q = (select(settled, QueryRow.status, QueryRow.served_model, func.count(),
                func.sum(case(((QueryRow.status == "done")
                               & (QueryRow.finished_at > QueryRow.deadline), 1), else_=0)),
                func.sum(case((timed, 1), else_=0)), func.sum(case((timed, lat), else_=0.0)),
                *[func.sum(case((timed & (lat <= b), 1), else_=0)) for b in LATENCY_BUCKETS])
         .where(QueryRow.status.in_(FINAL)))
    if since is not None:
        q = q.where(QueryRow.updated_at > since)
    return conn.execute(q.group_by(settled, QueryRow.status, QueryRow.served_model)).all()


class StackCollector:
    """Reads the stack's state when scraped (see the module doc)."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.local: Totals | None = None  # the last totals seen (Redis down: used instead)
        url = door.engine.url.render_as_string(hide_password=True)
        self.key = TOTALS_KEY + hashlib.sha256(url.encode()).hexdigest()[:16]

    def _name(self, mid: str) -> str:
        return "none" if mid == "none" else model_name(self.door.registry, int(mid))

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("hadis_up", "1 when the backend answered this scrape",
                               labels=["backend"])
        yield from self._redis(up)
        yield from self._sql(up)
        yield up

    def _redis(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        live = self.door.live
        try:
            lengths = live.queue_lengths(model_queues(self.door.registry))
            beat = live.get_json(BEAT_KEY) or {}
            plan = live.get_plan()
        except Exception:
            up.add_metric(["redis"], 0)
            return
        up.add_metric(["redis"], 1)
        q = GaugeMetricFamily("hadis_queue_length", "messages waiting in a queue",
                              labels=["queue"])
        for name, n in sorted(lengths.items()):
            q.add_metric([name], n)
        yield q
        d = GaugeMetricFamily("hadis_demand_ewma", "EWMA of arrivals (queries/s) at the "
                              "last beat")
        d.add_metric([], float(beat.get("demand") or 0.0))
        yield d
        p = GaugeMetricFamily("hadis_active_plan_id", "id of the plan in force (0: none)")
        p.add_metric([], plan.plan_id if plan else 0)
        yield p

    def totals(self, now: float | None = None) -> tuple[Totals, dict[str, int]]:
        """(the totals up to now, open queries by status): the stored totals, the finished
        rows and plans since their watermarks; settled rows are folded and the totals
        stored back unless another process stored newer ones meanwhile."""
        now = time.time() if now is None else now
        r = self.door.live.r
        pipe = None
        try:
            pipe = r.pipeline()
            pipe.watch(self.key)
            base = Totals.from_json(pipe.get(self.key)) or (
                self.local.copy() if self.local is not None else Totals())
        except redis.exceptions.RedisError:
            pipe = None
            base = self.local.copy() if self.local is not None else Totals()
        try:
            settle = max(now - SETTLE_S, base.wm if base.wm is not None else -math.inf)
            with self.door.engine.connect() as c:
                groups = _finished_groups(c, base.wm, settle)
                new_plans = c.execute(select(PlanRow.id, PlanRow.light, PlanRow.heavy)
                                      .where(PlanRow.id > base.plan_wm)
                                      .order_by(PlanRow.id)).all()
                open_ = dict(c.execute(select(QueryRow.status, func.count())
                                       .where(QueryRow.status.in_(OPEN))
                                       .group_by(QueryRow.status)).all())
            fresh = []
            for row in groups:
                args = (row[1], row[2], int(row[3]), int(row[4] or 0), int(row[5] or 0),
                        _f(row[6]), [int(x or 0) for x in row[7:]])
                if row[0]:
                    base.add_group(*args)
                else:
                    fresh.append(args)
            base.add_plans([(int(a), int(b), int(c_)) for a, b, c_ in new_plans])
            base.wm = settle
            if pipe is not None:
                try:
                    pipe.multi()
                    pipe.set(self.key, base.to_json())
                    pipe.execute()
                except redis.exceptions.RedisError:  # WatchError: another scrape stored
                    pass
            self.local = base.copy()
        finally:
            if pipe is not None:
                pipe.reset()
        for args in fresh:
            base.add_group(*args)
        return base, {str(k): int(v) for k, v in open_.items()}

    def _sql(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        try:
            tot, open_ = self.totals()
        except Exception:
            up.add_metric(["sql"], 0)
            return
        up.add_metric(["sql"], 1)
        qc = CounterMetricFamily("hadis_queries", "finished queries, by final status",
                                 labels=["status"])
        for status in FINAL:
            qc.add_metric([status], tot.status.get(status, 0))
        yield qc
        og = GaugeMetricFamily("hadis_queries_open", "queries waiting or running, by status",
                               labels=["status"])
        for status in OPEN:
            og.add_metric([status], open_.get(status, 0))
        yield og
        v = CounterMetricFamily("hadis_slo_violations", "queries that missed their SLO: "
                                "dropped, or done after the deadline", labels=["kind"])
        v.add_metric(["dropped"], tot.status.get("dropped", 0))
        v.add_metric(["late"], tot.late)
        yield v
        h = HistogramMetricFamily("hadis_latency_seconds", "request-to-image latency of "
                                  "done queries, by the model that served the image",
                                  labels=["model"])
        for mid, vals in sorted(tot.hist.items()):
            cum = [(_le(b), int(x)) for b, x in zip(LATENCY_BUCKETS, vals[2:], strict=True)]
            h.add_metric([self._name(mid)], cum + [("+Inf", int(vals[0]))], float(vals[1]))
        yield h
        pc = CounterMetricFamily("hadis_plans", "plans the beat stored")
        pc.add_metric([], tot.plans)
        yield pc
        ch = CounterMetricFamily("hadis_plan_changes", "plans whose model pair differs "
                                 "from the previous plan's")
        ch.add_metric([], tot.changes)
        yield ch


def _le(b: float) -> str:
    return repr(float(b))


bp = Blueprint("metrics", __name__)


@bp.record_once
def _setup(state) -> None:
    """A registry of this app's own: its request counter and the stack collector over the
    app's front door (``app.extensions["hadis"]``)."""
    app = state.app
    reg = CollectorRegistry(auto_describe=False)
    requests = Counter("hadis_http_requests", "HTTP requests answered",
                       ["method", "endpoint", "code"], registry=reg)
    reg.register(StackCollector(app.extensions["hadis"]))
    parked = Gauge("hadis_parked_requests", "requests waiting for their images on this "
                   "process's event loop (webapp.parking)", ["kind"], registry=reg)
    for kind in ("now", "peak"):  # the poller exists only under webapp.server.BufferedWorker
        parked.labels(kind).set_function(
            lambda k=kind: getattr(app.extensions.get("hadis_poller"),
                                   "parked" if k == "now" else "peak", 0))
    door = app.extensions["hadis"]
    batching = Gauge("hadis_frontdoor_batches", "this process's accept batches "
                     "(webapp.frontdoor: requests that arrive together are taken as one); "
                     "kind=requests / kind=batches is the mean batch", ["kind"], registry=reg)
    batching.labels("batches").set_function(lambda: door.batches)
    batching.labels("requests").set_function(lambda: door.batched)
    app.extensions["hadis_metrics"] = reg
    app.extensions["hadis_requests"] = requests


@bp.after_app_request
def _count(resp: Response) -> Response:
    if PARK_HEADER in resp.headers:  # parked, not answered: counted when it is
        return resp
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    current_app.extensions["hadis_requests"].labels(
        request.method, endpoint, str(resp.status_code)).inc()
    return resp


@bp.get("/metrics")
def metrics() -> Response:
    g.setdefault("t0", time.time())
    return Response(generate_latest(current_app.extensions["hadis_metrics"]),
                    mimetype=CONTENT_TYPE_LATEST)
