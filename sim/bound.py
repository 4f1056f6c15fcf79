"""A quality bound no online policy can beat in the simulator: a fluid LP over the trace.

Why a relaxation, step by step (each step only widens what the simulator allows):

- **Quality is a function of counts.** ``SimResult.fid_all`` is ``(sum over (window, pair)
  groups of images * F_pair(r, d) + fallback FID * dropped) / queries``, where ``F_pair`` is
  the bilinear FID surface (``sim.fid``) at the group's realised router share ``r`` and
  discriminator reject share ``d``. A group costs ``(1 - r)`` light runs and
  ``r + (1 - r) d`` heavy runs per image, which is bilinear in ``(r, d)`` too, so a group is
  exactly a convex mix of the grid's corner points with the same cost and FID. Letting every
  query pick its own mix of grid points (and single models, and a drop at the fallback's
  FID and no cost) can only do better than the groups the simulator forms.
- **Only worker time is scarce.** A worker runs a batch of ``b`` in ``batch_seconds(b)``,
  so an image of model ``m`` costs at least ``1 / thr_m`` worker-seconds, ``thr_m`` its best
  images per second over every batch size up to the largest profiled one that ends within
  the SLO (a longer batch cannot serve any member on time). A rerouted image pays a light
  and a heavy run whose batches end within the SLO together (``cascade_seconds``). Swaps, the
  discriminator's time, queueing, routing and batch formation are ignored (all cost time or
  force choices); any model may run on any worker at any time.
- **Deadlines per slot.** Time is cut into slots of ``slot_s`` (it divides the SLO). A query
  arriving in slot ``i`` is on time only if all its runs happen between its arrival and its
  deadline, so inside slots ``i .. i + SLO/slot_s``; the LP lets its work go anywhere in
  them. Each slot has ``workers * slot_s`` worker-seconds. There is no late service: the
  simulator starts a batch only when it ends by every member's deadline
  (``policy.take_batch``), so a query is served on time or dropped (``tests/sim`` checks
  that no run has a late query).

Because only the scalar worker-seconds per image matters, each query's choice reduces to
the lower convex hull of the ``(worker-seconds, FID)`` points of every configuration:
``fid_at(cost)`` is that piecewise-linear convex function. The LP is solved with HiGHS
(``scipy.optimize.linprog``). The simulator's accounting must credit an image to the model
that made it (``sim.engine`` does: an image served by another model than its arrival-time
pair names is counted as that model's single-model image), else a policy could be credited
a heavy model's FID for a light model's time.

Reported: ``min_violation`` (the least violation ratio any schedule reaches) and
``fid_floor(v)`` (the least ``fid_all`` with a violation ratio at most ``v``;
``fid_floor(0)`` is the floor at zero violations, ``None`` when zero violations are
impossible).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from planner.cascade import CascadeConfig
from planner.registry import ModelSpec, Registry
from sim.fid import FidSurface, fallback_model

TOL = 1e-9


def best_throughput(registry: Registry, slo_s: float | None = None) -> dict[int, float]:
    """Images per second of one worker at its best batch, over every batch size the
    simulator may run (1 .. the largest profiled; ``batch_seconds`` interpolates) and, with
    ``slo_s``, that ends within it (a longer batch serves nobody on time). A model with no
    such batch is left out."""
    out: dict[int, float] = {}
    for m in registry:
        fits = [b / m.batch_seconds(b) for b in range(1, m.batch_sizes[-1] + 1)
                if slo_s is None or m.batch_seconds(b) <= slo_s + TOL]
        if fits:
            out[m.id] = max(fits)
    return out


def cascade_seconds(light: ModelSpec, heavy: ModelSpec, slo_s: float | None
                    ) -> float | None:
    """Least worker-seconds of a rerouted image: a light run and then a heavy run whose
    batches end within the SLO together (each image pays its batch's seconds per image);
    None when no pair of batches fits."""
    best = None
    for bl in range(1, light.batch_sizes[-1] + 1):
        sl = light.batch_seconds(bl)
        for bh in range(1, heavy.batch_sizes[-1] + 1):
            sh = heavy.batch_seconds(bh)
            if slo_s is not None and sl + sh > slo_s + TOL:
                continue
            cost = sl / bl + sh / bh
            best = cost if best is None else min(best, cost)
    return best


def config_points(grid: Iterable[CascadeConfig], registry: Registry, surface: FidSurface,
                  slo_s: float | None = None) -> list[tuple[float, float, str]]:
    """``(worker-seconds per image, FID, label)`` of every configuration the simulator can
    credit: each single model, and each pair's grid point (the profiled ``r`` and ``d``
    values plus 0 and 1, where the surface clips). With ``slo_s``, only batches that end
    within the SLO count, and a rerouted image's two runs must end within it together."""
    thr = best_throughput(registry, slo_s)
    specs = {m.id: m for m in registry}
    pts: list[tuple[float, float, str]] = []
    for m in registry:
        if m.id not in thr:
            continue
        try:
            pts.append((1.0 / thr[m.id], surface.single(m.id), f"{m.id}"))
        except KeyError:
            continue
    axes: dict[tuple[int, int], tuple[set[float], set[float]]] = {}
    for c in grid:
        if c.light != c.heavy and c.light in thr and c.heavy in thr:
            rs, ds = axes.setdefault((c.light, c.heavy), ({0.0, 1.0}, {0.0, 1.0}))
            rs.add(round(c.router_ratio, 9))
            ds.add(round(c.disc_ratio, 9))
    for (light, heavy), (rs, ds) in sorted(axes.items()):
        both = cascade_seconds(specs[light], specs[heavy], slo_s)
        for r in sorted(rs):
            for d in sorted(ds):
                rerouted = (1.0 - r) * d
                if rerouted > 0 and both is None:
                    continue  # no light and heavy batch fit the SLO together
                cost = ((1.0 - r) * (1.0 - d) / thr[light] + r / thr[heavy]
                        + (rerouted * both if rerouted > 0 else 0.0))
                pts.append((cost, surface.fid(light, heavy, r, d), f"{light}:{heavy}@{r:g},{d:g}"))
    if not pts:
        raise ValueError("no configuration with a profiled FID")
    return pts


