"""The front door's send: one ``hadis.generate`` message and the arrival counters in one
Redis round trip.

``app.send_task`` costs about 1 ms here, most of it per-call set-up that a request does not
need: a kombu producer, a Redis client object built for every publish (kombu's Redis
channel), queue declarations, signals, and a second round trip for the demand counters.
The message itself is Celery's: headers and body come from ``app.amqp.as_task_v2`` (the
Celery task protocol 2) and the envelope is the one kombu's Redis transport ``LPUSH``es
(``prepare_message`` then ``basic_publish`` on the anonymous exchange), so a worker
cannot tell the two apart; ``tests/web/test_production.py`` compares them field by field
with a message ``send_task`` wrote. Brokers other than plain Redis (or with a key prefix)
go through ``send_task`` as before. ``send_many`` is the same for the front door's
micro-batch: every message of the batch and the counters in one pipeline.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence

import redis
from celery import Celery

from hadis_celery.live import ARRIVALS_KEY, PREFIX, connect
from hadis_celery.transport import GenerateMessage, envelope, plain_redis


class Publisher:
    """``send(query_id, queue, attempt, sent_at)``: the message, then the counters
    (``hadis:arrivals``, ``hadis:enq:<queue>``, what ``LiveState.count_arrival`` counts)."""

    def __init__(self, app: Celery, state: redis.Redis, state_url: str) -> None:
        self.app = app
        self.state = state
        self.fast = plain_redis(app)
        same = str(app.conf.broker_url) == state_url
        # the broker's client: the state's own when they are one Redis (then one pipeline)
        self.broker = (state if same else connect(str(app.conf.broker_url))) if self.fast \
            else None
        self.same = same and self.fast

    def message(self, query_id: str, queue: str, attempt: int, sent_at: float) -> bytes:
        """The JSON envelope kombu's Redis transport would push for ``send_task``."""
        return envelope(self.app, GenerateMessage(query_id, queue, attempt, sent_at))

    def send(self, query_id: str, queue: str, attempt: int, sent_at: float,
             fallback: Callable[[], None]) -> None:
        """Publish; raises on a Redis error before the message is known to be queued.
        ``fallback`` sends through Celery when the broker is not a plain Redis."""
        if not self.fast:
            fallback()
            self._count(queue, self.state.pipeline(transaction=False))
            return
        raw = self.message(query_id, queue, attempt, sent_at)
        pipe = self.broker.pipeline(transaction=False)
        pipe.lpush(queue, raw)
        if self.same:  # one round trip; a counter is demand, not the record
            pipe.incr(ARRIVALS_KEY)
            pipe.incr(f"{PREFIX}enq:{queue}")
            pushed = pipe.execute(raise_on_error=False)[0]
            if isinstance(pushed, Exception):
                raise pushed
            return
        pipe.execute()
        self._count(queue, self.state.pipeline(transaction=False))

    def send_many(self, msgs: Sequence[GenerateMessage],
                  fallback: Callable[[GenerateMessage], None]) -> list[Exception | None]:
        """Publish a batch (the front door's micro-batch) with its counters in one
        round trip (one pipeline, messages in order); per message its error or None. Raises
        when the round trip itself fails (then no message is known to be queued).
        ``fallback`` sends one message through Celery when the broker is not a plain
        Redis."""
        if not self.fast:
            errors: list[Exception | None] = []
            for m in msgs:
                try:
                    fallback(m)
                    errors.append(None)
                except Exception as exc:  # this one's own outcome; the rest go on
                    errors.append(exc)
            sent = [m.queue for m, e in zip(msgs, errors, strict=True) if e is None]
            self._count_many(sent, self.state.pipeline(transaction=False))
            return errors
        pipe = self.broker.pipeline(transaction=False)
        for m in msgs:
            pipe.lpush(m.queue, self.message(m.query_id, m.queue, m.attempt,
                                             m.sent_at if m.sent_at is not None else
                                             time.time()))
        if self.same:  # one round trip; a counter is demand, not the record
            self._incr(pipe, [m.queue for m in msgs])
        pushed = pipe.execute(raise_on_error=False)[:len(msgs)]
        errors = [x if isinstance(x, Exception) else None for x in pushed]
        if not self.same:
            sent = [m.queue for m, e in zip(msgs, errors, strict=True) if e is None]
            self._count_many(sent, self.state.pipeline(transaction=False))
        return errors

    @staticmethod
    def _incr(pipe, queues: Sequence[str]) -> None:
        if queues:
            pipe.incrby(ARRIVALS_KEY, len(queues))
            for q, n in Counter(queues).items():
                pipe.incrby(f"{PREFIX}enq:{q}", n)

    @classmethod
    def _count_many(cls, queues: Sequence[str], pipe) -> None:
        cls._incr(pipe, queues)
        try:
            pipe.execute()
        except redis.exceptions.RedisError:  # accepted already; demand is under-counted
            pass

    @classmethod
    def _count(cls, queue: str, pipe) -> None:
        cls._count_many([queue], pipe)
