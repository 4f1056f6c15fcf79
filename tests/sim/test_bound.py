"""The fluid bound (``sim.bound``): a relaxation no policy in the simulator beats.

Every planner of ``planner.baselines`` (and the oracle) runs on small traces, light and
overloaded, at SLO 60 s and 30 s, through the real simulator on the reference scenario; each
run's violation ratio must be at least the bound's least reachable one, and its ``fid_all``
at least the bound's floor at that violation ratio. The LP itself is checked on cases whose
answer is known in closed form, and the engine's FID credit (what the bound relies on) is
checked to name the model that made each image.
"""

from __future__ import annotations

import numpy as np
import pytest

from hadis_celery.scenario import default_scenario
from planner.baselines import PLANNERS, make_planner
from planner.demand import EwmaDemand
from sim.azure import azure_trace, read_hourly, reshape, scaled_rates
from sim.bound import FluidBound, best_throughput, cascade_seconds, config_points, lower_hull
from sim.engine import DROPPED, Simulation
from sim.experiments import refusal, simulate
from sim.trace import poisson_trace
from sim.workload import build_workload


@pytest.fixture(scope="module")
def sc(reference):
    return default_scenario(reference)


def _traces(sc):
    return [
        poisson_trace([(30, 3), (30, 22), (30, 5)], 5000, seed=1, name="step22"),
        poisson_trace([(20, 4), (40, 120), (20, 2)], 5000, seed=2, name="overload120"),
        azure_trace(sc.reference, "shuf1", 60.0, seconds_per_hour=0.3),
    ]


def _bound(sc, trace, slo_s):
    return FluidBound(trace.arrival_s, sc.registry, sc.grid, sc.surface,
                      sc.settings.workers, slo_s)


def test_hull_lies_under_every_configuration(sc):
    pts = config_points(sc.grid, sc.registry, sc.surface)
    hull = lower_hull(pts)
    xs, ys = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) < 0)
    slopes = np.diff(ys) / np.diff(xs)
    assert np.all(np.diff(slopes) > -1e-9), "the hull must be convex"
    for cost, fid, label in pts:
        under = np.interp(cost, xs, ys) if cost <= xs[-1] else ys[-1]
        assert fid >= under - 1e-9, f"{label} ({cost:.3f} ws, FID {fid:.3f}) is under the hull"
    assert hull[0][1] == pytest.approx(max(sc.surface.single(m.id) for m in sc.registry))


def test_floor_matches_closed_form(sc):
    # 10 queries at once, 1 worker, SLO 60 s, 5 s slots: slots 0..12 hold 65 worker-seconds,
    # so each query may use 6.5 of them: the floor is the hull at 6.5.
    hull = lower_hull(config_points(sc.grid, sc.registry, sc.surface, 60.0))
    xs, ys = [h[0] for h in hull], [h[1] for h in hull]
    b = FluidBound(np.zeros(10), sc.registry, sc.grid, sc.surface, 1, 60.0, slot_s=5.0)
    assert b.min_violation() == 0.0
    assert b.fid_floor(0.0) == pytest.approx(float(np.interp(6.5, xs, ys)), abs=1e-6)
    # 400 queries at once: 65 worker-seconds serve 65 / 0.406 = 160 on the cheapest model.
    b = FluidBound(np.zeros(400), sc.registry, sc.grid, sc.surface, 1, 60.0, slot_s=5.0)
    assert b.fid_floor(0.0) is None
    assert b.min_violation() == pytest.approx(1 - 65 / xs[0] / 400, abs=1e-6)
    # More violations allowed never raises the floor.
    floors = [b.fid_floor(v) for v in (0.6, 0.7, 0.9)]
    assert floors[0] >= floors[1] >= floors[2]


def test_only_batches_that_end_within_the_slo_count(sc):
    # A batch longer than the SLO serves nobody on time (policy.take_batch), so the bound's
    # best throughput of a model is over the batches that fit, and a rerouted image's light
    # and heavy runs must fit together.
    free = best_throughput(sc.registry)
    for slo_s in (60.0, 30.0, 10.0):
        capped = best_throughput(sc.registry, slo_s)
        for m in sc.registry:
            fits = [b for b in range(1, m.batch_sizes[-1] + 1) if m.batch_seconds(b) <= slo_s]
            if not fits:
                assert m.id not in capped
                continue
            assert capped[m.id] == pytest.approx(max(b / m.batch_seconds(b) for b in fits))
            assert capped[m.id] <= free[m.id] + 1e-12
    slow = max(sc.registry, key=lambda m: m.latency_b1)
    fast = min(sc.registry, key=lambda m: m.latency_b1)
    assert best_throughput(sc.registry, slow.latency_b1)[slow.id] == pytest.approx(
        1 / slow.latency_b1)  # only a batch of one fits
    assert cascade_seconds(fast, slow, slow.latency_b1) is None  # no room for the light run
    both = cascade_seconds(fast, slow, fast.latency_b1 + slow.latency_b1)
    assert both == pytest.approx(fast.latency_b1 + slow.latency_b1)
    # A tighter SLO never lowers the floor.
    trace = _traces(sc)[0]
    floors = [FluidBound(trace.arrival_s, sc.registry, sc.grid, sc.surface, 16, s,
                         slot_s=2.5).fid_floor(0.0) for s in (60.0, 30.0)]
    assert floors[0] <= floors[1]


