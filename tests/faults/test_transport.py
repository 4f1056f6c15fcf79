"""The transport on its own (``hadis_celery.transport``): the message layout written once and
read back from a real Redis list, the one send operation (row first, then message), its
attempt rule and its one failure handling against a Redis that cannot be reached; and the
query states' transitions (``planner.status``)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from kombu.exceptions import OperationalError

from hadis_celery import db, store, transport
from hadis_celery.celery import make_app
from hadis_celery.settings import Settings
from hadis_celery.tables import QUERY_STATUSES, QueryRow
from hadis_celery.transport import GenerateMessage
from planner.status import FINAL, OPEN, TRANSITIONS, WAITING, QueryStatus, can_move
from tests.stack.conftest import BROKER

UNREACHABLE = "redis://127.0.0.1:1/0"  # nothing listens on port 1: every send fails at once


@pytest.fixture
def engine(tmp_path):
    e = store.serving_engine(f"sqlite:///{tmp_path / 'transport.sqlite'}")
    db.upgrade(e)
    yield e
    e.dispose()


def _row(engine, qid: str, now: float, **kw) -> None:
    base = dict(id=qid, client="t", prompt="a red ball", seed=1, slo_s=60,
                status=QueryStatus.QUEUED, queue="light_sdxl", route="light", hardness=0.0,
                models=[], attempts=1, received_at=now, deadline=now + 60, model_s=0.0,
                updated_at=now)
    base.update(kw)
    store.insert_query(engine, QueryRow(**base))


def test_the_layout_is_written_once_and_read_back():
    m = GenerateMessage("a" * 32, "light_sdxl", 3, 12.5, swapped=True)
    assert m.args() == ["a" * 32, "light_sdxl", 3, 12.5, True]
    assert GenerateMessage.from_args(m.args()) == m
    plain = GenerateMessage("b" * 32, "heavy_sd35_large", 1)
    assert plain.args(now=7.0) == ["b" * 32, "heavy_sd35_large", 1, 7.0]  # sent_at: now
    # a message of an older layout (no attempt, no sent_at) still reads
    assert GenerateMessage.from_args(["c" * 32, "light_sdxl"]) == GenerateMessage(
        "c" * 32, "light_sdxl", 0, None)
    with pytest.raises((ValueError, IndexError)):
        GenerateMessage.from_args(["only an id"])


def test_a_published_message_is_decoded_from_the_redis_list():
    app = make_app(Settings(broker_url=BROKER))
    queue = f"probe_{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(BROKER)
    try:
        sent = GenerateMessage("d" * 32, queue, 2, 99.25)
        transport.publish(app, sent)
        raws = r.lrange(queue, 0, -1)
        assert len(raws) == 1
        got = transport.decode(raws[0])
        assert got == sent and got.raw == raws[0]  # the very bytes, for LREM / push back
        assert transport.decode(b"not a message") is None
    finally:
        r.delete(queue)


def test_the_attempt_rule_is_the_rows_attempts():
    class Row:
        id, queue, attempts = "e" * 32, "light_sdxl", 4

    assert GenerateMessage.for_row(Row()).attempt == 4
    assert GenerateMessage.for_row(Row(), "heavy_x", attempts=5) == GenerateMessage(
        "e" * 32, "heavy_x", 5)
    Row.attempts = None  # a row from before attempts were counted: its first message
    assert GenerateMessage.for_row(Row()).attempt == 1
    handed = GenerateMessage("e" * 32, "light_sdxl", 2, 5.0, raw=b"x").handed_back(True)
    assert (handed.attempt, handed.sent_at, handed.swapped, handed.raw) == (2, 5.0, True, b"")
    assert not handed.handed_back().swapped  # given back by a full batch: may swap again


def test_dispatch_writes_the_row_then_sends(engine):
    app = make_app(Settings(broker_url=BROKER))
    queue = f"probe_{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(BROKER)
    now = time.time()
    seen_rows: list[int] = []

    def write() -> list[GenerateMessage]:
        _row(engine, "f" * 32, now, queue=queue)
        seen_rows.append(r.llen(queue))  # the message does not exist yet
        return [GenerateMessage.for_row(store.get_query(engine, "f" * 32))]

    try:
        sent = transport.dispatch(app, engine, write)
        assert seen_rows == [0] and [m.query_id for m in sent] == ["f" * 32]
        assert transport.decode(r.rpop(queue)).attempt == 1
        # a conditional write that found nothing to do sends nothing
        assert transport.dispatch(app, engine, lambda: []) == []
        assert r.llen(queue) == 0
    finally:
        r.delete(queue)


def test_an_unsent_message_leaves_its_row_back_dated_and_the_rest_too(engine):
    app = make_app(Settings(broker_url=UNREACHABLE), fast_fail=True)
    now = time.time()
    ids = ["1" * 32, "2" * 32]
    for qid in ids:
        _row(engine, qid, now)
    assert store.stale(engine, now - 300) == []
    msgs = [GenerateMessage(qid, "light_sdxl", 1) for qid in ids]
    with pytest.raises(OperationalError):  # the broker's own error reaches the caller
        transport.send_written(app, engine, msgs)
    # both rows wait for the next sweep (not HADIS_SWEEP_AFTER_S later), none was lost
    assert sorted(r.id for r in store.stale(engine, now - 300)) == ids
    assert all(store.get_query(engine, i).status == QueryStatus.QUEUED for i in ids)


def test_a_new_row_whose_message_cannot_be_sent_is_deleted_again(engine):
    app = make_app(Settings(broker_url=UNREACHABLE), fast_fail=True)
    now = time.time()

    def insert() -> list[GenerateMessage]:
        _row(engine, "9" * 32, now)
        return [GenerateMessage("9" * 32, "light_sdxl", 1)]

    with pytest.raises(OperationalError):
        transport.dispatch(app, engine, insert, created=True)
    assert store.get_query(engine, "9" * 32) is None  # nothing half-accepted


def test_the_states_and_their_moves():
    assert QUERY_STATUSES == tuple(QueryStatus)
    assert set(WAITING) | {QueryStatus.RUNNING} == set(OPEN)
    assert set(OPEN) | set(FINAL) == set(QueryStatus) and not set(OPEN) & set(FINAL)
    assert QueryStatus.DONE == "done" and f"{QueryStatus.REROUTED}" == "rerouted"
    for src in FINAL:
        assert TRANSITIONS[src] == frozenset()
        assert not any(can_move(src, dst) for dst in QueryStatus)
    # the moves the stack makes (store, workers, beat)
    for src, dst in [("queued", "running"), ("rerouted", "running"), ("running", "queued"),
                     ("running", "rerouted"), ("running", "done"), ("queued", "dropped"),
                     ("rerouted", "failed"), ("queued", "queued")]:
        assert can_move(src, dst), (src, dst)
    assert not can_move("queued", "done")  # only a worker holding the row serves it
    assert not can_move("running", "running")
    assert not can_move("nonsense", "queued") and not can_move("queued", "nonsense")
