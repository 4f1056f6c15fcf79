"""Issue 17, the front door's micro-batch: requests that arrive together are scored in one
router batch, written in one multi-row INSERT and sent in one Redis pipeline, each keeping
its own id, routing and outcome; a message that cannot be sent leaves no accepted row.
Real Redis (database 9), SQL (SQLite and PostgreSQL) and the real router."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from hadis_celery import store
from hadis_celery.celery import make_app
from hadis_celery.live import LiveState
from hadis_celery.transport import decode
from planner import policy
from tests.stack.conftest import CLOSED_REDIS
from tests.web.conftest import BROKER, default_plan, wait_for
from webapp.frontdoor import ApiError, FrontDoor, GenerationRequest, Submission

N = 8


class GatedRouter:
    """The real router; the first ``score`` waits for ``gate`` (so the requests behind it
    queue up), and ``refuse`` is a prompt it rejects as the router rejects bad input."""

    def __init__(self, router, refuse: str | None = None) -> None:
        self.router, self.refuse = router, refuse
        self.gate, self.entered = threading.Event(), threading.Event()
        self.batches: list[int] = []
        self._first = True

    def score(self, prompt: str) -> float:
        if self._first:
            self._first = False
            self.entered.set()
            assert self.gate.wait(30)
        if prompt == self.refuse:
            raise ValueError("this prompt cannot be read")
        return self.router.score(prompt)

    def score_many(self, prompts):
        self.batches.append(len(prompts))
        if self.refuse in prompts:
            raise ValueError("prompt 1: this prompt cannot be read")
        return self.router.score_many(prompts)


def _door(stack, router, **kw) -> FrontDoor:
    s = dataclasses.replace(stack.s, **kw)
    base = stack.app.extensions["hadis"]
    return FrontDoor(s, base.engine, LiveState.from_url(s.state_url),
                     make_app(s, fast_fail=True), router, base.registry)


def _pin(queue: str):
    return lambda plan: (policy.LIGHT, queue)


def _queued(r: redis.Redis, queue: str) -> list[str]:
    return [m.query_id for m in map(decode, r.lrange(queue, 0, -1)) if m is not None]


def test_concurrent_posts_are_one_batch_with_their_own_ids_and_routing(stack, web_router):
    """N requests waiting behind a busy leader are accepted as one batch: N rows, N
    messages in arrival order, each row with its own id and its own router score."""
    stack.use_plan(default_plan())
    router = GatedRouter(web_router)
    door = _door(stack, router)
    q = f"probe_{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(BROKER)
    prompts = [f"a lighthouse at dusk, oil painting number {i} {uuid.uuid4().hex[:6]}"
               for i in range(N + 1)]

    def post(p: str):
        return door.submit(GenerationRequest(p, None, None), "batch-test", time.time(),
                           pin=_pin(q))

    with ThreadPoolExecutor(N + 1) as pool:
        first = pool.submit(post, prompts[0])
        assert router.entered.wait(30)  # the leader holds the batch of one
        rest = [pool.submit(post, p) for p in prompts[1:]]
        wait_for(lambda: len(door._waiting) == N or None, 30, 0.01, "the requests to queue")
        router.gate.set()
        out = [first.result(60), *(f.result(60) for f in rest)]
    assert door.batches == 2 and door.batched == N + 1
    assert router.batches == [N]  # the N that waited: one router batch
    rows = [row for row, _ in out]
    ids = [row.id for row in rows]
    assert len(set(ids)) == N + 1
    assert sorted(_queued(r, q)) == sorted(ids)  # one message each, nothing more
    for p, row in zip(prompts, rows, strict=True):
        got = store.get_query(door.engine, row.id)
        assert got is not None and got.prompt == p and got.status == "queued"
        assert got.queue == q and got.attempts == 1
        assert got.hardness == pytest.approx(web_router.score(p), abs=1e-9)
    r.delete(q)


def test_concurrent_http_posts_are_each_served(stack):
    """Concurrent HTTP posts to the served app (threaded server): each answered 202 with
    its own id, and each of its queries served (so each got its own message)."""
    import json
    import urllib.request

    stack.use_plan(default_plan())

    def post(i: int) -> dict:
        req = urllib.request.Request(
            f"{stack.url}/v1/generations", method="POST",
            data=json.dumps({"prompt": f"a paper boat on a pond {i} {uuid.uuid4().hex}"})
            .encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202
            return json.loads(resp.read())

    def batching() -> dict[str, float]:
        with urllib.request.urlopen(f"{stack.url}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        return {k: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                for k in ("batches", "requests")
                if line.startswith(f'hadis_frontdoor_batches{{kind="{k}"}}')}

    before = batching()
    with ThreadPoolExecutor(N) as pool:
        got = list(pool.map(post, range(N)))
    ids = [g["id"] for g in got]
    assert len(set(ids)) == N
    after = batching()  # /metrics shows the batches: every request in one, at most N of them
    assert after["requests"] - before["requests"] == N
    assert 1 <= after["batches"] - before["batches"] <= N
    for qid in ids:
        assert stack.wait_done(qid)["status"] == "done"


def test_a_message_not_sent_mid_batch_leaves_no_row_and_only_its_request_fails(stack,
                                                                              web_router):
    """One message of a batch cannot be pushed (its queue key is not a list: Redis refuses
    that LPUSH alone): that request fails and its row is deleted; the others are accepted."""
    stack.use_plan(default_plan())
    door = _door(stack, web_router)
    r = redis.Redis.from_url(BROKER)
    ok, bad = f"probe_{uuid.uuid4().hex[:8]}", f"probe_{uuid.uuid4().hex[:8]}"
    r.set(bad, "not a list")
    batch = [Submission(GenerationRequest(f"a red bicycle {i} {uuid.uuid4().hex[:6]}", None,
                                          None), "batch-test", time.time(),
                        pin=_pin(bad if i == 2 else ok)) for i in range(5)]
    door.accept(batch)
    assert all(b.done for b in batch)
    failed = batch[2]
    assert isinstance(failed.error, redis.exceptions.ResponseError) and failed.row is None
    assert store.get_query(door.engine, failed.values["id"]) is None  # no stranded row
    good = [b for i, b in enumerate(batch) if i != 2]
    assert all(b.error is None and b.row is not None for b in good)
    assert _queued(r, ok)[::-1] == [b.row.id for b in good]  # LPUSH: newest first
    for b in good:
        assert store.get_query(door.engine, b.row.id).status == "queued"
    r.delete(ok, bad)


def test_redis_down_for_the_whole_batch_leaves_no_rows(stack, web_router):
    """The broker is unreachable: every request of the batch fails with the connection
    error (the API's 503) and none of their rows is left."""
    stack.use_plan(default_plan())
    door = _door(stack, web_router, broker_url=CLOSED_REDIS, redis_url=BROKER)
    batch = [Submission(GenerationRequest(f"a green kite {i}", None, None), "batch-test",
                        time.time()) for i in range(4)]
    door.accept(batch)
    for b in batch:
        assert isinstance(b.error, redis.exceptions.ConnectionError), b.error
        assert b.values and store.get_query(door.engine, b.values["id"]) is None


def test_a_prompt_the_router_refuses_fails_alone(stack, web_router):
    """The router's batch refuses one prompt: the batch is scored one by one, that
    request gets its 400 and the others are accepted."""
    stack.use_plan(default_plan())
    bad = "an unreadable prompt"
    door = _door(stack, GatedRouter(web_router, refuse=bad))
    door.router._first = False  # no gate here
    q = f"probe_{uuid.uuid4().hex[:8]}"
    prompts = ["a white horse", bad, "a black cat"]
    batch = [Submission(GenerationRequest(p, None, None), "batch-test", time.time(),
                        pin=_pin(q)) for p in prompts]
    door.accept(batch)
    assert isinstance(batch[1].error, ApiError) and batch[1].error.status == 400
    assert not batch[1].values  # never written
    assert batch[0].row is not None and batch[2].row is not None
    assert sorted(_queued(redis.Redis.from_url(BROKER), q)) == sorted(
        [batch[0].row.id, batch[2].row.id])
    redis.Redis.from_url(BROKER).delete(q)


def test_no_plan_fails_every_request_of_the_batch(stack, web_router):
    door = _door(stack, web_router)
    r = redis.Redis.from_url(BROKER)
    from hadis_celery.live import PLAN_KEY

    saved = r.get(PLAN_KEY)
    r.delete(PLAN_KEY)
    try:
        batch = [Submission(GenerationRequest(f"a boat {i}", None, None), "t", time.time())
                 for i in range(3)]
        door.accept(batch)
    finally:
        if saved is not None:
            r.set(PLAN_KEY, saved)
    assert all(isinstance(b.error, ApiError) and b.error.code == "no_plan" for b in batch)


def test_a_row_sql_refuses_fails_alone(stack, web_router):
    """One row of the batch is refused by SQL (PostgreSQL: a queue name over the column's
    64 characters; SQLite does not check lengths and keeps it): the batch is inserted row
    by row, that request fails with the SQL error and sends nothing, the others are
    accepted and sent."""
    from sqlalchemy.exc import DBAPIError

    stack.use_plan(default_plan())
    door = _door(stack, web_router)
    r = redis.Redis.from_url(BROKER)
    ok, long = f"probe_{uuid.uuid4().hex[:8]}", "q" * 100
    batch = [Submission(GenerationRequest(f"a tin robot {i}", None, None), "batch-test",
                        time.time(), pin=_pin(long if i == 1 else ok)) for i in range(3)]
    door.accept(batch)
    good = [batch[0], batch[2]]
    assert all(b.error is None and b.row is not None for b in good)
    assert sorted(_queued(r, ok)) == sorted(b.row.id for b in good)
    if stack.kind == "postgresql":
        assert isinstance(batch[1].error, DBAPIError) and batch[1].row is None
        assert store.get_query(door.engine, batch[1].values["id"]) is None
        assert r.llen(long) == 0
    else:
        assert batch[1].row is not None and _queued(r, long) == [batch[1].row.id]
    r.delete(ok, long)
