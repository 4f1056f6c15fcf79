"""Issue 16 item 4: one worker crash must not stop the stack. ``hadis up`` (replay backend,
a small time factor, SQLite, a private Redis, its own port) serves a steady load over HTTP;
one worker's whole process group is SIGKILLed; the front door keeps answering every request
(none refused), ``hadis up`` restarts the worker and says so, and every accepted query
finishes: lost 0, stranded 0. The row ``worker crash under hadis up`` goes to
``out/fault-report.json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from hadis_celery import db
from hadis_celery.deployment import model_queues, registry
from hadis_celery.settings import Settings
from tests.faults.conftest import (
    PROMPTS,
    TIME_FACTOR,
    PrivateRedis,
    account,
    free_port,
    wait_final,
)
from tests.stack.conftest import wait_for


def _post(base: str, prompt: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{base}/v1/generations", method="POST",
                                 data=json.dumps({"prompt": prompt, "slo_s": 120}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError as exc:
        return 0, {"error": str(exc)}


def test_a_killed_worker_is_restarted_while_the_front_door_keeps_answering(tmp_path):
    rds = PrivateRedis(tmp_path)
    port = free_port()
    db_url = f"sqlite:///{tmp_path / 'up.sqlite'}"
    env = dict(os.environ, HADIS_BROKER_URL=rds.url, HADIS_REDIS_URL="",
               HADIS_DATABASE_URL=db_url, HADIS_IMAGE_DIR=str(tmp_path / "images"),
               HADIS_LEASE_S="2", HADIS_SWEEP_PERIOD_S="1", HADIS_HEARTBEAT_S="1",
               HADIS_LOG_FORMAT="json", PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hadis_celery.cli", "up", "--workers", "2", "--port", str(port),
         "--time-factor", str(TIME_FACTOR), "--plan-period", "2", "--rate-limit", "0",
         "--solver", "highs", "--no-flower", "--duration", "400", "--logs",
         str(tmp_path / "log")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    answers: list[int] = []
    ids: list[str] = []
    stop = threading.Event()
    pids: dict[str, int] = {}

    def load() -> None:
        i = 0
        while not stop.is_set():
            code, body = _post(base, PROMPTS[i % len(PROMPTS)])
            answers.append(code)
            if code == 202:
                ids.append(body["id"])
            i += 1
            stop.wait(0.15)

    sender = threading.Thread(target=load, daemon=True)
    engine = db.make_engine(db_url)
    try:
        wait_for(lambda: any(x.startswith("ready") for x in lines) or proc.poll() is not None,
                 150, 0.2, "hadis up to print ready")
        assert proc.poll() is None, "".join(lines)
        pids = {k: int(v) for k, v in (x.split("=") for x in next(
            x for x in lines if x.strip().startswith("pids")).split()[1:])}
        victim = sorted(n for n in pids if n.startswith("gpu"))[-1]

        sender.start()
        wait_for(lambda: len(ids) >= 10, 60, 0.2, "the first accepted queries")
        os.killpg(pids[victim], signal.SIGKILL)  # the worker and its pool child
        killed_at = len(answers)
        wait_for(lambda: any(f"{victim} restarted" in x for x in lines), 60, 0.2,
                 f"hadis up to restart {victim}")
        # the restarted worker is live again: its heartbeat is back in Redis
        r = rds.client()
        wait_for(lambda: any(k.decode().split(":", 2)[2].startswith(f"{victim}@")
                             for k in r.scan_iter("hadis:worker:*")), 60, 0.3,
                 f"{victim}'s heartbeat after the restart")
        time.sleep(3)  # more load on the whole stack again
        stop.set()
        sender.join(15)
        assert proc.poll() is None, "".join(lines)  # the stack did not stop
        sup = json.loads(r.get("hadis:supervisor"))
        assert sup["restarts"] == 1 and sup["children"][victim]["restarts"] == 1, sup
        assert sup["children"][victim]["last_exit"] == "killed by SIGKILL"
        assert sup["children"]["frontdoor"]["restarts"] == 0
        # the front door kept answering: every request answered, none refused
        assert len(answers) > killed_at + 10, (len(answers), killed_at)
        assert set(answers) == {202}, sorted(set(answers))
        died = [x for x in lines if f"{victim} (pid {pids[victim]}) died" in x]
        assert len(died) == 1 and "killed by SIGKILL" in died[0], "".join(lines)
        events = [json.loads(x) for x in (tmp_path / "log" / "up.log").read_text().splitlines()
                  if x.startswith("{")]
        kinds = [e["event"] for e in events if e.get("child") == victim]
        assert kinds == ["up.child_died", "up.child_restarted"], kinds

        wait_final(engine, ids, 120)
        # stranded: messages still waiting on a model queue once every query is final
        stranded = sum(r.llen(q) for q in model_queues(registry(Settings())))
        report = account(engine, "worker crash under hadis up", ids, timeout_s=5,
                         requests=len(answers), refused=sum(1 for a in answers if a != 202),
                         restarts=sup["restarts"], stranded=stranded)
        assert report["lost"] == 0 and stranded == 0, report
        assert report["completed"] + report["dropped"] + report["failed"] == len(ids)

        proc.send_signal(signal.SIGINT)  # only Ctrl-C stops everything
        assert proc.wait(60) == 0, "".join(lines)
        reader.join(5)
        assert "stopped (1 restart)" in "".join(lines)
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        try:  # restarted children have pids of their own
            sup = json.loads(rds.client().get("hadis:supervisor") or "{}")
            pids.update({f"{k}'": v["pid"] for k, v in sup.get("children", {}).items()
                         if v.get("pid")})
        except Exception:
            pass
        for pid in pids.values():  # whatever hadis up could not stop
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        engine.dispose()
        rds.stop()
