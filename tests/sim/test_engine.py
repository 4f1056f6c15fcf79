"""The simulator's invariants on small, hand-built clusters with fixed plans."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.cascade import CascadeConfig
from planner.demand import EwmaDemand
from planner.plan import Plan, PlannerState
from planner.registry import ModelSpec, Registry
from sim.engine import DROPPED, LATE, PATHS, SERVED, SimSettings, Simulation, Workload
from sim.fid import FidSurface
from sim.trace import periodic_trace, poisson_trace

REG = Registry((
    ModelSpec(id=0, name="light", queue="l", latency={1: 1.0, 2: 1.6, 4: 2.8}),
    ModelSpec(id=1, name="heavy", queue="h", latency={1: 5.0, 2: 9.0}),
))
GRID = [CascadeConfig(0, 1, r, math.nan, d, math.nan, fid=30 - 10 * r - 5 * d + 2 * r * d)
        for r in (0.0, 0.5, 1.0) for d in (0.0, 0.5, 1.0)]
SURFACE = FidSurface(GRID)


class FixedPlanner:
    """Returns the same plan every period (a static policy, like the Clipper baselines)."""

    def __init__(self, config: CascadeConfig, workers: dict[str, int], batch: dict[int, int],
                 routing: str = "score") -> None:
        self.config, self.workers, self.batch, self.routing = config, workers, batch, routing
        self.states: list[PlannerState] = []

    def plan(self, state: PlannerState) -> Plan:
        self.states.append(state)
        return Plan(planner="fixed", config=self.config, workers=self.workers, batch=self.batch,
                    fid=self.config.fid, utilisation={}, demand=state.demand,
                    slo_s=state.slo_s, budget=state.workers, routing=self.routing)




def workload(trace, rng_seed=0, n_models=2) -> Workload:
    rng = np.random.default_rng(rng_seed)
    n = len(trace)
    return Workload(trace.arrival_s, rng.normal(size=n),
                    {m: rng.random(n) for m in range(n_models)})


def simulate(trace, planner, settings, seed=0):
    sim = Simulation(workload(trace, seed), REG, GRID, planner, EwmaDemand(10.0), SURFACE, settings,
                     theta_for=lambda r: 0.0)
    return sim.run()


def test_md1_mean_wait_matches_closed_form():
    # One worker, deterministic 1 s service, Poisson arrivals at 0.6/s: M/D/1.
    lam, service = 0.6, 1.0
    trace = poisson_trace([(30000, lam)], n_prompts=10, seed=3)
    only_light = CascadeConfig(0, 0, 0.0, math.inf, 0.0, -math.inf, fid=30.0)
    res = simulate(trace, FixedPlanner(only_light, {"light_l": 1}, {0: 1}),
                   SimSettings(workers=1, slo_s=1e9, period_s=1000.0))
    assert res.counts() == {"served": len(trace), "late": 0, "dropped": 0}
    wait = np.mean(res.finish_s - res.arrival_s) - service
    rho = lam * service
    expected = rho * service / (2 * (1 - rho))  # Pollaczek-Khinchine, deterministic service
    assert wait == pytest.approx(expected, rel=0.05)


def test_conservation_under_overload():
    trace = poisson_trace([(200, 3.0)], n_prompts=100, seed=1)
    cfg = CascadeConfig(0, 1, 0.3, math.nan, 0.4, 0.5, fid=25.0)
    res = simulate(trace, FixedPlanner(cfg, {"light_l": 1, "heavy_h": 1}, {0: 4, 1: 2}),
                   SimSettings(workers=2, slo_s=20.0, period_s=10.0))
    counts = res.counts()
    assert sum(counts.values()) == len(trace)
    assert set(np.unique(res.status)) <= {SERVED, LATE, DROPPED}
    assert counts["dropped"] > 0 and counts["served"] > 0
    assert np.all(np.isfinite(res.finish_s))
    served = res.status == SERVED
    assert np.all(res.finish_s[served] <= res.arrival_s[served] + 20.0 + 1e-9)
    assert 0 < res.slo_violation_ratio < 1


def test_zero_load():
    trace = periodic_trace(0.0, 1.0, n_prompts=10)
    cfg = CascadeConfig(0, 1, 0.3, math.nan, 0.4, 0.5, fid=25.0)
    res = simulate(trace, FixedPlanner(cfg, {"light_l": 1, "heavy_h": 1}, {0: 1, 1: 1}),
                   SimSettings(workers=2))
    assert res.n == 0 and res.slo_violation_ratio == 0.0
    assert math.isnan(res.fid)
    assert res.summary()["queries"] == 0


def test_rerouted_query_keeps_its_original_deadline():
    # light 1 s + heavy 5 s > SLO 4 s: a rerouted query cannot make its original deadline
    # and must be dropped at the heavy queue; a reset deadline would let it through.
    trace = periodic_trace(100.0, 0.2, n_prompts=10)
    reject_all = CascadeConfig(0, 1, 0.0, math.inf, 1.0, 2.0, fid=25.0)  # τ above every score
    res = simulate(trace, FixedPlanner(reject_all, {"light_l": 1, "heavy_h": 1}, {0: 1, 1: 1}),
                   SimSettings(workers=2, slo_s=4.0, period_s=10.0))
    rerouted = res.path == PATHS.index("rerouted")
    assert rerouted.all()
    assert np.all(res.status == DROPPED)
    assert all("heavy_h" in r for r in res.drop_reason)


def test_router_and_discriminator_paths():
    trace = periodic_trace(300.0, 0.5, n_prompts=10)
    cfg = CascadeConfig(0, 1, 0.5, 0.0, 0.5, 0.5, fid=25.0)  # θ 0 on N(0,1) scores, τ 0.5
    wl = workload(trace)
    sim = Simulation(wl, REG, GRID, FixedPlanner(cfg, {"light_l": 2, "heavy_h": 3}, {0: 1, 1: 1}),
                     EwmaDemand(10.0), SURFACE, SimSettings(workers=5, slo_s=60.0))
    res = sim.run()
    direct = res.path == PATHS.index("direct")
    assert np.array_equal(direct, wl.router_score > 0.0)
    light_run = ~direct
    rerouted = res.path == PATHS.index("rerouted")
    assert np.array_equal(rerouted[light_run], wl.quality[0][light_run] < 0.5)
    assert np.all(res.served_model[rerouted | direct] == 1)
    assert np.all(res.served_model[light_run & ~rerouted] == 0)
    # the window FIDs are the surface at the realised fractions
    assert res.fid == pytest.approx(
        SURFACE.fid(0, 1, direct.mean(), rerouted[light_run].mean()), rel=0.05)


def test_deterministic_under_seed():
    trace = poisson_trace([(100, 2.0)], n_prompts=50, seed=5)
    cfg = CascadeConfig(0, 1, 0.4, 0.6, 0.2, 0.3, fid=25.0)

    def once(seed):
        return simulate(trace, FixedPlanner(cfg, {"light_l": 2, "heavy_h": 3}, {0: 2, 1: 1},
                                            routing="random"),
                        SimSettings(workers=5, slo_s=15.0, seed=seed))

    a, b, c = once(7), once(7), once(8)
    assert np.array_equal(a.status, b.status) and np.array_equal(a.finish_s, b.finish_s)
    assert np.array_equal(a.path, b.path)
    assert not np.array_equal(a.path, c.path)


def test_planner_sees_queue_state_and_demand():
    trace = periodic_trace(60.0, 2.0, n_prompts=10)
    cfg = CascadeConfig(0, 1, 0.0, math.inf, 0.0, -math.inf, fid=30.0)
    planner = FixedPlanner(cfg, {"light_l": 1}, {0: 1})
    simulate(trace, planner, SimSettings(workers=1, slo_s=1e6, period_s=10.0))
    later = planner.states[2]
    assert later.demand > 0.5
    assert later.queues["light_l"].length > 0  # 2 qps into a 1 qps worker: a backlog
    assert later.queues["light_l"].arrival_rate == pytest.approx(2.0, abs=0.2)


class NoPlan:
    def plan(self, state):
        from planner.plan import PlannerInputError

        raise PlannerInputError("no configuration of the table meets the SLO")


def test_a_policy_that_cannot_plan_drops_everything_with_the_reason():
    trace = periodic_trace(20.0, 1.0, n_prompts=10)
    res = simulate(trace, NoPlan(), SimSettings(workers=2, slo_s=5.0))
    assert res.counts() == {"served": 0, "late": 0, "dropped": len(trace)}
    assert all(r.startswith("no plan: no configuration") for r in res.drop_reason)
    assert res.slo_violation_ratio == 1.0
