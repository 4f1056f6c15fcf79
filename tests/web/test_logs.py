"""Structured logs on the front door: every submission's outcome is one record
(``query.accepted`` with the query id and the routing decision, ``query.refused`` with the
status and error code, 503s with what is down), written as one JSON object a line by
``python -m webapp``, so a query id can be followed from the front door into the worker's
log with one grep."""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from hadis_celery.logs import JsonFormatter
from tests.stack.conftest import CLOSED_PG, CLOSED_REDIS, settings_env, stop_process
from tests.web.conftest import REPO, form_token, outage_app, post_form, wait_for


def _events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_api_accepted_and_refused_records(stack, caplog):
    caplog.set_level(logging.INFO, logger="webapp")
    resp = stack.client.post("/v1/generations", json={"prompt": "a green frog", "slo_s": 30})
    assert resp.status_code == 202
    body = resp.get_json()
    acc = [r for r in _events(caplog, "query.accepted") if r.query_id == body["id"]]
    assert len(acc) == 1
    r = acc[0]
    assert (r.route, r.queue, r.plan_id, r.via, r.slo_s) == (
        body["route"], body["queue"], body["plan_id"], "api", 30.0)
    assert r.hardness == pytest.approx(body["hardness"])
    assert r.theta == "inf" and body["theta"] is None  # the log names it; the API: null
    assert r.client == "127.0.0.1" and r.added_ms > 0
    line = json.loads(JsonFormatter().format(r))  # what `python -m webapp` writes
    assert line["event"] == "query.accepted" and line["query_id"] == body["id"]
    assert "a green frog" not in json.dumps(line)  # prompts stay out of the logs

    caplog.clear()
    bad = stack.client.post("/v1/generations", json={"prompt": "a frog", "slo_s": -1})
    assert bad.status_code == 400
    ref = _events(caplog, "query.refused")
    assert len(ref) == 1 and not _events(caplog, "query.accepted")
    assert (ref[0].status, ref[0].code, ref[0].path) == (400, "invalid_slo", "/v1/generations")
    assert "'slo_s' must be a number" in ref[0].detail and ref[0].client == "127.0.0.1"
    assert stack.wait_done(body["id"])["status"] == "done"


def test_form_accepted_and_refused_records(stack, caplog):
    caplog.set_level(logging.INFO, logger="webapp")
    c = stack.app.test_client()
    resp = post_form(c, "a yellow taxi", "40")
    assert resp.status_code == 303
    qid = resp.headers["Location"].rsplit("/", 1)[1]
    acc = _events(caplog, "query.accepted")
    assert [(r.query_id, r.via) for r in acc] == [(qid, "form")]
    caplog.clear()
    assert post_form(c, "a yellow taxi", token="forged").status_code == 400
    assert post_form(c, "a yellow taxi", slo="soon").status_code == 400
    ref = _events(caplog, "query.refused")
    assert [(r.status, r.code, r.path) for r in ref] == [
        (400, "csrf", "/ui/generate"), (400, "invalid_slo", "/ui/generate")]
    stack.wait_done(qid)


def test_outages_say_what_is_down(web_router, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="webapp")
    redis_down = outage_app(web_router, tmp_path, broker_url=CLOSED_REDIS).test_client()
    assert redis_down.post("/v1/generations", json={"prompt": "a cat"}).status_code == 503
    tok = form_token(redis_down)
    assert post_form(redis_down, "a cat", token=tok).status_code == 503
    ref = _events(caplog, "query.refused")
    assert [(r.status, r.code, r.down, r.path) for r in ref] == [
        (503, "redis_unavailable", "redis", "/v1/generations"),
        (503, "unavailable", "redis", "/ui/generate")]
    assert all(r.levelno == logging.WARNING for r in ref)

    caplog.clear()
    sql_down = outage_app(web_router, tmp_path, db_url=CLOSED_PG).test_client()
    assert sql_down.get("/v1/generations/" + "0" * 32).status_code == 503
    failed = _events(caplog, "request.failed")
    assert [(r.status, r.code, r.down, r.method) for r in failed] == [
        (503, "database_unavailable", "database", "GET")]
    assert failed[0].error.startswith("OperationalError")


def _start_frontdoor(stack, log_path):
    env = settings_env(stack.s)
    env["HADIS_LOG_FORMAT"] = "json"
    err = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "webapp", "--port", "0"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=err,
                            start_new_session=True)
    err.close()
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    line = proc.stdout.readline().decode() if ready else ""
    if "front door on http://" not in line:
        stop_process(proc)
        raise AssertionError(f"front door did not start: {line!r}\n"
                             f"{log_path.read_text(errors='replace')[-2000:]}")
    return proc, line.strip().rsplit(" ", 1)[1]


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/generations", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_python_m_webapp_logs_json_lines_that_follow_a_query(stack, tmp_path):
    log_path = tmp_path / "frontdoor.log"
    proc, url = _start_frontdoor(stack, log_path)
    try:
        status, body = _post(url, json.dumps({"prompt": "a paper boat", "slo_s": 50}).encode())
        assert status == 202, body
        qid = body["id"]
        bad_status, bad = _post(url, b'{"prompt": 5}')
        assert bad_status == 400 and bad["error"]["code"] == "invalid_prompt"
        assert stack.wait_done(qid)["status"] == "done"

        def records():
            lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
            recs = [json.loads(ln) for ln in lines]  # every line is one JSON object
            return recs if any(r.get("event") == "query.refused" for r in recs) else None

        recs = wait_for(records, 20, 0.2, "the front door's log records")
    finally:
        stop_process(proc)
    acc = [r for r in recs if r.get("event") == "query.accepted"]
    assert [r["query_id"] for r in acc] == [qid]
    assert acc[0]["queue"] == body["queue"] and acc[0]["route"] == body["route"]
    assert acc[0]["level"] == "INFO" and acc[0]["logger"] == "webapp.frontdoor"
    assert isinstance(acc[0]["ts"], float) and acc[0]["added_ms"] > 0
    ref = [r for r in recs if r.get("event") == "query.refused"]
    assert [(r["status"], r["code"]) for r in ref] == [(400, "invalid_prompt")]
    assert "must be a string" in ref[0]["detail"]
    # the same id in the worker's JSON log: the message it received and the batch it ran
    worker = [json.loads(ln) for ln in stack.worker.log.read_text().splitlines()
              if ln.startswith("{") and qid in ln]
    assert worker, f"query {qid} not in the worker's log\n{stack.worker.tail()}"
    assert min(w["ts"] for w in worker) >= acc[0]["ts"] - 1
