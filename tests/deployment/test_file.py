"""The deployment file: schema errors name the field, the packaged default, servability
(no plan ever names a model that cannot load), alignment of a table with the models."""

from __future__ import annotations

import math

import pytest

from hadis_celery import deployment as dep
from hadis_celery.deployment import DeploymentError, load, load_table
from hadis_celery.settings import DEFAULT_PROFILE, Settings
from planner.baselines import make_planner
from planner.plan import PlannerInputError, PlannerState

from .conftest import write_deployment

FOUR = [("SDXL-Lightning", "sdxl", 0.5), ("SD3.5-Large-Turbo", "sd35_large_turbo", 1.3),
        ("SD3.5-Medium", "sd35_medium", 13.0), ("SD3.5-Large", "sd35_large", 27.0)]


def four(**extra) -> list[dict]:
    return [{"name": n, "queue": q, "latency_b1": s, **extra.get(n, {})} for n, q, s in FOUR]


def test_validation_names_the_field(tmp_path, router_json):
    models = four()
    models[1]["pipeline"] = {"guidance_scale": "x", "steps": 2.5}
    models[2]["bogus"] = 1
    models[3]["pipeline"] = {"height": 100, "dtype": "fp8"}
    f = write_deployment(tmp_path / "d.toml", models, table={"source": str(DEFAULT_PROFILE)},
                         router=router_json)
    with pytest.raises(DeploymentError) as info:
        load(f)
    msg = str(info.value)
    assert str(f) in msg
    assert "models[1].pipeline.guidance_scale: expected a number, got 'x'" in msg
    assert "models[1].pipeline.steps: expected an integer, got 2.5" in msg
    assert "models[2].bogus: unknown field" in msg
    assert "models[3].pipeline.height: expected a multiple of 8, got 100" in msg
    assert "models[3].pipeline.dtype" in msg and "'fp8'" in msg
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(DeploymentError, match="bad.toml: not TOML"):
        load(tmp_path / "bad.toml")
    dup = four()
    dup[2]["queue"] = "sdxl"
    write_deployment(tmp_path / "dup.toml", dup, table={"source": "x.json"}, router="r.json")
    with pytest.raises(DeploymentError, match=r"models\[2\]\.queue: 'sdxl' is already used "
                                              r"by models\[0\]"):
        load(tmp_path / "dup.toml")
    with pytest.raises(DeploymentError, match="table: required field missing"):
        dep.from_dict({"name": "x", "router": {"profile": "r"},
                       "models": [{"name": "a", "queue": "a"}]}, tmp_path)


def test_packaged_example_is_the_default_and_fills_settings(tmp_path):
    s = Settings(deployment="")
    table = load_table(s)
    assert [m.name for m in table.registry] == [n for n, _, _ in FOUR]
    assert table.registry.get(3).latency_b1 == 27.0 and table.registry.get(0).steps == 2
    named = Settings(deployment="sd35-replay")
    assert load_table(named).registry == table.registry
    assert named.profile == str(DEFAULT_PROFILE)
    assert Settings(deployment="sd35-replay").to_env()["HADIS_DEPLOYMENT"] == "sd35-replay"
    with pytest.raises(DeploymentError, match="no packaged example 'nope'"):
        load("nope")


def test_relative_paths_and_settings_from_the_file(tmp_path, router_json, monkeypatch):
    for var in ("HADIS_PROFILE", "HADIS_IMAGE_DIR", "HADIS_DISC_HEAD", "HADIS_ROUTER_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    f = write_deployment(tmp_path / "d.toml", four(), table={"source": "{data}/profile_sd35.json"},
                         router=router_json)
    text = f.read_text() + '\n[images]\nstore = "imgs"\n[discriminator]\nhead = "h.pt"\n'
    f.write_text(text)
    s = Settings(deployment=str(f))
    assert s.image_dir == tmp_path / "imgs" and s.disc_head == tmp_path / "h.pt"
    assert s.profile == str(DEFAULT_PROFILE)
    monkeypatch.setenv("HADIS_IMAGE_DIR", "/elsewhere")
    assert str(Settings(deployment=str(f)).image_dir) == "/elsewhere"  # the variable wins


