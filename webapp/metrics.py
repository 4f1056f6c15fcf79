"""Prometheus ``/metrics`` for the front door.

Request counts are counted in this process. Everything about the stack (queue lengths,
queries by status, SLO violations, per-model latency histograms, plans) is read from Redis
and SQL at scrape time, so every front-door process reports the same, correct totals
whichever served the queries, and nothing is lost on restart. A scrape is one Redis round
trip and three grouped SQL queries; a backend that is down shows as ``hadis_up 0``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import case, func, select

from hadis_celery.deployment import model_queues
from hadis_celery.live import BEAT_KEY
from hadis_celery.models import PlanRow, QueryRow
from webapp.frontdoor import FrontDoor

LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class StackCollector:
    """Reads the stack's state when scraped (see the module doc)."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door

    def _name(self, mid: int | None) -> str:
        if mid is None:
            return "none"
        try:
            return self.door.registry.get(mid).name
        except KeyError:
            return str(mid)

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

    def _sql(self, up: GaugeMetricFamily) -> Iterator[Metric]:
        lat = QueryRow.finished_at - QueryRow.received_at
        try:
            with self.door.engine.connect() as c:
                by_status = c.execute(select(QueryRow.status, func.count())
                                      .group_by(QueryRow.status)).all()
                viol = c.execute(select(
                    func.sum(case((QueryRow.status == "dropped", 1), else_=0)),
                    func.sum(case(((QueryRow.status == "done")
                                   & (QueryRow.finished_at > QueryRow.deadline), 1),
                                  else_=0)))).one()
                hist = c.execute(select(
                    QueryRow.served_model, func.count(), func.sum(lat),
                    *[func.sum(case((lat <= b, 1), else_=0)) for b in LATENCY_BUCKETS])
                    .where(QueryRow.status == "done", QueryRow.finished_at.is_not(None))
                    .group_by(QueryRow.served_model)).all()
                plans = c.execute(select(func.count(PlanRow.id))).scalar_one()
                prev = select(PlanRow.light, PlanRow.heavy,
                              func.lag(PlanRow.light).over(order_by=PlanRow.id).label("pl"),
                              func.lag(PlanRow.heavy).over(order_by=PlanRow.id).label("ph")
                              ).subquery()
                changes = c.execute(select(func.count()).select_from(prev).where(
                    prev.c.pl.is_not(None),
                    (prev.c.pl != prev.c.light) | (prev.c.ph != prev.c.heavy))).scalar_one()
        except Exception:
            up.add_metric(["sql"], 0)
            return
        up.add_metric(["sql"], 1)
        qc = CounterMetricFamily("hadis_queries", "queries recorded, by current status",
                                 labels=["status"])
        for status, n in sorted(by_status):
            qc.add_metric([status], n)
        yield qc
        v = CounterMetricFamily("hadis_slo_violations", "queries that missed their SLO: "
                                "dropped, or done after the deadline", labels=["kind"])
        v.add_metric(["dropped"], int(viol[0] or 0))
        v.add_metric(["late"], int(viol[1] or 0))
        yield v
        h = HistogramMetricFamily("hadis_latency_seconds", "request-to-image latency of "
                                  "done queries, by the model that served the image",
                                  labels=["model"])
        for row in hist:
            mid, n, total = row[0], int(row[1]), float(row[2] or 0.0)
            cum = [(_le(b), int(x or 0)) for b, x in zip(LATENCY_BUCKETS, row[3:], strict=True)]
            h.add_metric([self._name(mid)], cum + [("+Inf", n)], total)
        yield h
        pc = CounterMetricFamily("hadis_plans", "plans the beat stored")
        pc.add_metric([], int(plans))
        yield pc
        ch = CounterMetricFamily("hadis_plan_changes", "plans whose model pair differs "
                                 "from the previous plan's")
        ch.add_metric([], int(changes))
        yield ch


def _le(b: float) -> str:
    return repr(float(b))


def register(app: Flask, door: FrontDoor) -> CollectorRegistry:
    """Count requests and serve ``/metrics`` from a registry of this app's own."""
    reg = CollectorRegistry(auto_describe=False)
    requests = Counter("hadis_http_requests", "HTTP requests answered",
                       ["method", "endpoint", "code"], registry=reg)
    reg.register(StackCollector(door))

    @app.after_request
    def _count(resp: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        requests.labels(request.method, endpoint, str(resp.status_code)).inc()
        return resp

    @app.get("/metrics")
    def metrics() -> Response:
        g.setdefault("t0", time.time())
        return Response(generate_latest(reg), mimetype=CONTENT_TYPE_LATEST)

    app.extensions["hadis_metrics"] = reg
    return reg
