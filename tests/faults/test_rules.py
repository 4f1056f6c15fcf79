"""The rules the fault tests rely on, on their own (SQLite file, no services): conditional
writes that keep a re-sent query from being recorded twice, the lease, the sweeper's
decision, the per-batch time limit, pluggable backends and the SQL back-off."""

from __future__ import annotations

import math
import time

import pytest

from hadis_celery import db, store
from hadis_celery.beat import DROP, FAIL, RESEND, sweep_action
from hadis_celery.celery import batch_time_limit_s, hard_time_limit_s, visibility_timeout_s
from hadis_celery.deployment import registry
from hadis_celery.settings import Settings
from hadis_celery.tables import QueryRow
from workers.backends import BackendError, backend_class, is_replay
from workers.serving import BatchTimeout, time_limit
from workers.tasks import sql_backoff_s


@pytest.fixture
def engine(tmp_path):
    e = store.serving_engine(f"sqlite:///{tmp_path / 'rules.sqlite'}")
    db.upgrade(e)
    yield e
    e.dispose()


def _row(engine, qid: str, now: float, **kw) -> None:
    base = dict(id=qid, client="t", prompt="a red ball", seed=1, slo_s=60, status="queued",
                queue="light_sdxl", route="light", hardness=0.0, models=[], attempts=1,
                received_at=now, deadline=now + 60, model_s=0.0, updated_at=now)
    base.update(kw)
    store.insert_query(engine, QueryRow(**base))


def test_a_result_is_recorded_only_by_the_batch_that_holds_the_row(engine):
    now = time.time()
    _row(engine, "a" * 32, now)
    assert [r.id for r in store.claim(engine, ["a" * 32], "light_sdxl", "w1/1/x", now)] \
        == ["a" * 32]
    # a duplicate message while it runs is a no-op
    assert store.claim(engine, ["a" * 32], "light_sdxl", "w2/2/y", now) == []
    # the lease lapsed: the sweeper puts it back (only if still as it read it) ...
    assert not store.sweep_update(engine, "a" * 32, "running", now - 10,
                                  {"status": "queued"}, now)
    assert store.sweep_update(engine, "a" * 32, "running", now + 1, {"status": "queued"}, now)
    # ... and another worker claims it; the first worker's late result is refused
    assert len(store.claim(engine, ["a" * 32], "light_sdxl", "w2/2/y", now)) == 1
    done = {"id": "a" * 32, "status": "done", "models": [0], "finished_at": now}
    assert store.finish(engine, [done], now, token="w1/1/x") == []
    assert store.finish(engine, [done], now, token="w2/2/y") == ["a" * 32]
    assert store.finish(engine, [done], now, token="w2/2/y") == []  # final: no second write
    row = store.get_query(engine, "a" * 32)
    assert row.status == "done" and row.worker == "w2/2/y" and row.models == [0]


def test_the_holder_may_still_finish_a_row_put_back_but_not_claimed_again(engine):
    now = time.time()
    _row(engine, "b" * 32, now)
    store.claim(engine, ["b" * 32], "light_sdxl", "w1/1/x", now)
    store.sweep_update(engine, "b" * 32, "running", now + 1, {"status": "queued"}, now)
    assert store.finish(engine, [{"id": "b" * 32, "status": "done"}], now,
                        token="w1/1/x") == ["b" * 32]
    assert store.claim(engine, ["b" * 32], "light_sdxl", "w2/2/y", now) == []  # re-sent: no-op


def test_the_lease_keeps_running_rows_out_of_the_sweep_until_it_lapses(engine):
    now = time.time()
    _row(engine, "c" * 32, now - 100)
    _row(engine, "d" * 32, now - 100)
    store.claim(engine, ["c" * 32, "d" * 32], "light_sdxl", "w1/1/x", now - 100)
    assert store.renew(engine, "w1/1/x", now) == 2
    assert store.stale(engine, now - 300, lease_before=now - 30) == []
    stale = store.stale(engine, now - 300, lease_before=now + 1)
    assert sorted(r.id for r in stale) == ["c" * 32, "d" * 32]
    assert store.renew(engine, "w9/9/z", now) == 0


def test_an_unsent_message_is_swept_at_once(engine):
    now = time.time()
    _row(engine, "e" * 32, now)
    assert store.stale(engine, now - 300) == []
    store.mark_unsent(engine, ["e" * 32])
    assert [r.id for r in store.stale(engine, now - 300)] == ["e" * 32]


@pytest.mark.parametrize(("now", "attempts", "action"), [
    (100.0, 1, RESEND), (100.0, 4, RESEND), (100.0, 5, FAIL), (200.0, 1, DROP), (200.0, 9, DROP)])
def test_sweep_action(now, attempts, action):
    assert sweep_action(now, deadline=150.0, attempts=attempts, max_attempts=5) == action


def test_time_limits_follow_the_predicted_batch_time():
    s = Settings(task_timeout_min_s=60.0, task_timeout_factor=3.0, time_factor=1.0)
    assert batch_time_limit_s(s, 5.0) == 60.0 and batch_time_limit_s(s, 100.0) == 300.0
    reg = registry(s)
    hard = hard_time_limit_s(s, reg)
    assert hard > batch_time_limit_s(s, 351.0)  # beyond every batch's own limit
    assert visibility_timeout_s(reg, 1.0, hard) > hard  # never redelivered while it runs
    assert hard_time_limit_s(Settings(task_hard_timeout_s=4.0), reg) == 4.0


def test_time_limit_interrupts_a_block_and_is_disarmed_after():
    with pytest.raises(BatchTimeout, match="too slow"), time_limit(0.05, "too slow"):
        time.sleep(5)
    with time_limit(0.5, "not reached"):
        pass
    time.sleep(0.6)  # no stray alarm after the block


def test_backends_load_by_module_and_class_name():
    from tests.faults.backends import HangingBackend

    assert backend_class("tests.faults.backends:HangingBackend") is HangingBackend
    assert is_replay("tests.faults.backends:HangingBackend") and is_replay("replay")
    assert not is_replay("tiny") and not is_replay("nope.nope:Nope")
    with pytest.raises(BackendError, match="cannot import"):
        backend_class("no.such.module:Backend")
    with pytest.raises(BackendError, match="not a workers.backends.Backend subclass"):
        backend_class("math:floor")
    with pytest.raises(BackendError, match="package.module:ClassName"):
        backend_class(":Backend")


def test_sql_back_off_grows_and_is_capped():
    assert [sql_backoff_s(n) for n in (1, 2, 3, 4, 5, 50)] == [0.5, 1, 2, 4, 5, 5]
    assert math.isfinite(sql_backoff_s(10_000))
