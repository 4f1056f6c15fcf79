"""Issue 14, must show: a user's own models served end to end from one deployment file.

Two tiny pipelines of different architectures (SD-1.x and SDXL) are built offline and saved
with ``save_pretrained``; a deployment file gives each its own generation settings, declares
a third model without weights (``plan = false``) and an image store at a ``file://`` URL.
Real Celery workers (the diffusers backend, on CPU) load and warm up their model before any
message, the front door routes prompts under a fixed single-pair plan, and every query
records the parameters its model actually used, which must be the declared ones. Images are
written by the workers and read by the front door through the shared store. Then a worker
moved to the other model loads and warms it up before serving it, and the measured load
times are what the beat plans with."""

from __future__ import annotations

import io
import math
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from hadis_celery import db, store
from hadis_celery.beat import PlanLoop
from hadis_celery.celery import make_app
from hadis_celery.deployment import load_table
from hadis_celery.live import LiveState
from hadis_celery.procs import stop_group
from hadis_celery.settings import DEFAULT_PROFILE
from hadis_celery.tables import ModelLoad, QueryRow
from planner.registry import Registry
from planner.table import ProfileTable
from tests.deployment.conftest import write_deployment
from tests.stack.conftest import BROKER, celery_worker, database, make_settings, plan_for, wait_for
from webapp import create_app
from workers.tiny import save_tiny_pipeline

SD = {"name": "tiny-sd", "queue": "tsd", "backend": "diffusers", "latency_b1": 0.3,
      "batch_sizes": [1, 2, 4], "swap_s": 7.5,
      "pipeline": {"steps": 2, "guidance_scale": 0.0, "dtype": "fp32",
                   "scheduler": "EulerDiscreteScheduler",
                   "scheduler_options": {"timestep_spacing": "trailing"},
                   "height": 64, "width": 48},
      "memory": {"vae_slicing": True}}
XL = {"name": "tiny-xl", "queue": "txl", "backend": "diffusers", "latency_b1": 0.9,
      "batch_sizes": [1, 2],
      "pipeline": {"steps": 3, "guidance_scale": 2.5, "dtype": "bf16", "resolution": 32,
                   "negative_prompt": "blurry"}}
NO_WEIGHTS = {"name": "no-weights", "queue": "nw", "backend": "diffusers", "plan": False,
              "latency_b1": 0.1}
# what each model must record (Generation.params), from its declaration above
DECLARED = {
    "tiny-sd": {"steps": 2, "guidance_scale": 0.0, "dtype": "float32",
                "scheduler": "EulerDiscreteScheduler", "timestep_spacing": "trailing",
                "height": 64, "width": 48, "vae_slicing": True, "negative_prompt": None,
                "backend": "diffusers", "device": "cpu"},
    "tiny-xl": {"steps": 3, "guidance_scale": 2.5, "dtype": "bfloat16",
                "scheduler": "EulerDiscreteScheduler", "timestep_spacing": "leading",
                "height": 32, "width": 32, "vae_slicing": False, "negative_prompt": "blurry",
                "backend": "diffusers", "device": "cpu"},
}
PROMPTS = ["a cat", "a red apple", "a small boat on a lake", "a cup of coffee",
           "an ornate baroque cathedral interior with golden statues of saints, dramatic "
           "volumetric light through stained glass windows",
           "a steampunk city of brass towers and airships above a foggy river at dusk, "
           "intricate detail, cinematic lighting"]
FINAL = ("done", "dropped", "failed")


@pytest.fixture(scope="module")
def deploy(tmp_path_factory) -> tuple[Path, Path]:
    """(deployment file, the shared image folder its file:// store names)."""
    from hadis_celery.settings import DEFAULT_ROUTER_PROFILE

    root = tmp_path_factory.mktemp("own-models")
    sd = save_tiny_pipeline(root / "weights" / "sd", "sd")
    xl = save_tiny_pipeline(root / "weights" / "xl", "sdxl")
    packaged = ProfileTable.load(DEFAULT_PROFILE)
    names = {0: "tiny-sd", 1: "tiny-xl"}
    reg = Registry(tuple(replace(m, name=names[m.id]) for m in packaged.registry
                         if m.id in names))
    ProfileTable(name="tiny", registry=reg, rows=tuple(
        c for c in packaged.rows if c.pair == (0, 1))).save(root / "table.json")
    shared = root / "shared-images"
    path = write_deployment(
        root / "deploy.toml",
        [{**SD, "path": str(sd)}, {**XL, "path": str(xl)}, NO_WEIGHTS],
        table={"source": "table.json"}, router=str(DEFAULT_ROUTER_PROFILE), name="own")
    with path.open("a") as fh:
        fh.write(f'\n[images]\nstore = "file://{shared}"\n')
    return path, shared


