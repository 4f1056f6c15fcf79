"""hadis-plus-fa (issue 21): the fid_all-aware overload fallback and its loss model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from planner.baselines import PLANNERS, make_planner
from planner.plan import Plan, QueueState, role_queue, routed_load, verify_plan
from planner.plus import PlusOptions, candidates, evaluate, predicted_loss
from tests.plus.test_plus import HEAVY2, LIGHT0, REG, data, state  # noqa: F401 (fixture)


def test_predicted_loss_counts_a_stranded_backlog(data):  # noqa: F811
    """A row that leaves the heavy backlog on a queue it gives no worker loses all of it,
    whatever its light capacity."""
    table = data[0]
    st = state(table, 60.0, {LIGHT0: QueueState(400, 50.0), HEAVY2: QueueState(300, 5.0)})
    cand = candidates(st.table, st.registry, st.workers, st.slo_s)
    ev = evaluate(cand, st, 60.0, PlusOptions())
    loss = predicted_loss(cand, ev, st, 60.0)
    work = 60.0 * st.slo_s + 400 + 300
    assert np.all((loss >= 0) & (loss <= 1))
    strands = ev.stranded > 0
    assert strands.any() and (~strands).any()
    assert np.all(loss[strands] >= 300 / work - 1e-9)


def test_overload_takes_the_best_fid_within_the_loss_tolerance(data):  # noqa: F811
    table = data[0]
    st = state(table, 200.0, {LIGHT0: QueueState(900, 150.0)})
    fa = make_planner("hadis-plus-fa")
    p = fa.plan(st)
    assert p.overloaded and 0 < p.served_fraction < 1
    assert verify_plan(p, replace(st, demand=p.demand, queues={})) == []
    cand = candidates(st.table, st.registry, st.workers, st.slo_s)
    loss = predicted_loss(cand, evaluate(cand, st, 200.0, fa.options), st, 200.0)
    near = loss <= loss.min() + fa.options.overload_tolerance + 1e-9
    assert p.config.fid == pytest.approx(cand.fid[near].min())
    assert not near.all()  # the tolerance does leave candidates out


def test_registered_and_keeps_nothing_between_calls(data):  # noqa: F811
    assert "hadis-plus-fa" in PLANNERS
    fa = make_planner("hadis-plus-fa")
    assert fa.name == "hadis-plus-fa" and fa.options.overload_loss
    before = dict(vars(fa))
    st = state(data[0], 50.0, {LIGHT0: QueueState(500, 45.0)})
    first = fa.plan(st)
    second = fa.plan(st)
    assert vars(fa) == before
    assert (first.config, first.workers, first.batch) == (second.config, second.workers,
                                                          second.batch)
    nxt = fa.plan(replace(st, previous=first))
    assert nxt.planner == "hadis-plus-fa"


def test_plans_for_the_mean_rate_measured_over_its_horizon(data):  # noqa: F811
    """hadis-plus-fh plans for the mean front-door rate of the last ``horizon_slo`` SLOs,
    kept in ``Plan.memory``: from the first measured period on (not the EWMA, which starts
    at 1 q/s), and a period far above the window's mean moves it by its share only."""
    fa = make_planner("hadis-plus-fh")
    assert fa.options.horizon_slo > 0 and make_planner("hadis-plus-fa").options.horizon_slo == 0
    st = state(data[0], 1.0, slo=30.0)
    first = fa.plan(st)  # nothing measured: the EWMA
    assert first.demand == pytest.approx(1.0) and first.memory["rates"] == []
    n = round(fa.options.horizon_slo * 30.0 / fa.options.rate_window_s)
    memory, measured = first, []
    for k in range(n + 3):
        rate = 20.0 if k != n + 2 else 80.0
        measured.append(rate)
        # the queues' arrivals count a rerouted query twice: observed_rate undoes that
        c = memory.config
        twice = 0.0 if c.light == c.heavy else (1 - c.router_ratio) * c.disc_ratio
        prev = json.loads(json.dumps(memory.to_dict()))  # as the live beat stores it
        st_k = state(data[0], 5.0, {LIGHT0: QueueState(0, rate * (1 + twice))},
                     previous=Plan.from_dict(prev), slo=30.0)
        memory = fa.plan(st_k)
        assert memory.demand == pytest.approx(np.mean(measured[-n:]))
    assert len(memory.memory["rates"]) == n
    assert memory.demand < 80.0 / 2  # the spike moves the plan by 1/n of its excess


def test_horizon_off_by_default_so_hadis_plus_figures_stay():
    assert PlusOptions().horizon_slo == 0 and not PlusOptions().warm_start


def _drains_within(plan: Plan, backlog: dict[str, float], demand: float, slo_s: float,
                   k: float) -> bool:
    """Whether every role of ``plan`` serves its arrivals plus its backlog over ``k`` SLOs."""
    for role, share in routed_load(plan.config).items():
        q = role_queue(REG, plan.config, role)
        spec = REG.by_queue(q)
        mu = plan.workers.get(q, 0) * spec.throughput(plan.batch[spec.id])
        if demand * share + backlog.get(role, 0.0) / (k * slo_s) > mu * (1 + 1e-9):
            return False
    return True


def test_drain_slo_refuses_a_plan_behind_a_standing_queue(data):  # noqa: F811
    """600 queries wait on the light role at 25 q/s: hadis-plus-fa keeps the better FID at a
    utilisation that leaves the queue standing (its wait is inside the SLO), hadis-plus-fd
    takes a plan whose light workers also drain it within two SLOs."""
    st = state(data[0], 25.0, {LIGHT0: QueueState(600, 25.0)})
    fa, fd = make_planner("hadis-plus-fa").plan(st), make_planner("hadis-plus-fd").plan(st)
    assert not fa.overloaded and not fd.overloaded
    backlog = {"light": 600.0}
    assert not _drains_within(fa, backlog, 25.0, st.slo_s, 2.0)
    assert _drains_within(fd, backlog, 25.0, st.slo_s, 2.0)
    assert fd.fid > fa.fid  # the drain is paid in FID
    assert verify_plan(fd, replace(st, demand=fd.demand, queues={})) == []
    with pytest.raises(ValueError, match="drain_slo"):
        PlusOptions(drain_slo=-1.0)
