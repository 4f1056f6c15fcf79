"""Two tiny pipelines of different architectures (SD-1.x, SDXL), saved with
``save_pretrained``, served by the diffusers backend from one deployment file: each model
generates with its declared settings, and reports the parameters actually used."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hadis_celery.deployment import DeploymentError, deployment, load_table
from hadis_celery.settings import DEFAULT_PROFILE, Settings
from planner.registry import ModelSpec, Registry
from planner.table import ProfileTable
from workers.backends import BackendError, load_backend
from workers.tiny import save_tiny_pipeline

from .conftest import write_deployment

SD = {"name": "tiny-sd", "queue": "tsd", "backend": "diffusers", "latency_b1": 0.3,
      "batch_sizes": [1, 2, 4],
      "pipeline": {"steps": 2, "guidance_scale": 0.0, "dtype": "fp32",
                   "scheduler": "EulerDiscreteScheduler",
                   "scheduler_options": {"timestep_spacing": "trailing"},
                   "height": 64, "width": 48},
      "memory": {"vae_slicing": True}}
XL = {"name": "tiny-xl", "queue": "txl", "backend": "diffusers", "latency_b1": 0.9,
      "batch_sizes": [1, 2],
      "pipeline": {"steps": 3, "guidance_scale": 2.5, "dtype": "bf16", "resolution": 32,
                   "negative_prompt": "blurry"}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {"sd": save_tiny_pipeline(root / "sd", "sd"),
            "xl": save_tiny_pipeline(root / "xl", "sdxl")}


@pytest.fixture()
def deploy_file(tmp_path, folders, router_json):
    packaged = ProfileTable.load(DEFAULT_PROFILE)
    names = {0: "tiny-sd", 1: "tiny-xl"}
    reg = Registry(tuple(replace(m, name=names[m.id]) for m in packaged.registry
                         if m.id in names))
    table = ProfileTable(name="tiny", registry=reg,
                         rows=tuple(c for c in packaged.rows if c.pair == (0, 1)))
    table.save(tmp_path / "table.json")
    models = [{**SD, "path": str(folders["sd"])}, {**XL, "path": str(folders["xl"])}]
    return write_deployment(tmp_path / "deploy.toml", models, router=router_json,
                            table={"source": "table.json"})


def test_each_model_generates_with_its_declared_settings(deploy_file):
    s = Settings(deployment=str(deploy_file))
    reg = load_table(s).registry
    assert [m.name for m in reg] == ["tiny-sd", "tiny-xl"]
    sd, xl = reg.get(0), reg.get(1)
    assert sd.pipeline.scheduler_options == {"timestep_spacing": "trailing"}
    assert sd.latency == {1: pytest.approx(0.3), 2: pytest.approx(0.54), 4: pytest.approx(1.02)}

    a = load_backend(sd, device="cpu")
    gen = a.generate(["a red ball", "a boat"], [1, 2])
    assert [im.size for im in gen.images] == [(48, 64), (48, 64)]  # (width, height)
    p = gen.params
    assert (p["model"], p["steps"], p["guidance_scale"], p["dtype"]) == ("tiny-sd", 2, 0.0,
                                                                         "float32")
    assert p["scheduler"] == "EulerDiscreteScheduler" and p["timestep_spacing"] == "trailing"
    assert p["timesteps"] == [999.0, 499.0]  # trailing spacing over 1000 training steps
    assert (p["height"], p["width"], p["vae_slicing"]) == (64, 48, True)
    assert a.pipeline.vae.use_slicing

    b = load_backend(xl, device="cpu")
    assert type(b.pipeline).__name__ == "StableDiffusionXLPipeline"
    gen = b.generate(["a cat"], [3])
    assert gen.images[0].size == (32, 32)
    p = gen.params
    assert (p["model"], p["steps"], p["guidance_scale"], p["dtype"]) == ("tiny-xl", 3, 2.5,
                                                                         "bfloat16")
    assert p["scheduler"] == "EulerDiscreteScheduler" and p["timestep_spacing"] == "leading"
    assert len(p["timesteps"]) == 3 and p["negative_prompt"] == "blurry"
    b.warmup()  # a real tiny generation
    a.unload()
    b.unload()


def test_bad_generation_settings_are_clear(folders):
    spec = ModelSpec(id=0, name="tiny-sd", queue="tsd", backend="diffusers", steps=1,
                     resolution=32, latency={1: 0.1}, path=str(folders["sd"]))
    from planner.registry import PipelineSettings

    def load(**kw):
        return load_backend(replace(spec, pipeline=PipelineSettings(**kw)), device="cpu")

    with pytest.raises(BackendError, match="'NoSuchScheduler' is not a diffusers scheduler"):
        load(scheduler="NoSuchScheduler")
    with pytest.raises(BackendError, match=r"scheduler_options \['bogus'\] are not options"):
        load(scheduler_options={"bogus": 1})
    with pytest.raises(BackendError, match="cpu_offload = 'model' needs a CUDA device"):
        load(cpu_offload="model")


def test_a_deployment_with_missing_weights_is_refused(deploy_file, folders, tmp_path):
    text = deploy_file.read_text().replace(str(folders["xl"]), str(tmp_path / "gone"))
    deploy_file.write_text(text)
    with pytest.raises(DeploymentError, match=r"models\[1\] \(tiny-xl\): weights path .*gone "
                                              "does not exist"):
        deployment(Settings(deployment=str(deploy_file)))
