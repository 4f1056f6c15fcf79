"""Demand EWMA and plan hysteresis."""

from __future__ import annotations

import math

import pytest

from planner.demand import OFF, EwmaDemand, Hysteresis
from planner.milp import HadisPlanner, plan_milp
from planner.plan import PlannerState

from .conftest import row


def test_ewma_half_life_is_in_seconds():
    e = EwmaDemand(half_life_s=10.0, initial=0.0)
    assert e.observe(100, 10.0) == pytest.approx(5.0)  # 10 q/s for one half-life
    f = EwmaDemand(half_life_s=10.0, initial=0.0)
    for _ in range(10):
        f.observe(10, 1.0)  # the same 10 q/s in ten 1 s steps
    assert f.value == pytest.approx(5.0)


def test_ewma_first_observation_and_convergence():
    e = EwmaDemand(half_life_s=5.0)
    assert e.value == 0.0
    assert e.observe(8, 2.0) == 4.0  # no prior: the first rate is the estimate
    for _ in range(200):
        e.observe(20, 2.0)
    assert e.value == pytest.approx(10.0, rel=1e-6)


@pytest.mark.parametrize(("arrivals", "dt"), [(-1, 1.0), (math.nan, 1.0), (1, 0.0), (1, -1.0),
                                              (math.inf, 1.0)])
def test_ewma_rejects_bad_observations(arrivals, dt):
    with pytest.raises(ValueError):
        EwmaDemand().observe(arrivals, dt)


def test_ewma_rejects_bad_half_life():
    for h in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError):
            EwmaDemand(h)
    with pytest.raises(ValueError):
        Hysteresis(-0.1)


def _states(two_models, previous=None, demand=0.25):
    table = [row(0, 1, 0.0, 0.0, 30.0), row(0, 1, 0.5, 0.0, 20.1), row(0, 1, 1.0, 0.0, 20.0)]
    return PlannerState(demand=demand, workers=4, slo_s=10.0, table=table,
                        registry=two_models, previous=previous)


def test_hysteresis_keeps_a_near_equal_previous_configuration(two_models):
    planner = HadisPlanner(hysteresis=Hysteresis(0.2))
    first = plan_milp(_states(two_models), name="hadis")
    assert first.fid == 20.0
    # last period ran the 50/50 mix (FID 20.1): switching gains 0.1 < 0.2, keep it
    prev = plan_milp(PlannerState(demand=0.25, workers=4, slo_s=10.0,
                                  table=[_states(two_models).table[1]], registry=two_models))
    kept = planner.plan(_states(two_models, previous=prev))
    assert kept.fid == 20.1 and "hysteresis" in kept.note
    # with hysteresis off, or a larger gain, the planner switches
    assert HadisPlanner(hysteresis=OFF).plan(_states(two_models, previous=prev)).fid == 20.0
    assert HadisPlanner(hysteresis=Hysteresis(0.05)).plan(
        _states(two_models, previous=prev)).fid == 20.0


def test_hysteresis_never_keeps_an_infeasible_configuration(two_models):
    table = [row(0, 1, 0.0, 0.0, 30.0), row(0, 1, 0.5, 0.0, 20.1), row(0, 1, 1.0, 0.0, 20.0)]
    prev = plan_milp(PlannerState(demand=0.25, workers=4, slo_s=10.0, table=[table[2]],
                                  registry=two_models))
    # 1.5 q/s: B alone (the previous) needs 6 workers > 4; the 50/50 mix fits
    st = PlannerState(demand=1.5, workers=4, slo_s=10.0, table=table, registry=two_models,
                      previous=prev)
    plan = HadisPlanner(hysteresis=Hysteresis(5.0)).plan(st)
    assert plan.fid == 20.1 and not plan.overloaded
