"""``hadis profile`` and ``hadis db`` end to end on PostgreSQL and SQLite.

The groups are invoked directly (``hadis_celery.commands.profile.command``), the very
objects ``hadis`` mounts, so a sibling command module under construction cannot break
these tests."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from hadis_celery import db
from hadis_celery.commands import db as db_cmd
from hadis_celery.commands import profile as profile_cmd
from planner.pareto import dominates
from planner.table import ProfileTable, config_from_json


def invoke(group, *args: str, ok: bool = True):
    result = CliRunner().invoke(group, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture()
def imported(db_url, profile_dir, ref_router_scores):
    """``hadis profile import ../shared/reference/profile-sd35 --name sd35``."""
    out = invoke(profile_cmd.command, "import", profile_dir, "--name", "sd35", "--url", db_url)
    assert "imported sd35 version 1: 726 rows, 197 on the Pareto front" in out.output
    return db_url


def _twins(a, b) -> bool:
    """Equal fid and equal GPU-seconds on every model (e.g. "model 0 alone" of two pairs)."""
    load = [{m: v for m, v in c.gpu_s_per_query().items() if v > 0} for c in (a, b)]
    return a.fid == b.fid and load[0].keys() == load[1].keys() and all(
        load[0][m] == pytest.approx(load[1][m]) for m in load[0])


def _show_json(url: str, *extra: str) -> dict:
    return json.loads(invoke(profile_cmd.command, "show", "sd35", "--json", "--url", url,
                             *extra).output)


def test_import_then_show_pareto_json(imported, profile_dir):
    front = _show_json(imported, "--pareto")
    full = _show_json(imported)
    assert front["pareto_only"] is True and len(front["rows"]) == 197
    assert len(full["rows"]) == 726 and front["metric"] == "fid"
    assert "config_results_hybrid.csv" in front["source"]
    kept = [config_from_json(r) for r in front["rows"]]
    rows = [config_from_json(r) for r in full["rows"]]
    for k in kept:  # no kept row is dominated
        assert not any(dominates(o, k) for o in rows)
    for c in rows:  # every row left out is dominated by, or equal to, a kept row
        if c not in kept:
            assert any(dominates(k, c) or _twins(k, c) for k in kept)
    # routing fractions and expected latency of the JSON rows match the reference CSV
    with (profile_dir / "config_results_hybrid.csv").open() as fh:
        ref = {(int(r["light_model"]), int(r["heavy_model"]), float(r["router_ratio"]),
                float(r["disc_ratio"])): r for r in csv.DictReader(fh)}
    for r in front["rows"]:
        c = ref[(r["light"], r["heavy"], r["router_ratio"], r["disc_ratio"])]
        assert r["frac_heavy"] == pytest.approx(float(c["threshold"]), abs=0.006)
        assert r["frac_direct"] == r["router_ratio"]
        assert r["frac_light"] + r["frac_direct"] == pytest.approx(1.0)
        assert r["service_s"] == pytest.approx(float(c["latency"]), abs=0.006)
        assert r["fid"] == float(c["fid"])
        assert 0 < r["quality"] < 1  # served quality, from the router scores
    alone = {r["light"]: r["fid"] for r in front["rows"]
             if r["router_ratio"] == 0 and r["disc_ratio"] == 0}
    assert alone[0] == 29.75


def test_import_twice_two_versions_latest_by_default(imported, profile_dir):
    out = invoke(profile_cmd.command, "import", profile_dir, "--name", "sd35",
                 "--no-router-scores", "--url", imported)
    assert "version 2" in out.output
    listing = invoke(profile_cmd.command, "list", "--url", imported).output.splitlines()
    assert [line.split()[:2] for line in listing] == [["sd35", "v1"], ["sd35", "v2"]]
    assert _show_json(imported)["version"] == 2
    v1 = _show_json(imported, "--version", "1")
    assert v1["version"] == 1 and v1["rows"][1]["quality"] > 0  # v1 had router scores
    assert _show_json(imported)["rows"][1]["quality"] == "nan"  # v2 did not
    text = invoke(profile_cmd.command, "show", "sd35", "--pareto", "--url", imported).output
    assert text.startswith("sd35 v2") and "197 of 726 rows" in text


def test_bad_input_is_one_line_and_stores_nothing(db_url, tmp_path, profile_dir):
    bad = tmp_path / "profile-sd35"
    shutil.copytree(profile_dir, bad)
    (tmp_path / "prompts").symlink_to(profile_dir.parent / "prompts")
    csv_path = bad / "config_results_hybrid.csv"
    csv_path.chmod(0o644)
    lines = csv_path.read_text().splitlines()
    lines[40] = "0,1,0.3,0.7,0.79,nan,25.1"
    csv_path.write_text("\n".join(lines) + "\n")
    res = invoke(profile_cmd.command, "import", bad, "--name", "bad", "--no-router",
                 "--url", db_url, ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == f"Error: {csv_path}:41: column latency: not finite: 'nan'"
    assert invoke(profile_cmd.command, "list", "--url", db_url).output.strip() == (
        "no profiles stored")
    res = invoke(profile_cmd.command, "show", "nope", "--url", db_url, ok=False)
    assert res.exit_code == 1 and "no profile 'nope'" in res.output
    res = invoke(profile_cmd.command, "import", tmp_path / "missing", "--name", "x",
                 "--url", db_url, ok=False)
    assert res.exit_code == 1 and "no such profile folder" in res.output


def test_unreachable_database_is_a_one_line_error(sqlite_url, profile_dir):
    res = invoke(profile_cmd.command, "list", "--url",
                 "postgresql://postgres@127.0.0.1:1/none", ok=False)
    assert res.exit_code == 1 and res.output.startswith("Error: database ")
    assert len(res.output.strip().splitlines()) == 1


def test_export_plot_and_candidates(imported, tmp_path):
    out = tmp_path / "profile.json"
    invoke(profile_cmd.command, "export", "sd35", out, "--url", imported)
    table = ProfileTable.load(out)
    assert len(table.rows) == 197 and table.pareto() == list(table.rows)
    assert sorted(table.score_quantiles) == [0, 1, 2, 3]
    png = tmp_path / "fig.png"
    invoke(profile_cmd.command, "show", "sd35", "--pareto", "--plot", png, "--url", imported)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    cands = json.loads(invoke(profile_cmd.command, "candidates", "sd35", "--json",
                              "--url", imported).output)
    assert [(c["id"], c["kept"]) for c in cands] == [(0, True), (1, True), (2, True), (3, True)]


def test_db_upgrade_command(db_url):
    head = db.head_revision()
    assert f"upgraded empty -> {head}" in invoke(db_cmd.command, "upgrade", "--url",
                                                 db_url).output
    assert "nothing to do" in invoke(db_cmd.command, "upgrade", "--url", db_url).output
    assert f"database: {head}" in invoke(db_cmd.command, "current", "--url", db_url).output
    assert "base" in invoke(db_cmd.command, "downgrade", "base", "--url", db_url).output


def test_profile_run_with_the_replay_backend(sqlite_url, reference, ref_scores, prompts):
    limit = 40
    out = invoke(profile_cmd.command, "run", "--models", "0,SD3.5-Large", "--prompts",
                 reference / "prompts" / "imagenet1k_captions_5k.txt", "--limit", limit,
                 "--backend", "replay", "--time-factor", "0.002", "--batch-sizes", "1,4",
                 "--repeats", "2", "--url", sqlite_url).output
    assert "stored run-0-3 version 1: 121 rows," in out and "metric disc" in out
    d = json.loads(invoke(profile_cmd.command, "show", "run-0-3", "--json",
                          "--url", sqlite_url).output)
    assert d["metric"] == "disc" and "discriminator" in d["metric_meaning"]
    lat = {m["id"]: {int(b): s for b, s in m["latency"].items()} for m in d["registry"]}
    assert lat[3][4] > lat[3][1] > lat[0][1] > 0  # measured, ordered like the profile
    assert lat[3][1] == pytest.approx(27 * 0.002, rel=0.5)
    rows = {(r["router_ratio"], r["disc_ratio"]): r for r in d["rows"]}
    # replay serves the recorded scores of the reference prompts
    assert rows[(1.0, 0.0)]["quality"] == pytest.approx(ref_scores[3][:limit].mean())
    assert rows[(0.0, 0.0)]["quality"] == pytest.approx(ref_scores[0][:limit].mean())
    assert rows[(0.0, 0.0)]["fid"] == pytest.approx(1 - ref_scores[0][:limit].mean())
    res = invoke(profile_cmd.command, "run", "--models", "0", "--prompts", reference / "x",
                 "--url", sqlite_url, ok=False)
    assert res.exit_code == 2 and "at least two distinct models" in res.output
    res = invoke(profile_cmd.command, "run", "--models", "0,1", "--backend", "tiny",
                 "--prompts", reference / "prompts" / "imagenet1k_captions_5k.txt",
                 "--url", sqlite_url, ok=False)
    assert res.exit_code == 1 and "tiny backend records no scores" in res.output
