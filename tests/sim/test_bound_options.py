"""``python -m bench.bound --set KEY=VALUE``: a variant of a hadis-plus policy is one command.

The overrides reach the planner the simulator runs (and change what it does), keep the
factory's own defaults, and bad input is a clear CLI error before anything runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.bound import hull_report, main, plus_options, steady_report
from hadis_celery.scenario import default_scenario
from planner.baselines import make_planner
from planner.plus import PlusOptions
from sim.bound import concurrent_pair_gain, config_points, lower_hull, pair_curves
from sim.experiments import simulate
from sim.trace import poisson_trace
from sim.workload import build_workload


def test_overrides_reach_the_planner_and_keep_the_factory_defaults():
    kw = plus_options("hadis-plus-fa", ["max_utilisation=0.8", "overload_tolerance=0.015",
                                        "warm_start=true"])
    assert kw == {"max_utilisation": 0.8, "overload_tolerance": 0.015, "warm_start": True}
    opt = make_planner("hadis-plus-fa", **kw).options
    assert (opt.max_utilisation, opt.overload_tolerance, opt.warm_start) == (0.8, 0.015, True)
    assert opt.overload_loss  # hadis-plus-fa's own setting survives the override
    assert plus_options("hadis-plus-fa", []) == {}


@pytest.mark.parametrize(("policy", "items", "says"), [
    ("hadis-plus", ["nope=1"], "expected KEY=VALUE with KEY one of"),
    ("hadis-plus", ["drain_slo"], "expected KEY=VALUE"),
    ("hadis-plus", ["max_utilisation=x"], "takes a number"),
    ("hadis-plus", ["max_utilisation=1.5"], "max_utilisation must be in (0, 1]"),
    ("hadis-plus", ["overload_tolerance=-0.1"], "overload_tolerance must be"),
    ("hadis-plus", ["large_batches=maybe"], "takes true or false"),
    ("hadis", ["drain_slo=1"], "hadis-plus family"),
])
def test_bad_overrides_are_named(policy, items, says):
    with pytest.raises(ValueError) as exc:
        plus_options(policy, items)
    assert says in str(exc.value)


def test_the_cli_refuses_before_running(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--tuning", "--set", "max_utilisation=0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "max_utilisation must be in (0, 1]" in err and "Traceback" not in err


def test_simulate_runs_the_overridden_planner(reference):
    """Headroom (``max_utilisation``) changes the plans on a real run of the simulator."""
    sc = default_scenario(reference)
    wl = build_workload(poisson_trace([(60.0, 12.0)], len(sc.imagenet), seed=3), [sc.imagenet])
    default = simulate(sc, wl, "hadis-plus-fa", slo_s=30.0)
    roomy = simulate(sc, wl, "hadis-plus-fa", slo_s=30.0, options={"max_utilisation": 0.5})
    assert PlusOptions().max_utilisation == 1.0

    def planned(res):
        return {round(t["t"]): t["planned_fid"] for t in res.timeline if "pair" in t}

    # Twice the capacity per query: cheaper (worse-FID) configurations once the demand
    # estimate has caught up (from the second plan on), the same queries.
    a, b = planned(default), planned(roomy)
    common = sorted(set(a) & set(b) - {0})
    assert len(common) >= 8
    assert all(b[t] >= a[t] for t in common) and any(b[t] > a[t] for t in common)
    assert roomy.n == default.n == len(wl)


def test_hull_report_measures_what_mixing_pairs_is_worth(capsys):
    """``--hull SLO``: per budget, one pair's own curve is never under the bound's hull and is
    over it somewhere (the hull's edges between pairs); per trace, one pair per planning
    period (a MILP) is never under the bound's LP floor, over the SLO or over one period."""
    sc = default_scenario()
    trace = poisson_trace([(20.0, 3.0), (20.0, 14.0), (20.0, 4.0)], len(sc.imagenet), seed=4,
                          name="swing14")
    out = hull_report(60.0, on=[trace])
    xs = [v["worker_s"] for v in out["hull"]]
    assert xs == sorted(xs) and len(xs) >= 3
    gaps = [a["one_pair_fid"] - a["hull_fid"] for a in out["at"]
            if a["one_pair_fid"] is not None]
    assert gaps and min(gaps) >= -1e-6 and max(gaps) > 0.05
    assert {s["window_s"] for s in out["schedules"]} == {60.0, sc.settings.period_s}
    for s in out["schedules"]:
        assert s["proven"] and s["one_pair_floor"] >= s["floor"] - 1e-4
    (mix,) = out["concurrent"]
    assert mix["trace"] == "swing14" and mix["one_pair_fid"] >= mix["hull_fid"] - 1e-9
    for bad, says in (("0", "finite SLO"), ("inf", "finite SLO"),
                      ("0.1", "no model runs within that SLO"),
                      ("60 --set swap_delay_s=1", "takes no --policy or --set")):
        with pytest.raises(SystemExit) as exc:
            main(["--hull", *bad.split()])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err


def test_two_pairs_at_once_gain_only_between_the_pairs_vertices():
    """``concurrent_pair_gain``: the hull is never worse than one pair; at a steady load
    whose budget lies inside the hull's edge between two pairs, serving both at once gains
    (about 1.3 % at 11 q/s on 16 workers: 1.45 worker-seconds a query, between 0:1's last
    point at 0.89 and 1:2's curve), and where one model alone is the hull (40 q/s) nothing."""
    sc = default_scenario()
    hull = lower_hull(config_points(sc.grid, sc.registry, sc.surface, 60.0))
    curves = pair_curves(sc.grid, sc.registry, sc.surface, 60.0)
    gains = {}
    for qps in (11.0, 40.0):
        t = poisson_trace([(200.0, qps)], len(sc.imagenet), seed=2).arrival_s
        both, one = concurrent_pair_gain(t, hull, curves, 16, 5.0, 60.0)
        assert one >= both - 1e-9
        gains[qps] = one / both - 1
    assert gains[11.0] > 0.008
    assert gains[40.0] < 0.001  # 0.4 worker-seconds a query: the cheapest model alone
    empty = concurrent_pair_gain(np.zeros(0), hull, curves, 16, 5.0, 60.0)
    assert all(np.isnan(empty))


def test_steady_report_splits_the_gap_at_a_steady_load(capsys):
    """``--steady SLO``: at each steady rate the hull is never above the best one pair,
    and one pair never above the FID of the plan the policy makes (a plan is one pair at
    a profiled grid point on whole workers); each simulated run is reported with its
    violations and pair changes. A bad SLO is a clear CLI error."""
    out = steady_report(60.0, loads=(6.0, 14.0), duration_s=120.0)
    assert [r["qps"] for r in out["loads"]] == [6.0, 14.0]
    for r in out["loads"]:
        assert r["hull_fid"] <= r["one_pair_fid"] + 1e-9 <= r["plan_fid"] + 2e-9
        for run in ("oracle", "ewma"):
            assert 0 <= r[run]["slo_violation_ratio"] <= 1 and r[run]["pair_changes"] >= 0
    for bad in ("0", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["--steady", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "finite SLO" in err and "Traceback" not in err
