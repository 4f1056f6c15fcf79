"""The paper's experiments as functions: each runs every policy it compares on the same
workload and writes CSV tables, PNG plots and a markdown summary under ``out``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from planner.baselines import make_planner
from planner.demand import EwmaDemand
from planner.plan import PlannerInputError, PlannerState
from sim.engine import SimResult, Simulation, Workload
from sim.oracle import OracleDemand
from sim.report import (
    markdown_table,
    plot_bars,
    plot_sweep,
    plot_timeseries,
    timeseries_rows,
    write_csv,
)
from sim.scenario import TRACES, Scenario
from sim.trace import Trace, poisson_trace, read_trace
from sim.workload import build_workload

E2E_POLICIES = ("hadis", "diffserve", "proteus", "clipper-light", "clipper-heavy")
ROUTING_POLICIES = ("hadis", "random-scores", "router-only", "discriminator-only")
PLANNER_POLICIES = ("hadis", "cache-d", "cache-d+q")
SLO_MULTIPLIERS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
SUMMARY_COLUMNS = ("policy", "fid", "slo_violation_ratio", "served", "late", "dropped",
                   "mean_quality", "latency_p50_s", "latency_p99_s", "plan_changes")
Progress = Callable[[str], None]


def simulate(sc: Scenario, wl: Workload, policy: str, *, oracle: bool = False,
             slo_s: float | None = None, options: dict | None = None) -> SimResult:
    """One run of ``policy`` (a ``planner.baselines`` name; ``options`` go to its factory,
    e.g. ``PlusOptions`` fields for the hadis-plus family)."""
    s = sc.settings if slo_s is None else sc.with_settings(slo_s=slo_s).settings
    demand = (OracleDemand(wl.arrival_s, s.period_s) if oracle
              else EwmaDemand(sc.half_life_s))
    planner = make_planner(policy, **(options or {}))
    sim = Simulation(wl, sc.registry, sc.table, planner, demand, sc.surface, s,
                     theta_for=sc.router.threshold_for,
                     name=f"{policy} (oracle)" if oracle else policy)
    return sim.run()


def refusal(sc: Scenario, policy: str) -> str | None:
    """Why ``policy`` cannot run on the scenario's table at all (a baseline whose models the
    deployment lacks, e.g. Clipper-Heavy when one model alone runs), else None."""
    planner = make_planner(policy)
    derive = getattr(planner, "table", None) or getattr(
        getattr(planner, "inner", None), "table", None)
    if derive is None:
        return None
    try:
        derive(PlannerState(demand=0.0, workers=sc.settings.workers,
                            slo_s=max(sc.settings.slo_s, *(m.latency_b1 for m in sc.registry)),
                            table=sc.table, registry=sc.registry))
    except PlannerInputError as exc:
        return str(exc)
    return None


# Policies of the last run_policies calls that refused the table, with the reason.
REFUSED: dict[str, str] = {}


def run_policies(sc: Scenario, wl: Workload, policies: Sequence[str], *, oracle: bool = False,
                 slo_s: float | None = None, progress: Progress | None = None
                 ) -> dict[str, SimResult]:
    """Every policy that can run on the table; those that cannot are left out and listed in
    ``REFUSED`` with their reason (never a run of dropped queries passed off as a result)."""
    runs: dict[str, SimResult] = {}
    for p in policies:
        if progress:
            progress(p)
        why = refusal(sc, p)
        if why is not None:
            REFUSED[p] = why
            continue
        runs[p] = simulate(sc, wl, p, slo_s=slo_s)
    if oracle:
        if progress:
            progress("oracle")
        runs["oracle"] = simulate(sc, wl, "hadis", oracle=True, slo_s=slo_s)
    return runs


def summary_rows(runs: dict[str, SimResult]) -> list[dict]:
    return [{**r.summary(), "policy": name} for name, r in runs.items()]


def _write(out: Path, name: str, runs: dict[str, SimResult], title: str, notes: str,
           bin_s: float = 10.0) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = summary_rows(runs)
    notes += refusal_note(set(REFUSED) - set(runs))
    write_csv(out / f"{name}_summary.csv", [
        {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows])
    write_csv(out / f"{name}_timeseries.csv", timeseries_rows(runs, bin_s))
    plot_timeseries(out / f"{name}_timeseries.png", runs, bin_s, title)
    plot_bars(out / f"{name}_averages.png", rows, title)
    (out / f"{name}.md").write_text(
        f"# {title}\n\n{markdown_table(rows, SUMMARY_COLUMNS)}\n{notes}\n"
        f"\nPlots: `{name}_timeseries.png`, `{name}_averages.png`; "
        f"tables: `{name}_summary.csv`, `{name}_timeseries.csv`.\n")
    return rows


def refusal_note(policies: set[str]) -> str:
    if not policies:
        return ""
    return ("\nPolicies the table cannot support (not run):\n\n"
            + "".join(f"- {p}: {REFUSED[p]}\n" for p in sorted(policies)))


def _ratio(a: float, b: float) -> float:
    if a == 0:
        return math.inf if b > 0 else 1.0
    return b / a


def e2e_claims(rows: list[dict]) -> str:
    """The paper's Figure 7 claims, checked against this run."""
    by = {r["policy"]: r for r in rows}
    if "hadis" not in by:
        return ""
    h = by["hadis"]
    lines = ["## The paper's claims, checked", ""]
    for other, claim in (("diffserve", 2.7), ("proteus", 4.2), ("clipper-heavy", 45.0)):
        if other not in by:
            continue
        got = _ratio(h["slo_violation_ratio"], by[other]["slo_violation_ratio"])
        verdict = "holds" if got >= claim else "does not hold"
        lines.append(f"- SLO violations {claim}x lower than {other}: measured "
                     f"{h['slo_violation_ratio']:.4f} vs {by[other]['slo_violation_ratio']:.4f}"
                     f" = {got:.2f}x: **{verdict}**.")
    for other in ("diffserve", "proteus", "clipper-light"):
        if other not in by:
            continue
        gain = 1.0 - h["fid"] / by[other]["fid"]
        verdict = "holds" if 0.07 <= gain <= 0.23 else (
            "better than claimed" if gain > 0.23 else "does not hold")
        lines.append(f"- FID 7-23% lower than {other}: measured {h['fid']:.2f} vs "
                     f"{by[other]['fid']:.2f} = {100 * gain:.1f}% lower: **{verdict}**.")
    return "\n".join(lines) + "\n"


