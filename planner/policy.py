"""The serving policy, in plain Python: one place for every per-query decision.

The live stack (front door, workers, beat task) and the simulator share these rules, so
that what the simulator measures is what the deployment does:

- ``route``: which queue a new query joins under the active plan (router score vs θ, a
  uniform draw vs θ, or no per-query choice);
- ``take_batch``: which queued queries a worker runs now: drop those that cannot meet their
  deadline even alone, take up to B, shrink the batch until its finish meets every
  member's deadline, give the rest back;
- ``verdict``: after a light batch, accept the image or reroute the query to the heavy
  queue (discriminator score below τ);
- ``assign_queues``: which worker consumes which queue under a new plan, with the fewest
  moves;
- ``orphan_destination``: where work queued on a queue that lost every consumer goes (only
  ever to a queue with a consumer).
- ``fallback_plan``: what a worker runs before any plan was published.

``ActivePlan`` is the live view of a ``Plan`` that the beat task publishes (in Redis) and
every process reads: the pair's queues, θ, τ, routing mode and batch sizes. No Redis,
Celery, Flask or SQL here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from planner.plan import Plan
from planner.registry import Registry

LIGHT, HEAVY = "light", "heavy"
ACCEPT, REROUTE = "accept", "reroute"


def _enc(x: float) -> float | str:
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _dec(x: float | str | None) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class ActivePlan:
    """What the processes of the stack need of the current plan (published by the beat)."""

    plan_id: int
    light: int
    heavy: int
    light_queue: str
    heavy_queue: str  # the light queue itself for a single-model row
    theta: float
    tau: float
    routing: str  # score | random | none
    router_ratio: float
    batch: Mapping[int, int]
    workers: Mapping[str, int] = field(default_factory=dict)
    published_at: float = 0.0
    shed_at_arrival: bool = False  # the front door refuses what ``admits`` says is too late
    orphans_keep_model: bool = False  # ``orphan_destination``: light work stays on its model

    @property
    def single(self) -> bool:
        return self.light == self.heavy

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this plan sends work to."""
        return (self.light_queue,) if self.single else (self.light_queue, self.heavy_queue)

    def batch_for(self, model_id: int, largest: int) -> int:
        """B for ``model_id`` (1 when the plan does not run it), capped at ``largest``."""
        return max(1, min(int(self.batch.get(model_id, 1)), int(largest)))

    @classmethod
    def from_plan(cls, plan: Plan, registry: Registry, plan_id: int = 0,
                  theta_for: Callable[[float], float] | None = None,
                  now: float | None = None) -> ActivePlan:
        """The live view of ``plan``; a NaN θ (table without router thresholds) is taken
        from ``theta_for(router_ratio)`` (the router profile's quantiles)."""
        c = plan.config
        theta = c.theta
        if math.isnan(theta) and plan.routing != "random":
            if theta_for is None:
                raise ValueError("the plan has no θ and no router profile was given")
            theta = theta_for(c.router_ratio)
        light_q = registry.get(c.light).light_queue
        heavy_q = light_q if c.light == c.heavy else registry.get(c.heavy).heavy_queue
        return cls(plan_id=plan_id, light=c.light, heavy=c.heavy, light_queue=light_q,
                   heavy_queue=heavy_q, theta=float(theta), tau=float(c.tau),
                   routing=plan.routing, router_ratio=float(c.router_ratio),
                   batch=dict(plan.batch), workers=dict(plan.workers),
                   published_at=time.time() if now is None else now,
                   shed_at_arrival=bool(plan.shed_at_arrival),
                   orphans_keep_model=bool(plan.orphans_keep_model))

    def to_dict(self) -> dict:
        return {"plan_id": self.plan_id, "light": self.light, "heavy": self.heavy,
                "light_queue": self.light_queue, "heavy_queue": self.heavy_queue,
                "theta": _enc(self.theta), "tau": _enc(self.tau), "routing": self.routing,
                "router_ratio": self.router_ratio,
                "batch": {str(k): int(v) for k, v in self.batch.items()},
                "workers": dict(self.workers), "published_at": self.published_at,
                "shed_at_arrival": self.shed_at_arrival,
                "orphans_keep_model": self.orphans_keep_model}

    @classmethod
    def from_dict(cls, d: Mapping) -> ActivePlan:
        return cls(plan_id=int(d["plan_id"]), light=int(d["light"]), heavy=int(d["heavy"]),
                   light_queue=str(d["light_queue"]), heavy_queue=str(d["heavy_queue"]),
                   theta=_dec(d["theta"]), tau=_dec(d["tau"]), routing=str(d["routing"]),
                   router_ratio=float(d["router_ratio"]),
                   batch={int(k): int(v) for k, v in dict(d["batch"]).items()},
                   workers={str(k): int(v) for k, v in dict(d.get("workers", {})).items()},
                   published_at=float(d.get("published_at", 0.0)),
                   shed_at_arrival=bool(d.get("shed_at_arrival", False)),
                   orphans_keep_model=bool(d.get("orphans_keep_model", False)))


