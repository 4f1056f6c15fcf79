"""``python -m bench.bound --set KEY=VALUE``: a variant of a hadis-plus policy is one command.

The overrides reach the planner the simulator runs (and change what it does), keep the
factory's own defaults, and bad input is a clear CLI error before anything runs.
"""

from __future__ import annotations

import pytest

from bench.bound import hull_report, main, plus_options
from hadis_celery.scenario import default_scenario
from planner.baselines import make_planner
from planner.plus import PlusOptions
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
    for bad, says in (("0", "finite SLO"), ("inf", "finite SLO"),
                      ("0.1", "no model runs within that SLO"),
                      ("60 --set swap_delay_s=1", "takes no --policy or --set")):
        with pytest.raises(SystemExit) as exc:
            main(["--hull", *bad.split()])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
