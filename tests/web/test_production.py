"""Issue 17, the production front door: gunicorn with bounded slow clients, the send path,
flask-limiter before the parse (keyed by API key, proxies opt-in), liveness, readiness per
model, and the workers' Prometheus exporters. Real Redis (database 9), SQL, Celery workers
and a real ``python -m webapp`` (gunicorn) over loopback."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import select
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import redis

from hadis_celery.celery import make_app
from tests.stack.conftest import CLOSED_REDIS, celery_worker, plan_for, settings_env, stop_process
from tests.web.conftest import BROKER, REPO, default_plan, outage_app, wait_for
from webapp import create_app

STALLED = 200  # the slowloris test's stalled connections (bounded: loopback, seconds)


class CountingRouter:
    """The real router, counting the prompts it scored."""

    def __init__(self, router) -> None:
        self.router, self.calls = router, 0

    def score(self, prompt: str) -> float:
        self.calls += 1
        return self.router.score(prompt)


# -- the send path ------------------------------------------------------------------------
def test_the_fast_send_writes_the_message_send_task_writes(stack):
    """``webapp.publish`` builds Celery's own message: same envelope, headers and body as
    ``send_task`` (ids and times aside), on the same list, with the demand counters."""
    from hadis_celery.live import ARRIVALS_KEY, decode_message
    from hadis_celery.transport import GenerateMessage, publish
    from webapp.publish import Publisher

    r = redis.Redis.from_url(BROKER)
    q = f"probe_{uuid.uuid4().hex[:6]}"
    door = stack.app.extensions["hadis"]
    assert door.publisher.fast and door.publisher.same
    before = int(r.get(ARRIVALS_KEY) or 0)
    publish(door.celery, GenerateMessage("a" * 32, q, 1, 123.5))
    Publisher(door.celery, door.live.r, stack.s.state_url).send("b" * 32, q, 1, 123.5,
                                                                lambda: None)
    theirs, ours = (json.loads(x) for x in r.rpop(q, 2))
    assert int(r.get(ARRIVALS_KEY)) == before + 1 and int(r.get(f"hadis:enq:{q}")) == 1

    def shape(env):
        body = json.loads(base64.b64decode(env["body"]))
        return ({k: v for k, v in env.items() if k != "body"}, body)

    (t_env, t_body), (o_env, o_body) = shape(theirs), shape(ours)
    assert t_body[1:] == o_body[1:] and t_body[0][1:] == o_body[0][1:]
    assert set(t_env) == set(o_env)
    assert set(t_env["headers"]) == set(o_env["headers"])
    for k in ("lang", "task", "retries", "timelimit", "ignore_result", "origin", "eta"):
        assert t_env["headers"][k] == o_env["headers"][k], k
    assert set(t_env["properties"]) == set(o_env["properties"])
    for k in ("delivery_mode", "delivery_info", "priority", "body_encoding", "reply_to"):
        assert t_env["properties"][k] == o_env["properties"][k], k
    assert decode_message(json.dumps(ours).encode()).query_id == "b" * 32


def test_an_accepted_query_is_served_through_the_fast_send(stack):
    stack.use_plan(default_plan())
    resp = stack.client.post("/v1/generations", json={"prompt": "a blue kite over a dune"})
    assert resp.status_code == 202
    assert stack.wait_done(resp.get_json()["id"])["status"] == "done"


# -- rate limiting --------------------------------------------------------------------------
def _limited_app(stack, web_router, **kw):
    s = dataclasses.replace(stack.s, rate_limit_per_min=2, **kw)
    router = CountingRouter(web_router)
    return create_app(s, router=router, celery_app=make_app(s, fast_fail=True)), router


def test_the_rate_limit_refuses_before_the_body_is_parsed_or_scored(stack, web_router):
    app, router = _limited_app(stack, web_router, trusted_proxies=1)
    c = app.test_client()
    ip = {"X-Forwarded-For": f"10.{uuid.uuid4().int % 250}.7.{uuid.uuid4().int % 250}"}
    ok = [c.post("/v1/generations", json={"prompt": f"a cat {i}"}, headers=ip)
          for i in range(2)]
    assert [r.status_code for r in ok] == [202, 202]
    calls = router.calls
    # a third body that is not even JSON: refused as rate-limited, never parsed or scored
    resp = c.post("/v1/generations", data=b"{not json", headers={
        **ip, "Content-Type": "application/json"})
    assert resp.status_code == 429, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 61
    assert router.calls == calls
    # the form shares the limit (one budget per client), and answers an HTML page
    page = c.post("/ui/generate", data={"prompt": "a dog"}, headers=ip)
    assert page.status_code == 429 and page.mimetype == "text/html"


def test_the_limit_is_per_api_key_not_per_address(stack, web_router):
    k1, k2 = f"k1-{uuid.uuid4().hex}", f"k2-{uuid.uuid4().hex}"
    app, _ = _limited_app(stack, web_router, api_keys=(k1, k2))
    c = app.test_client()  # every request from the same address, 127.0.0.1

    def post(key):
        return c.post("/v1/generations", json={"prompt": "a fox"},
                      headers={"X-API-Key": key}).status_code

    assert [post(k1), post(k1), post(k1)] == [202, 202, 429]
    assert [post(k2), post(k2)] == [202, 202]  # another key, its own window


def test_forwarded_addresses_count_only_behind_trusted_proxies(stack, web_router):
    a, b = (f"10.9.{uuid.uuid4().int % 250}.{i}" for i in (1, 2))
    trusted, _ = _limited_app(stack, web_router, trusted_proxies=1)
    c = trusted.test_client()
    for ip in (a, b):  # two clients behind one proxy: two windows
        got = [c.post("/v1/generations", json={"prompt": "an owl"},
                      headers={"X-Forwarded-For": ip}).status_code for _ in range(2)]
        assert got == [202, 202], ip
    direct, _ = _limited_app(stack, web_router)  # no proxy trusted: the header is ignored
    d = direct.test_client()
    spoofed = [d.post("/v1/generations", json={"prompt": "an owl"},
                      headers={"X-Forwarded-For": f"10.8.0.{i}",
                               "X-API-Key": ""}).status_code for i in range(4)]
    assert 429 in spoofed


def test_the_limiter_with_redis_down_is_503_not_500(stack, web_router, tmp_path):
    c = outage_app(web_router, tmp_path, broker_url=CLOSED_REDIS,
                   rate_limit_per_min=5).test_client()
    resp = c.post("/v1/generations", json={"prompt": "a cat"})
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "redis_unavailable"


# -- liveness and readiness -------------------------------------------------------------
def test_livez_and_readyz_with_every_check_passing(stack):
    stack.use_plan(default_plan())
    assert stack.client.get("/livez").get_json() == {"live": True}

    def ready():
        r = stack.client.get("/readyz")
        return r if r.status_code == 200 else None

    body = wait_for(ready, 15, 0.3, "/readyz to be 200").get_json()
    assert body["ready"] is True and body["failed"] == []
    assert body["checks"] == {"redis": "ok", "sql": "ok", "plan": "ok", "workers": "ok"}
    models = {m["name"]: m for m in stack.client.get("/v1/models/readiness").get_json()["models"]}
    light = models["SDXL-Lightning"]  # the default plan's model, on the stack's worker
    assert light["in_plan"] and light["ready"] and light["live_workers"] == 1
    assert light["queues"]["light_sdxl"]["workers"] == [stack.worker.name]
    assert not models["SD3.5-Medium"]["ready"]  # no worker consumes its queues
    page = stack.client.get("/ui/dashboard").get_data(as_text=True)
    assert 'id="models-body"' in page and "SDXL-Lightning" in page
    dash = stack.client.get("/ui/dashboard.json").get_json()
    rows = {row[0]: row for row in dash["models"]}
    assert rows["SDXL-Lightning"][-1] == "ready" and rows["SD3.5-Medium"][-1] != "ready"


def test_readyz_names_what_failed(stack, web_router, tmp_path):
    down = outage_app(web_router, tmp_path, broker_url=CLOSED_REDIS).test_client()
    resp = down.get("/readyz")
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) > 0
    body = resp.get_json()
    assert body["ready"] is False and "redis" in body["failed"]
    assert body["checks"]["redis"].startswith("down") and body["checks"]["sql"] == "ok"
    assert down.get("/livez").status_code == 200  # alive: nothing to restart
    assert down.get("/v1/models/readiness").status_code == 503
    r = redis.Redis.from_url(BROKER)
    saved = r.get("hadis:plan")
    r.delete("hadis:plan")
    try:
        body = stack.client.get("/readyz").get_json()
        assert "plan" in body["failed"] and "redis" not in body["failed"]
    finally:
        if saved is not None:
            r.set("hadis:plan", saved)


# -- gunicorn and slow clients ----------------------------------------------------------------
def _start_gunicorn(s, log_path, **env_extra):
    env = {**settings_env(s), **env_extra}
    err = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "webapp", "--port", "0"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=err,
                            start_new_session=True)
    err.close()
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    line = proc.stdout.readline().decode() if ready else ""
    if "front door on http://" not in line:
        stop_process(proc)
        raise AssertionError(f"front door did not start: {line!r}\n"
                             f"{log_path.read_text(errors='replace')[-2000:]}")
    host, port = line.strip().rsplit("/", 1)[1].split(":")
    return proc, host, int(port)


def _post(host, port, prompt: str) -> tuple[int, float]:
    body = json.dumps({"prompt": prompt}).encode()
    req = urllib.request.Request(f"http://{host}:{port}/v1/generations", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    t0 = time.monotonic()
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        return resp.status, time.monotonic() - t0


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)  # a socket with a timeout waits for it before recv
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_slowloris_does_not_starve_a_normal_post_and_is_cut(stack, tmp_path):
    """200 stalled request bodies (and a few stalled header blocks) against one gunicorn
    process with two app threads: a normal POST made while they stall answers in < 1 s,
    and the stalled connections are closed after the client timeout."""
    stack.use_plan(default_plan())
    timeout_s = 6
    proc, host, port = _start_gunicorn(stack.s, tmp_path / "gunicorn.log",
                                       HADIS_WEB_WORKERS="1", HADIS_WEB_THREADS="2",
                                       HADIS_WEB_CLIENT_TIMEOUT_S=str(timeout_s))
    socks: list[socket.socket] = []
    try:
        for i in range(3):  # the process's first requests (connections, pools) before timing
            assert _post(host, port, f"a warm-up lantern {i}")[0] == 202
        head = (b"POST /v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\": \"a")
        for i in range(STALLED):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(head if i % 20 else b"POST /v1/generations HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        stall_began = time.monotonic()
        time.sleep(0.5)  # let the server take them all in
        status, took = _post(host, port, "a normal request during the stall")
        held = sum(not _closed_by_server(s) for s in socks)
        since = time.monotonic() - stall_began
        assert status == 202 and took < 1.0, f"the POST took {took:.3f} s"
        assert held == STALLED, (held, since)  # the stall held while the POST was answered
        # bounded: after the client timeout (headers, then body) the server cuts them
        wait_for(lambda: all(_closed_by_server(s) for s in socks), 2 * timeout_s + 10, 0.25,
                 "the stalled connections to be closed")
        assert _post(host, port, "a request after the stall")[0] == 202
    finally:
        for s in socks:
            s.close()
        stop_process(proc)


# -- the workers' Prometheus exporter -------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[f"{smp.name}{{{labels}}}"] = smp.value
    return out


def test_a_worker_exports_batch_latency_queue_wait_and_images(stack, tmp_path):
    """A real worker with ``HADIS_WORKER_METRICS_PORT``: the model only it serves (the
    plan sends every prompt to that model's light queue) shows up in its exporter."""
    port = _free_port()
    s = dataclasses.replace(stack.s, worker_metrics_port=port)
    capp = make_app(s)
    with celery_worker(s, "light_sd35_large_turbo", tmp_path, capp) as w:
        stack.use_plan(plan_for(1, 3, theta=math.inf, tau=-math.inf,
                                workers={"light_sd35_large_turbo": 1}, batch={1: 1, 3: 1}))
        try:
            ids = [stack.client.post("/v1/generations", json={"prompt": f"a teapot {i}"}
                                     ).get_json()["id"] for i in range(2)]
            for qid in ids:
                assert stack.wait_done(qid)["status"] == "done", w.tail()
            m = wait_for(lambda: (lambda x: x if x.get(
                "hadis_worker_images_total{model=SD3.5-Large-Turbo,outcome=done}", 0) >= 2
                else None)(_scrape(port)), 20, 0.3, "the exporter to count the images")
        finally:
            stack.use_plan(default_plan())
    assert m["hadis_worker_batch_seconds_count{batch=1,model=SD3.5-Large-Turbo}"] >= 2
    assert m["hadis_worker_batch_seconds_sum{batch=1,model=SD3.5-Large-Turbo}"] > 0
    assert m["hadis_worker_queue_wait_seconds_count{model=SD3.5-Large-Turbo}"] >= 2
    assert not any(k.startswith("hadis_worker_gpu_memory") for k in m)  # no CUDA here
