"""Baselines pick their models by rule on any model set (before issue 14, on this two-model
table Clipper-Light served the heavy model, Clipper-Heavy and DiffServe refused: they named
the reference profile's fixed model ids)."""

from __future__ import annotations

import math

import pytest

from planner.baselines import diffserve_pair, make_planner
from planner.cascade import CascadeConfig
from planner.plan import PlannerInputError, PlannerState
from planner.registry import ModelSpec, Registry, affine_batch_latency


def registry(*secs: float) -> Registry:
    return Registry(tuple(ModelSpec(i, f"m{i}", f"q{i}", latency=affine_batch_latency(s))
                          for i, s in enumerate(secs)))


def row(light, heavy, r, d, fid):
    return CascadeConfig(light=light, heavy=heavy, router_ratio=r,
                         theta=math.inf if r == 0 else 0.0, disc_ratio=d,
                         tau=-math.inf if d == 0 else 0.5, fid=fid, service_s=1.0)


def test_two_models_each_baseline_picks_by_rule():
    reg = registry(1.3, 27.0)
    table = [row(0, 1, 0, 0, 25.2), row(0, 1, 1, 0, 20.0), row(0, 1, 0, 0.5, 21.4)]
    st = PlannerState(demand=0.2, workers=8, slo_s=60, table=table, registry=reg)
    assert set(make_planner("clipper-light", solver="highs").plan(st).batch) == {0}
    assert set(make_planner("clipper-heavy", solver="highs").plan(st).batch) == {1}
    plan = make_planner("diffserve", solver="highs").plan(st)
    assert plan.pair == (0, 1) and plan.config.router_ratio == 0


def test_diffserve_prefers_a_much_faster_light_model_of_good_quality():
    # m0: fastest, worst; m1: 10x faster than m3, better than m0; m2: good but slow
    reg = registry(0.5, 1.3, 13.0, 27.0)
    table = [row(a, 3, 0, d, f) for a, f in ((0, 29.7), (1, 25.2), (2, 20.6))
             for d in (0.0, 0.5)] + [row(0, 3, 1, 0, 19.9)]
    assert diffserve_pair(table, reg) == (1, 3)
    slow = registry(20.0, 21.0, 22.0, 27.0)  # none 10x faster: the fastest paired model
    assert diffserve_pair(table, slow) == (0, 3)


def test_refusals_say_why():
    reg = registry(1.3, 27.0)
    table = [row(0, 1, 0, 0, 25.2), row(0, 1, 0, 0.5, 21.4)]  # the heavy model never alone
    st = PlannerState(demand=0.2, workers=8, slo_s=60, table=table, registry=reg)
    with pytest.raises(PlannerInputError, match="clipper-heavy: only model 0 runs alone"):
        make_planner("clipper-heavy").plan(st)
    with pytest.raises(PlannerInputError, match="diffserve: the table has no row cascading"):
        make_planner("diffserve").plan(st)