def test_a_shorter_window_is_a_reference_above_the_bound(sc):
    # Confining each query's work to one planning period after its arrival can only raise
    # the floor (and the least violations); it is what bench.bound reports as the part of a
    # policy's gap that deferring work into later lulls is worth.
    trace = _traces(sc)[2]
    full = FluidBound(trace.arrival_s, sc.registry, sc.grid, sc.surface, 16, 60.0)
    period = FluidBound(trace.arrival_s, sc.registry, sc.grid, sc.surface, 16, 60.0,
                        window_s=sc.settings.period_s)
    assert period.min_violation() >= full.min_violation() - 1e-9
    for v in (0.05, 0.2):
        assert period.fid_floor(v) >= full.fid_floor(v) - 1e-9
    assert period.fid_floor(0.2) > full.fid_floor(0.2) + 0.1  # a burst: deferral matters
    for bad in (0.0, 61.0):
        with pytest.raises(ValueError, match="window_s must be in"):
            FluidBound(trace.arrival_s, sc.registry, sc.grid, sc.surface, 16, 60.0,
                       window_s=bad)


@pytest.mark.parametrize("slo_s", [60.0, 30.0])
def test_no_policy_beats_the_bound(sc, slo_s):
    policies = [p for p in PLANNERS if refusal(sc, p) is None]
    assert {"hadis", "hadis-plus", "clipper-light"} <= set(policies)
    for trace in _traces(sc):
        wl = build_workload(trace, [sc.imagenet])
        bound = _bound(sc, trace, slo_s)
        v_min = bound.min_violation()
        runs = {p: simulate(sc, wl, p, slo_s=slo_s) for p in policies}
        runs["oracle"] = simulate(sc, wl, "hadis", oracle=True, slo_s=slo_s)
        for name, res in runs.items():
            assert res.counts()["late"] == 0  # the bound has no late service (sim.bound)
            v = res.slo_violation_ratio
            assert v >= v_min - 1e-9, f"{trace.name} @{slo_s:g} {name}: {v} < {v_min}"
            floor = bound.fid_floor(v)
            assert floor is not None
            assert res.fid_all >= floor - 1e-6, (
                f"{trace.name} @{slo_s:g} {name}: fid_all {res.fid_all:.4f} under the "
                f"bound {floor:.4f} at violations {v:.4f}")
        if trace.name == "overload120":  # 120 q/s for 40 s is beyond 16 workers
            assert v_min > 0.0


def test_credit_names_the_model_that_ran(sc):
    trace = poisson_trace([(30, 3), (30, 30), (30, 2)], 5000, seed=5, name="swing")
    wl = build_workload(trace, [sc.imagenet])
    s = sc.with_settings(slo_s=30.0).settings
    sim = Simulation(wl, sc.registry, sc.table, make_planner("hadis"),
                     EwmaDemand(sc.half_life_s), sc.surface, s,
                     theta_for=sc.router.threshold_for)
    res = sim.run()
    served = res.status != DROPPED
    credited = np.where(res.path == 0, sim.pair_at[:, 0], sim.pair_at[:, 1])
    assert served.sum() > 0
    assert np.all(credited[served] == res.served_model[served])


def test_generated_traces_follow_the_reference_scaling(sc):
    hourly = read_hourly(sc.reference / "traces" / "azure_functions_hourly_invocations.csv")
    assert len(hourly) == 347
    for shape in ("orig", "rev", "rot5", "shuf1"):
        series = reshape(hourly, shape)
        assert sorted(series) == pytest.approx(sorted(hourly))
    assert not np.allclose(reshape(hourly, "shuf1"), hourly)
    rates = scaled_rates(hourly, 80.0)
    assert rates.min() == pytest.approx(1.0) and rates.max() == pytest.approx(80.0)
    a = azure_trace(sc.reference, "shuf1", 80.0, seed=3)
    b = azure_trace(sc.reference, "shuf1", 80.0, seed=3)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert 340 < a.duration_s <= 347
    assert len(a) == pytest.approx(rates.sum(), rel=0.03)
    per_second = np.bincount(a.arrival_s.astype(int))
    peak = np.convolve(per_second, np.ones(5) / 5, mode="valid").max()
    assert 60 < peak < 100
    with pytest.raises(ValueError):
        reshape(hourly, "sideways")
