"""The planner beat task and the sweeper, as thin shells over the planner and the policy.

Every ``HADIS_PLAN_PERIOD_S`` Celery beat sends ``hadis.plan``; ``PlanLoop.tick``:

1. reads (and resets) the arrival counters and per-queue enqueue counters, and every model
   queue's length, from Redis; folds arrivals into the EWMA demand (kept in Redis, so a
   restarted beat resumes it);
2. builds a ``PlannerState`` in *profile time* (SLO / time factor, rates x time factor: a
   replay stack running 100x faster gets the plans the real cluster would) with the live
   workers (heartbeat keys) as the budget, or ``HADIS_WORKERS``, and calls the planner;
3. stores the plan in SQL, publishes its live view (``policy.ActivePlan``: θ, τ, batch sizes,
   queues) in Redis, rebinds workers to queues with ``add_consumer``/``cancel_consumer``
   (addressed with ``destination`` so each call returns on the one reply instead of
   waiting its timeout), and moves queued messages off queues no worker serves any more.

When the beat is down nothing expires: workers and the front door keep the last plan.
``sweep`` re-sends the message of every accepted query left open longer than
``HADIS_SWEEP_AFTER_S`` (a duplicate is harmless: workers claim rows conditionally), and
drops those whose deadline has passed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine, select, update

from hadis_celery import policy, store
from hadis_celery.db import transaction
from hadis_celery.deployment import load_table, model_queues
from hadis_celery.live import BEAT_KEY, LiveState
from hadis_celery.models import PlanRow, QueryRow
from hadis_celery.settings import Settings
from planner.demand import EwmaDemand
from planner.plan import Plan, PlannerState, QueueState
from planner.table import ProfileTable

log = logging.getLogger(__name__)
CONTROL_TIMEOUT_S = 2.0


def worker_queues(app: Celery, workers: list[str]) -> dict[str, list[str]]:
    """Queues each worker consumes now, asked of the workers themselves (one round)."""
    if not workers:
        return {}
    replies = app.control.broadcast("active_queues", reply=True, destination=workers,
                                    limit=len(workers), timeout=CONTROL_TIMEOUT_S)
    out: dict[str, list[str]] = {}
    for reply in replies or []:
        for name, queues in reply.items():
            out[name] = sorted(q["name"] for q in queues)
    return out


def rebind(app: Celery, current: dict[str, list[str]], target: dict[str, int]
           ) -> dict[str, str]:
    """Move workers to the plan's queues with the fewest moves; return worker -> queue."""
    assignment = policy.assign_queues(current, target)
    for w, q in assignment.items():
        have = current.get(w, [])
        if q not in have:
            app.control.add_consumer(q, reply=True, destination=[w], timeout=CONTROL_TIMEOUT_S)
        for old in have:
            if old != q:
                app.control.cancel_consumer(old, reply=True, destination=[w],
                                            timeout=CONTROL_TIMEOUT_S)
    return assignment


def move_orphans(app: Celery, live: LiveState, engine: Engine, plan: policy.ActivePlan,
                 served: set[str], queues: list[str]) -> dict[str, int]:
    """Queued messages of queues no worker serves go to the same role's queue of the plan
    (row updated first, then the message re-sent)."""
    from workers.serving import send_generate

    moved: dict[str, int] = {}
    lengths = live.queue_lengths(queues)
    for q, n in lengths.items():
        dest = policy.orphan_destination(plan, q)
        if n == 0 or q in served or dest == q or dest not in served:
            continue
        while msgs := live.drain(q, 100):
            ids = [m.query_id for m in msgs]
            with transaction(engine) as s:
                s.execute(update(QueryRow).where(QueryRow.id.in_(ids),
                                                 QueryRow.status.in_(store.WAITING),
                                                 QueryRow.queue == q)
                          .values(queue=dest, updated_at=time.time()))
                waiting = set(s.scalars(select(QueryRow.id).where(
                    QueryRow.id.in_(ids), QueryRow.queue == dest,
                    QueryRow.status.in_(store.WAITING))))
            for m in msgs:
                if m.query_id in waiting:
                    send_generate(app, m.query_id, dest, m.attempt + 1, m.sent_at)
                    moved[dest] = moved.get(dest, 0) + 1
    return moved