def test_a_model_without_weights_is_refused_with_the_fix(tmp_path, router_json):
    models = four(**{"SD3.5-Large": {"backend": "diffusers"},
                     "SD3.5-Medium": {"backend": "diffusers", "path": str(tmp_path / "none")}})
    f = write_deployment(tmp_path / "d.toml", models, table={"source": str(DEFAULT_PROFILE)},
                         router=router_json)
    with pytest.raises(DeploymentError) as info:
        load_table(Settings(deployment=str(f)))
    msg = str(info.value)
    assert "models[3] (SD3.5-Large): the diffusers backend needs a weights path" in msg
    assert f"models[2] (SD3.5-Medium): weights path {tmp_path / 'none'} does not exist" in msg
    assert "plan = false" in msg and "set models[3].path" in msg
    # the packaged real-weights example, on a machine without those weights
    with pytest.raises(DeploymentError, match=r"models\[0\] \(SDXL-Lightning\): weights path "):
        load_table(Settings(deployment="sdxl-lightning-sd35"))
    # today's variables: HADIS_BACKEND=diffusers with weights for two of four models
    with pytest.raises(DeploymentError, match=r"models\[1\] \(SD3.5-Large-Turbo\): the "
                                              "diffusers backend needs a weights path"):
        load_table(Settings(backend="diffusers", model_paths=f"sdxl={tmp_path}"))


def test_an_unplanned_model_is_never_planned(tmp_path, router_json):
    models = four(**{"SD3.5-Large": {"backend": "diffusers", "plan": False},
                     "SD3.5-Medium": {"backend": "diffusers", "plan": False}})
    f = write_deployment(tmp_path / "d.toml", models, table={"source": str(DEFAULT_PROFILE)},
                         router=router_json)
    s = Settings(deployment=str(f))
    table = load_table(s)
    assert [m.name for m in table.registry] == ["SDXL-Lightning", "SD3.5-Large-Turbo"]
    assert dep.model_queues(table.registry) == ["light_sdxl", "heavy_sdxl",
                                                "light_sd35_large_turbo",
                                                "heavy_sd35_large_turbo"]
    assert {c.pair for c in table.rows} == {(0, 1)}
    refused = {}
    for name in ("hadis", "clipper-light", "clipper-heavy", "diffserve", "proteus"):
        for demand in (0.5, 4.0, 30.0):
            st = PlannerState(demand=demand, workers=8, slo_s=60.0, table=table.rows,
                              registry=table.registry)
            try:
                plan = make_planner(name, solver="highs").plan(st)
            except PlannerInputError as exc:
                refused[name] = str(exc)
                continue
            assert set(plan.batch) <= {0, 1}, (name, demand)
            assert all(q.endswith(("sdxl", "turbo")) for q in plan.workers), (name, plan.workers)
    # the packaged Pareto table never runs the turbo model alone: Clipper-Heavy and DiffServe
    # (whose heavy model is the best one that runs alone) say so
    assert set(refused) == {"clipper-heavy", "diffserve"}
    assert "only model 0 runs alone" in refused["clipper-heavy"]
    assert "no row cascading a faster model into model 0" in refused["diffserve"]


def test_table_is_aligned_by_name_and_declared_curves_win(tmp_path, router_json):
    # other ids and another order than the table's, a slower declared curve for one model
    models = [{"name": "SD3.5-Large", "queue": "big", "id": 7, "latency": {"1": 30.0, "2": 55.0}},
              {"name": "SDXL-Lightning", "queue": "fast", "id": 3, "latency_b1": 0.5}]
    f = write_deployment(tmp_path / "d.toml", models, table={"source": str(DEFAULT_PROFILE)},
                         router=router_json)
    table = load_table(Settings(deployment=str(f)))
    assert table.registry.ids() == [3, 7]
    assert table.registry.get(7).latency == {1: 30.0, 2: 55.0}
    assert {c.pair for c in table.rows} == {(3, 7)}
    for c in table.rows:
        assert c.heavy_s == 30.0 and c.light_s == 0.5
        r, d = c.router_ratio, c.disc_ratio
        assert math.isclose(c.service_s, (1 - r) * (1 - d) * 0.5 + r * 30 + (1 - r) * d * 30.5)
    assert set(table.score_quantiles) == {3, 7}
    other = [{"name": "Other", "queue": "o", "latency_b1": 1.0}]
    write_deployment(tmp_path / "o.toml", other, table={"source": str(DEFAULT_PROFILE)},
                     router=router_json)
    with pytest.raises(DeploymentError, match="no row whose models are both deployed"):
        load_table(Settings(deployment=str(tmp_path / "o.toml")))
