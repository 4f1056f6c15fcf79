"""Planner contracts: what a planner reads (``PlannerState``) and returns (``Plan``).

Every planner (the HADIS MILP and each baseline) is a ``Planner``: ``plan(state) -> Plan``,
a function of its input alone. What a planner carries from one period to the next (the
hysteresis's previous plan, a forecaster, a step detector, a cache's fill history) travels
with the plan: ``Plan.memory`` is the planner's state after this period, a plain JSON value,
and the next period hands it back as ``state.previous`` (``PlannerState.memory``). The
caller keeps it (the live beat stores it in SQL with the plan, so a restarted beat resumes
it; the simulator can restart its beat mid-trace), in the spirit of Ray Serve's autoscaling
policy: the policy returns its state, the controller keeps it. The simulator and the live
beat task drive the same objects. ``verify_plan`` re-checks a
plan against the state from first principles (registry latencies, routed demand, Little's
law), independently of any solver, so a plan that breaks capacity or the SLO is caught.

Latency model (shared by the MILP and the checker). A queue ``q`` of model ``m`` adds the
queueing delay ``W_q = safety * length_q / arrival_rate_q`` (Little's law; when the queue
has no measured arrival rate, the total demand stands in, and with no demand at all the
backlog is assumed drained serially: ``safety * length_q * L_m(1)``). A path's latency is
the sum over the queues it visits of ``L_m(b_m) + W_q``: the light path (light queue), the
direct heavy path (heavy queue) and the rerouted path (light then heavy queue).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from planner.cascade import CascadeConfig
from planner.registry import Registry, with_swap_s

SAFETY = 1.2  # queueing-delay safety factor (the artifact's ``queue_safety_factor``)
REL_TOL = 1e-6


class PlannerInputError(ValueError):
    """The planner's input is unusable (bad demand, budget, SLO, table or queue state)."""


@dataclass(frozen=True)
class QueueState:
    """What the shell measured on one Redis queue: backlog and recent arrivals per second."""

    length: int = 0
    arrival_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.length, numbers.Integral) and not isinstance(self.length, bool)
                and self.length >= 0):
            raise PlannerInputError(f"queue length must be an integer >= 0, got {self.length!r}")
        if not (_is_number(self.arrival_rate) and math.isfinite(self.arrival_rate)
                and self.arrival_rate >= 0):
            raise PlannerInputError(
                f"queue arrival rate must be a finite number >= 0, got {self.arrival_rate!r}")


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class PlannerState:
    """One planning period's input. Validated on construction: bad input raises
    ``PlannerInputError`` with one clear line, never a solver traceback."""

    demand: float  # λ, queries per second (EWMA of arrivals)
    workers: int  # S, GPU workers the plan may use
    slo_s: float  # end-to-end latency SLO, seconds
    table: Sequence[CascadeConfig]
    registry: Registry
    queues: Mapping[str, QueueState] = field(default_factory=dict)
    previous: Plan | None = None  # last period's plan, for hysteresis

    def __post_init__(self) -> None:
        if not (_is_number(self.demand) and math.isfinite(self.demand) and self.demand >= 0):
            raise PlannerInputError(
                f"demand must be a finite number of queries per second >= 0, got {self.demand!r}")
        if not (isinstance(self.workers, numbers.Integral) and not isinstance(self.workers, bool)):
            raise PlannerInputError(f"worker budget must be an integer, got {self.workers!r}")
        if self.workers < 1:
            raise PlannerInputError(
                f"worker budget must be at least 1 worker, got {self.workers}")
        if not (_is_number(self.slo_s) and math.isfinite(self.slo_s) and self.slo_s > 0):
            raise PlannerInputError(f"SLO must be a positive number of seconds, got {self.slo_s!r}")
        object.__setattr__(self, "workers", int(self.workers))
        object.__setattr__(self, "demand", float(self.demand))
        object.__setattr__(self, "slo_s", float(self.slo_s))
        if not isinstance(self.registry, Registry) or len(self.registry) == 0:
            raise PlannerInputError("the model registry is empty")
        if self.table is None or len(self.table) == 0:
            raise PlannerInputError("the configuration table is empty (profile the cascades first)")
        ids = set(self.registry.ids())
        for i, c in enumerate(self.table):
            if not isinstance(c, CascadeConfig):
                raise PlannerInputError(f"table row {i} is not a CascadeConfig: {c!r}")
            if c.light not in ids or c.heavy not in ids:
                raise PlannerInputError(
                    f"table row {i} uses model {c.light}/{c.heavy}, registry has {sorted(ids)}")
            if not (0 <= c.router_ratio <= 1 and 0 <= c.disc_ratio <= 1):
                raise PlannerInputError(f"table row {i}: routing ratios outside [0, 1]")
            if not math.isfinite(c.fid):
                raise PlannerInputError(f"table row {i}: FID {c.fid!r} is not finite")
        fastest = min(m.latency_b1 for m in self.registry)
        if self.slo_s < fastest:
            raise PlannerInputError(
                f"SLO {self.slo_s:g} s is below the fastest model's batch-1 latency "
                f"{fastest:g} s: no plan can meet it")
        for q, qs in self.queues.items():
            try:
                self.registry.by_queue(q)
            except KeyError:
                raise PlannerInputError(
                    f"queue {q!r} belongs to no model of the registry") from None
            if not isinstance(qs, QueueState):
                raise PlannerInputError(f"queue {q!r}: expected a QueueState, got {qs!r}")

    @property
    def memory(self) -> Mapping[str, Any]:
        """The state the planner returned last period (``previous.memory``; empty with no
        previous plan). A planner reads it only when ``previous`` is its own plan."""
        return {} if self.previous is None else self.previous.memory


