"""Baseline and ablation planners, all behind the ``Planner`` interface.

Each is the HADIS MILP (``planner.milp``) run over the subset or transformation of the
configuration table that the compared system can express, so that every comparison
shares one resource model (workers, batch sizes, Little's-law latency, the same solver)
and differs only in what the HADIS paper (Yang et al., "HADIS: Hybrid Adaptive Diffusion
Model Serving for Efficient Text-to-Image Generation", arXiv 2509.00642, evaluation
baselines and ablations) says the system can decide. The docstrings paraphrase the
paper's definitions; where the paper leaves a detail open, the choice made here is
stated.

Quality of mixes no profile measured (random routing) is estimated as the weighted mean
of the measured FIDs of the parts: an approximation, since FID is not linear in the mix.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from planner.cascade import CascadeConfig
from planner.milp import HadisPlanner
from planner.plan import (
    Plan,
    PlannerInputError,
    PlannerState,
    QueueState,
    path_latencies,
    role_model,
    routed_load,
    utilisation,
)
from planner.plus import (
    HadisPlusPlanner,
    hadis_plus_ac,
    hadis_plus_fa,
    hadis_plus_fd,
    hadis_plus_fh,
)

RATIO_GRID = tuple(round(0.1 * i, 1) for i in range(11))
# DiffServe's light model is a distilled few-step model: at least this many times faster
# (batch 1) than the heavy one.
DIFFSERVE_SPEEDUP = 10.0


def single_model_rows(table: Sequence[CascadeConfig]) -> dict[int, list[CascadeConfig]]:
    """Rows that run one model only (all light, or all routed heavy), per model id."""
    out: dict[int, list[CascadeConfig]] = {}
    for c in table:
        load = routed_load(c)
        if len(load) == 1:
            out.setdefault(role_model(c, next(iter(load))), []).append(c)
    return out


def single_model_fid(table: Sequence[CascadeConfig]) -> dict[int, float]:
    """Measured FID of each model serving every query alone."""
    return {m: min(c.fid for c in rows) for m, rows in single_model_rows(table).items()}


class _TablePlanner(HadisPlanner):
    """A ``HadisPlanner`` over a derived table, derived once per input table object."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._memo: tuple[int, object, list[CascadeConfig]] | None = None

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        raise NotImplementedError

    def table(self, state: PlannerState) -> Sequence[CascadeConfig]:
        if self._memo is not None and self._memo[1] is state.table:
            return self._memo[2]
        rows = self.derive(state)
        if not rows:
            raise PlannerInputError(f"{self.name}: the configuration table has no row it can use")
        self._memo = (id(state.table), state.table, rows)
        return rows


def fastest_single_model(table: Sequence[CascadeConfig], registry) -> int:
    """Clipper-Light's model: the fastest (batch-1 seconds) of the models the table runs
    alone (ties: the better quality)."""
    fid = single_model_fid(table)
    if not fid:
        raise PlannerInputError("the table has no row running one model alone")
    secs = {m.id: m.latency_b1 for m in registry}
    return min(fid, key=lambda m: (secs.get(m, math.inf), fid[m], m))


def best_single_model(table: Sequence[CascadeConfig], registry) -> int:
    """Clipper-Heavy's model: the best-quality one of the models the table runs alone
    (ties: the faster)."""
    fid = single_model_fid(table)
    if not fid:
        raise PlannerInputError("the table has no row running one model alone")
    secs = {m.id: m.latency_b1 for m in registry}
    return min(fid, key=lambda m: (fid[m], secs.get(m, math.inf), m))


