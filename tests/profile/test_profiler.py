"""The live-profiling core: latency medians and the grid table from per-prompt scores."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from hadis_celery.examples import sd35_registry
from planner.profiler import default_pairs, grid_table, measure_latency, score_prompts
from planner.reference_table import load_reference_table


@dataclass
class _Gen:
    images: list
    seconds: float
    quality: list | None


class ScriptedBackend:
    """Returns the scripted seconds in order (a stand-in with the backend contract)."""

    def __init__(self, seconds, quality=None):
        self.seconds = list(seconds)
        self.quality = quality
        self.calls: list[int] = []

    def generate(self, prompts, seeds):
        self.calls.append(len(prompts))
        q = None if self.quality is None else [self.quality(p) for p in prompts]
        return _Gen(images=[f"img:{p}" for p in prompts], seconds=self.seconds.pop(0), quality=q)


def test_latency_is_the_median_of_repeats_after_warmup():
    # per batch size: 1 warm-up (slow, excluded) then 3 repeats
    be = ScriptedBackend([9.0, 1.0, 1.2, 1.1, 9.0, 2.0, 5.0, 2.2])
    assert measure_latency(be, ["a", "b", "c"], [2, 1], repeats=3) == {1: 1.1, 2: 2.2}
    assert be.calls == [1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="no prompts"):
        measure_latency(be, [], [1])


def test_scores_come_from_the_backend_or_the_discriminator():
    prompts = [f"p{i}" for i in range(5)]
    be = ScriptedBackend([0.1] * 3, quality=lambda p: int(p[1:]) / 10)
    assert list(score_prompts(be, prompts, 2)) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert be.calls == [2, 2, 1]
    plain = ScriptedBackend([0.1] * 3)
    got = score_prompts(plain, prompts, 2, score_fn=lambda imgs, ps: [len(i) / 10 for i in imgs])
    assert list(got) == [0.6] * 5
    with pytest.raises(ValueError, match="no discriminator"):
        score_prompts(ScriptedBackend([0.1]), prompts, 5)


def test_grid_table_matches_the_reference_table_on_the_same_grid(
        profile_dir, router_profile, ref_router_scores, ref_scores):
    reg = sd35_registry()
    ref = load_reference_table(profile_dir, reg, router_profile, router_scores=ref_router_scores)
    grid = grid_table(ref_scores, ref_router_scores, reg, theta_fn=router_profile.threshold_for)
    assert default_pairs(reg) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    by_key = {(c.light, c.heavy, c.router_ratio, c.disc_ratio): c for c in grid}
    assert len(by_key) == len(ref) == 726
    for r in ref:
        g = by_key[(r.light, r.heavy, r.router_ratio, r.disc_ratio)]
        assert (g.frac_light, g.frac_direct, g.frac_rerouted, g.frac_heavy) == pytest.approx(
            (r.frac_light, r.frac_direct, r.frac_rerouted, r.frac_heavy))
        assert g.service_s == pytest.approx(r.service_s)
        assert g.tau == r.tau and g.theta == r.theta
        assert g.quality == pytest.approx(r.quality)
        assert g.metric == "disc" and g.fid == pytest.approx(1 - r.quality)


def test_grid_table_with_an_fid_function_and_bad_input():
    reg = sd35_registry()
    scores = {0: np.array([0.1, 0.2, 0.3, 0.4]), 3: np.array([0.5, 0.6, 0.7, 0.8])}
    rs = np.array([4.0, 3.0, 2.0, 1.0])
    rows = grid_table(scores, rs, reg, router_ratios=[0.5], disc_ratios=[0.5],
                      fid_fn=lambda pair, served: float(np.mean(served == pair[1])))
    (c,) = rows
    # prompts 0, 1 go heavy by router; of 2, 3 (light scores .3, .4) the lower is rejected
    assert c.fid == pytest.approx(0.75) and c.metric == "fid" and math.isnan(c.theta)
    assert c.quality == pytest.approx((0.5 + 0.6 + 0.7 + 0.4) / 4)
    with pytest.raises(ValueError, match="empty grid"):
        grid_table({0: scores[0]}, rs, reg)
    with pytest.raises(ValueError, match="3 scores for 4 prompts"):
        grid_table({0: scores[0][:3], 3: scores[3]}, rs, reg)