# -- shared latency and load arithmetic --------------------------------------------------

def queue_delay(state: PlannerState, queue: str, safety: float = SAFETY) -> float:
    """Little's-law queueing estimate for ``queue`` (see the module docstring)."""
    qs = state.queues.get(queue)
    if qs is None or qs.length == 0:
        return 0.0
    rate = qs.arrival_rate if qs.arrival_rate > 0 else state.demand
    if rate > 0:
        return safety * qs.length / rate
    return safety * qs.length * state.registry.by_queue(queue).latency_b1


def routed_load(config: CascadeConfig) -> dict[str, float]:
    """Executions per query per *role*: ``{"light": .., "heavy": ..}`` (zero shares dropped).

    A single-model row (light == heavy) is served on its light queue.
    """
    if config.light == config.heavy:
        return {"light": 1.0}
    out = {"light": config.frac_light, "heavy": config.frac_heavy}
    return {k: v for k, v in out.items() if v > 0}


def role_model(config: CascadeConfig, role: str) -> int:
    return config.light if role == "light" else config.heavy


def role_queue(registry: Registry, config: CascadeConfig, role: str) -> str:
    spec = registry.get(role_model(config, role))
    return spec.light_queue if role == "light" else spec.heavy_queue


def paths(config: CascadeConfig) -> list[tuple[str, ...]]:
    """The role sequences a query can take under ``config`` (maximal ones only matter for
    the SLO, but all are listed so the plan can report each)."""
    if config.light == config.heavy:
        return [("light",)]
    out: list[tuple[str, ...]] = []
    accepted = config.frac_light - config.frac_rerouted  # light image served
    if accepted > 0:
        out.append(("light",))
    if config.router_ratio > 0:
        out.append(("heavy",))
    if config.frac_rerouted > 0:
        out.append(("light", "heavy"))
    return out


PATH_NAMES = {("light",): "light", ("heavy",): "heavy", ("light", "heavy"): "rerouted"}


# -- the plan ---------------------------------------------------------------------------