def _loads(engine) -> list[ModelLoad]:
    with db.transaction(engine) as s:
        return list(s.scalars(select(ModelLoad).order_by(ModelLoad.id)))


def test_own_models_end_to_end(deploy, tmp_path, redis_db, router):
    deploy_file, shared = deploy
    redis_db.flushdb()
    with database("sqlite", tmp_path) as url, ExitStack() as stack:
        s = make_settings(url, tmp_path / "local-images", deployment=str(deploy_file),
                          time_factor=1.0)
        assert s.image_store == f"file://{shared}"  # from the file's [images]
        reg = load_table(s).registry
        assert [m.name for m in reg] == ["tiny-sd", "tiny-xl"]  # no-weights is never planned
        assert reg.get(0).swap_s == 7.5 and reg.get(1).swap_s is None  # as declared
        app = make_app(s)
        queues = {q.name for q in app.conf.task_queues}
        assert {"light_tsd", "heavy_txl"} <= queues and not {"light_nw", "heavy_nw"} & queues
        engine = store.serving_engine(url)
        stack.callback(engine.dispose)

        # 1. each worker loads and warms up its model before any message exists
        w_sd = stack.enter_context(celery_worker(s, "light_tsd", tmp_path, app))
        w_xl = stack.enter_context(celery_worker(s, "heavy_txl", tmp_path, app))
        loads = wait_for(lambda: (lambda x: x if len(x) >= 2 else None)(_loads(engine)), 120,
                         0.5, f"both workers to preload\n{w_sd.tail()}\n{w_xl.tail()}")
        assert {(x.model, x.worker, x.kind) for x in loads} == {
            ("tiny-sd", w_sd.name, "start"), ("tiny-xl", w_xl.name, "start")}
        assert all(x.load_s > 0 and x.warmup_s > 0 and x.backend == "diffusers" for x in loads)
        with db.transaction(engine) as ses:
            assert ses.scalar(select(QueryRow.id).limit(1)) is None  # nothing was queued

        # the beat plans with the measured swap times (measured beats declared)
        loop = PlanLoop.from_settings(s, app)
        measured = {x.model: x.load_s + x.warmup_s for x in loads}
        planned = loop.registry()
        assert planned.get(0).swap_s == pytest.approx(measured["tiny-sd"])
        assert planned.get(1).swap_s == pytest.approx(measured["tiny-xl"])

        # 2. a fixed single-pair plan; the router splits the prompts between the models
        scores = sorted(router.score(p) for p in PROMPTS)
        theta = (scores[2] + scores[3]) / 2
        loop.apply(plan_for(0, 1, theta=theta, tau=-math.inf, batch={0: 2, 1: 2}),
                   workers=[])
        client = create_app(s, router=router,
                            celery_app=make_app(s, fast_fail=True)).test_client()

        def post(prompt: str) -> str:
            resp = client.post("/v1/generations", json={"prompt": prompt, "slo_s": 120})
            assert resp.status_code == 202, resp.get_json()
            return resp.get_json()["id"]

        def finished(ids: list[str]) -> dict[str, dict]:
            def all_final():
                out = {i: client.get(f"/v1/generations/{i}").get_json() for i in ids}
                return out if all(o["status"] in FINAL for o in out.values()) else None
            return wait_for(all_final, 120, 0.3,
                            f"queries to finish\n{w_sd.tail()}\n{w_xl.tail()}")

        ids = [post(p) for p in PROMPTS]
        res = finished(ids)
        assert all(r["status"] == "done" for r in res.values()), res
        served = {r["served_model"]["name"] for r in res.values()}
        assert served == {"tiny-sd", "tiny-xl"}
        for qid, r in res.items():
            name = r["served_model"]["name"]
            got = {k: r["params"][k] for k in DECLARED[name]}
            assert got == DECLARED[name], (name, got)
            assert r["params"]["model"] == name
            # the front door reads the image the worker wrote, through the shared store
            img = client.get(f"/v1/images/{qid}.png")
            assert img.status_code == 200 and img.mimetype == "image/png"
            size = Image.open(io.BytesIO(img.data)).size
            assert size == (DECLARED[name]["width"], DECLARED[name]["height"])
            assert (shared / f"{qid}.png").is_file()
        with db.transaction(engine) as ses:  # the params column itself
            rows = list(ses.scalars(select(QueryRow).where(QueryRow.id.in_(ids))))
        assert {r.params["model"] for r in rows} == {"tiny-sd", "tiny-xl"}
        assert not list(shared.glob(".*.tmp")) and not (tmp_path / "local-images").exists()

        # no query was ever sent to the model that cannot load
        live = LiveState.from_url(BROKER)
        assert live.queue_lengths(["light_nw", "heavy_nw"]) == {"light_nw": 0, "heavy_nw": 0}
        assert {r.queue for r in rows} <= {"light_tsd", "heavy_txl"}
        assert all(set(r.models) <= {0, 1} for r in rows)

        # 3. the plan moves the SD worker to the XL model: it loads and warms up XL, then
        #    serves (the XL worker is gone, so the SD worker must take the query)
        stop_group(w_xl.proc)
        app.control.add_consumer("heavy_txl", destination=[w_sd.name], reply=True, limit=1)
        app.control.cancel_consumer("light_tsd", destination=[w_sd.name], reply=True, limit=1)
        loop.apply(plan_for(0, 1, theta=-math.inf, tau=-math.inf, batch={0: 1, 1: 1}),
                   workers=[])
        qid = post("a lighthouse on a cliff")
        r = finished([qid])[qid]
        assert r["status"] == "done" and r["served_model"]["name"] == "tiny-xl", r
        assert {k: r["params"][k] for k in DECLARED["tiny-xl"]} == DECLARED["tiny-xl"]
        swaps = [x for x in _loads(engine) if x.kind == "swap"]
        assert [(x.model, x.worker) for x in swaps] == [("tiny-xl", w_sd.name)]
        assert swaps[0].warmup_s > 0
        with db.transaction(engine) as ses:
            row = ses.get(QueryRow, qid)
            assert row.started_at > swaps[0].at - 1e-3  # served only once warm


