"""``SimResult.fid_all``: the FID over every query, a dropped one counted as a fallback image.

A hand-built two-model cluster (as in ``tests/sim``) overloaded on purpose, so that the
simulator drops queries; the served-only FID, the fallback and the all-query FID are then
checked against each other and against the definition.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hadis_celery.examples import sd35_registry
from planner.cascade import CascadeConfig
from planner.demand import EwmaDemand
from planner.plan import Plan, PlannerState
from planner.reference_table import load_reference_table, load_scores
from planner.registry import ModelSpec, Registry
from sim.engine import DROPPED, SimSettings, Simulation, Workload
from sim.fid import FidSurface, fallback_model
from sim.trace import poisson_trace

REG = Registry((
    ModelSpec(id=0, name="light", queue="l", latency={1: 1.0, 2: 1.6, 4: 2.8}),
    ModelSpec(id=1, name="heavy", queue="h", latency={1: 5.0, 2: 9.0}),
))
GRID = [CascadeConfig(0, 1, r, math.nan, d, math.nan, fid=30 - 10 * r - 5 * d + 2 * r * d)
        for r in (0.0, 0.5, 1.0) for d in (0.0, 0.5, 1.0)]
SURFACE = FidSurface(GRID)


class AllHeavy:
    """Every query to the slow model: one worker cannot keep up, so queries are dropped."""

    def plan(self, state: PlannerState) -> Plan:
        cfg = GRID[6]  # router ratio 1: all heavy
        return Plan(planner="all-heavy", config=cfg, workers={REG.get(1).heavy_queue: 1},
                    batch={1: 2}, fid=cfg.fid, utilisation={}, demand=state.demand,
                    slo_s=state.slo_s, budget=state.workers, routing="none")


def run(qps: float):
    trace = poisson_trace([(120, qps)], n_prompts=10, seed=1)
    rng = np.random.default_rng(0)
    n = len(trace)
    wl = Workload(trace.arrival_s, rng.normal(size=n), {m: rng.random(n) for m in (0, 1)})
    sim = Simulation(wl, REG, GRID, AllHeavy(), EwmaDemand(10.0), SURFACE,
                     SimSettings(workers=1, slo_s=20.0, period_s=5.0), theta_for=lambda r: 0.0)
    return sim.run()


def test_fallback_is_the_cheapest_model_with_a_measured_fid(reference):
    assert fallback_model(REG, SURFACE) == (0, pytest.approx(SURFACE.single(0)))
    reg = sd35_registry()
    scores = load_scores(reference / "profile-sd35")
    rs = np.random.default_rng(0).normal(size=scores[0].size)
    surface = FidSurface(load_reference_table(reference / "profile-sd35", reg,
                                              router_scores=rs, scores=scores))
    m, f = fallback_model(reg, surface)
    best = max(reg, key=lambda s: max(s.throughput(b) for b in s.batch_sizes))
    assert m == best.id == 0  # SDXL-Lightning
    assert f == pytest.approx(surface.single(m))
    assert f == max(surface.single(s.id) for s in reg)  # here also the worst FID


def test_fid_all_counts_each_drop_as_a_fallback_image():
    res = run(qps=1.0)  # the heavy worker serves about 0.22 q/s: most queries are dropped
    dropped = int(np.sum(res.status == DROPPED))
    assert 0 < dropped < res.n
    assert res.served_fraction == pytest.approx(1 - dropped / res.n)
    images = sum(w["images"] for w in res.fid_windows)
    assert images == res.n - dropped
    want = (res.fid * images + res.fallback_fid * dropped) / res.n
    assert res.fid_all == pytest.approx(want)
    # the served images are all-heavy (FID 20); the fallback is the light model (FID 30)
    assert res.fid == pytest.approx(20.0)
    assert res.fallback_model == 0 and res.fallback_fid == pytest.approx(30.0)
    assert res.fid < res.fid_all < res.fallback_fid
    s = res.summary()
    assert s["fid_all"] == pytest.approx(res.fid_all, abs=1e-4)
    assert s["served_fraction"] == pytest.approx(res.served_fraction, abs=1e-5)
    assert s["fid"] == pytest.approx(res.fid, abs=1e-4)  # unchanged


def test_fid_all_equals_fid_without_drops():
    res = run(qps=0.05)
    assert np.all(res.status != DROPPED)
    assert res.served_fraction == 1.0
    assert res.fid_all == res.fid