def experiment_e2e(sc: Scenario, out: Path, trace: str = TRACES[0],
                   progress: Progress | None = None) -> list[dict]:
    wl = build_workload(read_trace(sc.trace_path(trace)), [sc.imagenet])
    runs = run_policies(sc, wl, E2E_POLICIES, oracle=True, progress=progress)
    rows = summary_rows(runs)
    notes = e2e_claims(rows) + _scenario_note(sc, trace)
    return _write(out, "e2e", runs, f"End to end (Figure 7): {trace}", notes)


def _comparison(sc: Scenario, out: Path, name: str, title: str, policies: Sequence[str],
                trace: str, progress: Progress | None) -> list[dict]:
    wl = build_workload(read_trace(sc.trace_path(trace)), [sc.imagenet])
    runs = run_policies(sc, wl, policies, progress=progress)
    return _write(out, name, runs, f"{title}: {trace}", _scenario_note(sc, trace))


def experiment_routing(sc: Scenario, out: Path, trace: str = TRACES[0],
                       progress: Progress | None = None) -> list[dict]:
    return _comparison(sc, out, "routing-ablation", "Routing ablation (Figure 9)",
                       ROUTING_POLICIES, trace, progress)


def experiment_planner(sc: Scenario, out: Path, trace: str = TRACES[0],
                       progress: Progress | None = None) -> list[dict]:
    return _comparison(sc, out, "planner-ablation", "Planner ablation (Figure 10)",
                       PLANNER_POLICIES, trace, progress)


def experiment_slo(sc: Scenario, out: Path, trace: str = TRACES[0],
                   progress: Progress | None = None) -> list[dict]:
    wl = build_workload(read_trace(sc.trace_path(trace)), [sc.imagenet])
    rows = []
    base = sc.settings.slo_s
    for m in SLO_MULTIPLIERS:
        if base * m < min(spec.latency_b1 for spec in sc.registry):
            continue
        runs = run_policies(sc, wl, E2E_POLICIES, slo_s=base * m,
                            progress=(lambda p, m=m: progress(f"{p} @ {m}x")) if progress
                            else None)
        rows += [{**r, "slo_multiplier": m, "slo_s": base * m} for r in summary_rows(runs)]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "slo-sweep_summary.csv", [
        {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows])
    plot_sweep(out / "slo-sweep.png", rows, "slo_multiplier", f"SLO sweep (Figure 11): {trace}")
    (out / "slo-sweep.md").write_text(
        f"# SLO sweep (Figure 11): {trace}\n\n"
        + markdown_table(rows, ("slo_multiplier",) + SUMMARY_COLUMNS[:6])
        + "\n" + _scenario_note(sc, trace) + "\nPlot: `slo-sweep.png`.\n")
    return rows