def diffserve_pair(table: Sequence[CascadeConfig], registry,
                   speedup: float = DIFFSERVE_SPEEDUP) -> tuple[int, int]:
    """DiffServe's cascade over the deployed models: the heavy model is the best-quality
    one that runs alone; the light model is, of the models the table cascades into it with
    the discriminator alone (router ratio 0), the best-quality one at least ``speedup``
    times faster (a distilled few-step model, as DiffServe pairs SD-Turbo with SD 1.5),
    else the fastest of them."""
    heavy = best_single_model(table, registry)
    fid = single_model_fid(table)
    secs = {m.id: m.latency_b1 for m in registry}
    lights = sorted({c.light for c in table
                     if c.heavy == heavy and c.light != heavy and c.router_ratio == 0})
    if not lights:
        raise PlannerInputError(
            f"the table has no row cascading a faster model into model {heavy} (the "
            "best-quality model that runs alone) with the discriminator only")
    fast = [m for m in lights if secs.get(m, math.inf) * speedup <= secs.get(heavy, 0.0)]
    if fast:
        return min(fast, key=lambda m: (fid.get(m, math.inf), secs.get(m, math.inf))), heavy
    return min(lights, key=lambda m: (secs.get(m, math.inf), m)), heavy


class ClipperPlanner(_TablePlanner):
    """Clipper (Crankshaw et al., NSDI'17) as the HADIS paper uses it: one static model
    serves every query, no router, no discriminator; the planner only sizes batches and
    workers (Clipper's adaptive batching), every worker on that one model.

    ``role`` picks the model by rule from the table: ``"light"`` the fastest model that the
    table runs alone (``fastest_single_model``), ``"heavy"`` the best-quality one
    (``best_single_model``); ``model`` names one explicitly instead. The row is the table's
    single-model row of that model, taken as a heavy-queue row when there is one
    (generation only, no discriminator pass).
    """

    def __init__(self, model: int | None = None, name: str | None = None,
                 role: str = "heavy", **kw) -> None:
        if role not in ("light", "heavy"):
            raise ValueError(f"Clipper role must be light or heavy, got {role!r}")
        super().__init__(name=name or (f"clipper-{model}" if model is not None
                                       else f"clipper-{role}"), routing="none", **kw)
        self.model = model
        self.role = role

    def pick(self, state: PlannerState) -> int:
        if self.model is not None:
            return self.model
        try:
            if self.role == "light":
                return fastest_single_model(state.table, state.registry)
            fid = single_model_fid(state.table)
            if len(fid) < 2:
                only = ", ".join(str(m) for m in fid) or "none"
                raise PlannerInputError(
                    f"only model {only} runs alone in this table; Clipper-Heavy needs the "
                    "best-quality model of at least two that run alone")
            return best_single_model(state.table, state.registry)
        except PlannerInputError as exc:
            raise PlannerInputError(f"{self.name}: {exc}") from None

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        model = self.pick(state)
        rows = single_model_rows(state.table).get(model, [])
        if not rows:
            raise PlannerInputError(
                f"{self.name}: the table has no row running model {model} alone")
        heavy = [c for c in rows if "heavy" in routed_load(c)]
        return [min(heavy or rows, key=lambda c: c.fid)]


def clipper_light(model: int | None = None, **kw) -> ClipperPlanner:
    return ClipperPlanner(model, name="clipper-light", role="light", **kw)


def clipper_heavy(model: int | None = None, **kw) -> ClipperPlanner:
    return ClipperPlanner(model, name="clipper-heavy", role="heavy", **kw)


