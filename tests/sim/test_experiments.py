"""The experiments end to end on the reference data: outputs written, every arrival
accounted for, and the properties each experiment exists to show."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from hadis_celery.cli import main
from hadis_celery.scenario import default_scenario
from sim.experiments import E2E_POLICIES, shift_trace, simulate
from sim.trace import read_trace
from sim.workload import build_workload


@pytest.fixture(scope="module")
def scenario(reference):
    return default_scenario(reference)


def read_rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_e2e_command_writes_tables_plots_and_claims(tmp_path, scenario):
    r = CliRunner().invoke(main, ["experiment", "e2e", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    for name in ("e2e_summary.csv", "e2e_timeseries.csv", "e2e_timeseries.png",
                 "e2e_averages.png", "e2e.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = read_rows(tmp_path / "e2e_summary.csv")
    assert [row["policy"] for row in rows] == [*E2E_POLICIES, "oracle"]
    for row in rows:
        assert int(row["served"]) + int(row["late"]) + int(row["dropped"]) == int(row["queries"])
    md = (tmp_path / "e2e.md").read_text()
    assert "SLO violations 2.7x lower than diffserve" in md
    assert "FID 7-23% lower than proteus" in md
    by = {row["policy"]: row for row in rows}
    # Clipper-Heavy runs only SD3.5-Large (id 3, best quality), Clipper-Light only
    # SDXL-Lightning (0, the fastest);
    # their FIDs are the single-model FIDs of the profile (the pairs' end points differ by
    # a few hundredths).
    for name, model, fid in (("clipper-heavy", "3", 19.95), ("clipper-light", "0", 29.75)):
        runs = {m: n for m, n in json.loads(by[name]["executions"]).items() if n}
        assert list(runs) == [model], (name, runs)
        assert float(by[name]["fid"]) == pytest.approx(fid, abs=0.05)


def test_unknown_experiment_is_a_usage_error(tmp_path):
    r = CliRunner().invoke(main, ["experiment", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "nope" in r.output


def test_oracle_knows_demand_and_all_arrivals_end_once(scenario):
    wl = build_workload(read_trace(scenario.trace_path("azure_multi_1to20qps.txt")),
                        [scenario.imagenet])
    res = simulate(scenario, wl, "hadis", oracle=True)
    assert res.n == len(wl)
    assert set(np.unique(res.status)) <= {0, 1, 2}
    demand = [t["demand_estimate"] for t in res.timeline]
    observed_next = [t["observed_qps"] for t in res.timeline[1:]]
    # the oracle's estimate for period k is what period k then observes
    assert np.allclose(demand[:-1], observed_next, atol=1e-9)


def test_hardness_shift_changes_the_routing_mix(scenario):
    ddb = scenario.diffusiondb()
    assert ddb.derived and len(ddb) > 4900
    # derived scores stay within what the ImageNet fit spans (no far extrapolation)
    for m, q in ddb.quality.items():
        assert 0.0 < np.median(q) < 10 * max(np.median(scenario.imagenet.quality[m]), 1e-3)
    trace = shift_trace(len(scenario.imagenet), len(ddb), qps=6.0, phases=4)
    assert set(np.unique(trace.prompt_set)) == {0, 1}
    wl = build_workload(trace, [scenario.imagenet, ddb])
    res = simulate(scenario, wl, "router-only")
    direct = res.path == 1
    easy, hard = trace.prompt_set == 0, trace.prompt_set == 1
    # the router sends the harder prompt set straight to heavy more often (issue 19: the
    # old profile sent DiffusionDB prompts heavy far less often than ImageNet captions)
    assert direct[hard].mean() > direct[easy].mean() + 0.02
