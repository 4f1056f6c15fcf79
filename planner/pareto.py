"""Pareto pruning of cascade configurations: quality against the load the planner pays.

Cost. A configuration is compared on ``fid`` (lower is better; for tables profiled without
FID this field holds 1 - mean discriminator score, see ``CascadeConfig.metric``) and on
its **batch-1 GPU-seconds per query per model** (``CascadeConfig.gpu_s_per_query``:
executions per query on model ``m`` times ``L_m(1)``), a vector over every model id of the
table (0 where a configuration does not use a model). Row ``a`` dominates row ``b`` when
``a.fid <= b.fid`` and ``a``'s GPU-seconds are ``<=`` ``b``'s on every model, with at least
one strict inequality (tolerance ``EPS``).

Why a vector and not mean latency: the planner covers each model's demand with workers of
that model, so a row that is cheaper in total but heavier on the slow model may need more
GPUs. Vector dominance is safe for the planner whatever batch sizes it picks: at batch
``b_m`` the load on model ``m`` is ``executions_m * L_m(b_m) / b_m``, a positive per-model
rescaling that preserves the order on every coordinate. (The scalar total of the vector is
exactly the expected service seconds at batch 1, ``service_s``; ``cost="total"`` prunes on
it, for plots like the paper's Figure 2.) A dominator never adds a rerouted path the
dominated row lacks, so the latency-SLO side of the planner loses nothing either.

Ties: rows equal in fid and cost (e.g. "model 0 alone" is the all-light row of three
pairs, and every ``router_ratio = 1`` row of a pair is "heavy alone") keep the first in
input order; the others are reported as duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner.cascade import CascadeConfig

EPS = 1e-9
COSTS = ("per_model", "total")


def cost_matrix(configs: Sequence[CascadeConfig], cost: str = "per_model"
                ) -> tuple[np.ndarray, list[int]]:
    """Rows: configurations; columns: model ids (``per_model``) or one total column."""
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r} (one of {', '.join(COSTS)})")
    loads = [c.gpu_s_per_query() for c in configs]
    for c, load in zip(configs, loads, strict=True):
        if not all(np.isfinite(v) and v >= 0 for v in load.values()):
            raise ValueError(
                f"configuration {c.light}:{c.heavy} r={c.router_ratio} d={c.disc_ratio}: "
                f"GPU-seconds {load} (set light_s/heavy_s from the registry)"
            )
    if cost == "total":
        return np.array([[sum(load.values())] for load in loads]).reshape(-1, 1), []
    models = sorted({m for load in loads for m in load})
    m = np.zeros((len(configs), len(models)))
    for i, load in enumerate(loads):
        for mid, v in load.items():
            m[i, models.index(mid)] = v
    return m, models


def dominates(a: CascadeConfig, b: CascadeConfig, cost: str = "per_model") -> bool:
    """True when ``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r} (one of {', '.join(COSTS)})")
    la, lb = a.gpu_s_per_query(), b.gpu_s_per_query()
    if cost == "total":
        la, lb = {0: sum(la.values())}, {0: sum(lb.values())}
    models = sorted(la.keys() | lb.keys())
    return _dominates(a.fid, np.array([la.get(m, 0.0) for m in models]),
                      b.fid, np.array([lb.get(m, 0.0) for m in models]))


def _dominates(fa: float, ca: np.ndarray, fb: float, cb: np.ndarray) -> bool:
    if fa > fb + EPS or np.any(ca > cb + EPS):
        return False
    return fa < fb - EPS or bool(np.any(ca < cb - EPS))


@dataclass(frozen=True)
class ParetoResult:
    """Indices into the input: kept, dominated (with a dominator), duplicates (with the
    kept row they equal)."""

    kept: tuple[int, ...]
    dominated: dict[int, int]
    duplicate: dict[int, int]


def pareto_indices(configs: Sequence[CascadeConfig], cost: str = "per_model") -> ParetoResult:
    """Classify every row as kept, dominated or a duplicate of an earlier kept row."""
    n = len(configs)
    if n == 0:
        return ParetoResult((), {}, {})
    costs, _ = cost_matrix(configs, cost)
    fid = np.array([c.fid for c in configs], dtype=float)
    if not np.all(np.isfinite(fid)):
        raise ValueError("every configuration needs a finite quality value (fid) to prune")
    le = (fid[:, None] <= fid[None, :] + EPS) & np.all(
        costs[:, None, :] <= costs[None, :, :] + EPS, axis=2)  # le[j, i]: j <= i everywhere
    lt = (fid[:, None] < fid[None, :] - EPS) | np.any(
        costs[:, None, :] < costs[None, :, :] - EPS, axis=2)
    dom = le & lt  # dom[j, i]: j dominates i
    kept: list[int] = []
    dominated: dict[int, int] = {}
    duplicate: dict[int, int] = {}
    for i in range(n):
        dominators = np.flatnonzero(dom[:, i])
        if dominators.size:
            dominated[i] = int(dominators[0])
            continue
        twin = next((k for k in kept if le[k, i] and le[i, k]), None)
        if twin is not None:
            duplicate[i] = twin
        else:
            kept.append(i)
    return ParetoResult(tuple(kept), dominated, duplicate)


def pareto_front(configs: Sequence[CascadeConfig], cost: str = "per_model"
                 ) -> list[CascadeConfig]:
    """The non-dominated rows over the whole table (input order, duplicates dropped)."""
    return [configs[i] for i in pareto_indices(configs, cost).kept]


def pareto_by_pair_indices(configs: Sequence[CascadeConfig], cost: str = "per_model"
                           ) -> list[int]:
    """Indices of the rows on their own pair's front (each pair pruned separately)."""
    keep: list[int] = []
    pairs: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(configs):
        pairs.setdefault(c.pair, []).append(i)
    for idx in pairs.values():
        res = pareto_indices([configs[i] for i in idx], cost)
        keep.extend(idx[k] for k in res.kept)
    return sorted(keep)


def pareto_by_pair(configs: Sequence[CascadeConfig], cost: str = "per_model"
                   ) -> list[CascadeConfig]:
    """The union of each pair's own front (input order)."""
    return [configs[i] for i in pareto_by_pair_indices(configs, cost)]
