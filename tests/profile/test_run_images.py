"""``hadis profile run --reference-images`` end to end on two tiny diffusers pipelines (SD
and SDXL architectures) from a deployment file: images cached and reused on a rerun, the
FID table stored with its provenance, shown as ``metric fid``, planned by ``hadis plan``;
``--latency-only`` measures curves without images; a missing weights file stops the run
before any image is generated."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hadis_celery.cli import main
from hadis_celery.settings import DEFAULT_ROUTER_PROFILE
from tests.profile.tiny_assets import make_assets


def hadis(*args, code: int = 0):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.mktemp("run-images"), str(DEFAULT_ROUTER_PROFILE))


@pytest.fixture()
def env(tmp_path, monkeypatch, assets):
    url = f"sqlite:///{tmp_path / 'hadis.sqlite'}"
    for var in ("HADIS_PROFILE", "HADIS_ROUTER_PROFILE", "HADIS_BACKEND", "HADIS_MODEL_PATHS",
                "HADIS_INCEPTION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HADIS_DATABASE_URL", url)
    monkeypatch.setenv("HADIS_DEPLOYMENT", str(assets["deploy"]))
    return url


def profile_run(assets, out, *extra, code: int = 0):
    return hadis("profile", "run", "--deployment", assets["deploy"], "--reference-images",
                 assets["refs"], "--k", 2, "--batch-sizes", 1, "--runs", 1, "--inception",
                 assets["inception"], "--clip-score", assets["clip"], "--out", out,
                 "--name", "tinyfid", *extra, code=code)


def test_a_table_from_images_resumes_shows_fid_and_plans(env, assets, tmp_path):
    out = tmp_path / "out"
    first = profile_run(assets, out)
    assert first.count("images: 8 generated, 0 cached") == 2  # 4 prompts x k=2, two models
    assert "stored tinyfid version 1: 121 rows" in first and "metric fid" in first
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 16
    assert (out / "latency.png").is_file() and (out / "pareto.png").is_file()

    again = profile_run(assets, out)  # every image is reused: no generation at all
    assert again.count("images: 0 generated, 8 cached") == 2
    pngs[0].unlink()  # as if the first run had stopped before this image
    resumed = profile_run(assets, out)
    assert "images: 1 generated, 7 cached" in resumed
    assert "images: 0 generated, 8 cached" in resumed
    assert "stored tinyfid version 3" in resumed

    shown = hadis("profile", "show", "tinyfid", "--pareto")
    assert "metric fid (quality column: FID)" in shown and " clip" in shown.splitlines()[1]
    d = json.loads(hadis("profile", "show", "tinyfid", "--json"))
    assert d["metric"] == "fid" and len(d["rows"]) == 121
    meta = d["meta"]
    assert (meta["k"], meta["n_prompts"], meta["n_reference_images"]) == (2, 4, 12)
    assert "torchmetrics" in meta["libraries"] and "FrechetInceptionDistance" in meta["fid"]
    assert len(meta["clip_score"]) == 121
    models = meta["models"]
    assert models["tiny-sd"]["params"]["steps"] == 1 and models["tiny-xl"]["params"]["steps"] == 2
    # FID grows from the best mix: every row's FID is a real distance of the mix
    assert all(r["fid"] >= -1e-6 for r in d["rows"])
    alone = {r["heavy"] if r["router_ratio"] == 1 else r["light"]: r["fid"]
             for r in d["rows"] if r["disc_ratio"] == 0 and r["router_ratio"] in (0, 1)}
    by_name = {m["name"]: m["id"] for m in d["registry"]}
    assert alone[by_name["tiny-sd"]] == pytest.approx(models["tiny-sd"]["fid_alone"])
    assert {m["name"]: sorted(m["latency"]) for m in d["registry"]} == {
        "tiny-sd": ["1"], "tiny-xl": ["1"]}  # the measured curve, stored with the table

    plan = json.loads(hadis("plan", "--demand", "0.2", "--workers", "4", "--json", "--solver",
                            "highs").strip().splitlines()[-1])
    assert plan["profile"].startswith("deployment test: sql:tinyfid")
    assert set(plan["workers"]) <= {"light_tsd", "heavy_tsd", "light_txl", "heavy_txl"}
    assert sum(plan["workers"].values()) >= 1


def test_latency_only_measures_curves_without_images(env, assets, tmp_path):
    out = tmp_path / "lat"
    text = hadis("profile", "run", "--deployment", assets["deploy"], "--latency-only",
                 "--models", "tiny-sd", "--batch-sizes", "1,2", "--runs", 1, "--out", out)
    assert 'tiny-sd: latency = { "1" = ' in text and '"2" = ' in text
    curves = json.loads((out / "latency.json").read_text())
    assert set(curves["seconds_per_batch"]["tiny-sd"]) == {"1", "2"}
    assert curves["device"].startswith("CPU")
    assert not (out / "images").exists() and (out / "latency.png").is_file()
    assert "no profiles stored" in hadis("profile", "list")


def test_a_missing_weights_file_stops_before_any_image(env, assets, tmp_path):
    out = tmp_path / "out"
    text = hadis("profile", "run", "--deployment", assets["deploy"], "--reference-images",
                 assets["refs"], "--inception", tmp_path / "inception-2015-12-05.pt",
                 "--clip-score", assets["clip"], "--out", out, code=1)
    assert f"Inception weights {tmp_path}/inception-2015-12-05.pt not found" in text
    assert "download inception-2015-12-05.pt" in text
    text = hadis("profile", "run", "--deployment", assets["deploy"], "--reference-images",
                 assets["refs"], "--out", out, code=1)
    assert "FID needs the Inception network: pass --inception FILE" in text
    assert not (out / "images").exists()
