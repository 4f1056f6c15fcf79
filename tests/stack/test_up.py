"""``hadis up`` starts the whole local stack (without ``../shared``), prints what a person
needs (URLs, speed, the first plan in words), serves a query end to end with the worker's
query events in its log at the default level, and stops every process it started on SIGINT
(what Ctrl-C sends)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

from tests.stack.conftest import BROKER, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_hadis_up_serves_a_query_and_ctrl_c_stops_everything(tmp_path, redis_db):
    redis_db.flushdb()
    port = _free_port()
    env = dict(os.environ, HADIS_BROKER_URL=BROKER,
               HADIS_DATABASE_URL=f"sqlite:///{tmp_path / 'up.sqlite'}",
               HADIS_IMAGE_DIR=str(tmp_path / "images"), PYTHONUNBUFFERED="1",
               OPENBLAS_NUM_THREADS="1",
               # as on a machine without ../shared: packaged profile, quantiles, lexicon
               HADIS_REFERENCE_DIR=str(tmp_path / "no-reference"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hadis_celery.cli", "up", "--workers", "1", "--port", str(port),
         "--time-factor", "0.01", "--plan-period", "1", "--duration", "150", "--no-flower",
         "--logs", str(tmp_path / "log")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    pids: list[int] = []
    try:
        wait_for(lambda: any(line.startswith("ready") for line in lines) or proc.poll()
                 is not None, 120, 0.2, "hadis up to print ready")
        out = "".join(lines)
        assert proc.poll() is None, out
        base = f"http://127.0.0.1:{port}"
        for url in ("/ui/", "/ui/dashboard", "/metrics", "/v1/openapi.json", "/v1/generations"):
            assert f"{base}{url}" in out, url
        assert "time factor 0.01" in out and "per image at batch 1" in out
        plan_line = next(line for line in lines if line.strip().startswith("first plan"))
        assert " -> " in plan_line or " only, " in plan_line, plan_line
        assert "HiGHS" not in out  # the solver's banner stays off stdout
        pids = [int(x.split("=")[1]) for x in
                next(line for line in lines if line.strip().startswith("pids")).split()[1:]]
        assert len(pids) == 3  # one worker, the planner with beat, the front door

        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/generations", method="POST",
            data=json.dumps({"prompt": "a lighthouse on a cliff"}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
            qid = json.load(resp)["id"]

        def done():
            url = f"http://127.0.0.1:{port}/v1/generations/{qid}"
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
            return body if body["status"] in ("done", "dropped", "failed") else None

        body = wait_for(done, 60, 0.3, "the query to finish")
        assert body["status"] == "done", body
        assert (tmp_path / "images" / f"{qid}.png").is_file()
        # the worker logs the query's events at the default level: grep <id> finds them
        worker_events = [json.loads(line) for line in
                         (tmp_path / "log" / "gpu0.log").read_text().splitlines()
                         if qid in line and line.startswith("{")]
        assert {"query.claimed", "query.done"} <= {e.get("event") for e in worker_events}

        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 0, "".join(lines)
        reader.join(5)
        assert "stopped (0 restarts)" in "".join(lines)
        wait_for(lambda: not any(_alive(p) for p in pids), 10, 0.2, "the children to exit")
    finally:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        redis_db.flushdb()
