"""Each baseline's defining property, on the sd35 reference table, across load levels."""

from __future__ import annotations

import numpy as np
import pytest

from planner.baselines import (
    PLANNERS,
    CacheDPlanner,
    CacheDQPlanner,
    ProteusPlanner,
    RandomScoresPlanner,
    make_planner,
    single_model_fid,
)
from planner.milp import HadisPlanner
from planner.plan import Planner, PlannerInputError, PlannerState, QueueState, verify_plan

from .conftest import row

DEMANDS = (0.3, 2.0, 6.0, 12.0, 20.0, 40.0)


def states(table, registry, demands=DEMANDS):
    return [PlannerState(demand=d, workers=16, slo_s=60.0, table=table, registry=registry)
            for d in demands]


def models_used(plan) -> set[int]:
    return set(plan.batch)


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_every_planner_gives_valid_plans(name, sd35_table, sd35):
    planner = make_planner(name)
    assert isinstance(planner, Planner)
    for st in states(sd35_table, sd35, (1.0, 12.0, 40.0)):
        plan = planner.plan(st)
        assert plan.planner == name
        assert verify_plan(plan, st) == [], (name, st.demand)


def test_clipper_light_and_heavy_run_one_model(sd35_table, sd35):
    for st in states(sd35_table, sd35):
        light = make_planner("clipper-light").plan(st)
        heavy = make_planner("clipper-heavy").plan(st)
        # by rule: the fastest model that runs alone, the best-quality one
        assert models_used(light) == {0} and set(light.workers) == {"light_sdxl"}
        assert models_used(heavy) == {3} and set(heavy.workers) == {"heavy_sd35_large"}
        assert light.total_workers == heavy.total_workers == 16
        assert light.config.disc_ratio == heavy.config.disc_ratio == 0
    # SD3.5-Large at 27 s per image cannot keep up with 2 q/s on 16 GPUs
    assert make_planner("clipper-heavy").plan(states(sd35_table, sd35, (2.0,))[0]).overloaded


def test_diffserve_pair_never_changes_and_has_no_router(sd35_table, sd35):
    taus = set()
    for st in states(sd35_table, sd35, np.linspace(0.1, 40, 15)):
        plan = make_planner("diffserve").plan(st)
        assert plan.pair == (1, 3) and plan.config.router_ratio == 0
        assert plan.routing == "none"
        taus.add(plan.config.disc_ratio)
    assert len(taus) > 1  # the MILP does move τ with load


def test_router_only_never_reroutes_and_discriminator_only_never_routes(sd35_table, sd35):
    for st in states(sd35_table, sd35):
        r = make_planner("router-only").plan(st)
        d = make_planner("discriminator-only").plan(st)
        h = make_planner("hadis").plan(st)
        assert r.config.disc_ratio == 0 and r.config.frac_rerouted == 0
        assert d.config.router_ratio == 0 and d.routing == "none"
        # HADIS chooses over a superset of both tables
        assert h.fid <= min(r.fid, d.fid) or h.overloaded


def test_proteus_mixes_variants_at_random(sd35_table, sd35):
    single = single_model_fid(sd35_table)
    seen = set()
    for st in states(sd35_table, sd35):
        plan = make_planner("proteus").plan(st)
        c = plan.config
        assert c.disc_ratio == 0 and plan.routing == "random"
        assert c.theta == pytest.approx(1 - c.router_ratio)
        expected = (1 - c.router_ratio) * single[c.light] + c.router_ratio * single[c.heavy]
        assert plan.fid == pytest.approx(expected)
        seen.add(plan.pair)
    assert len(seen) > 1  # the variant mix follows load


def test_random_scores_fid_formula(sd35_table, sd35):
    st = states(sd35_table, sd35, (5.0,))[0]
    derived = RandomScoresPlanner().table(st)
    single = single_model_fid(sd35_table)
    disc = {(c.pair, c.disc_ratio): c.fid for c in sd35_table if c.router_ratio == 0}
    assert len(derived) == len(sd35_table)
    for c in derived:
        if c.router_ratio == 0:
            assert c.fid == disc[(c.pair, c.disc_ratio)]
        else:
            r = c.router_ratio
            assert c.fid == pytest.approx((1 - r) * disc[(c.pair, c.disc_ratio)]
                                          + r * single[c.heavy])
            assert c.theta == pytest.approx(1 - r)
    plan = RandomScoresPlanner().plan(st)
    assert plan.routing == "random"
    assert plan.fid >= make_planner("hadis").plan(st).fid - 0.5


def test_cache_d_reuses_plans_per_demand_range(sd35_table, sd35):
    cache = CacheDPlanner(HadisPlanner(), demand_step=2.0)
    a = cache.plan(PlannerState(demand=6.1, workers=16, slo_s=60.0, table=sd35_table,
                                registry=sd35))
    b = cache.plan(PlannerState(demand=7.9, workers=16, slo_s=60.0, table=sd35_table,
                                registry=sd35, queues={"light_sdxl": QueueState(50, 5.0)}))
    assert a.solver != "cache" and b.solver == "cache"
    assert (cache.misses, cache.hits) == (1, 1)
    assert a.config == b.config and a.workers == b.workers  # blind to the queue
    assert b.demand == 7.9 and not b.overloaded
    # the stored plan was solved for the range's upper edge: it covers every demand in it
    edge = PlannerState(demand=8.0, workers=16, slo_s=60.0, table=sd35_table, registry=sd35)
    assert verify_plan(b, edge) == []
    c = cache.plan(PlannerState(demand=8.1, workers=16, slo_s=60.0, table=sd35_table,
                                registry=sd35))
    assert c.solver != "cache" and cache.misses == 2


def test_cache_d_q_keys_on_queue_lengths(sd35_table, sd35):
    cache = CacheDQPlanner(HadisPlanner(), demand_step=2.0, queue_step=10)

    def st(length):
        return PlannerState(demand=6.5, workers=16, slo_s=60.0, table=sd35_table,
                            registry=sd35, queues={"light_sdxl": QueueState(length, 2.0)})

    cache.plan(st(3))
    assert cache.plan(st(7)).solver == "cache"  # same queue range
    assert cache.plan(st(25)).solver != "cache"  # another queue range
    assert (cache.misses, cache.hits) == (2, 1)
    with pytest.raises(ValueError):
        CacheDQPlanner(queue_step=0)


def test_baselines_report_missing_rows(two_models):
    table = [row(0, 1, 0.0, 0.0, 30.0), row(0, 1, 0.0, 0.3, 25.0)]
    st = PlannerState(demand=0.1, workers=4, slo_s=10.0, table=table, registry=two_models)
    with pytest.raises(PlannerInputError, match="alone"):
        make_planner("clipper-heavy").plan(st)  # model 3 is not in this registry
    with pytest.raises(PlannerInputError, match="no row"):
        make_planner("diffserve").plan(st)
    assert make_planner("router-only").plan(st).fid == 30.0
    assert ProteusPlanner().plan(st).fid == 30.0  # B never runs alone: no mixes with it
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("nope")
