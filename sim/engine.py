"""The discrete-event simulator.

What is simulated, and how (each choice is the live system's, unless it says otherwise; the
per-query rules, routing, deadline checks and discriminator verdicts, are the functions of
``planner.policy`` that the live workers and front door call):

- Arrivals come from a trace; each carries its prompt's router score (computed by the real
  ``HardnessRouter``) and the recorded discriminator score of every model for that prompt.
- Every ``period_s`` the planner is called with the state the live beat task sees: the
  demand estimate (EWMA of arrivals), the length and arrival rate of every queue, the
  worker budget, the SLO, the table, the previous plan (with the planner's memory).
- ``BeatRestart`` restarts the beat mid-trace: the planner object is rebuilt and resumes
  from the stored state (previous plan, planner memory and EWMA through their JSON form,
  as the live beat keeps them in SQL), or from nothing (a beat that forgot its state).
- Routing at arrival follows the active plan: ``score`` routing sends the prompt heavy when
  its router score is above θ, ``random`` routing when a seeded uniform draw is above θ,
  ``none`` sends everything to the light queue, or everything to the heavy queue when the
  configuration's router ratio is 1. A single-model row runs on its light queue.
- Workers are bound to queues (``light_<m>``/``heavy_<m>``). A worker takes up to the
  plan's batch size for its model from its queue, first dropping queries that cannot meet
  their deadline even alone, then shrinking the batch until its finish time meets every
  member's deadline (``planner.policy.take_batch``, as the live workers). Batch
  latency is ``ModelSpec.batch_seconds`` (linear between the profiled batch sizes).
- After a light batch the discriminator reads each prompt's recorded score for that model;
  below τ the query is requeued to the heavy queue with its original deadline. A query
  whose light model is no longer the active plan's light model is accepted.
- A new plan rebinds workers with the fewest moves (``policy.assign_queues``, as the beat;
  spare workers join the busiest queue); a busy worker finishes its batch first;
  a worker that changes model is unavailable for the new model's swap time (``swap_s`` of
  its registry entry, declared or measured; else ``swap_delay_s``) (loading weights);
  changing role on the same model is free. Queued queries of a queue that loses all its
  workers move to a queue of the new plan that has workers
  (``policy.orphan_destination``: the same role's queue; a light query not generated yet
  may go heavy under an all-heavy plan, or stay on its model under a plan that keeps it
  there, ``orphans_keep_model``; heavy work never goes light), or stay when none has.
  An image is credited (for FID) to the pair of its arrival, or of the plan whose
  discriminator rerouted it; one served by another model than that pair names for its path
  (it moved with its queue) counts as that model's single-model image, so no policy gets a
  model's FID for another model's GPU time (``sim.bound`` relies on it).
- Every arrival ends exactly once: ``served`` (on time), ``late`` (served after its
  deadline) or ``dropped`` (predicted to miss it, or still queued when the run ends). Late
  and dropped are SLO violations.
- Quality: ``SimResult.fid`` is the FID of the images served (late ones included); a
  dropped query has no image and is not in it, so a policy that drops its hardest
  periods' queries looks better there. ``SimResult.fid_all`` counts every query: each
  dropped one as an image of the fallback model (``sim.fid.fallback_model``: the cheapest
  model, at its single-model FID, produced at no cost), so it is the most lenient charge
  for a drop that still counts it.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from planner import policy
from planner.cascade import CascadeConfig
from planner.plan import Plan, Planner, PlannerInputError, PlannerState, QueueState
from planner.registry import Registry
from sim.fid import FidSurface, fallback_model

SERVED, LATE, DROPPED = 0, 1, 2
STATUS_NAMES = ("served", "late", "dropped")
PATHS = ("light", "direct", "rerouted")
_ARRIVAL, _DONE, _READY, _PLAN = 0, 1, 2, 3


class DemandEstimator(Protocol):
    """``planner.demand.EwmaDemand`` in the live system; an oracle in the bound."""

    def observe(self, arrivals: float, dt_s: float) -> float: ...


@dataclass(frozen=True)
class Workload:
    """Per-arrival inputs: arrival times, router scores, recorded quality per model."""

    arrival_s: np.ndarray
    router_score: np.ndarray
    quality: Mapping[int, np.ndarray]
    name: str = "workload"

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.router_score) != n or any(len(q) != n for q in self.quality.values()):
            raise ValueError("workload arrays must have one entry per arrival")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("arrivals must be sorted by time")

    def __len__(self) -> int:
        return len(self.arrival_s)


@dataclass(frozen=True)
class BeatRestart:
    """Restart the beat before the first plan at or after each of ``at_s`` (seconds): the
    planner object is dropped and ``rebuild()`` makes a new one. With ``keep_state`` it
    resumes from the stored state: the previous plan (with its ``memory``) and the demand
    estimator, each through its JSON form (what the live beat keeps in SQL). Without, it
    starts from nothing: no previous plan, no memory (what a beat that kept its state in
    process memory did); the EWMA, which the live beat keeps in Redis too, stays."""

    at_s: tuple[float, ...]
    rebuild: Callable[[], Planner]
    keep_state: bool = True


def _through_json(obj: object) -> object:
    """A copy of a plain-data object rebuilt from the JSON of its attributes (a stored
    demand estimator); ``obj`` itself when they are not plain data (the oracle's arrays)."""
    try:
        stored = json.dumps(vars(obj), allow_nan=False)
    except (TypeError, ValueError):
        return obj
    copy = object.__new__(type(obj))
    copy.__dict__.update(json.loads(stored))
    return copy


@dataclass(frozen=True)
class SimSettings:
    workers: int = 16
    slo_s: float = 60.0
    period_s: float = 10.0
    swap_delay_s: float = 10.0
    fid_window_s: float = 30.0
    disc_s: float = 0.0
    initial_demand: float = 1.0
    seed: int = 0


class _QueuedDeadlines(Sequence[float]):
    """The deadlines of a queue's members, read lazily (``take_batch`` stops at the cap)."""

    def __init__(self, queue: deque[int], deadline: np.ndarray) -> None:
        self.queue, self.deadline = queue, deadline

    def __len__(self) -> int:
        return len(self.queue)

    def __getitem__(self, k):  # type: ignore[override]
        return float(self.deadline[self.queue[k]])


@dataclass
class SimResult:
    arrival_s: np.ndarray
    finish_s: np.ndarray
    status: np.ndarray
    path: np.ndarray  # index into PATHS, -1 when dropped before any run
    served_model: np.ndarray
    served_quality: np.ndarray
    drop_reason: list[str | None]
    timeline: list[dict]
    fid_windows: list[dict]
    executions: dict[int, int]
    settings: SimSettings
    planner_name: str = ""
    solve_ms: list[float] = field(default_factory=list)
    fallback_model: int = -1  # stand-in model of a dropped query in ``fid_all`` (-1: none)
    fallback_fid: float = float("nan")  # its single-model FID

    @property
    def n(self) -> int:
        return len(self.arrival_s)

    def counts(self) -> dict[str, int]:
        return {name: int(np.sum(self.status == i)) for i, name in enumerate(STATUS_NAMES)}

    @property
    def slo_violation_ratio(self) -> float:
        return float(np.mean(self.status != SERVED)) if self.n else 0.0

    @property
    def fid(self) -> float:
        """Image-count-weighted mean of the window FIDs."""
        ws = [w for w in self.fid_windows if w["images"] > 0 and math.isfinite(w["fid"])]
        if not ws:
            return float("nan")
        return float(sum(w["fid"] * w["images"] for w in ws) / sum(w["images"] for w in ws))

    @property
    def served_fraction(self) -> float:
        """Share of the queries that got an image (on time or late)."""
        return float(np.mean(self.status != DROPPED)) if self.n else 1.0

    @property
    def fid_all(self) -> float:
        """FID over every query: the served images as in ``fid``, plus one image of the
        fallback model (``fallback_fid``) per dropped query; NaN without a fallback."""
        dropped = int(np.sum(self.status == DROPPED))
        ws = [w for w in self.fid_windows if w["images"] > 0 and math.isfinite(w["fid"])]
        images = sum(w["images"] for w in ws)
        if dropped == 0:
            return self.fid
        if not math.isfinite(self.fallback_fid):
            return float("nan")
        acc = sum(w["fid"] * w["images"] for w in ws) + self.fallback_fid * dropped
        return float(acc / (images + dropped))

    def summary(self) -> dict:
        done = self.status != DROPPED
        lat = self.finish_s[done] - self.arrival_s[done]
        plans = [t for t in self.timeline if "pair" in t]
        changes = sum(1 for a, b in zip(plans, plans[1:], strict=False)
                      if (a["pair"], a["router_ratio"], a["disc_ratio"])
                      != (b["pair"], b["router_ratio"], b["disc_ratio"]))
        return {
            "planner": self.planner_name,
            "queries": self.n,
            **self.counts(),
            "slo_violation_ratio": round(self.slo_violation_ratio, 5),
            "fid": round(self.fid, 4),
            "mean_quality": round(float(np.nanmean(self.served_quality[done])), 6)
            if done.any() else float("nan"),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "latency_p99_s": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "executions": {str(k): v for k, v in sorted(self.executions.items())},
            "plan_changes": changes,
            "solve_ms_p50": round(float(np.median(self.solve_ms)), 3) if self.solve_ms else None,
            "fid_all": round(self.fid_all, 4),
            "served_fraction": round(self.served_fraction, 5),
            "fallback_model": self.fallback_model,
        }


class Simulation:
    def __init__(
        self,
        workload: Workload,
        registry: Registry,
        table: Sequence[CascadeConfig],
        planner: Planner,
        demand: DemandEstimator,
        surface: FidSurface,
        settings: SimSettings = SimSettings(),
        theta_for: Callable[[float], float] | None = None,
        name: str = "",
        restart: BeatRestart | None = None,
    ) -> None:
        self.w = workload
        self.registry = registry
        self.table = list(table)
        self.planner = planner
        self.demand = demand
        self.surface = surface
        self.s = settings
        self.theta_for = theta_for
        self.name = name or type(planner).__name__
        self.restart = restart
        self.rng = np.random.default_rng(settings.seed)
        self._uniform = self.rng.random(len(workload))  # per-arrival draw for random routing

    # -- the run ---------------------------------------------------------------------------
    def run(self, progress: Callable[[int], None] | None = None) -> SimResult:
        n, s = len(self.w), self.s
        self.now = 0.0
        self.events: list[tuple[float, int, int, int, object]] = []
        self._seq = 0
        self.deadline = self.w.arrival_s + s.slo_s
        self.finish = np.full(n, np.nan)
        self.status = np.full(n, -1, dtype=int)
        self.path = np.full(n, -1, dtype=int)
        self.model = np.full(n, -1, dtype=int)
        self.quality = np.full(n, np.nan)
        self.pair_at = np.full((n, 2), -1, dtype=int)
        self.reason: list[str | None] = [None] * n
        self.queues: dict[str, deque[int]] = {}
        self.enqueued: dict[str, int] = {}
        self.w_queue: list[str | None] = [None] * s.workers
        self.w_target: list[str | None] = [None] * s.workers
        self.w_busy = [False] * s.workers
        self.w_ready_at = [0.0] * s.workers
        self.executions: dict[int, int] = {m.id: 0 for m in self.registry}
        self.windows: dict[int, dict[tuple[int, int], dict[str, int]]] = {}
        self.timeline: list[dict] = []
        self.solve_ms: list[float] = []
        self.plan: Plan | None = None
        self.previous: Plan | None = None  # what the beat hands the planner as previous
        self._restarts = sorted(self.restart.at_s) if self.restart else []
        self.pending = n
        self._arrivals_in_period = 0
        self._progress = progress
        self._reported = 0

        for i in range(n):
            self._push(float(self.w.arrival_s[i]), _ARRIVAL, i, None)
        last_deadline = float(self.deadline.max()) if n else 0.0
        try:
            self._replan(initial=True)
        except PlannerInputError as exc:  # the policy cannot serve this SLO at all
            for i in range(n):
                self._end(i, DROPPED, reason=f"no plan: {exc}")
            self.events = []
        self._push(s.period_s, _PLAN, 0, None)
        while self.events:
            t, _, kind, a, b = heapq.heappop(self.events)
            self.now = t
            if kind == _ARRIVAL:
                self._arrive(a)
            elif kind == _DONE:
                self._done(a, b)
            elif kind == _READY:
                self._ready(a)
            elif kind == _PLAN:
                # Plan while queries are pending and some deadline can still be met.
                if self.pending > 0 and t <= last_deadline:
                    self._replan()
                    self._push(t + s.period_s, _PLAN, 0, None)
        for q, dq in self.queues.items():  # unreachable when plans keep workers everywhere
            while dq:
                self._end(dq.popleft(), DROPPED, reason=f"still queued on {q} at the end")
        if progress:
            progress(n - self._reported)
        try:
            fb_model, fb_fid = fallback_model(self.registry, self.surface)
        except KeyError:
            fb_model, fb_fid = -1, float("nan")
        return SimResult(
            arrival_s=self.w.arrival_s.copy(), finish_s=self.finish, status=self.status,
            path=self.path, served_model=self.model, served_quality=self.quality,
            drop_reason=self.reason, timeline=self.timeline,
            fid_windows=self._fid_windows(), executions=self.executions, settings=s,
            planner_name=self.name, solve_ms=self.solve_ms,
            fallback_model=fb_model, fallback_fid=fb_fid,
        )

    def _push(self, t: float, kind: int, a: int, b: object) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, a, b))

    # -- planning -------------------------------------------------------------------------
    def _sweep(self) -> None:
        """The live sweeper's rule: work on a queue no worker consumes is dropped at its
        deadline (else a stranded backlog would sit in the planner's queue lengths forever)."""
        consumed = set(self.w_target) | set(self.w_queue)
        for q, dq in self.queues.items():
            if q in consumed or not dq:
                continue
            keep = deque(i for i in dq if self.deadline[i] > self.now)
            for i in dq:
                if self.deadline[i] <= self.now:
                    self._end(i, DROPPED, reason=f"deadline passed on {q}, which no worker "
                              "consumes")
            self.queues[q] = keep

    def _queue_state(self) -> dict[str, QueueState]:
        self._sweep()
        dt = self.s.period_s
        names = set(self.queues) | set(self.enqueued)
        return {q: QueueState(len(self.queues.get(q, ())), self.enqueued.get(q, 0) / dt)
                for q in sorted(names)}

    def _restart_beat(self) -> bool:
        """Restart the beat when one is due (``BeatRestart``); True when it restarted."""
        if not self._restarts or self.now < self._restarts[0] - 1e-9:
            return False
        while self._restarts and self._restarts[0] <= self.now + 1e-9:
            self._restarts.pop(0)
        assert self.restart is not None
        self.planner = self.restart.rebuild()
        if not self.restart.keep_state:
            self.previous = None
        elif self.previous is not None:
            stored = json.dumps(self.previous.to_dict(), allow_nan=False)
            self.previous = Plan.from_dict(json.loads(stored))
            self.demand = _through_json(self.demand)  # type: ignore[assignment]
        return True

    def _replan(self, initial: bool = False) -> None:
        restarted = not initial and self._restart_beat()
        if initial:
            first = getattr(self.demand, "initial", None)
            demand = first() if callable(first) else self.s.initial_demand
        else:
            demand = self.demand.observe(self._arrivals_in_period, self.s.period_s)
        observed = self._arrivals_in_period / self.s.period_s
        state = PlannerState(
            demand=float(demand), workers=self.s.workers, slo_s=self.s.slo_s, table=self.table,
            registry=self.registry, queues=self._queue_state(), previous=self.previous,
        )
        try:
            plan = self.planner.plan(state)
        except PlannerInputError:
            if self.plan is None:
                raise
            plan = self.plan  # like the live system: workers keep the last plan
        self.solve_ms.append(plan.solve_ms)
        self._arrivals_in_period = 0
        self.enqueued = {}
        self._apply(plan)
        self.previous = self.plan
        c = plan.config
        self.timeline.append({
            "t": self.now, "observed_qps": observed, "demand_estimate": float(demand),
            "pair": [c.light, c.heavy], "router_ratio": c.router_ratio,
            "disc_ratio": c.disc_ratio, "planned_fid": plan.fid, "overloaded": plan.overloaded,
            "workers": self._workers_by_model(plan),
            "queued": sum(len(d) for d in self.queues.values()),
            "lengths": {q: qs.length for q, qs in state.queues.items() if qs.length},
            **({"restart": True} if restarted else {}),
        })

    def _workers_by_model(self, plan: Plan) -> dict[str, int]:
        out: dict[str, int] = {}
        for q, k in plan.workers.items():
            m = str(self.registry.by_queue(q).id)
            out[m] = out.get(m, 0) + k
        return out

    def _apply(self, plan: Plan) -> None:
        self.plan = plan
        active = policy.ActivePlan.from_plan(plan, self.registry, theta_for=self.theta_for,
                                             now=self.now)
        self.active = active  # the live view the per-query rules read, as in the stack
        target = {q: k for q, k in plan.workers.items() if k > 0}
        if sum(target.values()) > self.s.workers:
            raise ValueError(f"plan uses {sum(target.values())} workers, budget {self.s.workers}")
        # The live beat's rebinding: fewest moves, spare workers to the busiest queue.
        current = {str(w): [q] if q else [] for w, q in enumerate(self.w_target)}
        assignment = policy.assign_queues(current, target)
        for w in range(self.s.workers):
            self._retarget(w, assignment.get(str(w)))
        # Queued work on queues that lost every worker moves to a queue that has one
        # (``policy.orphan_destination``, the live beat's rule); with none it stays.
        served = set(assignment.values())
        for q, dq in list(self.queues.items()):
            dest = policy.orphan_destination(active, q, served) if dq else None
            if dest is not None:
                if dest.startswith("heavy_") and not q.startswith("heavy_"):
                    # light work moved heavy gets the heavy image (FID counts it so)
                    for i in dq:
                        self.path[i] = PATHS.index("direct")
                self.queues.setdefault(dest, deque()).extend(dq)
                dq.clear()
        for w in range(self.s.workers):
            self._dispatch(w)

    def _retarget(self, w: int, queue: str | None) -> None:
        self.w_target[w] = queue
        if not self.w_busy[w]:
            self._bind(w)

    def _bind(self, w: int) -> None:
        old, new = self.w_queue[w], self.w_target[w]
        if old == new:
            return
        self.w_queue[w] = new
        if new is None:
            return
        old_model = None if old is None else self.registry.by_queue(old).id
        if old_model is not None and old_model != self.registry.by_queue(new).id:
            spec = self.registry.by_queue(new)
            self.w_ready_at[w] = self.now + spec.swap_seconds(self.s.swap_delay_s)
            self.w_busy[w] = True
            self._push(self.w_ready_at[w], _READY, w, None)

    # -- queries ----------------------------------------------------------------------------
    def _arrive(self, i: int) -> None:
        self._arrivals_in_period += 1
        plan = self.plan
        assert plan is not None
        c = plan.config
        self.pair_at[i] = (c.light, c.heavy)
        role, q = policy.route(self.active, float(self.w.router_score[i]),
                               float(self._uniform[i]))  # the front door's rule
        self.path[i] = PATHS.index("direct" if role == policy.HEAVY else "light")
        if self.active.shed_at_arrival:  # the front door's admission rule
            spec = self.registry.by_queue(q)
            if not policy.admits(self.active, q, len(self.queues.get(q, ())), spec.id,
                                 self.s.slo_s, self._run_seconds(q), max(spec.batch_sizes)):
                self._end(i, DROPPED, reason=f"shed at arrival: {q} cannot finish it "
                          "within the SLO")
                return
        self._enqueue(i, q)

    def _enqueue(self, i: int, q: str) -> None:
        self.queues.setdefault(q, deque()).append(i)
        self.enqueued[q] = self.enqueued.get(q, 0) + 1
        for w in range(self.s.workers):
            if self.w_queue[w] == q and not self.w_busy[w]:
                self._dispatch(w)
                break

    def _run_seconds(self, q: str) -> Callable[[int], float]:
        """Seconds a batch of ``b`` takes on queue ``q``: the model's profiled batch time,
        plus the discriminator's on a light queue (admission and dispatch use the same)."""
        spec = self.registry.by_queue(q)
        extra = self.s.disc_s if q.startswith("light_") else 0.0
        return lambda b: spec.batch_seconds(b) + extra

    def _dispatch(self, w: int) -> None:
        q = self.w_queue[w]
        if q is None or self.w_busy[w]:
            return
        dq = self.queues.get(q)
        if not dq:
            return
        spec = self.registry.by_queue(q)
        assert self.plan is not None
        cap = self.active.batch_for(spec.id, max(spec.batch_sizes))  # the worker's cap
        seconds = self._run_seconds(q)
        choice = policy.take_batch(self.now, _QueuedDeadlines(dq, self.deadline), cap, seconds)
        seen = [dq.popleft() for _ in range(choice.seen)]
        for k in choice.drop:
            self._end(seen[k], DROPPED, reason=f"cannot meet deadline on {q}")
        for k in reversed(choice.shrunk):
            dq.appendleft(seen[k])
        if not choice.run:
            return
        batch = [seen[k] for k in choice.run]
        b = len(batch)
        self.w_busy[w] = True
        self.executions[spec.id] += len(batch)
        self._push(self.now + seconds(b), _DONE, w, batch)

    def _done(self, w: int, batch: list[int]) -> None:
        q = self.w_queue[w]
        assert q is not None and self.plan is not None
        spec = self.registry.by_queue(q)
        c = self.plan.config
        for i in batch:
            score = float(self.w.quality[spec.id][i])
            if policy.verdict(self.active, q, spec.id, score) == policy.REROUTE:  # the worker's
                self.path[i] = PATHS.index("rerouted")
                self.pair_at[i] = (c.light, c.heavy)  # the pair that judged it
                self._enqueue(i, self.active.heavy_queue)
            else:
                credited = self.pair_at[i][0 if self.path[i] == 0 else 1]
                if credited != spec.id:  # moved to another model: credit the one that ran
                    self.pair_at[i] = (spec.id, spec.id)
                self.model[i] = spec.id
                self.quality[i] = score
                self._end(i, SERVED if self.now <= self.deadline[i] + 1e-9 else LATE)
        self.w_busy[w] = False
        self._bind(w)
        self._dispatch(w)

    def _ready(self, w: int) -> None:
        self.w_busy[w] = False
        self._bind(w)
        self._dispatch(w)

    def _end(self, i: int, status: int, reason: str | None = None) -> None:
        assert self.status[i] == -1, f"query {i} ended twice"
        self.status[i] = status
        self.finish[i] = self.now
        self.reason[i] = reason
        self.pending -= 1
        if status != DROPPED:
            win = int(self.now // self.s.fid_window_s)
            light, heavy = (int(x) for x in self.pair_at[i])
            counts = self.windows.setdefault(win, {}).setdefault((light, heavy), {})
            p = PATHS[self.path[i]]
            counts[p] = counts.get(p, 0) + 1
        if self._progress and (self.n_ended % 500 == 0):
            self._progress(500)
            self._reported += 500

    @property
    def n_ended(self) -> int:
        return len(self.w) - self.pending

    def _fid_windows(self) -> list[dict]:
        out = []
        for win in sorted(self.windows):
            counts = self.windows[win]
            images = sum(sum(c.values()) for c in counts.values())
            out.append({"t": win * self.s.fid_window_s, "images": images,
                        "fid": self.surface.mix_fid(counts)})
        return out