def test_hadis_up_refuses_a_planned_model_without_weights(deploy, tmp_path):
    from click.testing import CliRunner

    from hadis_celery.cli import main

    text = deploy[0].read_text().replace('"plan" = false', "").replace("plan = false", "")
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    res = CliRunner().invoke(main, ["up", "--deployment", str(bad), "--port", "0",
                                    "--no-flower", "--logs", str(tmp_path / "log")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert "models[2] (no-weights): the diffusers backend needs a weights path" in lines[0]
    assert "plan = false" in lines[0]  # the fix is named


def test_hadis_up_with_a_deployment_file_serves_its_models(deploy, tmp_path, redis_db):
    import json
    import os
    import signal
    import subprocess
    import sys
    import threading
    import urllib.request

    from tests.stack.conftest import REPO
    from tests.stack.test_up import _free_port

    redis_db.flushdb()
    deploy_file, shared = deploy
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADIS_")}
    env.update(HADIS_BROKER_URL=BROKER, HADIS_DATABASE_URL=f"sqlite:///{tmp_path / 'up.db'}",
               PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hadis_celery.cli", "up", "--deployment", str(deploy_file),
         "--workers", "2", "--port", str(port), "--plan-period", "2", "--duration", "240",
         "--no-flower", "--logs", str(tmp_path / "log")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                     daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: any(x.startswith("ready") for x in lines) or proc.poll() is not None,
                 180, 0.3, "hadis up to print ready")
        assert proc.poll() is None, "".join(lines)
        out = "".join(lines)
        assert "deployment own, 2 workers" in out and "tiny-sd (diffusers)" in out, out
        assert f"file://{shared}" in out
        req = urllib.request.Request(f"{base}/v1/generations", method="POST",
                                     data=json.dumps({"prompt": "a red kite"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            qid = json.loads(resp.read())["id"]

        def done():
            with urllib.request.urlopen(f"{base}/v1/generations/{qid}", timeout=10) as r:
                body = json.loads(r.read())
            return body if body["status"] in FINAL else None

        logs = tmp_path / "log"
        body = wait_for(done, 120, 0.5, "the query to finish\n" + "\n".join(
            p.read_text(errors="replace")[-2000:] for p in logs.glob("gpu*.log")))
        assert body["status"] == "done", body
        name = body["served_model"]["name"]
        assert {k: body["params"][k] for k in DECLARED[name]} == DECLARED[name]
        with urllib.request.urlopen(f"{base}/v1/images/{qid}.png", timeout=10) as r:
            assert r.status == 200 and (shared / f"{qid}.png").is_file()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_group(proc)