class ProteusPlanner(_TablePlanner):
    """Proteus (Ahmad et al., ASPLOS'24) as the HADIS paper uses it: accuracy scaling by
    load. It picks a mix of model variants and the share of queries each serves so that
    capacity covers demand at the best quality, and spreads queries over the variants at
    random (query-oblivious): no router scores, no discriminator, no cascade.

    Here a mix is two variants of one profiled pair at a random split ``r`` (grid
    ``RATIO_GRID``; ``r = 0`` or 1 is a single variant; a variant in no pair runs alone),
    with FID the weighted mean of the
    two single-model FIDs (Proteus scores a mix by the weighted mean of its variants'
    accuracies). The front door realises ``r`` with a uniform draw (``routing="random"``,
    θ = 1 - r).
    """

    def __init__(self, ratios: Sequence[float] = RATIO_GRID, name: str = "proteus",
                 **kw) -> None:
        super().__init__(name=name, routing="random", **kw)
        self.ratios = tuple(ratios)

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        fid = single_model_fid(state.table)
        secs = {m.id: m.latency_b1 for m in state.registry}
        pairs = sorted({c.pair for c in state.table
                        if c.light != c.heavy and c.light in fid and c.heavy in fid})
        out = []
        for lo, hi in pairs:
            for r in self.ratios:
                out.append(CascadeConfig(
                    light=lo, heavy=hi, router_ratio=r, theta=1.0 - r, disc_ratio=0.0,
                    tau=-math.inf, fid=round((1 - r) * fid[lo] + r * fid[hi], 6),
                    service_s=(1 - r) * secs[lo] + r * secs[hi],
                    light_s=secs[lo], heavy_s=secs[hi]))
        paired = {m for p in pairs for m in p}
        for m in sorted(set(fid) - paired):  # a variant no profiled pair can mix with
            out.append(CascadeConfig(
                light=m, heavy=m, router_ratio=0.0, theta=math.inf, disc_ratio=0.0,
                tau=-math.inf, fid=fid[m], service_s=secs[m], light_s=secs[m],
                heavy_s=secs[m]))
        return out


class DiffServePlanner(_TablePlanner):
    """DiffServe (Ahmad et al., MLSys'25) as the HADIS paper uses it: a fixed cascade
    (the paper's: its large model's turbo distillation, then the large model); every
    query runs the light model, the discriminator reroutes the low-confidence ones to the
    heavy model; an MILP picks the discriminator threshold τ and the allocation by load.
    No router (θ never sends a query straight to the heavy model), never another pair.
    The pair is ``pair`` when given, else chosen by rule over the deployed models
    (``diffserve_pair``).
    """

    def __init__(self, pair: tuple[int, int] | None = None, name: str = "diffserve",
                 **kw) -> None:
        super().__init__(name=name, routing="none", **kw)
        self.pair = pair

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        try:
            pair = self.pair or diffserve_pair(state.table, state.registry)
        except PlannerInputError as exc:
            raise PlannerInputError(f"{self.name}: {exc}") from None
        rows = [c for c in state.table if c.pair == pair and c.router_ratio == 0]
        if not rows:
            raise PlannerInputError(f"{self.name}: the table has no row of the pair "
                                    f"{pair[0]} -> {pair[1]} without the router")
        return rows


class RouterOnlyPlanner(_TablePlanner):
    """Ablation "Router-only" (HADIS paper): the hybrid system without the discriminator.
    The router splits queries between the light and the heavy model of any pair, and
    nothing is rerouted: only rows with ``disc_ratio = 0``."""

    def __init__(self, name: str = "router-only", **kw) -> None:
        super().__init__(name=name, routing="score", **kw)

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        return [c for c in state.table if c.disc_ratio == 0]


class DiscriminatorOnlyPlanner(_TablePlanner):
    """Ablation "Discriminator-only" (HADIS paper): the cascade without the router; every
    query runs the light model first and the discriminator reroutes (DiffServe's
    architecture, but pair and τ chosen adaptively): only rows with ``router_ratio = 0``."""

    def __init__(self, name: str = "discriminator-only", **kw) -> None:
        super().__init__(name=name, routing="none", **kw)

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        return [c for c in state.table if c.router_ratio == 0]


class RandomScoresPlanner(_TablePlanner):
    """Ablation "Random" (HADIS paper): the hybrid system with random router scores, so
    the ``router_ratio`` share sent straight to the heavy model is a random subset, not
    the hardest prompts; the discriminator works as in HADIS.

    FID of row (pair, r, d) becomes ``(1 - r) * FID(pair, 0, d) + r * FID(heavy alone)``:
    the light part behaves like the discriminator-only row on a random subset, the
    direct part like the heavy model on a random subset. Rows whose ``(pair, 0, d)``
    twin is not in the table are dropped. θ = 1 - r against a uniform draw.
    """

    def __init__(self, name: str = "random-scores", **kw) -> None:
        super().__init__(name=name, routing="random", **kw)

    def derive(self, state: PlannerState) -> list[CascadeConfig]:
        fid = single_model_fid(state.table)
        disc_only = {(c.pair, round(c.disc_ratio, 6)): c.fid
                     for c in state.table if c.router_ratio == 0}
        out = []
        for c in state.table:
            if c.router_ratio == 0:
                out.append(replace(c, theta=math.inf))
                continue
            base = disc_only.get((c.pair, round(c.disc_ratio, 6)))
            if base is None or c.heavy not in fid:
                continue
            r = c.router_ratio
            out.append(replace(c, theta=1.0 - r, fid=round((1 - r) * base + r * fid[c.heavy], 6)))
        return out


