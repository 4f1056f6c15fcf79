"""Simulator benchmark: every policy on the default scenario, the oracle (HADIS told each
period's demand: no bound, hadis-plus beats it; ``python -m bench.bound`` has a true one),
the other two traces, and the simulator's own speed.

Run from the repo root: ``python -m bench.simulate``. The last line is one JSON object.
"""

from __future__ import annotations

import json
import sys
import time

from hadis_celery.scenario import default_scenario
from planner.baselines import PLANNERS
from sim.experiments import simulate
from sim.scenario import TRACES
from sim.trace import read_trace
from sim.workload import build_workload

POLICIES = ("hadis", "diffserve", "proteus", "clipper-light", "clipper-heavy",
            "router-only", "discriminator-only", "random-scores", "cache-d", "cache-d+q")
EXTRA = ("hadis-plus",)  # reported when the planner exists


def _fig(res) -> dict:
    """``fid``: served images; ``fid_all``: every query, a drop counted as an image of the
    cheapest model (``SimResult.fid_all``); ``served_fraction``: queries that got an image."""
    return {"fid": round(res.fid, 3), "slo_violation_ratio": round(res.slo_violation_ratio, 4),
            "fid_all": round(res.fid_all, 3), "served_fraction": round(res.served_fraction, 4)}


def main() -> dict:
    t0 = time.perf_counter()
    sc = default_scenario()
    print(f"scenario built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    out: dict = {"scenario": {"workers": sc.settings.workers, "slo_s": sc.settings.slo_s,
                              "trace": TRACES[0], "period_s": sc.settings.period_s,
                              "half_life_s": sc.half_life_s,
                              "swap_delay_s": sc.settings.swap_delay_s}}
    policies = POLICIES + tuple(p for p in EXTRA if p in PLANNERS)
    queries, sim_s = 0, 0.0
    for trace in TRACES:
        wl = build_workload(read_trace(sc.trace_path(trace)), [sc.imagenet])
        key = trace.removesuffix(".txt")
        names = policies if trace == TRACES[0] else ("hadis",) + tuple(
            p for p in EXTRA if p in PLANNERS)
        block = {}
        for p in names + ("oracle",):
            t = time.perf_counter()
            res = simulate(sc, wl, "hadis", oracle=True) if p == "oracle" else simulate(sc, wl, p)
            sim_s += time.perf_counter() - t
            queries += res.n
            block[p] = _fig(res)
            print(f"{key} {p}: {block[p]}", file=sys.stderr)
        out[key] = block
    out["sim_queries_per_s"] = round(queries / sim_s, 1)
    out["sim_seconds_total"] = round(sim_s, 2)
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