@dataclass
class PlanLoop:
    """The beat task's state: settings, table, planner, SQL engine, Redis, Celery app."""

    s: Settings
    app: Celery
    engine: Engine
    live: LiveState
    table: ProfileTable
    planner: object
    theta_for: object = None
    previous: Plan | None = None
    last: dict = field(default_factory=dict)

    @classmethod
    def from_settings(cls, s: Settings, app: Celery) -> PlanLoop:
        from hadis_celery.router import RouterProfile
        from planner.baselines import make_planner

        table = load_table(s)
        return cls(s=s, app=app, engine=store.serving_engine(s.database_url),
                   live=LiveState.from_url(s.state_url), table=table,
                   planner=make_planner(s.planner, solver=s.solver),
                   theta_for=RouterProfile.load(s.router_profile).threshold_for)

    @property
    def queues(self) -> list[str]:
        return model_queues(self.table.registry)

    def state(self, now: float) -> tuple[PlannerState, dict]:
        """The planner's input from Redis (counters are reset as they are read)."""
        queues = self.queues
        arrivals, enq = self.live.take_counters(queues)
        lengths = self.live.queue_lengths(queues)
        beat = self.live.get_json(BEAT_KEY) or {}
        dt = now - float(beat.get("t", now - self.s.plan_period_s))
        dt = dt if dt > 0 else self.s.plan_period_s
        prev = beat.get("demand")
        est = EwmaDemand(self.s.demand_half_life_s, initial=prev)
        demand = est.observe(arrivals, dt)
        workers = self.live.live_workers()
        budget = self.s.worker_budget or max(1, len(workers))
        tf = self.s.time_factor if self.s.time_factor > 0 else 1.0
        qs = {q: QueueState(int(lengths[q]), enq[q] / dt * tf) for q in queues}
        st = PlannerState(demand=demand * tf, workers=budget, slo_s=self.s.slo_s / tf,
                          table=self.table.rows, registry=self.table.registry, queues=qs,
                          previous=self.previous)
        info = {"t": now, "demand": demand, "arrivals": arrivals, "dt": dt,
                "lengths": lengths, "workers": sorted(workers)}
        return st, info

    def tick(self, now: float | None = None) -> dict:
        """One planning period (see the module doc); returns what it did."""
        now = time.time() if now is None else now
        st, info = self.state(now)
        plan = self.planner.plan(st)
        self.previous = plan
        out = self.apply(plan, info["workers"], demand=info["demand"])
        self.live.set_json(BEAT_KEY, {"t": now, "demand": info["demand"],
                                      "plan_id": out["plan_id"]})
        self.last = {**info, **out}
        return self.last

    def apply(self, plan: Plan, workers: list[str] | None = None,
              demand: float | None = None) -> dict:
        """Store ``plan``, publish it, rebind ``workers`` (the live ones by default)."""
        c = plan.config
        plan_id = store.save_plan(self.engine, PlanRow(
            planner=plan.planner, light=c.light, heavy=c.heavy,
            demand=plan.demand if demand is None else demand, fid=plan.fid,
            overloaded=plan.overloaded, body=plan.to_dict(), live={}, bindings={}))
        active = policy.ActivePlan.from_plan(plan, self.table.registry, plan_id=plan_id,
                                             theta_for=self.theta_for)
        self.live.publish_plan(active)
        if workers is None:
            workers = sorted(self.live.live_workers())
        current = worker_queues(self.app, workers)
        bindings = rebind(self.app, current, dict(active.workers)) if current else {}
        moved = move_orphans(self.app, self.live, self.engine, active,
                             set(bindings.values()), self.queues) if bindings else {}
        store.set_plan_live(self.engine, plan_id, active.to_dict(), bindings)
        return {"plan_id": plan_id, "bindings": bindings, "moved": moved,
                "pair": [c.light, c.heavy], "batch": {str(k): v for k, v in plan.batch.items()},
                "theta": active.theta if math.isfinite(active.theta) else str(active.theta)}

    def sweep(self, now: float | None = None) -> dict:
        """Re-send lost messages from SQL; drop open queries whose deadline passed."""
        from hadis_celery.celery import longest_batch_s
        from workers.serving import send_generate

        now = time.time() if now is None else now
        after = max(self.s.sweep_after_s,
                    2.0 * longest_batch_s(self.table.registry, self.s.time_factor))
        resent, dropped = [], []
        for r in store.stale(self.engine, now - after):
            if now > r.deadline:
                store.finish(self.engine, [{"id": r.id, "status": "dropped", "finished_at": now,
                                            "reason": "deadline passed before it could run "
                                                      f"(open as {r.status} for {after:.0f} s)"}],
                             now)
                dropped.append(r.id)
                continue
            status = "queued" if r.status == "running" else r.status
            store.finish(self.engine, [{"id": r.id, "status": status,
                                        "attempts": (r.attempts or 0) + 1}], now)
            send_generate(self.app, r.id, r.queue, (r.attempts or 0) + 1)
            resent.append(r.id)
        return {"resent": resent, "dropped": dropped}
