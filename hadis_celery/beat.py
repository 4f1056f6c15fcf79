"""The planner beat task and the sweeper, as thin shells over the planner and the policy.

Every ``HADIS_PLAN_PERIOD_S`` Celery beat sends ``hadis.plan``; ``PlanLoop.tick``:

1. reads (and resets) the arrival counters and per-queue enqueue counters, and every model
   queue's length, from Redis; folds arrivals into the EWMA demand (kept in Redis, and in
   SQL with each plan for when Redis lost it);
2. builds a ``PlannerState`` in *profile time* (SLO / time factor, rates x time factor: a
   replay stack running 100x faster gets the plans the real cluster would) with the live
   workers (heartbeat keys) as the budget, or ``HADIS_WORKERS``, and calls the planner;
3. stores the plan in SQL with the planner's memory and inputs (``plans.inputs``: what
   ``hadis plan replay`` feeds the planner again; a beat that starts resumes from the
   latest plan, ``PlanLoop.resume``), publishes its live view (``policy.ActivePlan``: θ,
   τ, batch sizes, queues) in Redis, rebinds workers to queues with
   ``add_consumer``/``cancel_consumer`` (addressed with ``destination`` so each call
   returns on the one reply instead of waiting its timeout), and moves queued messages off
   queues no worker serves any more.

When the beat is down nothing expires: workers and the front door keep the last plan.

Recovery (``sweep`` every ``HADIS_SWEEP_PERIOD_S``; ``recover`` at every tick and sweep):

- Redis lost its data (a restart without persistence, a flush): the marker ``hadis:epoch``
  is gone with the queues, so ``recover`` re-publishes the latest plan from SQL, re-sends the
  message of every waiting (``queued``/``rerouted``) row at once, drops those whose deadline
  passed, and sets the marker again;
- a worker died mid-batch (or lost SQL): its ``running`` rows stop being renewed, and once
  older than ``HADIS_LEASE_S`` the sweep puts them back to ``queued`` and re-sends them;
- a queue lost every consumer (a plan switch, a worker gone): its messages move to a queue
  with one (``policy.orphan_destination``; at ``apply`` with the fresh bindings, at every
  sweep with the queues live workers report, once their heartbeats show the plan's bindings);
  waiting rows past their deadline on a queue without a consumer are dropped with that reason;
- a message was lost (or could not be sent, see ``store.mark_unsent``): waiting rows older
  than ``HADIS_SWEEP_AFTER_S`` (or twice the longest batch) whose message is on no queue
  list are re-sent; one whose message still waits in a backlog is left alone (and extra
  copies of a message are removed: one message per open row);
- a query re-sent ``HADIS_MAX_ATTEMPTS`` times already is failed with the reason instead
  (a backend that kills its worker every time must not circle forever), one whose deadline
  passed is dropped.

Retention (``prune``, when ``HADIS_PRUNE_AFTER`` is set): ``hadis_celery.retention``.

Every write of the sweep is conditional on the row being unchanged since it was read (and one
sweep runs at a time, under a Redis lock), and duplicates are harmless (workers claim rows
conditionally and write results only for rows their batch still holds), so a re-sent query
is recorded once, even when a worker that was only slow ran it too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine, select, update

from hadis_celery import store, transport
from hadis_celery.db import transaction
from hadis_celery.deployment import load_table, model_queues
from hadis_celery.live import BEAT_KEY, LiveState
from hadis_celery.logs import event
from hadis_celery.settings import Settings
from hadis_celery.tables import PlanRow, QueryRow
from hadis_celery.transport import GenerateMessage
from planner import policy
from planner.demand import EwmaDemand
from planner.plan import Plan, PlannerState, QueueState, state_inputs
from planner.registry import Registry, with_swap_s
from planner.status import WAITING, QueryStatus
from planner.table import ProfileTable

log = logging.getLogger(__name__)
CONTROL_TIMEOUT_S = 2.0
DROP, FAIL, RESEND = "drop", "fail", "resend"
NEVER = 1e300  # "older than" bound that every row meets
SWEEP_LOCK_S = 60.0  # a sweep holds the sweep lock at most this long


def sweep_action(now: float, deadline: float, attempts: int, max_attempts: int) -> str:
    """What the sweeper does with an open row whose message or worker was lost: drop it
    when its deadline passed, fail it when it was already given ``max_attempts`` messages,
    else re-send it."""
    if now > deadline:
        return DROP
    if max_attempts > 0 and attempts >= max_attempts:
        return FAIL
    return RESEND


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
    """Queued messages of queues no worker consumes go where ``policy.orphan_destination``
    says (only ever a queue with a consumer; the row is updated first, then the message is
    re-sent through ``transport.dispatch``). A drained message whose row no longer waits on
    that queue is dead (a duplicate, or its query ended) and is not re-sent. Returns
    destination -> count."""
    moved: dict[str, int] = {}
    lengths = live.queue_lengths(queues)
    for q, n in lengths.items():
        dest = policy.orphan_destination(plan, q, served) if n else None
        if dest is None:
            continue
        reason = (f"no worker consumes {q} under plan {plan.plan_id}; moved to {dest}, "
                  "which has one")
        while msgs := live.drain(q, 100):

            def write(q: str = q, dest: str = dest, msgs: list[GenerateMessage] = msgs
                      ) -> list[GenerateMessage]:
                """The rows move to ``dest``; one message each for those still waiting."""
                ids = [m.query_id for m in msgs]
                with transaction(engine) as s:
                    s.execute(update(QueryRow).where(QueryRow.id.in_(ids),
                                                     QueryRow.status.in_(WAITING),
                                                     QueryRow.queue == q)
                              .values(queue=dest, updated_at=time.time()))
                    rows = {r.id: r for r in s.execute(select(
                        QueryRow.id, QueryRow.queue, QueryRow.attempts).where(
                        QueryRow.id.in_(ids), QueryRow.queue == dest,
                        QueryRow.status.in_(WAITING)))}
                out: dict[str, GenerateMessage] = {}
                for m in msgs:
                    if m.query_id in rows and m.query_id not in out:
                        out[m.query_id] = GenerateMessage.for_row(rows[m.query_id],
                                                                  sent_at=m.sent_at)
                return list(out.values())

            def send(m: GenerateMessage, q: str = q, dest: str = dest,
                     reason: str = reason) -> None:
                transport.publish(app, m)
                moved[dest] = moved.get(dest, 0) + 1
                event(log, "query.moved", query_id=m.query_id, from_queue=q, queue=dest,
                      reason=reason)

            transport.dispatch(app, engine, write, send=send)
    return moved


def planner_options(s: Settings) -> dict:
    """What hadis-plus must know of the live loop, in profile time: the period a measured
    rate covers, the EWMA's lag (half-life / ln 2) and the swap delay; HADIS's switch-cost
    check (``Settings.switch_cost``, on unless ``HADIS_SWITCH_COST=0``:
    ``planner.milp.HadisPlanner._switch_check``), the swap delay of a model without a
    measured or declared swap time."""
    if s.planner == "hadis":
        return {"switch_cost": True, "swap_delay_s": s.swap_delay_s} if s.switch_cost else {}
    if s.planner != "hadis-plus" and not s.planner.startswith("hadis-plus-"):
        return {}
    tf = s.time_factor if s.time_factor > 0 else 1.0
    return {"rate_window_s": s.plan_period_s / tf,
            "ewma_lag_s": s.demand_half_life_s / tf / math.log(2),
            "swap_delay_s": s.swap_delay_s}


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
    previous: Plan | None = None  # the planner's last plan, with its memory (``resume``)
    previous_id: int | None = None  # its row in SQL
    resumed: dict = field(default_factory=dict)  # the EWMA record of the plan resumed from
    last: dict = field(default_factory=dict)
    swaps: dict = field(default_factory=dict)  # model name -> measured swap s (wall)

    @classmethod
    def from_settings(cls, s: Settings, app: Celery) -> PlanLoop:
        from planner.baselines import make_planner
        from planner.router import RouterProfile

        table = load_table(s)
        loop = cls(s=s, app=app, engine=store.serving_engine(s.database_url),
                   live=LiveState.from_url(s.state_url), table=table,
                   planner=make_planner(s.planner, solver=s.solver, **planner_options(s)),
                   theta_for=RouterProfile.load(s.router_profile).threshold_for)
        loop.resume()
        return loop

    def resume(self) -> int | None:
        """Pick up the state the last beat left in SQL: the latest plan becomes the previous
        plan (with the planner's ``memory``: hysteresis, step detector, forecaster), and the
        EWMA it recorded stands in when Redis lost the beat's own record. Returns that
        plan's id (None: no plan yet, or SQL unreachable: the planner starts afresh)."""
        try:
            rows = store.latest_plans(self.engine, 1)
            if not rows:
                return None
            previous = Plan.from_dict(rows[0].body)
        except Exception as exc:  # SQL down or a row it cannot read: plan from scratch
            log.warning("cannot resume the planner's state from SQL (%s)", exc)
            return None
        row = rows[0]
        self.previous, self.previous_id = previous, row.id
        beat = dict((row.inputs or {}).get("beat") or {})
        if "t" in beat and "demand" in beat:
            self.resumed = {"t": float(beat["t"]), "demand": float(beat["demand"])}
        event(log, "planner.resumed", plan_id=row.id, planner=previous.planner,
              memory=sorted(previous.memory))
        return row.id

    @property
    def queues(self) -> list[str]:
        return model_queues(self.table.registry)

    def registry(self, tf: float = 1.0) -> Registry:
        """The table's registry with each model's measured swap time (workers' load +
        warm-up, ``store.measured_swap_s``, in profile time: wall / time factor) replacing
        the declared one (``swap_s`` in the deployment file; else the planner's global
        ``HADIS_SWAP_DELAY_S``). SQL down: the last measurements read."""
        reg = self.table.registry
        try:
            self.swaps = store.measured_swap_s(self.engine, [m.name for m in reg])
        except Exception as exc:
            log.warning("cannot read the measured swap times (%s)", exc)
        return with_swap_s(reg, {k: v / tf for k, v in self.swaps.items()})

    def state(self, now: float) -> tuple[PlannerState, dict]:
        """The planner's input from Redis (counters are reset as they are read)."""
        queues = self.queues
        arrivals, enq = self.live.take_counters(queues)
        lengths = self.live.queue_lengths(queues)
        beat = self.live.get_json(BEAT_KEY) or self.resumed  # Redis lost it: SQL's record
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
                          table=self.table.rows, registry=self.registry(tf), queues=qs,
                          previous=self.previous)
        info = {"t": now, "demand": demand, "arrivals": arrivals, "dt": dt,
                "lengths": lengths, "workers": sorted(workers)}
        info["inputs"] = {
            **state_inputs(st),
            "previous_id": self.previous_id if self.previous is not None else None,
            "beat": {"t": now, "dt": dt, "arrivals": arrivals, "demand_before": prev,
                     "demand": demand, "time_factor": tf},
            "planner": {"name": self.s.planner, "solver": self.s.solver,
                        "options": planner_options(self.s)},
            "table": {"name": self.table.name, "rows": len(self.table.rows)}}
        return st, info

    def tick(self, now: float | None = None) -> dict:
        """One planning period (see the module doc); returns what it did."""
        now = time.time() if now is None else now
        self.recover(now)
        st, info = self.state(now)
        inputs = info.pop("inputs")
        plan = self.planner.plan(st)
        self.previous = plan
        out = self.apply(plan, info["workers"], demand=info["demand"], inputs=inputs)
        self.previous_id = out["plan_id"]
        self.live.set_json(BEAT_KEY, {"t": now, "demand": info["demand"],
                                      "plan_id": out["plan_id"]})
        self.last = {**info, **out}
        return self.last

    def apply(self, plan: Plan, workers: list[str] | None = None,
              demand: float | None = None, inputs: dict | None = None) -> dict:
        """Store ``plan`` (with the planner's ``inputs``, when it was planned here), publish
        it, rebind ``workers`` (the live ones by default)."""
        c = plan.config
        plan_id = store.save_plan(self.engine, PlanRow(
            planner=plan.planner, light=c.light, heavy=c.heavy,
            demand=plan.demand if demand is None else demand, fid=plan.fid,
            overloaded=plan.overloaded, body=plan.to_dict(), live={}, bindings={},
            inputs=inputs))
        active = policy.ActivePlan.from_plan(plan, self.table.registry, plan_id=plan_id,
                                             theta_for=self.theta_for)
        self.live.publish_plan(active)
        if workers is None:
            workers = sorted(self.live.live_workers())
        current = worker_queues(self.app, workers)
        bindings = rebind(self.app, current, dict(active.workers)) if current else {}
        store.set_plan_live(self.engine, plan_id, active.to_dict(), bindings)  # sweeps see it
        moved = move_orphans(self.app, self.live, self.engine, active,
                             set(bindings.values()), self.queues) if bindings else {}
        return {"plan_id": plan_id, "bindings": bindings, "moved": moved,
                "pair": [c.light, c.heavy], "batch": {str(k): v for k, v in plan.batch.items()},
                "theta": active.theta if math.isfinite(active.theta) else str(active.theta)}

    def recover(self, now: float | None = None) -> tuple[list[str], list[str]] | None:
        """If Redis lost its data since the last recovery (no ``hadis:epoch``): re-publish
        the latest plan from SQL, re-send every waiting row's message (the same attempt: a
        replacement, not a retry), drop those whose deadline passed, then set the marker.
        Returns (re-sent ids, dropped ids), or None when nothing was lost."""
        now = time.time() if now is None else now
        if self.live.epoch() is not None:
            return None
        republished = None
        if self.live.get_plan() is None:
            for row in store.latest_plans(self.engine, 1):
                if row.live:
                    self.live.publish_plan(policy.ActivePlan.from_dict(row.live))
                    republished = row.id
        resent, dropped = [], []
        after = ""
        while rows := store.waiting(self.engine, after):
            for r in rows:
                after = r.id
                if now > r.deadline:
                    reason = (f"deadline passed while its message was lost with Redis' data "
                              f"(open as {r.status})")
                    if store.sweep_update(self.engine, r.id, r.status, NEVER,
                                          {"status": QueryStatus.DROPPED, "finished_at": now,
                                           "reason": reason}, now):
                        dropped.append(r.id)
                        event(log, "query.dropped", query_id=r.id, queue=r.queue,
                              reason=reason, status=QueryStatus.DROPPED)
                    continue
                # the row is unchanged: its message again (a replacement, not an attempt)
                transport.send_written(self.app, self.engine, [GenerateMessage.for_row(r)])
                resent.append(r.id)
                event(log, "query.resent", query_id=r.id, queue=r.queue, attempt=r.attempts,
                      reason="redis_lost", status=r.status)
        self.live.set_epoch({"t": now, "resent": len(resent), "dropped": len(dropped),
                             "plan_id": republished})
        event(log, "redis.recovered", logging.WARNING if resent or dropped else logging.INFO,
              resent=len(resent), dropped=len(dropped), republished_plan=republished)
        return resent, dropped

    def prune(self, now: float | None = None) -> dict:
        """Retention (``HADIS_PRUNE_AFTER``): finished queries older than that with their
        images, unreferenced images, plans no one needs and dead messages
        (``hadis_celery.retention``). Returns what was removed."""
        from hadis_celery.imagestore import image_store
        from hadis_celery.retention import prune

        if self.s.prune_after_s <= 0:
            return {}
        rep = prune(self.engine, self.s.prune_after_s, store=image_store(self.s),
                    live=self.live, queues=self.queues, images=True, plans=True, now=now)
        out = rep.to_dict()
        if rep.queries or rep.plans or rep.dead_messages or rep.stray_images:
            event(log, "history.pruned", **{k: v for k, v in out.items() if k != "kept_plans"})
        return out

    def served_queues(self) -> tuple[set[str], bool]:
        """Queues a live worker consumes (its heartbeat's queues, plus the queue the active
        plan bound it to), and whether that picture is settled: a heartbeat lags a
        rebinding by up to ``HADIS_HEARTBEAT_S``, and while a live worker's heartbeat does
        not show the queue the plan bound it to, moving work could chase the workers (the
        beat's own ``apply`` moves the backlog of a plan switch; the sweep waits)."""
        workers = self.live.live_workers()
        out: set[str] = set()
        for info in workers.values():
            out |= {str(q) for q in info.get("queues") or []}
        settled = True
        plan = self.live.get_plan()
        if plan is not None and plan.plan_id:
            row = store.get_plan(self.engine, plan.plan_id)
            for w, q in dict(row.bindings if row is not None else {}).items():
                if w in workers:
                    out.add(str(q))
                    settled &= set(workers[w].get("queues") or []) == {q}
        return out & set(self.queues), settled

    def sweep(self, now: float | None = None) -> dict:
        """Recover from a Redis that lost its data, move work off queues no worker consumes,
        re-send the messages of rows whose worker or message was lost, drop or fail those
        that cannot go on (module doc). Returns the ids re-sent and dropped (and failed,
        moved or found waiting in a backlog, when any). One sweep at a time (a Redis lock):
        two sweepers reading the same lists would both remove the same extra copy."""
        lock = self.live.lock("sweep", timeout_s=SWEEP_LOCK_S)
        if not lock.acquire(blocking=True, blocking_timeout=SWEEP_LOCK_S / 2):
            log.warning("another sweep holds the lock; skipping this one")
            return {"resent": [], "dropped": [], "skipped": "another sweep runs"}
        try:
            return self._sweep(time.time() if now is None else now)
        finally:
            try:
                lock.release()
            except Exception:  # expired meanwhile (a very slow sweep): nothing to release
                pass

    def _sweep(self, now: float) -> dict:
        from hadis_celery.celery import longest_batch_s

        recovered = self.recover(now)
        resent, dropped = recovered if recovered else ([], [])
        handled = set(resent) | set(dropped)
        failed: list[str] = []
        waiting: list[str] = []
        plan = self.live.get_plan()
        served, settled = self.served_queues()
        movable = plan is not None and bool(served) and settled
        moved = (move_orphans(self.app, self.live, self.engine, plan, served, self.queues)
                 if movable else {})
        after = max(self.s.sweep_after_s,
                    2.0 * longest_batch_s(self.table.registry, self.s.time_factor))
        lease = max(0.1, self.s.lease_s)
        rows = [r for r in store.stale(self.engine, now - after, lease_before=now - lease)
                if r.id not in handled]
        expired = [r for r in store.expired(self.engine, now, exclude_queues=served)
                   if r.id not in handled and r.id not in {x.id for x in rows}]
        on_lists: dict[str, list[tuple[str, GenerateMessage]]] = {}
        if rows or expired:  # where their messages are (one read of the lists)
            for q, msgs in self.live.messages(self.queues).items():
                for m in msgs:
                    on_lists.setdefault(m.query_id, []).append((q, m))
        for r in expired:  # past the deadline on a queue without a consumer
            here = [m for q, m in on_lists.get(r.id, []) if q == r.queue]
            reason = (f"deadline passed while it waited on {r.queue}, which no worker consumes "
                      f"(plan {plan.plan_id if plan else '?'} has no worker on it or on a "
                      "queue that could take it)" if here else
                      f"deadline passed; its message was lost (open as {r.status} on "
                      f"{r.queue}, which no worker consumes)")
            if self._drop(r, NEVER, reason, now):
                dropped.append(r.id)
            self._discard(on_lists.pop(r.id, []))
        for r in rows:
            running = r.status == QueryStatus.RUNNING
            before = now - (lease if running else after)
            attempts = r.attempts or 0
            found = on_lists.get(r.id, [])
            here = [m for q, m in found if q == r.queue]
            # copies elsewhere are dead (a claim needs the row's queue); one copy is enough
            self._discard([(q, m) for q, m in found if q != r.queue] +
                          [(r.queue, m) for m in here[1:]])
            if here and now > r.deadline:
                reason = (f"deadline passed while it waited on {r.queue}"
                          + ("" if r.queue in served else ", which no worker consumes"))
                if self._drop(r, before, reason, now):
                    dropped.append(r.id)
                    self._discard([(r.queue, here[0])])
                continue
            if here:  # not lost: it waits in a backlog; no second message
                values = ({"status": QueryStatus.QUEUED, "attempts": attempts + 1}
                          if running else {})
                if store.sweep_update(self.engine, r.id, r.status, before, values, now):
                    waiting.append(r.id)
                    event(log, "query.waiting", logging.DEBUG if not running else logging.INFO,
                          query_id=r.id, queue=r.queue, status=values.get("status", r.status),
                          reason="its message still waits on the queue; not re-sent")
                continue
            action = sweep_action(now, r.deadline, attempts, self.s.max_attempts)
            lost = (f"its worker {r.worker} stopped renewing its lease "
                    f"{now - r.updated_at:.1f} s ago (it died, was killed or lost SQL)"
                    if running else f"its message was lost (open as {r.status} for "
                                    f"{now - r.updated_at:.0f} s, no message on {r.queue})")
            queue = r.queue
            if movable and queue not in served:
                queue = policy.orphan_destination(plan, queue, served) or queue
            if action == DROP:
                values = {"status": QueryStatus.DROPPED, "finished_at": now,
                          "reason": f"deadline passed before it could run: {lost}"}
            elif action == FAIL:
                values = {"status": QueryStatus.FAILED, "finished_at": now,
                          "reason": f"gave up after {attempts} attempts "
                                    f"(HADIS_MAX_ATTEMPTS={self.s.max_attempts}): {lost}"}
            else:
                values = {"status": QueryStatus.QUEUED if running else r.status,
                          "attempts": attempts + 1}
                if queue != r.queue:
                    values["queue"] = queue
            if not store.sweep_update(self.engine, r.id, r.status, before, values, now):
                continue  # claimed, renewed or finished since it was read
            if action == DROP:
                dropped.append(r.id)
                event(log, "query.dropped", query_id=r.id, queue=r.queue,
                      reason=values["reason"], status=QueryStatus.DROPPED)
                continue
            if action == FAIL:
                failed.append(r.id)
                event(log, "query.failed", logging.WARNING, query_id=r.id, queue=r.queue,
                      reason=values["reason"], status=QueryStatus.FAILED)
                continue
            transport.send_written(self.app, self.engine, [GenerateMessage.for_row(
                r, queue, attempts=values["attempts"])])  # the row is written (above)
            resent.append(r.id)
            event(log, "query.resent", query_id=r.id, queue=queue, attempt=attempts + 1,
                  reason="worker_lost" if running else "message_lost", detail=lost,
                  status=values["status"])
        out: dict = {"resent": resent, "dropped": dropped}
        if failed:
            out["failed"] = failed
        if moved:
            out["moved"] = moved
        if waiting:
            out["waiting"] = waiting
        return out

    def _drop(self, r: QueryRow, before: float, reason: str, now: float) -> bool:
        if not store.sweep_update(self.engine, r.id, r.status, before,
                                  {"status": QueryStatus.DROPPED, "finished_at": now,
                                   "reason": reason},
                                  now):
            return False
        event(log, "query.dropped", query_id=r.id, queue=r.queue, reason=reason,
              status=QueryStatus.DROPPED)
        return True

    def _discard(self, found: list[tuple[str, GenerateMessage]]) -> None:
        """Remove these (dead or duplicate) messages from their lists."""
        by_queue: dict[str, list[GenerateMessage]] = {}
        for q, m in found:
            by_queue.setdefault(q, []).append(m)
        for q, msgs in by_queue.items():
            n = self.live.remove_messages(q, msgs)
            if n:
                event(log, "messages.removed", queue=q, count=n,
                      query_ids=sorted({m.query_id for m in msgs})[:20],
                      reason="duplicate or dead copies of a query's message")
