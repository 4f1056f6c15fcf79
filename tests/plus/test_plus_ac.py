"""hadis-plus-ac (issue 21's successor): plans that shed at arrival, in the simulator.

The rule itself (``policy.admits``) is checked in ``tests/stack/test_policy.py`` and at the
front door in ``tests/web/test_shed_at_arrival.py``; here a 90 q/s step through the real
simulator: the successor refuses at arrival what its queues cannot finish in time instead
of letting it wait out the SLO, and no other policy sheds.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from hadis_celery.scenario import default_scenario
from planner.baselines import PLANNERS, make_planner
from planner.plan import PlannerState
from sim.engine import DROPPED, SERVED
from sim.experiments import simulate
from sim.trace import poisson_trace
from sim.workload import build_workload


@pytest.fixture(scope="module")
def step(reference):
    sc = default_scenario(reference)
    trace = poisson_trace([(30.0, 5.0), (60.0, 90.0), (40.0, 5.0)], len(sc.imagenet), seed=5)
    wl = build_workload(trace, [sc.imagenet])
    return {p: simulate(sc, wl, p, slo_s=30.0) for p in ("hadis-plus-fa", "hadis-plus-ac")}


def _drops(res) -> collections.Counter:
    return collections.Counter((res.drop_reason[i] or "").split(":")[0]
                               for i in np.flatnonzero(res.status == DROPPED))


def test_the_successor_refuses_at_arrival_what_would_wait_out_the_slo(step):
    fa, ac = _drops(step["hadis-plus-fa"]), _drops(step["hadis-plus-ac"])
    assert "shed at arrival" not in fa
    assert ac["shed at arrival"] > 0.5 * sum(ac.values())  # most of its drops: at once
    deadline_drops = sum(v for k, v in ac.items() if k != "shed at arrival")
    assert deadline_drops < 0.5 * sum(fa.values())  # not after waiting out the SLO
    res = step["hadis-plus-ac"]
    shed = [i for i in np.flatnonzero(res.status == DROPPED)
            if res.drop_reason[i].startswith("shed at arrival")]
    assert np.allclose(res.finish_s[shed], res.arrival_s[shed])  # refused when it arrived
    served = res.status == SERVED
    assert np.all(res.finish_s[served] - res.arrival_s[served] <= 30.0 + 1e-6)


def test_registered_with_its_options():
    assert "hadis-plus-ac" in PLANNERS
    ac = make_planner("hadis-plus-ac")
    assert ac.name == "hadis-plus-ac"
    assert ac.options.shed_at_arrival and ac.options.overload_loss
    assert ac.options.overload_tolerance == pytest.approx(0.02)
    assert not make_planner("hadis-plus-fa").options.shed_at_arrival


def test_the_plan_the_beat_publishes_carries_the_flag(reference):
    """Only the successor's plans ask the front door to shed (HADIS keeps its drops at the
    deadline)."""
    sc = default_scenario(reference)
    st = PlannerState(demand=40.0, workers=16, slo_s=30.0, table=sc.table, registry=sc.registry)
    assert make_planner("hadis-plus-ac").plan(st).shed_at_arrival
    assert not make_planner("hadis-plus-fa").plan(st).shed_at_arrival
    assert not make_planner("hadis").plan(st).shed_at_arrival
