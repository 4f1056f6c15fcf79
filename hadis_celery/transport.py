"""The transport of a query: its ``hadis.generate`` message, and the one way one is sent.

SQL is the record, Redis the transport. Every sender (the front door, a worker handing a
message back or rerouting to the heavy queue, the beat moving orphans, re-sending after a
lost worker or message, recovering after Redis lost its data) does the same thing:

1. **the row first**: the SQL write that makes the row wait for this message (an insert, a
   reroute, a conditional re-send); a row that is not written gets no message;
2. **then the message**, built from the written row (``GenerateMessage.for_row``: its
   ``attempt`` is the row's ``attempts``, the one attempt rule);
3. **one failure handling** (``unsent``): a message that cannot be sent (Redis down) leaves
   its row, and the rows of the messages after it in the same call, back-dated
   (``store.mark_unsent``) so the next sweep sends them, with one ``query.unsent`` event
   each; a row the same call *created* (the front door's insert) is deleted again instead,
   so nothing half-accepted is left. The error is then raised to the caller, which decides
   whether to go on (a worker) or stop (the beat, the front door's 503).

``dispatch`` sends one by one; ``dispatch_many`` is its batch form (the front door's
micro-batch: one multi-row write, one pipeline), where each message keeps its own outcome.

The message layout ``[query_id, queue, attempt, sent_at(, swapped)]`` is written by
``GenerateMessage.args`` and read by ``GenerateMessage.from_args`` (the task
``workers.tasks.generate`` and ``decode``, which reads a raw kombu envelope from a queue list).
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy import Engine

from hadis_celery import store
from hadis_celery.logs import event

log = logging.getLogger(__name__)
GENERATE_TASK = "hadis.generate"


class _Sender(Protocol):  # a Celery app, as far as sending is concerned
    def send_task(self, name: str, *args: object, **kwargs: object) -> object: ...


class _Row(Protocol):  # a query row (``tables.QueryRow``), as far as its message is concerned
    id: str
    queue: str
    attempts: int | None


@dataclass(frozen=True)
class GenerateMessage:
    """One ``hadis.generate`` message: the query it carries and where it goes.

    ``attempt``: the row's ``attempts`` when it was sent; ``sent_at``: epoch seconds of the
    first send of this copy (None: now, when it is sent); ``swapped``: handed back once by a
    worker swapping models (not again); ``raw``: the envelope, when read from a queue list
    (``LiveState.remove_messages`` and ``push_back`` need the very bytes)."""

    query_id: str
    queue: str
    attempt: int = 0
    sent_at: float | None = None
    swapped: bool = False
    raw: bytes = field(default=b"", compare=False, repr=False)

    @classmethod
    def for_row(cls, row: _Row, queue: str | None = None, *, attempts: int | None = None,
                sent_at: float | None = None) -> GenerateMessage:
        """The message for a row just written to wait on ``queue`` (its own by default).
        The attempt rule, for every sender: the message carries the row's ``attempts`` as
        written (``attempts`` when the caller wrote a new value the row object does not
        hold yet), at least 1 (the front door's first message is attempt 1)."""
        n = row.attempts if attempts is None else attempts
        return cls(str(row.id), str(row.queue if queue is None else queue), int(n or 1),
                   sent_at)

    def handed_back(self, swapped: bool = False) -> GenerateMessage:
        """The same message re-sent (a worker gives it back: the same attempt, the same
        first-sent time), marked ``swapped`` only when a swapping worker hands it back (a
        batch that gives back what did not fit clears the mark)."""
        return replace(self, swapped=swapped, raw=b"")

    def args(self, now: float | None = None) -> list:
        """The task's positional arguments (the wire layout)."""
        sent = self.sent_at if self.sent_at is not None else (
            time.time() if now is None else now)
        out: list = [self.query_id, self.queue, int(self.attempt), float(sent)]
        if self.swapped:
            out.append(True)
        return out

    @classmethod
    def from_args(cls, args: Sequence[object], raw: bytes = b"") -> GenerateMessage:
        """Read ``args`` (raises ``ValueError``/``TypeError``/``IndexError`` when they are
        not a message's)."""
        attempt = int(args[2]) if len(args) > 2 else 0
        sent_at = float(args[3]) if len(args) > 3 and args[3] is not None else None
        swapped = bool(args[4]) if len(args) > 4 else False
        return cls(str(args[0]), str(args[1]), attempt, sent_at, swapped, raw)


def decode(raw: bytes) -> GenerateMessage | None:
    """The message a raw kombu/Celery envelope (as on a Redis queue list) carries, or None
    when it is not a ``hadis.generate`` message."""
    try:
        env = json.loads(raw)
        if env.get("headers", {}).get("task") != GENERATE_TASK:
            return None
        body = env["body"]
        if env.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return GenerateMessage.from_args(json.loads(body)[0], raw)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def plain_redis(app) -> bool:
    """Whether the broker is a plain Redis (no key prefix), whose queue lists the stack may
    read and write directly (``envelope``, ``LiveState.drain``/``push_back``)."""
    url = str(app.conf.broker_url or "")
    opts = app.conf.broker_transport_options or {}
    return url.startswith("redis://") and not opts.get("global_keyprefix")


def envelope(app, msg: GenerateMessage, now: float | None = None) -> bytes:
    """The JSON envelope kombu's Redis transport would push for ``publish(app, msg)``:
    Celery's own headers and body (``app.amqp.as_task_v2``, task protocol 2) in kombu's
    envelope, so a worker cannot tell the two apart (``tests/web/test_production.py``
    compares them field by field). What lets a sender put a message where ``send_task``
    cannot: at the head of a list (a message handed back keeps its place in line)."""
    task_id = str(uuid.uuid4())
    m = app.amqp.as_task_v2(task_id, GENERATE_TASK, args=msg.args(now), kwargs={},
                            ignore_result=True)
    body = json.dumps(m.body).encode()
    props = {**m.properties, "reply_to": app.thread_oid, "delivery_mode": 2,
             "delivery_info": {"exchange": "", "routing_key": msg.queue}, "priority": 0,
             "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}
    env = {"body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
           "content-type": "application/json", "headers": m.headers, "properties": props}
    return json.dumps(env).encode()


def publish(app: _Sender, msg: GenerateMessage) -> None:
    """Publish ``msg`` through Celery on its queue (no retry: ``dispatch`` handles a
    failure)."""
    app.send_task(GENERATE_TASK, args=msg.args(), queue=msg.queue, routing_key=msg.queue,
                  retry=False, ignore_result=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unsent(engine: Engine, msgs: Sequence[GenerateMessage], exc: BaseException,
           created: bool = False) -> None:
    """The one failure handling of a send (module doc): back-date the rows of ``msgs`` for
    the next sweep, one ``query.unsent`` event each; with ``created``, delete them (nothing
    accepted). An SQL error here is logged, not raised: the caller raises ``exc``."""
    ids = [m.query_id for m in msgs]
    if not ids:
        return
    if created:
        try:
            store.delete_queries(engine, ids)
        except Exception:  # SQL went too: the rows stay, the sweeper sends them
            pass
        return
    for m in msgs:
        event(log, "query.unsent", logging.WARNING, query_id=m.query_id, queue=m.queue,
              reason=f"message not sent ({_first_line(exc)}); the next sweep sends it")
    try:
        store.mark_unsent(engine, ids)
    except Exception as exc2:  # then the sweeper finds them after HADIS_SWEEP_AFTER_S
        log.warning("cannot mark %d rows unsent (%s)", len(ids), _first_line(exc2))


def dispatch(app: _Sender, engine: Engine, write: Callable[[], Iterable[GenerateMessage]],
             *, created: bool = False,
             send: Callable[[GenerateMessage], None] | None = None) -> list[GenerateMessage]:
    """The row first, then the message: ``write()`` does the SQL write and returns the
    messages of the rows it made wait (``GenerateMessage.for_row``; none when its
    conditional write found the row changed), then ``send_written`` sends them.
    ``created``: ``write`` inserted the rows (the front door). Returns the messages sent."""
    return send_written(app, engine, list(write()), created=created, send=send)


def send_written(app: _Sender, engine: Engine, msgs: Sequence[GenerateMessage], *,
                 created: bool = False,
                 send: Callable[[GenerateMessage], None] | None = None
                 ) -> list[GenerateMessage]:
    """Send ``msgs``, whose rows are written already (a worker writes a whole batch's
    outcomes in one transaction first; a handed-back message's row is unchanged), in order.
    On the first that cannot be sent, ``unsent`` handles it and the rest, and the error is
    raised. ``send``: publish another way than ``publish`` (the front door's one-round-trip
    publisher). Returns ``msgs``."""
    msgs = list(msgs)
    for i, m in enumerate(msgs):
        try:
            if send is None:
                publish(app, m)
            else:
                send(m)
        except Exception as exc:
            unsent(engine, msgs[i:], exc, created=created)
            raise
    return msgs


def dispatch_many(engine: Engine, write: Callable[[], Iterable[GenerateMessage]],
                  send_many: Callable[[Sequence[GenerateMessage]],
                                      Sequence[BaseException | None]],
                  *, created: bool = False
                  ) -> list[tuple[GenerateMessage, BaseException | None]]:
    """The batch form of ``dispatch`` (the front door's micro-batch): ``write()`` writes the
    rows of many messages at once (one multi-row ``INSERT``) and returns their messages,
    then ``send_many(msgs)`` sends them all at once (one Redis pipeline) and answers, per
    message, its error or None (raising means every message failed). The rows of the
    messages not sent go through ``unsent`` as in ``dispatch`` (deleted when ``created``),
    but nothing is raised: each message keeps its own outcome, so one request's failure is
    not its neighbour's. An error of ``write()`` is raised (no row, no message)."""
    msgs = list(write())
    if not msgs:
        return []
    try:
        errors: list[BaseException | None] = list(send_many(msgs))
        if len(errors) != len(msgs):
            raise RuntimeError(f"send_many answered {len(errors)} outcomes for "
                               f"{len(msgs)} messages")
    except Exception as exc:
        errors = [exc] * len(msgs)
    failed = [m for m, e in zip(msgs, errors, strict=True) if e is not None]
    if failed:
        first = next(e for e in errors if e is not None)
        unsent(engine, failed, first, created=created)
    return list(zip(msgs, errors, strict=True))