class _CachePlanner:
    """Shared machinery of the plan caches: key the state, solve a representative state
    once per key with the inner planner, serve the stored plan afterwards.

    ``self.cache`` is a memo of solves (a pure function of its key), not state: what a
    representative depends on beyond the key (Cache-D+Q: the arrival rates seen when the
    entry was filled) is kept in ``Plan.memory`` (``filled``: memory key -> those rates),
    so a rebuilt cache (a restarted beat) re-solves the same representatives."""

    name = "cache"

    def __init__(self, inner: HadisPlanner | None, demand_step: float) -> None:
        if not (math.isfinite(demand_step) and demand_step > 0):
            raise ValueError(f"demand step must be a positive rate, got {demand_step!r}")
        self.inner = inner if inner is not None else HadisPlanner()
        self.demand_step = float(demand_step)
        self.cache: dict[tuple, Plan] = {}
        self.hits = 0
        self.misses = 0

    def _bucket(self, demand: float) -> int:
        return int(math.floor(demand / self.demand_step))

    def key(self, state: PlannerState) -> tuple:
        return (self._bucket(state.demand), state.workers, state.slo_s, id(state.table))

    def fill(self, state: PlannerState) -> dict[str, float]:
        """What the representative of ``state`` takes from it beyond the key (JSON)."""
        return {}

    def representative(self, state: PlannerState, fill: dict[str, float]) -> PlannerState:
        raise NotImplementedError

    def plan(self, state: PlannerState) -> Plan:
        t0 = time.perf_counter()
        prev = state.previous
        filled = dict(state.memory.get("filled", {})
                      if prev is not None and prev.planner == self.name else {})
        key = self.key(state)
        mkey = json.dumps([k for i, k in enumerate(key) if i != 3])  # no table identity
        fill = filled.get(mkey)
        if fill is None:
            fill = self.fill(state)
            if fill:
                filled[mkey] = fill
        memo = (key, tuple(sorted(fill.items())))
        plan = self.cache.get(memo)
        if plan is None:
            self.misses += 1
            plan = self.inner.plan(self.representative(state, fill))
            self.cache[memo] = plan
            solver, note = plan.solver, "cache miss: solved for the range's upper edge"
        else:
            self.hits += 1
            solver, note = "cache", "cache hit"
        served_abs = plan.served_fraction * plan.demand
        served = 1.0 if state.demand == 0 else min(1.0, served_abs / state.demand)
        return replace(
            plan, planner=self.name, demand=state.demand, served_fraction=served,
            overloaded=served < 1 - 1e-9 or plan.backlog_ignored,
            utilisation=utilisation(state, plan.config, plan.workers, plan.batch, served),
            path_latency_s=path_latencies(state, plan.config, plan.batch,
                                          ignore_queues=plan.backlog_ignored),
            solver=solver, solve_ms=(time.perf_counter() - t0) * 1e3, note=note,
            memory={"filled": filled} if filled else {})


class CacheDPlanner(_CachePlanner):
    """Ablation "Cache-D" (HADIS paper): instead of solving the MILP every period, reuse a
    plan computed offline per demand range. Key: the range of λ (``demand_step`` wide);
    the stored plan is the HADIS plan for the range's upper edge with empty queues (so it
    covers any demand in the range), blind to the live queue lengths. Filled lazily: the
    first state in a range pays one solve."""

    name = "cache-d"

    def __init__(self, inner: HadisPlanner | None = None, demand_step: float = 1.0) -> None:
        super().__init__(inner, demand_step)

    def representative(self, state: PlannerState, fill: dict[str, float]) -> PlannerState:
        upper = (self._bucket(state.demand) + 1) * self.demand_step
        return replace(state, demand=upper, queues={}, previous=None)


