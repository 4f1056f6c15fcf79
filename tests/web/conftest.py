"""Fixtures of the web tests: one real stack for the module (Redis database 9, flushed
before and after and never another one, a SQLite file, a real Celery worker subprocess
with the replay backend at a high time factor) and the Flask app served over HTTP on a
free local port for the browser."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from werkzeug.serving import make_server

from hadis_celery.celery import make_app
from hadis_celery.settings import Settings
from planner.beat import PlanLoop
from tests.stack.conftest import WorkerProc, celery_worker, database, make_settings, plan_for
from tests.stack.conftest import wait_for as wait_for  # re-exported for the tests

REDIS_DB = 9
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "out" / "test-screenshots"
FINAL = ("done", "dropped", "failed")


@dataclass
class WebStack:
    s: Settings
    app: object  # the Flask app
    client: object  # its test client
    url: str  # where it is served over HTTP
    worker: WorkerProc
    loop: PlanLoop
    plan_id: int

    def wait_done(self, qid: str, timeout_s: float = 40.0) -> dict:
        def final():
            q = self.client.get(f"/v1/generations/{qid}").get_json()
            return q if q["status"] in FINAL else None

        try:
            return wait_for(final, timeout_s, 0.2, f"query {qid} to finish")
        except AssertionError:
            raise AssertionError(self.worker.tail()) from None


@pytest.fixture(scope="session")
def web_router():
    from hadis_celery.deployment import load_router
    from webapp import one_blas_thread

    one_blas_thread()
    return load_router(Settings())


@pytest.fixture(scope="session")
def stack(tmp_path_factory, web_router) -> Iterator[WebStack]:
    from webapp import create_app

    r = redis.Redis.from_url(BROKER)
    r.ping()
    r.flushdb()
    tmp = tmp_path_factory.mktemp("web")
    try:
        with database("sqlite", tmp) as url:
            s = make_settings(url, tmp / "images", broker_url=BROKER)
            capp = make_app(s)
            with celery_worker(s, "light_sdxl,heavy_sd35_large", tmp, capp) as w:
                loop = PlanLoop.from_settings(s, capp)
                # every prompt light and accepted: quick, deterministic results
                out = loop.apply(plan_for(0, 3, theta=math.inf, tau=-math.inf,
                                          workers={"light_sdxl": 1}, batch={0: 1, 3: 1}),
                                 workers=[])
                app = create_app(s, router=web_router, celery_app=make_app(s, fast_fail=True))
                server = make_server("127.0.0.1", 0, app, threaded=True)
                th = threading.Thread(target=server.serve_forever, daemon=True)
                th.start()
                try:
                    yield WebStack(s, app, app.test_client(), f"http://127.0.0.1:{server.port}",
                                   w, loop, int(out["plan_id"]))
                finally:
                    server.shutdown()
                    th.join(10)
    finally:
        r.flushdb()
        r.close()
