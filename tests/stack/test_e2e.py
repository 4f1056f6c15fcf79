"""End to end on a real Redis and a real Celery worker (replay backend, time factor 0.01),
on SQLite and on PostgreSQL: the front door routes, the worker generates, discriminates,
reroutes and drops, the beat rebinds the live worker, and SQL holds the results and plans."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hadis_celery import db, store
from hadis_celery.beat import PlanLoop
from hadis_celery.celery import make_app
from hadis_celery.live import LiveState
from hadis_celery.settings import Settings
from hadis_celery.tables import PlanRow, QueryRow, WorkerHeartbeat
from planner.router import validate_prompt
from tests.stack.conftest import (
    BROKER,
    WorkerProc,
    celery_worker,
    database,
    make_settings,
    plan_for,
    wait_for,
)
from webapp import create_app
from workers.backends.replay import load_score_table

FINAL = ("done", "dropped", "failed")
CANDIDATES = [
    "a photo of a cat",
    "a red apple on a wooden table",
    "a dog running on the beach",
    "a small boat on a lake",
    "a close up photo of a goldfish",
    "a cup of coffee",
    "an ornate baroque cathedral interior with golden statues of saints, dramatic volumetric "
    "light through stained glass windows, and crowds of pilgrims kneeling near the altar",
]


@dataclass
class Stack:
    s: Settings
    app: object
    client: object
    loop: PlanLoop
    engine: object
    live: LiveState
    worker: WorkerProc

    def post(self, prompt: str, **kw) -> dict:
        resp = self.client.post("/v1/generations", json={"prompt": prompt, **kw})
        assert resp.status_code == 202, resp.get_json()
        return resp.get_json()

    def get(self, qid: str) -> dict:
        resp = self.client.get(f"/v1/generations/{qid}")
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()

    def wait_final(self, ids: list[str], timeout_s: float = 40.0) -> dict[str, dict]:
        def all_final():
            out = {i: self.get(i) for i in ids}
            return out if all(o["status"] in FINAL for o in out.values()) else None

        try:
            return wait_for(all_final, timeout_s, 0.2, f"queries {ids} to finish")
        except AssertionError:
            raise AssertionError(f"{[self.get(i) for i in ids]}\n{self.worker.tail()}") from None


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, redis_db, router):
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    redis_db.flushdb()
    with database(request.param, tmp) as url:
        s = make_settings(url, tmp / "images")
        app = make_app(s)
        engine = db.make_engine(url)
        live = LiveState.from_url(BROKER)
        with celery_worker(s, "light_sdxl,heavy_sd35_large", tmp, app) as w:
            flask_app = create_app(s, router=router, celery_app=make_app(s, fast_fail=True))
            yield Stack(s, app, flask_app.test_client(), PlanLoop.from_settings(s, app),
                        engine, live, w)
        engine.dispose()
    redis_db.flushdb()


def _pick(router) -> tuple[str, str, str, float, float]:
    """Easy prompts A (light image good) and B (light image poor), hard prompt C, and the
    θ, τ that send A light and accepted, B light and rerouted, C straight to heavy."""
    table = load_score_table()
    scored = sorted(CANDIDATES, key=router.score)
    hard, easy = scored[-1], scored[:-1]
    quality = {p: table.score(0, validate_prompt(p)) for p in easy}
    a = max(easy, key=quality.get)
    b = min(easy, key=quality.get)
    assert quality[a] > quality[b]
    theta = (router.score(hard) + max(router.score(p) for p in easy)) / 2
    tau = (quality[a] + quality[b]) / 2
    return a, b, hard, theta, tau


def test_light_accepted_light_rerouted_heavy_direct_and_dropped(stack, router):
    a, b, c, theta, tau = _pick(router)
    # publish without rebinding: the worker consumes both queues of the pair
    out = stack.loop.apply(plan_for(0, 3, theta=theta, tau=tau, batch={0: 1, 3: 1}), workers=[])
    assert stack.live.get_plan().plan_id == out["plan_id"]
    ids = {k: stack.post(p, slo_s=60)["id"] for k, p in (("a", a), ("b", b), ("c", c))}
    ids["late"] = stack.post(a, slo_s=0.001)["id"]
    res = stack.wait_final(list(ids.values()))
    ra, rb, rc, rl = (res[ids[k]] for k in ("a", "b", "c", "late"))

    assert ra["status"] == "done" and ra["route"] == "light"
    assert [m["id"] for m in ra["models"]] == [0] and ra["served_model"]["id"] == 0
    assert ra["quality"] >= tau and ra["light_quality"] == ra["quality"]
    assert ra["hardness"] <= theta and ra["image_url"] == f"/v1/images/{ids['a']}.png"

    assert rb["status"] == "done" and rb["route"] == "light"
    assert [m["id"] for m in rb["models"]] == [0, 3] and rb["served_model"]["id"] == 3
    assert rb["light_quality"] < tau and rb["queue"] == "heavy_sd35_large"
    assert rb["timings"]["deadline"] == pytest.approx(rb["timings"]["received_at"] + 60)

    assert rc["status"] == "done" and rc["route"] == "heavy" and rc["hardness"] > theta
    assert [m["id"] for m in rc["models"]] == [3] and rc["light_quality"] is None

    assert rl["status"] == "dropped" and "deadline" in rl["reason"] and rl["models"] == []

    for k in ("a", "b", "c"):
        img = stack.client.get(f"/v1/images/{ids[k]}.png")
        assert img.status_code == 200 and img.data[:8] == b"\x89PNG\r\n\x1a\n"
        t = res[ids[k]]["timings"]
        assert t["received_at"] <= t["enqueued_at"] <= t["started_at"] <= t["finished_at"]
        assert t["model_s"] > 0
    assert stack.client.get(f"/v1/images/{ids['late']}.png").status_code == 409


def test_sweeper_resends_an_accepted_query_whose_message_was_lost(stack):
    import time

    stack.loop.apply(plan_for(0, 3, theta=math.inf, tau=-math.inf), workers=[])
    now = time.time()
    qid = store.new_query_id()
    store.insert_query(stack.engine, QueryRow(
        id=qid, client="test", prompt="a lost message about a lighthouse", seed=1, slo_s=60,
        status="queued", queue="light_sdxl", route="light", hardness=0.0, models=[],
        attempts=1, received_at=now, deadline=now + 60, model_s=0.0, updated_at=now - 3600))
    gone = store.new_query_id()  # lost, and too late to run
    store.insert_query(stack.engine, QueryRow(
        id=gone, client="test", prompt="too late", seed=1, slo_s=1, status="queued",
        queue="light_sdxl", route="light", hardness=0.0, models=[], attempts=1,
        received_at=now - 3600, deadline=now - 3599, model_s=0.0, updated_at=now - 3600))
    out = stack.loop.sweep(now)
    assert out == {"resent": [qid], "dropped": [gone]}
    res = stack.wait_final([qid, gone])
    assert res[qid]["status"] == "done" and [m["id"] for m in res[qid]["models"]] == [0]
    assert res[gone]["status"] == "dropped" and "deadline" in res[gone]["reason"]


def test_plan_change_rebinds_the_live_worker_to_another_queue_and_batch(stack):
    name = stack.worker.name
    wait_for(lambda: name in stack.live.live_workers(), 20, 0.2, "the worker's heartbeat")
    plan = plan_for(0, 2, workers={"heavy_sd35_medium": 1}, batch={2: 4}, routing="none",
                    router_ratio=1.0)
    out = stack.loop.apply(plan)
    assert out["bindings"] == {name: "heavy_sd35_medium"}

    queues = stack.app.control.inspect(destination=[name], timeout=3).active_queues()
    assert sorted(q["name"] for q in queues[name]) == ["heavy_sd35_medium"]
    reply = stack.app.control.broadcast("hadis_worker", reply=True, destination=[name],
                                        timeout=3)
    view = reply[0][name]
    assert view["batch"] == {"heavy_sd35_medium": 4} and view["plan_id"] == out["plan_id"]

    qid = stack.post("a lighthouse on a cliff at dusk")["id"]
    res = stack.wait_final([qid])[qid]
    assert res["status"] == "done" and res["route"] == "heavy"
    assert [m["id"] for m in res["models"]] == [2]  # the worker switched models
    with db.transaction(stack.engine) as s:
        hb = s.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.worker == name)).one()
        assert hb.model == 2 and hb.queue == "heavy_sd35_medium" and hb.batch == 4


def test_a_worker_runs_up_to_the_plans_batch_size_from_its_queue(stack):
    from workers.serving import WorkerRuntime

    # heavy_sdxl has no worker now: queue four queries there, then run one message
    stack.loop.apply(plan_for(1, 0, batch={0: 4}, routing="none", router_ratio=1.0),
                     workers=[])
    ids = [stack.post(f"a painting of boat number {i}")["id"] for i in range(5)]
    assert stack.live.queue_lengths(["heavy_sdxl"]) == {"heavy_sdxl": 5}
    runtime = WorkerRuntime(stack.s, stack.app)
    first = stack.live.drain("heavy_sdxl", 1)[0]
    report = runtime.run(first, "in-process")
    assert report.batch == 4 and report.ran == ids[:4] and report.accepted == ids[:4]
    assert stack.live.queue_lengths(["heavy_sdxl"]) == {"heavy_sdxl": 1}
    for i in ids[:4]:
        r = stack.get(i)
        assert r["status"] == "done" and r["served_model"]["id"] == 0
    assert stack.get(ids[4])["status"] == "queued"
    report = runtime.run(stack.live.drain("heavy_sdxl", 1)[0], "in-process")
    assert report.ran == ids[4:]
    runtime.engine.dispose()


def test_a_swapping_worker_hands_its_message_back_to_the_head_of_the_queue(stack):
    from workers.serving import WorkerRuntime

    # model 3's heavy queue without a consumer; an in-process worker holds model 0
    stack.loop.apply(plan_for(1, 3, batch={3: 4}, routing="none", router_ratio=1.0),
                     workers=[])
    runtime = WorkerRuntime(stack.s, stack.app)
    runtime.backend_for(runtime.reg.get(0), "in-process")
    queue = runtime.reg.get(3).heavy_queue
    stack.app.control.cancel_consumer(queue, destination=[stack.worker.name], reply=True)
    ids = [stack.post(f"a lantern on a windowsill, number {i}")["id"] for i in range(3)]
    assert stack.live.queue_lengths([queue]) == {queue: 3}
    first = stack.live.drain(queue, 1)[0]
    assert first.query_id == ids[0]
    report = runtime.run(first, "in-process")  # the plan moved it: hand back, then load 3
    assert report.given_back == [ids[0]] and report.ran == []
    assert runtime.backend.spec.id == 3
    # it was next in line and still is (a re-send would put it behind ids[1] and ids[2])
    again = stack.live.drain(queue, 3)
    assert [m.query_id for m in again] == ids and again[0].swapped
    assert stack.get(ids[0])["status"] == "queued"
    stack.live.push_back(queue, again)
    report = runtime.run(stack.live.drain(queue, 1)[0], "in-process")
    assert report.ran == ids
    assert all(stack.get(i)["status"] == "done" for i in ids)
    runtime.engine.dispose()


def test_the_beat_tick_plans_from_live_state_and_records_it(stack):
    name = stack.worker.name
    wait_for(lambda: name in stack.live.live_workers(), 20, 0.2, "the worker's heartbeat")
    out = stack.loop.tick()
    assert out["workers"] == [name] and set(out["bindings"]) == {name}
    live = stack.live.get_plan()
    assert live.plan_id == out["plan_id"] and live.workers
    assert out["bindings"][name] in live.workers
    queues = stack.app.control.inspect(destination=[name], timeout=3).active_queues()
    assert [q["name"] for q in queues[name]] == [out["bindings"][name]]


def test_results_and_plans_are_in_sql(stack):
    with db.transaction(stack.engine) as s:
        plans = s.scalars(select(PlanRow).order_by(PlanRow.id)).all()
        statuses = dict(s.execute(select(QueryRow.status, func.count())
                                  .group_by(QueryRow.status)).all())
        assert plans[-1].planner == "hadis" and plans[-1].live["plan_id"] == plans[-1].id
        assert any(p.bindings == {stack.worker.name: "heavy_sd35_medium"} for p in plans)
        assert all(p.body["config"]["light"] == p.light for p in plans)
        assert statuses.get("done", 0) >= 9 and statuses.get("dropped", 0) == 2
        assert set(statuses) <= {"done", "dropped"}
        assert Path(stack.s.image_dir).is_dir()