def _enc(v: float) -> float | str:
    """Non-finite floats as strings, so ``--json`` output is strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _dec(v: Any) -> Any:
    return float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v


@dataclass(frozen=True)
class Plan:
    """One period's decision. ``workers`` maps queue name (``light_<m>``/``heavy_<m>``) to
    worker count; ``batch`` and ``utilisation`` are per model id. ``served_fraction`` < 1 or
    ``backlog_ignored`` means overload: admission control drops what cannot meet its
    deadline. ``routing`` says how the front door realises ``router_ratio``: "score" (router
    score vs θ), "random" (a uniform draw vs θ = 1 - router_ratio) or "none"."""

    planner: str
    config: CascadeConfig
    workers: dict[str, int]
    batch: dict[int, int]
    fid: float
    utilisation: dict[int, float]
    demand: float
    slo_s: float
    budget: int
    served_fraction: float = 1.0
    overloaded: bool = False
    backlog_ignored: bool = False  # the queued backlog alone broke the SLO; planned without it
    path_latency_s: dict[str, float] = field(default_factory=dict)
    solver: str = ""
    solve_ms: float = 0.0
    routing: str = "score"
    note: str = ""
    memory: Mapping[str, Any] = field(default_factory=dict)  # the planner's state (JSON)
    shed_at_arrival: bool = False  # the front door refuses a query predicted to finish late
    orphans_keep_model: bool = False  # light work of a model this plan makes heavy stays on
    #                                   that model (``policy.orphan_destination``)

    @property
    def pair(self) -> tuple[int, int]:
        return (self.config.light, self.config.heavy)

    @property
    def theta(self) -> float:
        return self.config.theta

    @property
    def tau(self) -> float:
        return self.config.tau

    @property
    def total_workers(self) -> int:
        return sum(self.workers.values())

    def to_dict(self) -> dict:
        cfg = {k: _enc(v) for k, v in asdict(self.config).items()}
        return {
            "planner": self.planner, "config": cfg,
            "pair": list(self.pair), "theta": _enc(self.theta), "tau": _enc(self.tau),
            "router_ratio": self.config.router_ratio, "disc_ratio": self.config.disc_ratio,
            "workers": dict(self.workers), "batch": {str(k): v for k, v in self.batch.items()},
            "fid": self.fid,
            "utilisation": {str(k): _enc(v) for k, v in self.utilisation.items()},
            "demand": self.demand, "slo_s": self.slo_s, "budget": self.budget,
            "served_fraction": self.served_fraction, "overloaded": self.overloaded,
            "backlog_ignored": self.backlog_ignored,
            "path_latency_s": dict(self.path_latency_s), "solver": self.solver,
            "solve_ms": self.solve_ms, "routing": self.routing, "note": self.note,
            "memory": dict(self.memory), "shed_at_arrival": self.shed_at_arrival,
            "orphans_keep_model": self.orphans_keep_model,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Plan:
        cfg = CascadeConfig(**{k: _dec(v) for k, v in dict(d["config"]).items()})
        return cls(
            planner=str(d["planner"]), config=cfg,
            workers={str(k): int(v) for k, v in dict(d["workers"]).items()},
            batch={int(k): int(v) for k, v in dict(d["batch"]).items()},
            fid=float(d["fid"]),
            utilisation={int(k): float(_dec(v)) for k, v in dict(d["utilisation"]).items()},
            demand=float(d["demand"]), slo_s=float(d["slo_s"]), budget=int(d["budget"]),
            served_fraction=float(d.get("served_fraction", 1.0)),
            overloaded=bool(d.get("overloaded", False)),
            backlog_ignored=bool(d.get("backlog_ignored", False)),
            path_latency_s={str(k): float(v) for k, v in dict(d.get("path_latency_s", {})).items()},
            solver=str(d.get("solver", "")), solve_ms=float(d.get("solve_ms", 0.0)),
            routing=str(d.get("routing", "score")), note=str(d.get("note", "")),
            memory=dict(d.get("memory") or {}),
            shed_at_arrival=bool(d.get("shed_at_arrival", False)),
            orphans_keep_model=bool(d.get("orphans_keep_model", False)),
        )


def state_inputs(state: PlannerState) -> dict[str, Any]:
    """What a planner was given, as JSON: everything of ``state`` but the table, the
    registry's static part and the previous plan itself (the caller records which plan that
    was). The registry's swap times are kept (measured ones change while a run goes on).
    ``state_from_inputs`` rebuilds the state, so a recorded run can be planned again."""
    return {
        "demand": state.demand, "workers": state.workers, "slo_s": state.slo_s,
        "queues": {q: [qs.length, qs.arrival_rate] for q, qs in sorted(state.queues.items())},
        "swap_s": {m.name: m.swap_s for m in state.registry if m.swap_s is not None},
        "memory": dict(state.memory),
    }


def state_from_inputs(inputs: Mapping[str, Any], table: Sequence[CascadeConfig],
                      registry: Registry, previous: Plan | None) -> PlannerState:
    """The ``PlannerState`` that ``state_inputs`` recorded, over ``table`` and ``registry``
    (the registry gets the recorded swap times). Raises ``PlannerInputError`` on a record
    that does not fit them (a queue no model has, a malformed entry)."""
    try:
        queues = {str(q): QueueState(int(v[0]), float(v[1]))
                  for q, v in dict(inputs.get("queues") or {}).items()}
        swap = {str(k): float(v) for k, v in dict(inputs.get("swap_s") or {}).items()}
        return PlannerState(demand=float(inputs["demand"]), workers=int(inputs["workers"]),
                            slo_s=float(inputs["slo_s"]), table=table,
                            registry=with_swap_s(registry, swap), queues=queues,
                            previous=previous)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        if isinstance(exc, PlannerInputError):
            raise
        raise PlannerInputError(f"malformed planner inputs ({exc!r})") from None


@runtime_checkable
class Planner(Protocol):
    """Anything that turns a ``PlannerState`` into a ``Plan`` (HADIS and every baseline).

    The one declaration (the simulator and the beat use it). ``plan`` must depend on its
    input only: state it needs next period goes into ``Plan.memory`` (JSON: dicts, lists,
    strings, finite numbers, None) and comes back as ``state.memory``, so a planner object
    rebuilt from scratch (a restarted beat) given the same state decides the same.
    """

    name: str

    def plan(self, state: PlannerState) -> Plan: ...


# -- building and checking plans from an allocation --------------------------------------

def path_latencies(state: PlannerState, config: CascadeConfig, batch: Mapping[int, int],
                   safety: float = SAFETY, ignore_queues: bool = False) -> dict[str, float]:
    """Predicted latency of every path ``config`` uses at the given batch sizes."""
    out: dict[str, float] = {}
    for p in paths(config):
        total = 0.0
        for role in p:
            m = role_model(config, role)
            total += state.registry.get(m).batch_latency(batch[m])
            if not ignore_queues:
                total += queue_delay(state, role_queue(state.registry, config, role), safety)
        out[PATH_NAMES[p]] = total
    return out


def utilisation(state: PlannerState, config: CascadeConfig, workers: Mapping[str, int],
                batch: Mapping[int, int], served_fraction: float = 1.0) -> dict[int, float]:
    """Routed executions per second over capacity, per model of the configuration."""
    out: dict[int, float] = {}
    for role, load in routed_load(config).items():
        m = role_model(config, role)
        n = workers.get(role_queue(state.registry, config, role), 0)
        cap = n * state.registry.get(m).throughput(batch[m])
        need = state.demand * served_fraction * load
        out[m] = need / cap if cap > 0 else (0.0 if need == 0 else math.inf)
    return out


def spread_spare(state: PlannerState, config: CascadeConfig, workers: dict[str, int],
                 batch: Mapping[int, int], served_fraction: float = 1.0) -> dict[str, int]:
    """Hand the workers the plan does not need to its busiest queue, one at a time.

    The MILP returns the fewest workers that cover demand; idle GPUs are better spent
    lowering utilisation (and so queueing) on the model closest to saturation.
    """
    out = dict(workers)
    spare = state.workers - sum(out.values())
    roles = list(routed_load(config))
    if spare <= 0 or not roles:
        return out
    queues = [role_queue(state.registry, config, r) for r in roles]
    thr = {q: state.registry.by_queue(q).throughput(batch[state.registry.by_queue(q).id])
           for q in queues}
    lam = state.demand * served_fraction
    lam = lam if lam > 0 else 1.0  # no demand: spread in proportion to the routed load
    need = {q: lam * routed_load(config)[r] for q, r in zip(queues, roles, strict=True)}
    for _ in range(spare):
        q = max(queues, key=lambda q: (need[q] / (out.get(q, 0) * thr[q])
                                       if out.get(q, 0) else math.inf, need[q]))
        out[q] = out.get(q, 0) + 1
    return out


def verify_plan(plan: Plan, state: PlannerState, safety: float = SAFETY) -> list[str]:
    """Every way ``plan`` breaks capacity, budget or the SLO under ``state`` (empty: none).

    Independent of the solver: recomputes routed demand, capacity and path latencies from
    the registry and the configuration the plan names.
    """
    problems: list[str] = []
    reg, cfg = state.registry, plan.config
    if any(n < 0 for n in plan.workers.values()):
        problems.append(f"negative worker count in {plan.workers}")
    if plan.total_workers > state.workers:
        problems.append(f"{plan.total_workers} workers exceed the budget {state.workers}")
    if not 0.0 <= plan.served_fraction <= 1.0:
        problems.append(f"served fraction {plan.served_fraction} outside [0, 1]")
    load = routed_load(cfg)
    used_queues = {role_queue(reg, cfg, r) for r in load}
    for q, n in plan.workers.items():
        if n > 0 and q not in used_queues:
            problems.append(f"{n} workers on {q}, which the configuration does not use")
    for role, share in load.items():
        m = role_model(cfg, role)
        spec = reg.get(m)
        if m not in plan.batch:
            problems.append(f"no batch size for model {m}")
            continue
        if plan.batch[m] not in spec.batch_sizes:
            problems.append(f"model {m}: batch {plan.batch[m]} not profiled {spec.batch_sizes}")
            continue
        q = role_queue(reg, cfg, role)
        n = plan.workers.get(q, 0)
        if n < 1:
            problems.append(f"{q} carries {share:.3f} of the queries but has no worker")
        need = state.demand * plan.served_fraction * share
        cap = n * spec.throughput(plan.batch[m])
        if cap < need * (1 - REL_TOL) - 1e-9:
            problems.append(f"{q}: capacity {cap:.4f}/s below routed demand {need:.4f}/s")
    if not problems:
        lat = path_latencies(state, cfg, plan.batch, safety, ignore_queues=plan.backlog_ignored)
        for name, s in lat.items():
            if s > state.slo_s * (1 + REL_TOL):
                problems.append(f"{name} path {s:.3f} s exceeds the SLO {state.slo_s:g} s")
    if plan.served_fraction < 1 - REL_TOL and not plan.overloaded:
        problems.append("serves less than the demand but is not marked overloaded")
    return problems


def make_plan(state: PlannerState, name: str, config: CascadeConfig, workers: dict[str, int],
              batch: dict[int, int], *, served_fraction: float = 1.0,
              backlog_ignored: bool = False, spread: bool = True, safety: float = SAFETY,
              solver: str = "", solve_ms: float = 0.0, routing: str = "score",
              note: str = "") -> Plan:
    """Assemble a ``Plan`` (spare workers spread, utilisation and path latencies filled)."""
    used = {role_model(config, r) for r in routed_load(config)}
    batch = {m: b for m, b in batch.items() if m in used}
    workers = {q: n for q, n in workers.items() if n > 0}
    if spread:
        workers = spread_spare(state, config, workers, batch, served_fraction)
    overloaded = served_fraction < 1 - REL_TOL or backlog_ignored
    return Plan(
        planner=name, config=config, workers=workers, batch=batch, fid=config.fid,
        utilisation=utilisation(state, config, workers, batch, served_fraction),
        demand=state.demand, slo_s=state.slo_s, budget=state.workers,
        served_fraction=served_fraction, overloaded=overloaded,
        backlog_ignored=backlog_ignored,
        path_latency_s=path_latencies(state, config, batch, safety, backlog_ignored),
        solver=solver, solve_ms=solve_ms, routing=routing, note=note,
    )