class CacheDQPlanner(_CachePlanner):
    """Ablation "Cache-D+Q" (HADIS paper): plans cached per demand range and per range of
    every queue's length (``queue_step`` wide). The stored plan is solved for the upper
    edge of both (demand, and each queue's length with the arrival rate seen when the
    entry was filled: kept in ``Plan.memory``)."""

    name = "cache-d+q"

    def __init__(self, inner: HadisPlanner | None = None, demand_step: float = 1.0,
                 queue_step: int = 4) -> None:
        super().__init__(inner, demand_step)
        if not (isinstance(queue_step, int) and queue_step >= 1):
            raise ValueError(f"queue step must be a positive integer, got {queue_step!r}")
        self.queue_step = queue_step

    def _qkey(self, state: PlannerState) -> tuple:
        return tuple(sorted((q, s.length // self.queue_step) for q, s in state.queues.items()
                            if s.length > 0))

    def key(self, state: PlannerState) -> tuple:
        return super().key(state) + (self._qkey(state),)

    def fill(self, state: PlannerState) -> dict[str, float]:
        return {q: s.arrival_rate for q, s in sorted(state.queues.items()) if s.length > 0}

    def representative(self, state: PlannerState, fill: dict[str, float]) -> PlannerState:
        upper = (self._bucket(state.demand) + 1) * self.demand_step
        queues = {q: QueueState((s.length // self.queue_step + 1) * self.queue_step,
                                float(fill.get(q, s.arrival_rate)))
                  for q, s in state.queues.items() if s.length > 0}
        return replace(state, demand=upper, queues=queues, previous=None)


def hadis_ac(solver: str = "gurobi", **kw) -> HadisPlanner:
    """Ablation ``hadis-ac``: the paper's HADIS whose plans shed at arrival
    (``policy.admits``), to tell what admission control alone buys from what
    hadis-plus-ac's planning adds (``docs/plus.md``)."""
    kw.setdefault("shed_at_arrival", True)
    return HadisPlanner(solver, name="hadis-ac", **kw)


def hadis_km(solver: str = "gurobi", **kw) -> HadisPlanner:
    """Ablation ``hadis-km``: the paper's HADIS whose every plan keeps orphaned light work
    on its model (``Plan.orphans_keep_model``, ``policy.orphan_destination``) without
    checking that the heavy role absorbs it, to measure what that shell rule alone does
    to the paper's planner (``docs/plus.md``, seventh pass)."""
    kw.setdefault("orphans_keep_model", True)
    return HadisPlanner(solver, name="hadis-km", **kw)


PLANNERS: dict[str, Callable[..., object]] = {
    "hadis": HadisPlanner,
    "clipper-light": clipper_light,
    "clipper-heavy": clipper_heavy,
    "proteus": ProteusPlanner,
    "diffserve": DiffServePlanner,
    "router-only": RouterOnlyPlanner,
    "discriminator-only": DiscriminatorOnlyPlanner,
    "random-scores": RandomScoresPlanner,
    "cache-d": CacheDPlanner,
    "cache-d+q": CacheDQPlanner,
    "hadis-plus": HadisPlusPlanner,
    "hadis-plus-fa": hadis_plus_fa,
    "hadis-plus-fh": hadis_plus_fh,
    "hadis-plus-fd": hadis_plus_fd,
    "hadis-plus-ac": hadis_plus_ac,
    "hadis-ac": hadis_ac,
    "hadis-km": hadis_km,
}


def make_planner(name: str, solver: str = "gurobi", **kw):
    """A planner by its CLI name; ``solver`` goes to the MILP (the caches' inner one)."""
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r} (one of {', '.join(PLANNERS)})")
    if name in ("cache-d", "cache-d+q"):
        return PLANNERS[name](HadisPlanner(solver=solver), **kw)
    return PLANNERS[name](solver=solver, **kw)
