"""The HADIS MILP: known optima, constraints checked independently, monotonicity, solver
agreement, overload and backlog handling, presolve exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.planner import synthetic_registry, synthetic_table
from planner.milp import HadisPlanner, build_index, plan_milp, presolve_rows, table_index
from planner.pareto import pareto_by_pair
from planner.plan import PlannerInputError, PlannerState, QueueState, verify_plan
from planner.registry import ModelSpec, Registry
from planner.solvers import MilpModel, SolverUnavailable, solve

from .conftest import row


def state(table, registry, demand, workers, slo=10.0, **kw) -> PlannerState:
    return PlannerState(demand=demand, workers=workers, slo_s=slo, table=table,
                        registry=registry, **kw)


@pytest.mark.parametrize("solver", ["gurobi", "highs"])
@pytest.mark.parametrize(
    ("demand", "fid", "workers"),
    [
        (0.5, 20.0, {"heavy_b": 2}),  # B alone: 0.5 q/s x 4 s = 2 workers
        (1.0, 20.0, {"heavy_b": 4}),  # B alone uses the whole budget
        (1.5, 24.0, {"light_a": 1, "heavy_b": 3}),  # B alone needs 6 > 4: the 50/50 mix
        (3.0, 30.0, {"light_a": 3}),  # the mix needs 2 + 6: A alone
    ],
)
def test_hand_solved_optimum(two_models, two_table, solver, demand, fid, workers):
    st = state(two_table, two_models, demand, 4)
    plan = plan_milp(st, solver=solver, spread=False)
    assert plan.fid == fid
    assert plan.workers == workers
    assert not plan.overloaded and plan.served_fraction == 1.0
    assert verify_plan(plan, st) == []


def test_spare_workers_go_to_the_busiest_queue(two_models, two_table):
    st = state(two_table, two_models, 1.5, 6)
    lean = plan_milp(st, spread=False)
    full = plan_milp(st)
    assert lean.fid == full.fid == 20.0  # 6 workers: B alone fits exactly
    st = state(two_table, two_models, 1.5, 5)
    full = plan_milp(st)
    assert full.fid == 24.0 and full.total_workers == 5
    assert full.workers == {"light_a": 1, "heavy_b": 4}  # B: 0.75 x 4 / 3 = 1.0 -> 0.75
    assert verify_plan(full, st) == []


def test_slo_rules_out_the_slow_model(two_models, two_table):
    plan = plan_milp(state(two_table, two_models, 0.5, 4, slo=3.0))
    assert plan.fid == 30.0 and set(plan.workers) == {"light_a"}


def test_rerouted_path_counts_both_models(two_models):
    # each model alone fits 4.5 s, but light-then-heavy takes 1 + 4 = 5 s
    table = [row(0, 1, 0.0, 0.0, 30.0), row(0, 1, 0.0, 0.2, 25.0), row(0, 1, 0.2, 0.0, 26.0)]
    plan = plan_milp(state(table, two_models, 0.2, 4, slo=4.5))
    assert (plan.config.router_ratio, plan.config.disc_ratio, plan.fid) == (0.2, 0.0, 26.0)
    plan = plan_milp(state(table, two_models, 0.2, 4, slo=5.0))
    assert plan.fid == 25.0 and plan.path_latency_s["rerouted"] == pytest.approx(5.0)


def test_queue_backlog_enters_the_latency_path(two_models, two_table):
    queues = {"heavy_b": QueueState(length=10, arrival_rate=1.0)}  # 1.2 x 10 / 1 = 12 s
    plan = plan_milp(state(two_table, two_models, 0.5, 4, queues=queues))
    assert plan.fid == 30.0  # B's path would be 4 + 12 s > 10 s
    st = state(two_table, two_models, 0.5, 4, slo=20.0, queues=queues)
    plan = plan_milp(st)
    assert plan.fid == 20.0 and plan.path_latency_s["heavy"] == pytest.approx(16.0)
    assert verify_plan(plan, st) == []


def test_batch_size_is_chosen_per_model():
    reg = Registry((ModelSpec(id=0, name="A", queue="a", latency={1: 1.0, 4: 2.0}),))
    table = [row(0, 0, 0.0, 0.0, 30.0)]
    plan = plan_milp(state(table, reg, 1.5, 1, slo=10.0))
    assert plan.batch == {0: 4} and plan.workers == {"light_a": 1}  # batch 1 gives 1 q/s
    plan = plan_milp(state(table, reg, 0.5, 1, slo=10.0))
    assert plan.batch == {0: 1}  # both fit one worker: the faster batch wins the tie
    plan = plan_milp(state(table, reg, 1.5, 1, slo=1.5))  # batch 4 breaks the SLO
    assert plan.overloaded and plan.batch == {0: 1}
    assert plan.served_fraction == pytest.approx(1 / 1.5, rel=1e-6)


def test_ties_go_to_fewer_workers(two_models):
    table = [row(0, 1, 1.0, 0.0, 20.0), row(0, 1, 0.5, 0.0, 20.0)]
    plan = plan_milp(state(table, two_models, 1.0, 8), spread=False)
    assert plan.config.router_ratio == 0.5 and plan.total_workers == 3  # 1 + 2 < 4


def test_overload_serves_the_most_demand(two_models, two_table):
    st = state(two_table, two_models, 5.0, 4)
    plan = plan_milp(st)
    assert plan.overloaded and plan.fid == 30.0 and plan.workers == {"light_a": 4}
    assert plan.served_fraction == pytest.approx(0.8, rel=1e-6)
    assert "overload" in plan.note
    assert verify_plan(plan, st) == []


def test_backlog_alone_breaking_the_slo_is_planned_without_it(two_models, two_table):
    queues = {"light_a": QueueState(100, 1.0), "heavy_b": QueueState(100, 1.0)}
    st = state(two_table, two_models, 0.5, 4, queues=queues)
    plan = plan_milp(st)
    assert plan.backlog_ignored and plan.overloaded and plan.fid == 20.0
    assert verify_plan(plan, st) == []


def test_no_row_meets_the_slo_is_a_clear_error():
    reg = Registry((ModelSpec(id=0, name="A", queue="a", latency={1: 1.0}),
                    ModelSpec(id=1, name="B", queue="b", latency={1: 4.0})))
    table = [row(0, 1, 1.0, 0.0, 20.0)]  # only B, and the SLO is 2 s
    with pytest.raises(PlannerInputError, match="meets the SLO"):
        plan_milp(state(table, reg, 0.1, 4, slo=2.0))


def _random_state(seed: int, table_cache: dict) -> PlannerState:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 6))
    if n not in table_cache:
        reg = synthetic_registry(n, seed=n)
        table_cache[n] = (reg, synthetic_table(reg, seed=n))
    reg, table = table_cache[n]
    workers = int(rng.integers(2, 40))
    cap = workers * max(m.throughput(16) for m in reg)
    queues = {}
    for m in reg:
        if rng.random() < 0.3:
            q = m.light_queue if rng.random() < 0.5 else m.heavy_queue
            queues[q] = QueueState(int(rng.integers(0, 20)), float(rng.uniform(0, 3)))
    return PlannerState(demand=float(rng.uniform(0, 1.1) * cap), workers=workers,
                        slo_s=float(rng.uniform(35, 120)), table=table, registry=reg,
                        queues=queues)


def test_random_instances_match_brute_force_and_hold_constraints(optimum):
    cache: dict = {}
    checked = 0
    for seed in range(20):
        st = _random_state(seed, cache)
        plan = plan_milp(st, spread=False)
        assert verify_plan(plan, st) == [], seed
        if plan.overloaded:
            continue
        best = optimum(st)
        assert best is not None
        assert (round(plan.fid, 9), plan.total_workers) == best, seed
        full = plan_milp(st)  # spare workers spread: same configuration, still valid
        assert full.config == plan.config and verify_plan(full, st) == []
        checked += 1
    assert checked >= 10


def test_sd35_matches_brute_force(sd35_table, sd35, optimum):
    for demand in (0.5, 3.0, 9.0, 17.0, 30.0):
        st = state(sd35_table, sd35, demand, 16, slo=60.0)
        plan = plan_milp(st, spread=False)
        assert verify_plan(plan, st) == []
        assert (round(plan.fid, 9), plan.total_workers) == optimum(st), demand


@pytest.mark.parametrize("solver", ["gurobi", "highs"])
def test_more_demand_never_improves_fid(sd35_table, sd35, solver):
    fids = []
    for demand in np.linspace(0, 60, 25):
        st = state(sd35_table, sd35, float(demand), 16, slo=60.0)
        plan = plan_milp(st, solver=solver)
        assert verify_plan(plan, st) == []
        fids.append(plan.fid)
    assert all(b >= a for a, b in zip(fids, fids[1:], strict=False)), fids
    assert fids[0] < fids[-1]  # and the sweep does move


def test_more_demand_never_improves_fid_synthetic():
    reg = synthetic_registry(5, seed=3)
    table = synthetic_table(reg, seed=3)
    cap = 24 * max(m.throughput(16) for m in reg)
    fids = [plan_milp(state(table, reg, float(x), 24, slo=60.0)).fid
            for x in np.linspace(0, 1.2 * cap, 20)]
    assert all(b >= a for a, b in zip(fids, fids[1:], strict=False)), fids


def test_gurobi_and_highs_agree_on_random_instances():
    cache: dict = {}
    for seed in range(100, 112):
        st = _random_state(seed, cache)
        g = plan_milp(st, solver="gurobi", fallback=False, spread=False)
        h = plan_milp(st, solver="highs", spread=False)
        assert g.solver == "gurobi" and h.solver == "highs"
        assert g.fid == h.fid, seed
        assert g.total_workers == h.total_workers, seed
        assert g.served_fraction == pytest.approx(h.served_fraction, rel=1e-6), seed


def test_two_stage_equals_one_weighted_objective():
    cache: dict = {}
    for seed in range(200, 208):
        st = _random_state(seed, cache)
        a = plan_milp(st, spread=False)
        b = plan_milp(st, spread=False, two_stage=False)
        assert (a.fid, a.total_workers, a.served_fraction) == (
            b.fid, b.total_workers, b.served_fraction), seed


def test_presolve_is_exact_and_within_the_pareto_rows(sd35_table, sd35):
    kept = set(presolve_rows(sd35_table))
    pareto = {id(c) for c in pareto_by_pair(sd35_table)}
    assert {id(sd35_table[i]) for i in kept} <= pareto  # the profiler's per-pair front
    assert len(kept) < len(sd35_table) / 3
    full = build_index(sd35_table, presolve=False)
    for demand in (1.0, 8.0, 20.0):
        st = state(sd35_table, sd35, demand, 16, slo=60.0)
        a = plan_milp(st, spread=False)
        b = plan_milp(st, spread=False, index=full)
        assert (a.fid, a.total_workers) == (b.fid, b.total_workers)


def test_rank_blocks_equal_one_big_milp():
    reg = synthetic_registry(4, seed=7)
    table = synthetic_table(reg, seed=7)
    for demand in (2.0, 20.0, 60.0):
        st = state(table, reg, demand, 64, slo=60.0)
        small = plan_milp(st, spread=False, block=4)
        whole = plan_milp(st, spread=False, block=10**6, solver="highs")
        assert (small.fid, small.total_workers) == (whole.fid, whole.total_workers)


def test_gurobi_size_limit_falls_back_to_highs():
    n = 2500  # above the restricted licence's 2000 variables
    model = MilpModel(c=np.ones(n), lb=np.zeros(n), ub=np.ones(n), vtype=np.array(["B"] * n),
                      A=__import__("scipy.sparse").sparse.csr_matrix(np.ones((1, n))),
                      sense=np.array([">"]), rhs=np.array([3.0]))
    with pytest.raises(SolverUnavailable, match="size-limited"):
        solve(model, "gurobi", fallback=False)
    res = solve(model, "gurobi")
    assert res.solver == "highs" and res.status == "optimal" and res.objective == 3.0
    assert "size-limited" in res.note


def test_planner_reports_the_fallback(monkeypatch, two_models, two_table):
    import planner.solvers as solvers

    def refuse(*a, **k):
        raise SolverUnavailable("gurobi licence unavailable: test")

    monkeypatch.setattr(solvers, "solve_gurobi", refuse)
    plan = HadisPlanner().plan(state(two_table, two_models, 0.5, 4))
    assert plan.solver == "highs" and "licence unavailable" in plan.note
    with pytest.raises(SolverUnavailable):
        HadisPlanner(fallback=False).plan(state(two_table, two_models, 0.5, 4))


def test_index_is_cached_per_table(sd35_table):
    assert table_index(sd35_table) is table_index(sd35_table)
    assert table_index(list(sd35_table)) is not table_index(sd35_table)


def test_zero_demand_plans_best_quality(sd35_table, sd35):
    st = state(sd35_table, sd35, 0.0, 16, slo=60.0)
    plan = plan_milp(st)
    assert plan.fid == min(c.fid for c in sd35_table)
    assert plan.total_workers == 16 and all(n >= 1 for n in plan.workers.values())
    assert all(math.isfinite(u) for u in plan.utilisation.values())
