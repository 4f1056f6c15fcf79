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

import base64
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from hadis_celery.policy import ActivePlan

PREFIX = "hadis:"
PLAN_KEY = PREFIX + "plan"
ARRIVALS_KEY = PREFIX + "arrivals"
BEAT_KEY = PREFIX + "beat"
# Written by the beat's recovery (``planner.beat.PlanLoop.recover``) after it re-sent every
# waiting query from SQL: a Redis that lost its data (restart without persistence, flush)
# lost this key with the queues, and the next tick or sweep notices and re-sends.
EPOCH_KEY = PREFIX + "epoch"
GENERATE_TASK = "hadis.generate"


def connect(url: str, timeout_s: float = 1.0) -> redis.Redis:
    """A client that fails fast (``timeout_s`` to connect and per command)."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout_s,
                                socket_timeout=max(timeout_s, 2.0), health_check_interval=30)


@dataclass(frozen=True)
class QueuedMessage:
    """A ``hadis.generate`` message taken raw from a queue list."""

    query_id: str
    queue: str
    attempt: int = 0
    sent_at: float | None = None
    raw: bytes = b""
    swapped: bool = False  # handed back once by a worker swapping models: not again


def decode_message(raw: bytes) -> QueuedMessage | None:
    """The query a kombu/Celery message carries, or None when it is not ours."""
    try:
        env = json.loads(raw)
        if env.get("headers", {}).get("task") != GENERATE_TASK:
            return None
        body = env["body"]
        if env.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        attempt = int(args[2]) if len(args) > 2 else 0
        sent_at = float(args[3]) if len(args) > 3 and args[3] is not None else None
        swapped = bool(args[4]) if len(args) > 4 else False
        return QueuedMessage(str(args[0]), str(args[1]), attempt, sent_at, raw, swapped)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


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
    def drain(self, queue: str, n: int) -> list[QueuedMessage]:
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

    def push_back(self, queue: str, msgs: Iterable[QueuedMessage]) -> None:
        """Return messages to the head of ``queue`` (they were next in line)."""
        raws = [m.raw for m in msgs]
        if raws:
            self.r.rpush(queue, *reversed(raws))
