"""A backend that hangs: the per-batch time limit fails the batch's queries with the reason
and frees the worker; a backend that cannot even be interrupted is killed by Celery's hard
limit, and the query is failed once it used up ``HADIS_MAX_ATTEMPTS``, never re-run forever.

The workers load ``tests.faults.backends:HangingBackend`` through ``HADIS_BACKEND``: replay,
except for prompts that say ``hang soft`` or ``hang hard``."""

from __future__ import annotations

import math

import pytest

from tests.faults.backends import HARD, SOFT
from tests.faults.conftest import PROMPTS, account, alive, fault_stack
from tests.stack.conftest import plan_for

HARD_LIMIT_S = 4.0
MAX_ATTEMPTS = 2


@pytest.fixture(scope="module")
def stack(tmp_path_factory, router):
    tmp = tmp_path_factory.mktemp("faults-hang")
    url = f"sqlite:///{tmp / 'hadis.sqlite'}"
    from hadis_celery import db

    e = db.make_engine(url)
    db.upgrade(e)
    e.dispose()
    with fault_stack(tmp, url, router, "light_sdxl,heavy_sd35_large", 1,
                     backend="tests.faults.backends:HangingBackend", task_timeout_min_s=1.0,
                     task_timeout_factor=3.0, task_hard_timeout_s=HARD_LIMIT_S,
                     max_attempts=MAX_ATTEMPTS, lease_s=1.5) as st:
        # every query straight to SD3.5-Large, one per batch (0.81 s; time limit 2.4 s)
        st.loop.apply(plan_for(0, 3, theta=-math.inf, batch={0: 1, 3: 1}), workers=[])
        yield st


def _pid(token: str) -> int:
    return int(token.split("/")[1])


def test_a_hanging_backend_times_out_fails_the_batch_and_frees_the_worker(stack):
    hang = stack.accept(f"{SOFT}: a lighthouse on a cliff")
    normal = [stack.accept(p) for p in PROMPTS[:3]]
    out = account(stack.engine, "backend_hang_interruptible", [hang] + normal, 60)
    assert out["lost"] == 0, stack.logs()
    assert out["failed"] == 1 and out["completed"] == 3
    from hadis_celery import store

    h = store.get_query(stack.engine, hang)
    assert h.status == "failed" and "did not finish within its time limit" in h.reason
    assert h.models == [] and h.image is None
    rows = [store.get_query(stack.engine, i) for i in normal]
    assert all(r.status == "done" and r.models == [3] for r in rows)
    # the same pool process served them afterwards: the worker was freed, not restarted
    assert {_pid(r.worker) for r in rows} == {_pid(h.worker)}
    assert any(e["query_id"] == hang for e in stack.workers[0].events("query.failed"))


def test_an_uninterruptible_backend_is_killed_and_its_query_failed_after_max_attempts(stack):
    hang = stack.accept(f"{HARD}: a windmill in a storm")
    normal = [stack.accept(p) for p in PROMPTS[3:6]]
    out = account(stack.engine, "backend_hang_uninterruptible", [hang] + normal, 90,
                  hard_time_limit_s=HARD_LIMIT_S, max_attempts=MAX_ATTEMPTS)
    assert out["lost"] == 0, stack.logs()
    assert out["failed"] == 1 and out["completed"] == 3
    from hadis_celery import store

    h = store.get_query(stack.engine, hang)
    assert h.status == "failed" and h.attempts == MAX_ATTEMPTS
    assert "gave up after 2 attempts" in h.reason and "stopped renewing its lease" in h.reason
    assert all(store.get_query(stack.engine, i).status == "done" for i in normal)
    worker = stack.workers[0]
    assert alive(worker.pid)  # the main process survived; only pool children were killed
    log = worker.log.read_text()
    assert log.count("Hard time limit") >= MAX_ATTEMPTS  # killed once per attempt
    resent = [e for e in stack.control.events("query.resent") if e["query_id"] == hang]
    assert [e["reason"] for e in resent] == ["worker_lost"] * (MAX_ATTEMPTS - 1)
