"""Planner contracts: input validation, the JSON form of a plan, the independent checker."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from planner.cascade import CascadeConfig
from planner.milp import HadisPlanner, plan_milp
from planner.plan import Plan, Planner, PlannerInputError, PlannerState, QueueState, verify_plan


def make(table_, registry, **kw) -> PlannerState:
    args = dict(demand=1.0, workers=4, slo_s=10.0, table=table_, registry=registry)
    args.update(kw)
    return PlannerState(**args)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("demand", -1.0, "demand"),
    ("demand", math.nan, "demand"),
    ("demand", math.inf, "demand"),
    ("demand", "3", "demand"),
    ("workers", 0, "at least 1 worker"),
    ("workers", -2, "at least 1 worker"),
    ("workers", 2.5, "integer"),
    ("slo_s", 0.5, "below the fastest model's batch-1 latency"),
    ("slo_s", math.nan, "SLO"),
    ("slo_s", -1.0, "SLO"),
    ("table", [], "table is empty"),
    ("table", None, "table is empty"),
    ("queues", {"nope": QueueState(1, 1.0)}, "belongs to no model"),
])
def test_bad_input_is_a_clear_error(two_models, two_table, field, value, message):
    with pytest.raises(PlannerInputError, match=message):
        make(two_table, two_models, **{field: value})


def test_bad_rows_and_queue_states(two_models, two_table):
    bad = CascadeConfig(light=0, heavy=7, router_ratio=0.0, theta=0.0, disc_ratio=0.0,
                        tau=0.0, fid=20.0)
    with pytest.raises(PlannerInputError, match="registry has"):
        make([bad], two_models)
    with pytest.raises(PlannerInputError, match="FID"):
        make([replace(two_table[0], fid=math.nan)], two_models)
    with pytest.raises(PlannerInputError, match="queue length"):
        QueueState(-1, 1.0)
    with pytest.raises(PlannerInputError, match="arrival rate"):
        QueueState(1, math.inf)


def test_numpy_numbers_are_accepted(two_models, two_table):
    st = make(two_table, two_models, demand=np.float64(0.5), workers=np.int64(4))
    assert isinstance(st.workers, int) and st.workers == 4
    assert plan_milp(st).fid == 20.0


def test_plan_json_round_trip(sd35_table, sd35):
    st = PlannerState(demand=12.0, workers=16, slo_s=60.0, table=sd35_table, registry=sd35)
    plan = plan_milp(st)
    text = json.dumps(plan.to_dict(), allow_nan=False)  # strict JSON: ±inf/NaN as strings
    back = Plan.from_dict(json.loads(text))
    assert back.workers == plan.workers and back.batch == plan.batch
    assert back.config.pair == plan.config.pair and back.fid == plan.fid
    assert math.isnan(back.config.quality) and back.tau == plan.tau
    assert verify_plan(back, st) == []
    assert set(plan.workers) <= {m.light_queue for m in sd35} | {m.heavy_queue for m in sd35}


def test_planner_protocol(two_models, two_table):
    assert isinstance(HadisPlanner(), Planner)


def test_checker_catches_broken_plans(two_models, two_table):
    st = make(two_table, two_models, demand=1.5)
    plan = plan_milp(st)
    assert verify_plan(plan, st) == []
    starved = replace(plan, workers={**plan.workers, "heavy_b": 1})
    assert any("capacity" in p for p in verify_plan(starved, st))
    over = replace(plan, workers={**plan.workers, "heavy_b": 9})
    assert any("exceed the budget" in p for p in verify_plan(over, st))
    stray = replace(plan, workers={**plan.workers, "light_b": 1})
    assert any("does not use" in p for p in verify_plan(stray, st))
    slow = make(two_table, two_models, demand=1.5, slo_s=4.5,
                queues={"light_a": QueueState(2, 1.5)})  # light path 1 + 1.6 s; heavy 4 s
    assert verify_plan(plan, slow) == []
    slower = make(two_table, two_models, demand=1.5, slo_s=4.5,
                  queues={"heavy_b": QueueState(2, 1.5)})
    assert any("exceeds the SLO" in p for p in verify_plan(plan, slower))
    partial = replace(plan, served_fraction=0.5, overloaded=False)
    assert any("not marked overloaded" in p for p in verify_plan(partial, st))
    bad_batch = replace(plan, batch={0: 3, 1: 1})
    assert any("not profiled" in p for p in verify_plan(bad_batch, st))
