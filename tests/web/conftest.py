"""Fixtures of the web tests: one real stack per database kind (SQLite, then PostgreSQL in
a schema of its own, dropped after), on Redis database 9 (flushed before and after, never
another one), with a real Celery worker subprocess (replay backend at a high time factor)
and the Flask app served over HTTP on a free local port for the browser. Every test that
uses ``stack`` runs on both databases."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from werkzeug.serving import make_server

from hadis_celery.beat import PlanLoop
from hadis_celery.celery import make_app
from hadis_celery.settings import Settings
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

    def use_plan(self, plan) -> int:
        """Publish ``plan`` (no rebinding: the worker consumes both queues of the pair)."""
        self.plan_id = int(self.loop.apply(plan, workers=[])["plan_id"])
        return self.plan_id

    @property
    def kind(self) -> str:
        return "postgresql" if self.s.database_url.startswith("postgresql") else "sqlite"


@pytest.fixture(scope="session")
def web_router():
    from hadis_celery.deployment import load_router
    from webapp import one_blas_thread

    one_blas_thread()
    return load_router(Settings())


def default_plan():
    """Every prompt light and accepted: quick, deterministic results."""
    return plan_for(0, 3, theta=math.inf, tau=-math.inf, workers={"light_sdxl": 1},
                    batch={0: 1, 3: 1})


def table_plan(s: Settings, light: int = 0, heavy: int = 3, router_ratio: float = 0.0,
               disc_ratio: float = 0.1):
    """A plan that runs one row of the deployment's configuration table."""
    from hadis_celery.deployment import load_table
    from planner.plan import Plan

    cfg = next(c for c in load_table(s).rows if c.pair == (light, heavy)
               and c.router_ratio == router_ratio and c.disc_ratio == disc_ratio)
    return Plan(planner="test", config=cfg, workers={"light_sdxl": 1},
                batch={light: 1, heavy: 1}, fid=cfg.fid, utilisation={}, demand=0.0,
                slo_s=60.0, budget=1, routing="score")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, web_router) -> Iterator[WebStack]:
    from webapp import create_app

    r = redis.Redis.from_url(BROKER)
    r.ping()
    r.flushdb()
    tmp = tmp_path_factory.mktemp(f"web-{request.param}")
    try:
        with database(request.param, tmp) as url:
            s = make_settings(url, tmp / "images", broker_url=BROKER)
            capp = make_app(s)
            with celery_worker(s, "light_sdxl,heavy_sd35_large", tmp, capp) as w:
                loop = PlanLoop.from_settings(s, capp)
                out = loop.apply(default_plan(), workers=[])
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


TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def form_token(client) -> str:
    """The CSRF token of ``client``'s session (from the form page)."""
    page = client.get("/ui/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    m = TOKEN_RE.search(page.get_data(as_text=True))
    assert m, "no CSRF token on the form"
    return m.group(1)


def post_form(client, prompt: str, slo: str = "", token: str | None = None):
    tok = form_token(client) if token is None else token
    return client.post("/ui/generate", data={"prompt": prompt, "slo_s": slo,
                                             "csrf_token": tok})


def outage_app(router, tmp: Path, db_url: str | None = None, **kw):
    """A front door whose Redis or database (``kw``/``db_url``) is a closed port."""
    from webapp import create_app

    url = db_url or f"sqlite:///{tmp / 'outage.sqlite'}"
    if db_url is None:
        from hadis_celery import db

        e = db.make_engine(url)
        db.upgrade(e)
        e.dispose()
    s = make_settings(url, tmp / "images", broker_url=kw.pop("broker_url", BROKER), **kw)
    return create_app(s, router=router, celery_app=make_app(s, fast_fail=True))
