"""A beat restarted mid-trace: with its stored state (previous plan, planner memory, EWMA,
each through JSON as the live beat keeps them in SQL) the planner decides exactly as
without a restart; without it (what a beat that kept its state in process memory did) the
decisions differ, so the first check can fail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hadis_celery.scenario import default_scenario
from planner.baselines import make_planner
from planner.demand import EwmaDemand
from planner.plan import Plan, PlannerState, QueueState
from sim.engine import BeatRestart, Simulation
from sim.experiments import step_trace
from sim.trace import Trace, read_trace
from sim.workload import build_workload

STEP_RESTARTS = tuple(float(t) for t in range(25, 180, 30))  # mid-period, every third one
AZURE_RESTARTS = tuple(float(t) for t in range(25, 300, 30))


@pytest.fixture(scope="module")
def scenario(reference):
    return default_scenario(reference)


@pytest.fixture(scope="module")
def step_workload(scenario):
    return build_workload(step_trace(levels=(4, 20, 8), step_s=60.0), [scenario.imagenet])


@pytest.fixture(scope="module")
def azure_workload(scenario):
    """The first 300 s of the testbed's trace (1 to 20 q/s)."""
    trace = read_trace(scenario.trace_path("azure_multi_1to20qps.txt"))
    head = trace.arrival_s < 300.0
    return build_workload(Trace(trace.arrival_s[head], trace.prompt_index[head], name="azure"),
                          [scenario.imagenet])


def run(sc, wl, policy: str, restart: BeatRestart | None = None):
    return Simulation(wl, sc.registry, sc.table, make_planner(policy, solver="highs"),
                      EwmaDemand(sc.half_life_s), sc.surface, sc.settings,
                      theta_for=sc.router.threshold_for, restart=restart).run()


def decisions(res) -> list[tuple]:
    return [(t["t"], t["pair"], t["router_ratio"], t["disc_ratio"], t["workers"],
             t["demand_estimate"]) for t in res.timeline]


@pytest.mark.parametrize("policy", ["hadis", "hadis-plus", "cache-d+q"])
def test_a_restarted_beat_with_its_state_decides_as_one_never_restarted(
        scenario, step_workload, policy):
    base = run(scenario, step_workload, policy)
    again = run(scenario, step_workload, policy,
                BeatRestart(STEP_RESTARTS, lambda: make_planner(policy, solver="highs")))
    assert sum(1 for t in again.timeline if t.get("restart")) == len(STEP_RESTARTS)
    assert decisions(again) == decisions(base)
    assert np.array_equal(again.status, base.status)
    assert np.array_equal(again.finish_s, base.finish_s, equal_nan=True)


@pytest.mark.parametrize("policy", ["hadis", "hadis-plus"])
def test_a_restarted_beat_without_its_state_decides_otherwise(scenario, azure_workload, policy):
    """Hysteresis (both) and the step detector (hadis-plus) need the previous plan and the
    planner's memory: a beat that lost them re-plans from scratch and decides differently."""
    base = run(scenario, azure_workload, policy)
    lost = run(scenario, azure_workload, policy,
               BeatRestart(AZURE_RESTARTS, lambda: make_planner(policy, solver="highs"),
                           keep_state=False))
    assert sum(1 for t in lost.timeline if t.get("restart")) == len(AZURE_RESTARTS)
    assert decisions(lost) != decisions(base), (
        "forgetting the planner's state changed nothing: the test cannot fail")


def test_hadis_plus_memory_is_plain_json_and_carried_by_the_plan(scenario, step_workload):
    res = run(scenario, step_workload, "hadis-plus")
    assert res.summary()["queries"] == len(step_workload)
    planner = make_planner("hadis-plus")
    # a rise in progress: the detector's memory goes out with the plan, in JSON
    st = PlannerState(demand=4.0, workers=16, slo_s=60.0, table=scenario.table,
                      registry=scenario.registry)
    first = planner.plan(st)
    assert first.memory == {}  # no measurement yet
    c = first.config
    queues = {scenario.registry.get(c.light).light_queue: QueueState(40, 20.0 * c.frac_light)}
    if c.light != c.heavy and c.frac_heavy > 0:
        queues[scenario.registry.get(c.heavy).heavy_queue] = QueueState(0, 20.0 * c.frac_heavy)
    second = planner.plan(PlannerState(demand=4.0, workers=16, slo_s=60.0,
                                       table=scenario.table, registry=scenario.registry,
                                       queues=queues, previous=first))
    assert second.memory["rise"][1] == 1
    stored = Plan.from_dict(json.loads(json.dumps(second.to_dict(), allow_nan=False)))
    assert stored == second
    # a fresh object fed the stored plan continues the rise (the object keeps nothing)
    third = make_planner("hadis-plus").plan(PlannerState(
        demand=4.0, workers=16, slo_s=60.0, table=scenario.table, registry=scenario.registry,
        queues=queues, previous=stored))
    assert third.memory["rise"][1] == 2
