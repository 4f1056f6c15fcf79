"""``hadis profile import`` + ``hadis plan`` + ``hadis experiment e2e`` on deployments of
other model sets: three models with other names and a two-model cascade whose latencies
come from the profile's latency column. Every baseline runs or says why it cannot."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from hadis_celery.cli import main

from .conftest import make_profile, write_deployment


def run(*args, ok: bool = True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output
    return res


@pytest.fixture()
def isolated(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'hadis.sqlite'}"
    monkeypatch.setenv("HADIS_DATABASE_URL", url)
    for var in ("HADIS_PROFILE", "HADIS_ROUTER_PROFILE", "HADIS_BACKEND", "HADIS_MODEL_PATHS"):
        monkeypatch.delenv(var, raising=False)
    return url


def deploy(tmp_path, monkeypatch, reference, router_json, keep, models,
           heavy_alone: bool = True):
    folder = make_profile(tmp_path / "artifact", reference, keep, heavy_alone)
    f = write_deployment(tmp_path / "deploy.toml", models, router=router_json,
                         table={"source": "sql:mine",
                                "profile_dir": str(folder),
                                "prompts": str(folder.parent / "prompts" / "captions.txt")})
    monkeypatch.setenv("HADIS_DEPLOYMENT", str(f))
    return folder


def e2e(tmp_path, short_trace) -> tuple[dict, str]:
    out = tmp_path / "e2e"
    res = run("experiment", "e2e", "--out", out, "--workers", "8", "--trace", short_trace)
    with (out / "e2e_summary.csv").open() as fh:
        rows = {r["policy"]: r for r in csv.DictReader(fh)}
    for r in rows.values():
        assert int(r["served"]) + int(r["late"]) + int(r["dropped"]) == int(r["queries"])
    return rows, res.output


def test_three_models_with_other_names(tmp_path, monkeypatch, isolated, reference,
                                       router_json, short_trace):
    models = [{"name": "swift", "queue": "swift", "latency_b1": 0.5},
              {"name": "steady", "queue": "steady", "latency_b1": 1.3},
              {"name": "grand", "queue": "grand", "latency_b1": 27.0}]
    folder = deploy(tmp_path, monkeypatch, reference, router_json, (0, 1, 3), models)
    res = run("profile", "import", folder, "--name", "mine")
    assert "imported mine version 1: 363 rows" in res.output  # 3 pairs x 11 x 11
    plan = json.loads(run("plan", "--demand", "3", "--workers", "8", "--json",
                          "--solver", "highs").output.strip().splitlines()[-1])
    assert plan["profile"].startswith("deployment test: sql:mine")
    assert set(plan["workers"]) <= {"light_swift", "heavy_swift", "light_steady",
                                    "heavy_steady", "light_grand", "heavy_grand"}
    text = run("plan", "--profile", "mine", "--demand", "1", "--workers", "8",
               "--planner", "diffserve", "--solver", "highs").output
    assert "steady -> grand" in text  # 10x faster than grand, better than swift
    light = run("plan", "--demand", "1", "--workers", "8", "--planner", "clipper-light",
                "--solver", "highs").output
    assert "heavy_swift" in light or "light_swift" in light
    rows, _ = e2e(tmp_path, short_trace)
    assert set(rows) == {"hadis", "diffserve", "proteus", "clipper-light", "clipper-heavy",
                         "oracle"}
    runs = {p: {m for m, n in json.loads(rows[p]["executions"]).items() if n} for p in rows}
    assert runs["clipper-light"] == {"0"} and runs["clipper-heavy"] == {"2"}
    assert runs["diffserve"] <= {"1", "2"}


def test_two_models_latency_from_the_profile(tmp_path, monkeypatch, isolated, reference,
                                             router_json, short_trace):
    models = [{"name": "turbo", "queue": "turbo"}, {"name": "base", "queue": "base"}]
    folder = deploy(tmp_path, monkeypatch, reference, router_json, (1, 3), models)
    res = run("profile", "import", folder, "--name", "mine")
    assert "imported mine version 1: 121 rows" in res.output
    shown = json.loads(run("profile", "show", "mine", "--json").output)
    assert [(m["name"], m["latency"]["1"]) for m in shown["registry"]] == [("turbo", 1.3),
                                                                          ("base", 27.0)]
    for planner in ("hadis", "diffserve", "clipper-light", "clipper-heavy", "proteus"):
        out = run("plan", "--demand", "0.5", "--workers", "8", "--planner", planner,
                  "--solver", "highs").output
        assert "turbo" in out or "base" in out
    rows, _ = e2e(tmp_path, short_trace)
    assert set(rows) == {"hadis", "diffserve", "proteus", "clipper-light", "clipper-heavy",
                         "oracle"}
    assert all(int(r["queries"]) == 400 for r in rows.values())


def test_a_baseline_the_table_cannot_support_says_why(tmp_path, monkeypatch, isolated,
                                                      reference, router_json, short_trace):
    # a profile that never runs the heavy model alone: no Clipper-Heavy, no DiffServe
    models = [{"name": "turbo", "queue": "turbo", "latency_b1": 1.3},
              {"name": "base", "queue": "base", "latency_b1": 27.0}]
    folder = deploy(tmp_path, monkeypatch, reference, router_json, (1, 3), models,
                    heavy_alone=False)
    run("profile", "import", folder, "--name", "mine")
    res = run("plan", "--demand", "1", "--workers", "4", "--planner", "clipper-heavy",
              "--solver", "highs", ok=False)
    assert "clipper-heavy: only model 0 runs alone in this table" in res.output
    res = run("plan", "--demand", "1", "--workers", "4", "--planner", "diffserve",
              "--solver", "highs", ok=False)
    assert "diffserve: the table has no row cascading a faster model" in res.output
    rows, output = e2e(tmp_path, short_trace)
    assert set(rows) == {"hadis", "proteus", "clipper-light", "oracle"}
    assert "clipper-heavy: not run: clipper-heavy: only model 0 runs alone" in output
    assert "diffserve: not run: diffserve: the table has no row" in output
    md = (tmp_path / "e2e" / "e2e.md").read_text()
    assert "Policies the table cannot support (not run)" in md and "- diffserve:" in md
