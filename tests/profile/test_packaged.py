"""The packaged table (hadis_celery/data/profile_sd35.json) is what the tools derive now."""

from __future__ import annotations

import json

import pytest

from hadis_celery.examples import sd35_registry
from planner.pareto import pareto_front
from planner.reference_table import load_reference_table
from planner.table import PACKAGED_SD35, ProfileTable, tau_from_quantiles

REGENERATE = ("stale: regenerate with `hadis profile import ../shared/reference/profile-sd35 "
              "--name sd35 && hadis profile export sd35 hadis_celery/data/profile_sd35.json`")


def test_packaged_table_is_the_current_pareto_front(profile_dir, router_profile,
                                                     ref_router_scores):
    raw = json.loads(PACKAGED_SD35.read_text())
    assert "config_results_hybrid.csv" in raw["source"] and "scores_model_K" in raw["source"]
    packaged = ProfileTable.load(PACKAGED_SD35)
    assert packaged.metric == "fid" and packaged.registry == sd35_registry()
    front = pareto_front(load_reference_table(profile_dir, sd35_registry(), router_profile,
                                              router_scores=ref_router_scores))
    assert len(packaged.rows) == len(front) == 197
    for p, f in zip(packaged.rows, front, strict=True):
        assert (p.light, p.heavy, p.router_ratio, p.disc_ratio, p.fid) == (
            f.light, f.heavy, f.router_ratio, f.disc_ratio, f.fid)
        assert p.service_s == pytest.approx(f.service_s)
        assert p.gpu_s_per_query() == pytest.approx(f.gpu_s_per_query())
        assert p.theta == pytest.approx(f.theta), REGENERATE
        assert p.tau == pytest.approx(f.tau), REGENERATE
        assert p.quality == pytest.approx(f.quality), REGENERATE


def test_score_quantiles_give_tau_without_the_score_files(ref_scores):
    packaged = ProfileTable.load(PACKAGED_SD35)
    assert sorted(packaged.score_quantiles) == [0, 1, 2, 3]
    for m, q in packaged.score_quantiles.items():
        assert len(q) == 101
        tau = tau_from_quantiles(q, 0.3)
        assert (ref_scores[m] < tau).mean() == pytest.approx(0.3, abs=0.01)
    assert tau_from_quantiles(packaged.score_quantiles[0], 0.0) == float("-inf")