# -- front door ---------------------------------------------------------------------------

def route(plan: ActivePlan, score: float, draw: float) -> tuple[str, str]:
    """``(role, queue)`` a new query joins under ``plan`` (the front door's and the
    simulator's rule): ``score`` routing sends a prompt heavy when its router score is
    strictly above θ, ``random`` when its uniform ``draw`` is above θ, ``none`` sends all
    light (all heavy when the router ratio is 1); a single-model row never goes heavy."""
    if plan.light == plan.heavy:
        heavy = False
    elif plan.routing == "none":
        heavy = plan.router_ratio >= 1.0
    elif plan.routing == "random":
        heavy = draw > plan.theta
    else:
        heavy = score > plan.theta
    return (HEAVY, plan.heavy_queue) if heavy else (LIGHT, plan.light_queue)


def predicted_finish_s(plan: ActivePlan, queue: str, queued: int, model_id: int,
                       seconds: Callable[[int], float], largest: int) -> float:
    """Seconds until a query joining ``queue`` behind ``queued`` others has its image, by
    the plan's fluid estimate: the queue drains at the plan's workers on it times batch
    ``b`` per ``seconds(b)``, then its own batch runs. A queue the plan gives no worker
    never finishes (inf)."""
    workers = int(plan.workers.get(queue, 0))
    if workers <= 0:
        return math.inf
    b = plan.batch_for(model_id, largest)
    run = float(seconds(b))
    return max(0, int(queued)) * run / (workers * b) + run


def admits(plan: ActivePlan, queue: str, queued: int, model_id: int, slo_s: float,
           seconds: Callable[[int], float], largest: int) -> bool:
    """Whether the front door takes a query onto ``queue`` (the front door's and the
    simulator's rule). A plan with ``shed_at_arrival`` refuses a query whose predicted
    finish (``predicted_finish_s``) is past its SLO: under overload a FIFO queue otherwise
    fills to the deadline edge, every query in it waits about the SLO, and a swap or a
    burst then drops the oldest ones; refusing at once keeps the queue inside the SLO (and
    tells the client now, not an SLO later). Other plans take everything (HADIS drops at
    the deadline)."""
    if not plan.shed_at_arrival:
        return True
    return predicted_finish_s(plan, queue, queued, model_id, seconds, largest) <= slo_s


def pinned_route(plan: ActivePlan, model_id: int) -> tuple[str, str] | str:
    """``(role, queue)`` for a query pinned to one model under ``plan``, or why it cannot be
    served now. The plan's heavy model (a single-model plan's model) serves its own images
    on its queue; the light model of a pair does not (its images are judged and the poor ones
    regenerated by the heavy model), nor does a model the plan does not run (no worker)."""
    if model_id == plan.heavy:
        return (LIGHT, plan.light_queue) if plan.single else (HEAVY, plan.heavy_queue)
    if model_id == plan.light:
        return ("is the light model of the active pair (its images are judged and may be "
                "regenerated by the heavy model)")
    return "is not in the active plan, so no worker serves it now"


# -- workers ------------------------------------------------------------------------------

def fallback_plan(model_id: int, queue: str) -> ActivePlan:
    """A worker's plan before any was published: run this queue's model alone at batch 1,
    no judging."""
    return ActivePlan(plan_id=0, light=model_id, heavy=model_id, light_queue=queue,
                      heavy_queue=queue, theta=math.inf, tau=-math.inf, routing="none",
                      router_ratio=0.0, batch={})


def can_meet(now: float, deadline: float, seconds: float) -> bool:
    """Whether a run of ``seconds`` started ``now`` finishes by ``deadline``."""
    return now + seconds <= deadline


@dataclass(frozen=True)
class BatchChoice:
    """Indices (into the candidates, in queue order) to run and to drop; ``shrunk`` were
    taken but cut to meet deadlines; candidates from ``seen`` on were not looked at."""

    run: list[int]
    drop: list[int]
    shrunk: list[int]
    seen: int
    total: int

    @property
    def back(self) -> list[int]:
        """Everything that goes back to the queue, in queue order."""
        return self.shrunk + list(range(self.seen, self.total))


