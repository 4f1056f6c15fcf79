"""Faults of the running stack on PostgreSQL (through a proxy that can be cut) and a private
Redis (that can be killed): a worker's pool child or the whole worker SIGKILLed mid-batch,
Redis restarted empty under load, PostgreSQL unavailable, the beat stopped. Each test counts
what the front door accepted and requires every accepted query to end done, dropped or
failed: lost = 0 (``account`` prints and stores the figures in ``out/fault-report.json``)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import pytest
from sqlalchemy import select

from hadis_celery import db, store
from hadis_celery.live import EPOCH_KEY, PLAN_KEY, decode_message
from hadis_celery.tables import QueryRow
from planner.router import validate_prompt
from tests.faults.conftest import (
    PROMPTS,
    TcpProxy,
    account,
    alive,
    fault_env,
    fault_stack,
    parent_of,
    pool_children,
    spawn_worker,
    wait_ready,
)
from tests.stack.conftest import database, plan_for, wait_for
from workers.backends.replay import load_score_table

QUEUES = ["light_sdxl", "heavy_sdxl", "light_sd35_large", "heavy_sd35_large"]
# every query straight to SD3.5-Large in batches of up to 4 (2.75 s at time factor 0.03)
ALL_HEAVY = plan_for(0, 3, theta=-math.inf, batch={0: 4, 3: 4})


def cascade_plan(rerouted: float):
    """SDXL-Lightning light (batches of 4); the ``rerouted`` fraction of its images (scores
    below τ) goes on to SD3.5-Large (batches of 4)."""
    scores = sorted(load_score_table().score(0, validate_prompt(p)) for p in PROMPTS)
    tau = scores[min(len(scores) - 1, int(rerouted * len(scores)))]
    return plan_for(0, 3, theta=math.inf, tau=tau, batch={0: 4, 3: 4})


@pytest.fixture(scope="module")
def stack(tmp_path_factory, router):
    tmp = tmp_path_factory.mktemp("faults")
    proxy = TcpProxy(5432)
    try:
        with database("postgresql", tmp) as url:
            via = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
            with fault_stack(tmp, via, router, "light_sdxl,heavy_sd35_large", 2) as st:
                st.proxy = proxy
                yield st
    finally:
        proxy.close()


def _batch_in_flight(stack, n: int):
    """A batch of at least ``n`` running queries: (token, ids), or None."""
    for token, ids in stack.running_by_token().items():
        if len(ids) >= n:
            return token, ids
    return None


def _fresh_batch(stack, n: int, timeout_s: float = 30.0) -> tuple[str, list[str]]:
    """A batch of at least ``n`` queries seen within one poll of its claim (so most of its
    run is still ahead when the test strikes): (token, ids)."""
    seen = set(stack.running_by_token())
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        now = stack.running_by_token()
        for token, ids in now.items():
            if token not in seen and len(ids) >= n:
                return token, ids
        seen |= set(now)
        time.sleep(0.02)
    raise AssertionError(f"no new batch of {n}+ queries within {timeout_s:g} s")


def _wait(stack, pred, timeout_s: float, what: str):
    """``wait_for`` that shows the workers' logs when it times out."""
    try:
        return wait_for(pred, timeout_s, 0.05, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from None


def _rows(stack, ids) -> dict[str, QueryRow]:
    with db.transaction(stack.engine) as s:
        return {r.id: r for r in s.scalars(select(QueryRow).where(QueryRow.id.in_(ids)))}


def _resent(stack, ids, reason: str) -> set[str]:
    return {e["query_id"] for e in stack.control.events("query.resent")
            if e.get("reason") == reason and e["query_id"] in ids}


def _taken_back(stack, ids) -> set[str]:
    """Rows of a dead batch the sweeper took back: re-sent (``worker_lost``), or put back to
    queued without a new message because one still waits on their queue (the Celery
    message a killed pool child's worker requeued): each once, never both."""
    resent = _resent(stack, ids, "worker_lost")
    waiting = {e["query_id"] for e in stack.control.events("query.waiting")
               if e["query_id"] in ids}
    assert not resent & waiting, "a row re-sent while its message still waited"
    return resent | waiting


def test_worker_pool_child_killed_mid_batch(stack):
    stack.ensure_workers(2)
    stack.ensure_control()
    stack.loop.apply(ALL_HEAVY, workers=[])
    ids = [stack.accept(p) for p in PROMPTS[:16]]
    token, _ = _fresh_batch(stack, 2)
    pid = int(token.split("/")[1])  # the claim token names the pool process
    victim = next(w for w in stack.workers if token.startswith(w.name + "/"))
    assert parent_of(pid) == victim.pid
    os.kill(pid, signal.SIGKILL)
    held = stack.running_by_token().get(token, [])
    assert len(held) >= 2  # killed mid-batch: its rows are held by a dead process
    out = account(stack.engine, "worker_child_sigkill", ids, held_by_killed_batch=len(held))
    assert out["lost"] == 0, stack.logs()
    assert out["completed"] == len(ids)
    rows = _rows(stack, held)
    for r in rows.values():  # re-sent once the lease lapsed, run again, recorded once
        assert r.status == "done" and r.models == [3] and r.worker != token
        assert r.attempts >= 2
    assert _taken_back(stack, held) == set(held)
    assert alive(victim.pid)  # the main process lives on with a new pool child
    _wait(stack, lambda: [c for c in pool_children(victim.pid) if c != pid], 30,
          "a new pool child")


def test_redis_restarted_under_load(stack):
    stack.ensure_workers(2)
    stack.ensure_control()
    r = stack.redis.client()
    _wait(stack, lambda: r.get(EPOCH_KEY), 20, "the beat's first recovery marker")
    stack.loop.apply(cascade_plan(0.8), workers=[])
    start = len(stack.accepted)

    def backlog() -> int:
        return sum(r.llen(q) for q in QUEUES)

    for p in PROMPTS:  # a burst, until messages wait on the queues
        stack.accept(p)
        if backlog() >= 3:
            break
    responses: list[tuple[float, float, int, dict, str | None]] = []
    stop = threading.Event()

    def poster():
        i = 0
        while not stop.is_set():
            t0 = time.monotonic()
            code, body, headers = stack.post(PROMPTS[i % len(PROMPTS)])
            responses.append((t0, time.monotonic(), code, body, headers.get("Retry-After")))
            i += 1
            time.sleep(0.05)

    th = threading.Thread(target=poster, daemon=True)
    th.start()
    try:
        waiting = _wait(stack, backlog, 10, "a backlog on the queues")
        stack.redis.kill()
        down = time.monotonic()
        _wait(stack, lambda: any(t0 > down and c == 503 for t0, _, c, _, _ in responses), 30,
              "the front door to refuse while Redis is down")
        time.sleep(1.0)
        up = time.monotonic()
        stack.redis.start()
        back = _wait(stack, lambda: next((t1 for t0, t1, c, _, _ in responses
                                          if t0 > up and c == 202), None),
                     45, "the front door to accept again")
        time.sleep(max(0.0, back + 2.0 - time.monotonic()))  # and keep the load on a while
    finally:
        stop.set()
        th.join(30)
    while_down = [(c, b, ra) for t0, t1, c, b, ra in responses if down < t0 and t1 < up]
    assert while_down and all(c == 503 and int(ra) > 0 for c, _, ra in while_down)
    assert {b["error"]["code"] for _, b, _ in while_down} == {"redis_unavailable"}
    recovered = json.loads(stack.redis.client().get(EPOCH_KEY) or "{}")
    ids = stack.accepted[start:]
    after = sum(1 for t0, _, c, _, _ in responses if t0 > up and c == 202)
    out = account(stack.engine, "redis_restart", ids, backlog_at_crash=waiting,
                  refused_503_while_down=len(while_down), accepted_after_restart=after,
                  restart_to_first_202_s=round(back - up, 2),
                  resent_from_sql_after_restart=recovered.get("resent"))
    assert out["lost"] == 0, stack.logs()
    assert recovered.get("resent", 0) >= 1  # the backlog came back from SQL
    assert stack.redis.client().get(PLAN_KEY) is not None  # the plan was re-published


def _messages_in_redis(r) -> set[str]:
    """Query ids of every ``hadis.generate`` message in the queue lists or delivered and
    not yet acknowledged (kombu's ``unacked`` hash)."""
    ids = set()
    for q in QUEUES:
        for raw in r.lrange(q, 0, -1):
            m = decode_message(raw)
            if m:
                ids.add(m.query_id)
    for raw in r.hvals("unacked"):
        m = decode_message(json.dumps(json.loads(raw)[0]).encode())
        if m:
            ids.add(m.query_id)
    return ids


def test_postgresql_unavailable(stack):
    stack.ensure_workers(2)
    stack.ensure_control()
    stack.loop.apply(ALL_HEAVY, workers=[])
    ids = [stack.accept(p) for p in PROMPTS[12:24]]
    _wait(stack, lambda: _batch_in_flight(stack, 1), 30, "a batch running")
    stack.proxy.cut()
    try:
        refused = [stack.post(p) for p in PROMPTS[40:44]]
        for code, body, headers in refused:
            assert code == 503 and body["error"]["code"] == "database_unavailable"
            assert int(headers["Retry-After"]) > 0
        # nothing of a refused query reached Redis: every message there is an accepted one
        assert _messages_in_redis(stack.redis.client()) <= set(stack.accepted)
        time.sleep(3.0)  # running batches end and cannot record; claims find SQL down
    finally:
        stack.proxy.restore()
    unrecorded = sum(len(w.events("query.unrecorded")) for w in stack.workers)
    requeued = sum(len(w.events("query.requeued")) for w in stack.workers)
    out = account(stack.engine, "postgresql_unavailable", ids, refused_503=len(refused),
                  results_unrecorded_during_outage=unrecorded,
                  messages_requeued_during_outage=requeued)
    assert out["lost"] == 0, stack.logs()
    assert out["completed"] == len(ids)
    with db.transaction(stack.engine) as s:  # nothing half-written: only accepted rows
        assert set(s.scalars(select(QueryRow.id))) == set(stack.accepted)


def test_whole_worker_killed_mid_batch(stack):
    stack.ensure_workers(2)
    stack.ensure_control()
    stack.loop.apply(ALL_HEAVY, workers=[])
    ids = [stack.accept(p) for p in PROMPTS[24:40]]
    token, _ = _fresh_batch(stack, 2)
    victim = next(w for w in stack.workers if token.startswith(w.name + "/"))
    other = next(w for w in stack.workers if w is not victim)
    victim.kill_group()  # main process and pool child: its Celery message stays unacked
    held = stack.running_by_token().get(token, [])
    assert len(held) >= 2
    out = account(stack.engine, "worker_main_sigkill", ids, held_by_killed_batch=len(held))
    assert out["lost"] == 0, stack.logs()
    assert out["completed"] == len(ids)
    for r in _rows(stack, held).values():  # taken over by the surviving worker, once
        assert r.status == "done" and r.models == [3] and r.worker.startswith(other.name + "/")
    assert _taken_back(stack, held) == set(held)


def test_beat_stopped_workers_keep_serving_the_last_plan(stack):
    stack.ensure_workers(1)
    if stack.control is not None:
        stack.control.stop()
    # a beat that really plans (every second, the MILP over the live workers) and rebinds
    stack.control = spawn_worker(fault_env(stack.s, HADIS_PLAN_PERIOD_S=1.0), "hadis_control",
                                 stack.tmp, "beat", beat=True)
    wait_ready(stack.app, [stack.control])
    names = {w.name for w in stack.live_workers()}

    def planned():
        rows = store.latest_plans(stack.engine, 1)
        return bool(rows) and rows[0].planner == "hadis" and set(rows[0].bindings) == names

    _wait(stack, planned, 60, "a beat tick that plans and binds every worker")
    stack.control.kill_group()  # the planner's worker and its embedded beat

    def bound() -> dict[str, list[str]]:
        replies = stack.app.control.inspect(destination=sorted(names), timeout=3).active_queues()
        return {w: sorted(q["name"] for q in qs) for w, qs in (replies or {}).items()}

    queues = bound()
    r = stack.redis.client()
    plan_raw = r.get(PLAN_KEY)
    plan_id = json.loads(plan_raw)["plan_id"]
    assert set(queues) == names and all(len(q) == 1 for q in queues.values())
    ids = []
    for p in PROMPTS[36:46]:  # over several plan periods
        ids.append(stack.accept(p))  # the front door keeps accepting on the last plan
        time.sleep(0.3)
    res = account(stack.engine, "beat_stopped", ids, plan_id=plan_id, bindings=queues)
    assert res["lost"] == 0 and res["completed"] == len(ids), stack.logs()
    assert r.get(PLAN_KEY) == plan_raw and r.ttl(PLAN_KEY) == -1  # nothing expires
    assert all(store.get_query(stack.engine, i).plan_id == plan_id for i in ids)
    assert bound() == queues  # still bound as the beat left them