def shift_trace(n_imagenet: int, n_ddb: int, qps: float = 12.0, phase_s: float = 60.0,
                phases: int = 6, seed: int = 0) -> Trace:
    """Fixed-rate Poisson arrivals alternating easy (ImageNet) and hard (DiffusionDB)."""
    base = poisson_trace([(phase_s * phases, qps)], n_prompts=max(n_imagenet, n_ddb),
                         seed=seed, name="hardness-shift")
    which = (np.floor(base.arrival_s / phase_s).astype(int) % 2)
    rng = np.random.default_rng(seed + 1)
    idx = np.where(which == 0, rng.integers(0, n_imagenet, len(base)),
                   rng.integers(0, n_ddb, len(base)))
    return Trace(base.arrival_s, idx, "hardness-shift", which)


def experiment_shift(sc: Scenario, out: Path, qps: float = 12.0,
                     progress: Progress | None = None) -> list[dict]:
    ddb = sc.diffusiondb()
    trace = shift_trace(len(sc.imagenet), len(ddb), qps=qps, seed=sc.settings.seed)
    wl = build_workload(trace, [sc.imagenet, ddb])
    runs = run_policies(sc, wl, ("hadis", "diffserve", "router-only"), progress=progress)
    heavy_share = {
        name: [float(np.mean(r.path[trace.prompt_set == k] == 1)) for k in (0, 1)]
        for name, r in runs.items()}
    notes = (
        "Phases of 60 s alternate ImageNet captions (easy) and DiffusionDB prompts (hard) at "
        f"{qps:g} queries/s. DiffusionDB prompts have no recorded scores: theirs are derived "
        "from the router features with a per-model fit on the ImageNet set plus resampled "
        "residuals (`sim/workload.py`).\n\nShare of queries the router sent straight to "
        "the heavy model (ImageNet / DiffusionDB phases): "
        + ", ".join(f"{k}: {a:.2f} / {b:.2f}" for k, (a, b) in heavy_share.items()) + "\n")
    return _write(out, "hardness-shift", runs, "Hardness shift (Figure 12)", notes)


def step_trace(levels: Sequence[float] = (4, 8, 12, 16, 20, 16, 12, 8, 4),
               step_s: float = 40.0, n_prompts: int = 5000, seed: int = 0) -> Trace:
    return poisson_trace([(step_s, q) for q in levels], n_prompts, seed, name="step")


def experiment_step(sc: Scenario, out: Path, progress: Progress | None = None) -> list[dict]:
    trace = step_trace(seed=sc.settings.seed)
    wl = build_workload(trace, [sc.imagenet])
    runs = run_policies(sc, wl, E2E_POLICIES, progress=progress)
    return _write(out, "step", runs, "Step demand (Figure 8): 4 to 20 to 4 queries/s",
                  "Piecewise-constant Poisson demand, 40 s per level.\n")


def _scenario_note(sc: Scenario, trace: str) -> str:
    s = sc.settings
    return (f"\nScenario: {s.workers} workers, SLO {s.slo_s:g} s, trace `{trace}`, planning "
            f"period {s.period_s:g} s, EWMA half-life {sc.half_life_s:g} s, swap delay "
            f"{s.swap_delay_s:g} s, {len(sc.grid)} profiled rows ({len(sc.pareto)} on the "
            f"Pareto front), seed {s.seed}. FID per 30 s window from the profiled grid at "
            "the realised routing fractions (Proteus' random split is read at the same "
            "fractions).\n")


EXPERIMENTS: dict[str, Callable[..., list[dict]]] = {
    "e2e": experiment_e2e,
    "routing-ablation": experiment_routing,
    "planner-ablation": experiment_planner,
    "slo-sweep": experiment_slo,
    "hardness-shift": experiment_shift,
    "step": experiment_step,
}


def run_experiment(name: str, out: Path, sc: Scenario, *, trace: str | None = None,
                   progress: Progress | None = None) -> list[dict]:
    """Experiment ``name`` on the scenario ``sc`` (the caller builds it: its workers, SLO
    and seed; ``hadis_celery.scenario.default_scenario`` for the deployment's)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    REFUSED.clear()
    kwargs: dict = {"progress": progress}
    if trace and name in ("e2e", "routing-ablation", "planner-ablation", "slo-sweep"):
        kwargs["trace"] = trace
    return EXPERIMENTS[name](sc, Path(out), **kwargs)
