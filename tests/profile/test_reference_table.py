"""The configuration table built from the reference measurements, checked against the CSV."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from hadis_celery.examples import sd35_registry
from planner.candidates import single_model_quality
from planner.reference_table import (
    ProfileDataError,
    load_reference_table,
    reject_threshold,
)


def _csv_rows(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_every_csv_row_becomes_a_config_with_its_fractions_and_latency(sd35_table, profile_dir):
    rows = _csv_rows(profile_dir / "config_results_hybrid.csv")
    assert len(sd35_table) == len(rows) == 726
    for c, r in zip(sd35_table, rows, strict=True):
        assert (c.light, c.heavy) == (int(r["light_model"]), int(r["heavy_model"]))
        assert (c.router_ratio, c.disc_ratio) == (float(r["router_ratio"]), float(r["disc_ratio"]))
        assert c.fid == float(r["fid"])
        # routing fractions: the CSV's "threshold" is the share that reaches the heavy model
        assert c.frac_heavy == pytest.approx(float(r["threshold"]), abs=0.006)
        assert c.frac_direct + c.frac_light == pytest.approx(1.0)
        assert c.frac_rerouted == pytest.approx(c.frac_heavy - c.frac_direct)
        # expected service seconds per query, from the registry's batch-1 latencies
        assert c.service_s == pytest.approx(float(r["latency"]), abs=0.006)
        assert c.gpu_s_total == pytest.approx(c.service_s)


def test_single_model_rows_reproduce_the_reference_fids(sd35_table, profile_dir):
    single = single_model_quality(sd35_table)
    # README: model 0 alone about 29.8, model 3 alone about 20.0
    assert single[0] == pytest.approx(29.75, abs=0.01)
    assert single[3] == pytest.approx(19.95, abs=0.01)
    # the discriminator-only table measured the same single-model points independently
    for r in _csv_rows(profile_dir / "config_results.csv"):
        light, heavy, thr = int(r["light_model"]), int(r["heavy_model"]), float(r["threshold"])
        if thr == 0.0:
            assert single[light] == pytest.approx(float(r["fid"]), abs=0.02)
        if thr == 1.0:
            assert single[heavy] == pytest.approx(float(r["fid"]), abs=0.02)
    for c in sd35_table:
        if c.frac_heavy == 0.0:
            assert c.fid == pytest.approx(single[c.light], abs=0.02)
            assert c.gpu_s_per_query() == {c.light: c.light_s, c.heavy: 0.0}
        if c.frac_light == 0.0:
            assert c.fid == pytest.approx(single[c.heavy], abs=0.02)


def test_theta_comes_from_the_router_profile(sd35_table, router_profile):
    for c in sd35_table:
        assert c.theta == router_profile.threshold_for(c.router_ratio)
    by_r = {c.router_ratio: c.theta for c in sd35_table}
    assert by_r[0.0] == math.inf and by_r[1.0] == -math.inf
    thetas = [by_r[r] for r in sorted(by_r)]
    assert all(a > b for a, b in zip(thetas, thetas[1:], strict=False))


def test_tau_rejects_the_lowest_disc_ratio_share(sd35_table, ref_scores):
    n = len(ref_scores[0])
    for c in sd35_table:
        rejected = float(np.mean(ref_scores[c.light] < c.tau))
        assert rejected == pytest.approx(round(c.disc_ratio * n) / n, abs=2 / n)
    assert reject_threshold(np.array([0.3, 0.1, 0.2]), 0.0) == -math.inf
    assert reject_threshold(np.array([0.3, 0.1, 0.2]), 1.0) == math.inf
    assert reject_threshold(np.array([0.3, 0.1, 0.2, 0.4]), 0.5) == pytest.approx(0.25)


def test_router_scores_make_tau_conditional_and_give_served_quality(
        profile_dir, router_profile, ref_router_scores, ref_scores):
    table = load_reference_table(profile_dir, sd35_registry(), router_profile,
                                 router_scores=ref_router_scores)
    n = len(ref_router_scores)
    order = np.argsort(-ref_router_scores, kind="stable")
    for c in table[::7]:
        heavy = np.zeros(n, bool)
        heavy[order[: round(c.router_ratio * n)]] = True
        # the realised router share is the asked one, and θ splits the same prompts
        assert heavy.mean() == pytest.approx(c.router_ratio)
        if 0 < c.router_ratio < 1:
            assert np.mean(ref_router_scores > c.theta) == pytest.approx(c.router_ratio,
                                                                         abs=0.01)
        lq = ref_scores[c.light][~heavy]
        if lq.size:
            # ties among recorded scores cannot be split by "score < τ": a few prompts off
            assert np.mean(lq < c.tau) == pytest.approx(c.disc_ratio, abs=3.0 / lq.size)
        assert 0.0 < c.quality < 1.0
    alone = {(c.light, c.heavy): c.quality for c in table if c.router_ratio == 1.0}
    for (_, heavy), q in alone.items():
        assert q == pytest.approx(float(ref_scores[heavy].mean()))


# -- bad input -----------------------------------------------------------------------------
@pytest.fixture()
def bad_dir(tmp_path: Path, profile_dir: Path) -> Path:
    d = tmp_path / "profile"
    d.mkdir()
    for f in profile_dir.iterdir():
        (d / f.name).symlink_to(f)
    (d / "config_results_hybrid.csv").unlink()
    shutil.copy(profile_dir / "config_results_hybrid.csv", d / "config_results_hybrid.csv")
    return d


def _edit_line(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("line, message", [
    ("0,1,0.0,0.1,0.1,0.63", "6 columns, expected 7"),
    ("0,1,0.0,0.1,0.1,0.63,nan", "column fid: not finite"),
    ("0,1,0.0,0.1,0.1,-0.63,28.63", "negative latency"),
    ("0,7,0.0,0.1,0.1,0.63,28.63", "unknown model id 7"),
    ("0,1,0.0,x,0.1,0.63,28.63", "column disc_ratio: not a number"),
    ("0,1,0.0,1.5,0.1,0.63,28.63", "disc_ratio 1.5 outside [0, 1]"),
    ("0,1,0.0,0.0,0.0,0.5,29.75", "duplicate grid point"),
])
def test_malformed_csv_rows_name_file_and_line(bad_dir, line, message):
    csv_path = bad_dir / "config_results_hybrid.csv"
    _edit_line(csv_path, 3, line)
    with pytest.raises(ProfileDataError) as err:
        load_reference_table(bad_dir, sd35_registry())
    assert f"{csv_path}:3:" in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_grid_and_missing_files(bad_dir, tmp_path):
    csv_path = bad_dir / "config_results_hybrid.csv"
    csv_path.write_text(csv_path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ProfileDataError, match="empty grid"):
        load_reference_table(bad_dir, sd35_registry())
    with pytest.raises(ProfileDataError, match="not found"):
        load_reference_table(tmp_path / "nowhere", sd35_registry())


def test_score_file_with_the_wrong_number_of_lines(bad_dir, profile_dir):
    f = bad_dir / "scores_model_2.txt"
    f.unlink()
    f.write_text("".join(open(profile_dir / "scores_model_2.txt").readlines()[:-4]))
    with pytest.raises(ProfileDataError, match=r"scores_model_2.txt: 4999 prompts scored"):
        load_reference_table(bad_dir, sd35_registry(), n_prompts=5000)
    with pytest.raises(ProfileDataError, match=r"scores_model_2.txt: 4999 prompts scored"):
        load_reference_table(bad_dir, sd35_registry())  # disagrees with the other files