def take_batch(now: float, deadlines: Sequence[float], cap: int,
               seconds: Callable[[int], float]) -> BatchChoice:
    """Pick the batch a worker runs now from candidates in queue order.

    Candidates that cannot meet their deadline even alone (``seconds(1)``) are dropped;
    up to ``cap`` others are taken (the scan stops there, so a long queue costs only what
    is read); the batch shrinks until ``now + seconds(b)`` meets every member's deadline;
    what was taken beyond ``b`` and what was not looked at go back.
    """
    cap = max(1, int(cap))
    one = seconds(1)
    run: list[int] = []
    drop: list[int] = []
    seen = 0
    for seen in range(len(deadlines) + 1):
        if seen == len(deadlines) or len(run) >= cap:
            break
        if can_meet(now, deadlines[seen], one):
            run.append(seen)
        else:
            drop.append(seen)
    b = len(run)
    while b > 1 and not can_meet(now, min(deadlines[j] for j in run[:b]), seconds(b)):
        b -= 1
    return BatchChoice(run=run[:b], drop=drop, shrunk=run[b:], seen=seen,
                       total=len(deadlines))


def discriminates(plan: ActivePlan, queue: str, model_id: int) -> bool:
    """Whether a batch of ``model_id`` on ``queue`` is judged: only on the active pair's
    light queue and model (a query whose light model is no longer the plan's is accepted
    as it is)."""
    return queue.startswith("light_") and plan.light != plan.heavy and model_id == plan.light


def verdict(plan: ActivePlan, queue: str, model_id: int, score: float) -> str:
    """ACCEPT the image, or REROUTE the query to ``plan.heavy_queue``: a judged output
    (``discriminates``) whose score is strictly below τ (the workers' and the simulator's
    rule)."""
    if discriminates(plan, queue, model_id) and score < plan.tau:
        return REROUTE
    return ACCEPT


def orphan_destination(plan: ActivePlan, queue: str, served: Collection[str]) -> str | None:
    """Where the work queued on ``queue`` goes under ``plan`` when no worker consumes it
    (``served``: the queues that have a consumer); None: it stays where it is.

    Only a queue with a consumer is ever chosen, and the choice follows what the queued
    query has been through. A message on a light queue was not generated yet: the plan's
    light queue, else its heavy queue (an all-heavy plan, θ = -inf, has no light worker;
    the query simply gets the heavy model's image). A plan with ``orphans_keep_model``
    first keeps it on its model when the plan still runs that model as its heavy one (a
    switch from pair B:C to A:B keeps B): the query gets the image of the model the router
    chose for it, unjudged, instead of the new light model's. Which is better depends on
    the load: after a rise to a cheaper pair, the faster new light model drains the backlog
    in time; at light load, or when a plan flips back and forth, keeping the model keeps
    quality. So the planner decides, per plan (``planner.plus``, which charges the backlog
    where this rule sends it; HADIS's plans never ask for it).
    A message on a heavy queue (routed
    heavy, or rerouted after its light image was judged poor) goes only to the plan's heavy
    queue: it never falls back to a light model, whose image the router or the
    discriminator already judged not good enough. Moving it to a light queue was tried:
    on the reference trace the backlog it put on the light queue made the paper's planner
    flee that queue and violate 6-15 % instead of 0 % in the simulator. When no queue of
    its kind has a consumer the work stays (the next plan that has one picks it up), and
    the sweeper drops it at its deadline saying which queue nobody consumed.
    """
    if queue in served:
        return None
    if queue.startswith("heavy_"):
        order: tuple[str, ...] = (plan.heavy_queue,)
    else:
        own = "heavy_" + queue[len("light_"):]  # the same model's heavy queue
        same = (own,) if plan.orphans_keep_model and own == plan.heavy_queue else ()
        order = (*same, plan.light_queue, plan.heavy_queue)
    return next((q for q in order if q != queue and q in served), None)


# -- beat ---------------------------------------------------------------------------------

def assign_queues(current: Mapping[str, Sequence[str]], target: Mapping[str, int]
                  ) -> dict[str, str]:
    """One queue per worker, keeping as many workers as possible on a queue they already
    consume. ``current``: worker -> queues now; ``target``: queue -> workers wanted.

    Workers beyond the target total go to the queue with the most wanted workers (the
    plan's busiest), so no live worker sits idle.
    """
    want = {q: int(n) for q, n in target.items() if n > 0}
    out: dict[str, str] = {}
    kept: dict[str, int] = {}
    free: list[str] = []
    for w in sorted(current):
        mine = [q for q in current[w] if kept.get(q, 0) < want.get(q, 0)]
        if mine:
            q = mine[0]
            out[w] = q
            kept[q] = kept.get(q, 0) + 1
        else:
            free.append(w)
    for q in sorted(want):
        for _ in range(want[q] - kept.get(q, 0)):
            if not free:
                return _fill(out, free, want)
            out[free.pop(0)] = q
    return _fill(out, free, want)


def _fill(out: dict[str, str], free: list[str], want: Mapping[str, int]) -> dict[str, str]:
    if want:
        busiest = max(sorted(want), key=lambda q: want[q])
        for w in free:
            out[w] = busiest
    return out