def lower_hull(points: Sequence[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The vertices of the lower convex hull from the cheapest point to the best FID, cost
    rising and FID falling: every point lies on or above the segments between them."""
    pts = sorted(points, key=lambda p: (p[0], p[1]))
    best = min(p[1] for p in pts)
    hull: list[tuple[float, float, str]] = []
    for p in pts:
        if hull and p[0] == hull[-1][0]:
            continue  # same cost, not better (sorted by FID within a cost)
        if hull and p[1] >= hull[-1][1]:
            continue  # costs more, no better
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                hull.pop()  # hull[-1] lies on or above the segment hull[-2] .. p
            else:
                break
        hull.append(p)
        if p[1] <= best:
            break
    return hull


@dataclass(frozen=True)
class BoundResult:
    min_violation: float  # least violation ratio reachable
    fid_floor_zero: float | None  # least fid_all at zero violations (None: impossible)
    queries: int


class FluidBound:
    """The fluid LP of one trace, workers, SLO and table (module doc).

    ``window_s`` (default: the SLO) is how long after its arrival a query's work may run.
    Shorter than the SLO, the LP is no longer a bound but a reference: the best schedule
    that may not defer a query's work beyond ``window_s`` (e.g. one planning period), which
    measures how much of a policy's gap to the bound is the value of deferring work into
    later lulls (foresight), and how much is left even without it."""

    def __init__(self, arrival_s: np.ndarray, registry: Registry, grid: Iterable[CascadeConfig],
                 surface: FidSurface, workers: int, slo_s: float, slot_s: float | None = None,
                 window_s: float | None = None) -> None:
        if workers <= 0 or slo_s <= 0:
            raise ValueError("workers and slo_s must be > 0")
        window_s = slo_s if window_s is None else window_s
        if not 0 < window_s <= slo_s:
            raise ValueError(f"window_s must be in (0, the SLO {slo_s}], got {window_s}")
        self.slot_s = slot_s if slot_s is not None else window_s / 12.0
        k = window_s / self.slot_s
        self.window = int(round(k))
        if abs(k - self.window) > 1e-9 or self.window < 1:
            raise ValueError(f"slot_s {self.slot_s} must divide the window {window_s}")
        self.hull = lower_hull(config_points(grid, registry, surface, slo_s))
        self.cost = np.array([h[0] for h in self.hull])
        self.fid = np.array([h[1] for h in self.hull])
        self.fallback_fid = fallback_model(registry, surface)[1]
        t = np.asarray(arrival_s, dtype=float)
        self.n = len(t)
        cohort = np.floor(t / self.slot_s).astype(int)
        self.arrivals = np.bincount(cohort, minlength=int(cohort.max()) + 1 if self.n else 0)
        self.n_slots = len(self.arrivals) + self.window
        self.capacity = workers * self.slot_s
        self._build()

    # -- the LP ------------------------------------------------------------------------------
    def _build(self) -> None:
        """Variables, per non-empty cohort ``i``: images per hull vertex, drops, and
        worker-seconds per slot ``i .. i + window``."""
        h = len(self.hull)
        cohorts = [i for i, a in enumerate(self.arrivals) if a > 0]
        obj: list[float] = []
        viol: list[float] = []
        eq_rows, eq_cols, eq_vals, eq_rhs = [], [], [], []
        ub_rows, ub_cols, ub_vals, ub_rhs = [], [], [], []
        slot_terms: dict[int, list[int]] = {}
        n_ub = 0
        col = 0

        def new(count: int, fid: Sequence[float] | float, v: float) -> range:
            nonlocal col
            cols = range(col, col + count)
            obj.extend(list(fid) if isinstance(fid, Sequence | np.ndarray) else [fid] * count)
            viol.extend([v] * count)
            col += count
            return cols

        for i in cohorts:
            on = new(h, self.fid, 0.0)
            drop = new(1, self.fallback_fid, 1.0)
            row = len(eq_rhs)
            for c in (*on, *drop):
                eq_rows.append(row)
                eq_cols.append(c)
                eq_vals.append(1.0)
            eq_rhs.append(float(self.arrivals[i]))
            last = i + self.window
            work = new(last - i + 1, 0.0, 0.0)
            # worker-seconds needed <= worker-seconds given
            for c, cost in zip(on, self.cost, strict=True):
                ub_rows.append(n_ub)
                ub_cols.append(c)
                ub_vals.append(float(cost))
            for j, c in zip(range(i, last + 1), work, strict=True):
                ub_rows.append(n_ub)
                ub_cols.append(c)
                ub_vals.append(-1.0)
                slot_terms.setdefault(j, []).append(c)
            ub_rhs.append(0.0)
            n_ub += 1
        for _j, cs in sorted(slot_terms.items()):
            for c in cs:
                ub_rows.append(n_ub)
                ub_cols.append(c)
                ub_vals.append(1.0)
            ub_rhs.append(self.capacity)
            n_ub += 1
        self._n_vars = col
        self._obj = np.array(obj)
        self._viol = np.array(viol)
        self._a_eq = sparse.csr_array((eq_vals, (eq_rows, eq_cols)), shape=(len(eq_rhs), col))
        self._b_eq = np.array(eq_rhs)
        self._a_ub = sparse.csr_array((ub_vals, (ub_rows, ub_cols)), shape=(n_ub, col))
        self._b_ub = np.array(ub_rhs)

    def _solve(self, cost: np.ndarray, max_violations: float | None) -> float | None:
        a_ub, b_ub = self._a_ub, self._b_ub
        if max_violations is not None:
            a_ub = sparse.vstack([a_ub, sparse.csr_array(self._viol[None, :])]).tocsr()
            b_ub = np.append(b_ub, max_violations)
        res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=self._a_eq, b_eq=self._b_eq,
                      bounds=(0, None), method="highs")
        if res.status == 2:  # infeasible
            return None
        if res.status != 0:
            raise RuntimeError(f"bound LP failed: {res.message}")
        return float(res.fun)

    def min_violation(self) -> float:
        """The least violation ratio any schedule reaches on this trace."""
        if not self.n:
            return 0.0
        got = self._solve(self._viol, None)
        assert got is not None  # dropping everything is always feasible
        return max(0.0, got) / self.n

    def fid_floor(self, max_violation: float = 0.0) -> float | None:
        """The least ``fid_all`` of any schedule with a violation ratio at most
        ``max_violation``; None when no schedule gets that low."""
        if not self.n:
            return float("nan")
        got = self._solve(self._obj, max_violation * self.n + TOL)
        return None if got is None else got / self.n

    def result(self) -> BoundResult:
        return BoundResult(self.min_violation(), self.fid_floor(0.0), self.n)


def pair_curves(grid: Iterable[CascadeConfig], registry: Registry, surface: FidSurface,
                slo_s: float) -> dict[str, list[tuple[float, float, str]]]:
    """Per pair ``"light:heavy"``: the lower hull of its own grid points and its two models
    alone, what a plan of that one pair can mix per query (routing and reject shares)."""
    pts = config_points(grid, registry, surface, slo_s)
    singles = {p[2]: p for p in pts if ":" not in p[2]}
    own: dict[str, list[tuple[float, float, str]]] = {}
    for p in pts:
        if ":" in p[2]:
            own.setdefault(p[2].split("@")[0], []).append(p)
    return {key: lower_hull(ps + [singles[m] for m in key.split(":") if m in singles])
            for key, ps in sorted(own.items())}


def one_pair_fid_at(curves: dict[str, list[tuple[float, float, str]]], cost: float
                    ) -> tuple[float, str] | None:
    """The best ``(FID, pair)`` one pair reaches at ``cost`` worker-seconds per query along
    its own curve (``pair_curves``; budget beyond a curve's end buys nothing more); None
    when no pair runs that cheaply."""
    got = [(float(np.interp(cost, [h[0] for h in cv], [h[1] for h in cv])), key)
           for key, cv in curves.items() if cost >= cv[0][0] - TOL]
    return min(got) if got else None


def concurrent_pair_gain(arrival_s: np.ndarray, hull: Sequence[tuple[float, float, str]],
                         curves: dict[str, list[tuple[float, float, str]]], workers: int,
                         period_s: float, slo_s: float) -> tuple[float, float]:
    """Arrival-weighted ``(hull FID, best one-pair FID)`` at each planning period's budget.

    A period's budget is ``workers`` over the mean arrival rate of the SLO centred on it (a
    query may wait up to the SLO, so that is the load its plan carries), clipped to the
    hull's range. The hull there is what a plan serving two pairs at once (three models,
    each query on one pair) reaches without switching; one pair is what a plan of one pair
    reaches. Their difference estimates what such plans would add to the policy, at the
    policy's own loads, without the foresight the LP has."""
    t = np.asarray(arrival_s, dtype=float)
    if not len(t):
        return float("nan"), float("nan")
    counts = np.bincount(np.floor(t / period_s).astype(int)).astype(float)
    k = max(1, int(round(slo_s / period_s)))
    rate = np.convolve(counts, np.ones(k) / k, mode="same") / period_s
    xs, ys = [h[0] for h in hull], [h[1] for h in hull]
    h_fid = o_fid = 0.0
    for n, lam in zip(counts, rate, strict=True):
        if n == 0:
            continue
        c = float(np.clip(workers / max(lam, TOL), xs[0], xs[-1]))
        h_fid += n * float(np.interp(c, xs, ys))
        one = one_pair_fid_at(curves, c)
        o_fid += n * (one[0] if one is not None else ys[0])
    return h_fid / len(t), o_fid / len(t)


@dataclass(frozen=True)
class OnePairResult:
    fid: float | None  # least fid_all found (None: no schedule at that violation ratio)
    proven: bool  # the solver proved it optimal (else: the best found in the time limit)


def one_pair_floor(arrival_s: np.ndarray, registry: Registry, grid: Iterable[CascadeConfig],
                   surface: FidSurface, workers: int, slo_s: float, period_s: float,
                   window_s: float | None = None, max_violation: float = 0.0,
                   time_limit_s: float = 120.0) -> OnePairResult:
    """``FluidBound.fid_floor`` when every planning period serves its arrivals with one pair
    (a mixed-integer program: a binary per period and pair). A reference, not a bound (a
    rerouted query is credited to the pair that judged it, which may be a later plan's), that
    measures what mixing two pairs per query is worth when plans may alternate pairs from
    one period to the next at no swap cost: compare it with ``FluidBound`` on the same
    trace, workers, SLO and window."""
    grid = list(grid)
    # The LP's slots, cohorts, capacity and fallback (and its checks of the window).
    lp = FluidBound(arrival_s, registry, grid, surface, workers, slo_s, window_s=window_s)
    if not lp.n:
        return OnePairResult(float("nan"), True)
    curves = list(pair_curves(grid, registry, surface, slo_s).values())
    slot, span, arrivals = lp.slot_s, lp.window, lp.arrivals
    obj: list[float] = []
    binary: list[int] = []
    rows: list[tuple[dict[int, float], float, float]] = []
    per_period: dict[int, list[int]] = {}
    per_slot: dict[int, list[int]] = {}
    drops: list[int] = []

    def var(fid: float, is_binary: int = 0) -> int:
        obj.append(fid)
        binary.append(is_binary)
        return len(obj) - 1

    for i, a in enumerate(arrivals):
        if a == 0:
            continue
        k = int(round(i * slot, 9) // period_s)
        if k not in per_period:
            per_period[k] = [var(0.0, 1) for _ in curves]
            rows.append(({z: 1.0 for z in per_period[k]}, 1.0, 1.0))
        served: dict[int, float] = {}
        work: dict[int, float] = {}
        for z, curve in zip(per_period[k], curves, strict=True):
            xs = [var(fid) for _, fid, _ in curve]
            rows.append(({**{x: 1.0 for x in xs}, z: -float(a)}, -np.inf, 0.0))
            for x, (cost, _, _) in zip(xs, curve, strict=True):
                served[x], work[x] = 1.0, cost
        d = var(lp.fallback_fid)
        drops.append(d)
        served[d] = 1.0
        rows.append((served, float(a), float(a)))
        for j in range(i, i + span + 1):
            w = var(0.0)
            work[w] = -1.0
            per_slot.setdefault(j, []).append(w)
        rows.append((work, -np.inf, 0.0))
    for cols in per_slot.values():
        rows.append(({c: 1.0 for c in cols}, -np.inf, lp.capacity))
    rows.append(({d: 1.0 for d in drops}, -np.inf, max_violation * lp.n + TOL))
    r, c, v = zip(*[(k, col, val) for k, (cols, _, _) in enumerate(rows)
                    for col, val in cols.items()], strict=True)
    a_mat = sparse.csr_array((v, (r, c)), shape=(len(rows), len(obj)))
    res = milp(np.array(obj), integrality=np.array(binary),
               constraints=LinearConstraint(a_mat, [x[1] for x in rows], [x[2] for x in rows]),
               bounds=Bounds(0, np.where(np.array(binary) == 1, 1.0, np.inf)),
               options={"time_limit": time_limit_s, "mip_rel_gap": 1e-4})
    if res.x is None:
        return OnePairResult(None, res.status == 2)
    return OnePairResult(float(res.fun) / lp.n, res.status == 0)
