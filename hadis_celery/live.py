"""The live state of the stack in Redis: the published plan, arrival counters, queue
lengths, worker heartbeats, rate-limit windows, and raw access to Celery's queue lists.

Redis is the transport, SQL the record: everything here can be lost and rebuilt (the plan
is re-published every beat period and at once after Redis lost it, queued messages are
re-sent from SQL, counters restart at zero, heartbeats expire). Every
call is one round trip (pipelined), with short socket timeouts so that a Redis outage
surfaces as ``redis.exceptions.ConnectionError`` / ``TimeoutError`` within about a second.

Worker-side batching reads Celery's Redis lists directly: kombu's Redis transport
``LPUSH``es each message (JSON envelope, base64 body) onto a list named after the queue and
consumers pop from the right, so ``RPOP queue n`` takes the next ``n`` messages in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence

import redis

from hadis_celery.transport import GENERATE_TASK as GENERATE_TASK  # re-exported
from hadis_celery.transport import GenerateMessage
from hadis_celery.transport import decode as decode_message
from planner.policy import ActivePlan

PREFIX = "hadis:"
PLAN_KEY = PREFIX + "plan"
ARRIVALS_KEY = PREFIX + "arrivals"
BEAT_KEY = PREFIX + "beat"
# Written by the beat's recovery (``hadis_celery.beat.PlanLoop.recover``) after it re-sent every
# waiting query from SQL: a Redis that lost its data (restart without persistence, flush)
# lost this key with the queues, and the next tick or sweep notices and re-sends.
EPOCH_KEY = PREFIX + "epoch"
# Set by a worker that could not write an image (disk full, read-only store), with a time to
# live of ``HADIS_STORAGE_RETRY_S``; a successful write deletes it. While it exists the front
# door refuses new work and ``/v1/health`` reports it (``LiveState.storage_fault``).
STORAGE_KEY = PREFIX + "storage"


def connect(url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A client that fails fast (``timeout_s`` to connect and per command)."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                socket_timeout=max(timeout_s, 2.0), health_check_interval=30)


class LiveState:
    """Typed access to the keys above on one Redis client."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 1.0) -> LiveState:
        return cls(connect(url, timeout_s))

    def ping(self) -> bool:
        return bool(self.r.ping())

    # -- plan -------------------------------------------------------------------------
    def get_plan(self) -> ActivePlan | None:
        raw = self.r.get(PLAN_KEY)
        return None if raw is None else ActivePlan.from_dict(json.loads(raw))

    def publish_plan(self, plan: ActivePlan) -> None:
        """No expiry: when the beat is down, everyone keeps the last plan."""
        self.r.set(PLAN_KEY, json.dumps(plan.to_dict()))

    def plan_and_rate(self, client_key: str, window_s: int = 60
                      ) -> tuple[ActivePlan | None, int]:
        """The active plan and this client's request count in the current window (one RTT)."""
        win = int(time.time() // window_s)
        key = f"{PREFIX}rl:{client_key}:{win}"
        pipe = self.r.pipeline(transaction=False)
        pipe.get(PLAN_KEY)
        pipe.incr(key)
        pipe.expire(key, 2 * window_s)
        raw, count, _ = pipe.execute()
        return (None if raw is None else ActivePlan.from_dict(json.loads(raw))), int(count)

    # -- demand -----------------------------------------------------------------------
    def count_arrival(self, queue: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.incr(ARRIVALS_KEY)
        pipe.incr(f"{PREFIX}enq:{queue}")
        pipe.execute()

    def count_enqueue(self, queue: str) -> None:
        self.r.incr(f"{PREFIX}enq:{queue}")

    def take_counters(self, queues: Sequence[str]) -> tuple[int, dict[str, int]]:
        """Arrivals and per-queue enqueues since the last call (counters reset to zero)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.getdel(ARRIVALS_KEY)
        for q in queues:
            pipe.getdel(f"{PREFIX}enq:{q}")
        vals = pipe.execute()
        return int(vals[0] or 0), {q: int(v or 0) for q, v in zip(queues, vals[1:], strict=True)}

    def queue_lengths(self, queues: Sequence[str]) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        return {q: int(n) for q, n in zip(queues, pipe.execute(), strict=True)}

    def get_json(self, key: str) -> dict | None:
        raw = self.r.get(key)
        return None if raw is None else json.loads(raw)

    def set_json(self, key: str, value: dict, ttl_s: float | None = None) -> None:
        self.r.set(key, json.dumps(value), ex=None if ttl_s is None else max(1, int(ttl_s)))

    # -- recovery -------------------------------------------------------------------------
    def epoch(self) -> dict | None:
        """The recovery marker (None: this Redis has not been recovered into since it
        started empty, so every queued message it held may be gone)."""
        return self.get_json(EPOCH_KEY)

    def set_epoch(self, value: dict) -> None:
        self.set_json(EPOCH_KEY, value)

    def lock(self, name: str, timeout_s: float):
        """A Redis lock ``hadis:lock:<name>`` that expires after ``timeout_s`` (a holder that
        died cannot keep it): one sweeper at a time reads the lists and removes copies."""
        return self.r.lock(f"{PREFIX}lock:{name}", timeout=timeout_s)

    # -- the image store --------------------------------------------------------------
    def storage_fault(self) -> dict | None:
        """Why the image store cannot be written now (``{"worker", "dir", "error", "t"}``),
        or None when no worker failed to write an image in the last
        ``HADIS_STORAGE_RETRY_S``. The front door and ``/v1/health`` call this."""
        return self.get_json(STORAGE_KEY)

    def set_storage_fault(self, info: dict, ttl_s: float) -> None:
        self.set_json(STORAGE_KEY, info, ttl_s)

    def clear_storage_fault(self) -> None:
        self.r.delete(STORAGE_KEY)

    # -- workers ----------------------------------------------------------------------
    def heartbeat(self, worker: str, info: dict, ttl_s: float) -> None:
        self.set_json(f"{PREFIX}worker:{worker}", info, ttl_s)

    def live_workers(self) -> dict[str, dict]:
        """Workers whose heartbeat has not expired: name -> last heartbeat."""
        keys = sorted(self.r.scan_iter(match=f"{PREFIX}worker:*", count=500))
        if not keys:
            return {}
        out = {}
        for k, v in zip(keys, self.r.mget(keys), strict=True):
            if v is not None:
                out[k.decode().split(":", 2)[2]] = json.loads(v)
        return out

    # -- raw queue access (worker-side batching, orphan moves) ---------------------------
    def drain(self, queue: str, n: int) -> list[GenerateMessage]:
        """Take up to ``n`` ``hadis.generate`` messages from ``queue`` (oldest first).
        Anything else popped by mistake is pushed back where it was."""
        if n <= 0:
            return []
        raws = self.r.rpop(queue, n) or []
        out, foreign = [], []
        for raw in raws:
            msg = decode_message(raw)
            (out if msg is not None else foreign).append(msg if msg is not None else raw)
        if foreign:
            self.r.rpush(queue, *reversed(foreign))
        return out

    def messages(self, queues: Sequence[str]) -> dict[str, list[GenerateMessage]]:
        """Every ``hadis.generate`` message waiting on each queue, oldest first, read
        without taking them (one pipelined round trip; the sweeper and the pruner use it)."""
        pipe = self.r.pipeline(transaction=False)
        for q in queues:
            pipe.lrange(q, 0, -1)
        out: dict[str, list[GenerateMessage]] = {}
        for q, raws in zip(queues, pipe.execute(), strict=True):
            msgs = [m for m in map(decode_message, reversed(raws or [])) if m is not None]
            out[q] = msgs
        return out

    def remove_messages(self, queue: str, msgs: Iterable[GenerateMessage]) -> int:
        """Remove these very messages from ``queue`` (one copy each; a message a worker took
        meanwhile is simply not found). Returns how many were removed."""
        raws = [m.raw for m in msgs if m.raw]
        if not raws:
            return 0
        pipe = self.r.pipeline(transaction=False)
        for raw in raws:
            pipe.lrem(queue, 1, raw)
        return int(sum(int(n or 0) for n in pipe.execute()))

    def push_back(self, queue: str, msgs: Iterable[GenerateMessage]) -> None:
        """Return messages to the head of ``queue`` (they were next in line)."""
        raws = [m.raw for m in msgs]
        if raws:
            self.r.rpush(queue, *reversed(raws))
