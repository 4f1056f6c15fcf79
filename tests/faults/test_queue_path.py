"""Holes in the queue path (issue 16): a plan switch that leaves a backlog on a queue no
worker consumes any more, a sweeper that must not multiply messages, and an image store that
is full. Real stack: private Redis, SQLite file, two Celery workers, the planner's worker
sweeping every second, the front door; the image folder is a small tmpfs that the disk-full
test fills for real (ENOSPC from the kernel, no mock)."""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from hadis_celery import db, store
from hadis_celery.live import STORAGE_KEY, decode_message
from tests.faults.conftest import PROMPTS, account, fault_stack
from tests.stack.conftest import plan_for, wait_for

LIGHT, HEAVY = "light_sdxl", "heavy_sd35_large_turbo"
MODEL_QUEUES = ["light_sdxl", "heavy_sdxl", "light_sd35_large_turbo", "heavy_sd35_large_turbo",
                "light_sd35_medium", "heavy_sd35_medium", "light_sd35_large", "heavy_sd35_large"]
# time factor 0.5: SDXL-Lightning 0.25 s at batch 1, SD3.5-Large-Turbo 2.2 s at batch 4
TF = 0.5
LIGHT_ONLY = plan_for(0, 1, theta=math.inf, tau=-math.inf, workers={LIGHT: 2},
                      batch={0: 1, 1: 4})
ALL_HEAVY = plan_for(0, 1, theta=-math.inf, tau=-math.inf, workers={HEAVY: 2},
                     batch={0: 1, 1: 4})
STORAGE_RETRY_S = 2.0


@pytest.fixture(scope="module")
def image_fs(tmp_path_factory):
    """A 64 MiB tmpfs for the images (we run as root); the disk-full test fills it."""
    mnt = tmp_path_factory.mktemp("images")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs for the disk-full test (needs root): "
                    f"{r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, router, image_fs):
    tmp = tmp_path_factory.mktemp("faults-queue-path")
    url = f"sqlite:///{tmp / 'hadis.sqlite'}"
    e = db.make_engine(url)
    db.upgrade(e)
    e.dispose()
    with fault_stack(tmp, url, router, f"{LIGHT},{HEAVY}", 2, time_factor=TF,
                     image_dir=image_fs, storage_retry_s=STORAGE_RETRY_S,
                     lease_s=10.0) as st:  # a loaded machine must not lapse leases here
        names = {w.name for w in st.workers}
        wait_for(lambda: names <= set(st.loop.live.live_workers()), 30, 0.1,
                 "both workers' heartbeats")
        yield st


def _messages(r, where: dict | None = None) -> Counter:
    """Messages per query id over every model queue list, read atomically (MULTI/EXEC: a
    message moved meanwhile is not counted on both lists); ``where`` gets id -> queues."""
    pipe = r.pipeline(transaction=True)
    for q in MODEL_QUEUES:
        pipe.lrange(q, 0, -1)
    out: Counter = Counter()
    for q, raws in zip(MODEL_QUEUES, pipe.execute(), strict=True):
        for raw in raws:
            m = decode_message(raw)
            if m:
                out[m.query_id] += 1
                if where is not None:
                    where.setdefault(m.query_id, []).append(q)
    return out


def _open_rows(stack) -> dict[str, str]:
    from sqlalchemy import select

    from hadis_celery.tables import QueryRow

    with db.transaction(stack.engine) as s:
        return dict(s.execute(select(QueryRow.id, QueryRow.queue)
                              .where(QueryRow.status.in_(store.WAITING))).all())


def test_plan_switch_to_all_heavy_strands_nothing_and_duplicates_nothing(stack):
    r = stack.redis.client()
    out = stack.loop.apply(LIGHT_ONLY)
    assert set(out["bindings"].values()) == {LIGHT}
    ids = []
    for p in (PROMPTS * 2)[:80]:  # until a backlog waits on the light queue
        ids.append(stack.accept(p, slo_s=120))
        if len(ids) >= 30 and r.llen(LIGHT) >= 10:
            break
    backlog = r.llen(LIGHT)
    assert backlog >= 5, "no backlog formed on the light queue"
    out = stack.loop.apply(ALL_HEAVY)  # light_sdxl loses every worker
    assert set(out["bindings"].values()) == {HEAVY}
    moved = out["moved"].get(HEAVY, 0)
    worst, samples = 0, 0
    end = time.monotonic() + 90
    while time.monotonic() < end:  # while it drains: one message per open row at most
        where: dict = {}
        counts = _messages(r, where)
        open_rows = _open_rows(stack)
        worst = max(worst, max(counts.values(), default=0))
        dups = [(i, where[i]) for i, n in counts.most_common(3) if n > 1]
        assert worst <= 1, f"duplicate messages: {dups}\n{stack.logs()}"
        assert set(counts) <= set(open_rows), "a message of a finished query"
        assert r.llen(LIGHT) == 0, "messages left on a queue no worker consumes"
        samples += 1
        if not any(i in open_rows for i in ids):
            break
        time.sleep(0.1)
    rep = account(stack.engine, "plan_switch_all_heavy", ids, backlog_at_switch=backlog,
                  moved_at_switch=moved, max_messages_per_query=worst, samples=samples,
                  stranded=r.llen(LIGHT))
    assert rep["lost"] == 0 and rep["stranded"] == 0, stack.logs()
    assert rep["completed"] == len(ids) and rep["dropped"] == 0, rep
    assert moved >= 1
    rows = [store.get_query(stack.engine, i) for i in ids]
    light_served = sum(1 for x in rows if x.models == [0])
    heavy_served = sum(1 for x in rows if x.models == [1])
    assert light_served + heavy_served == len(ids) and heavy_served >= moved


def _backdate_waiting(stack, seconds: float) -> int:
    """Make every waiting row look untouched for ``seconds`` more (older than
    ``HADIS_SWEEP_AFTER_S``), as if its message had been lost."""
    from sqlalchemy import update

    from hadis_celery.tables import QueryRow

    with db.transaction(stack.engine) as s:
        return s.execute(update(QueryRow).where(QueryRow.status.in_(store.WAITING))
                         .values(updated_at=QueryRow.updated_at - seconds)).rowcount


def test_the_sweeper_does_not_resend_a_query_whose_message_still_waits(stack):
    """Rows older than the sweep-after bound whose message waits in a backlog behind a busy
    worker: before the fix each sweep added a second message per row."""
    r = stack.redis.client()
    stack.loop.apply(ALL_HEAVY)
    ids = [stack.accept(p, slo_s=3000) for p in PROMPTS[:14]]
    wait_for(lambda: r.llen(HEAVY) >= 4, 10, 0.05, "a backlog on the heavy queue")
    assert _backdate_waiting(stack, 1000) >= 4
    res = stack.loop.sweep()
    assert res["resent"] == [] and res["dropped"] == []
    counts = _messages(r)
    assert counts and max(counts.values()) == 1
    # a duplicate left by an older sweeper is cleaned up, not multiplied
    qid, raw = next((m.query_id, m.raw) for m in map(decode_message, r.lrange(HEAVY, 0, 0)))
    r.lpush(HEAVY, raw)
    _backdate_waiting(stack, 1000)
    res = stack.loop.sweep()
    assert res["resent"] == [] and _messages(r)[qid] <= 1
    rep = account(stack.engine, "sweep_backlog_no_duplicates", ids, stranded=0)
    assert rep["lost"] == 0 and rep["completed"] == len(ids), stack.logs()
    resent = {e["query_id"] for e in stack.control.events("query.resent")}
    assert not resent & set(ids)  # the beat's own sweeps did not re-send them either


def _fill(mnt: Path) -> Path:
    """Write zeros until the kernel says ENOSPC; returns the filler file.

    The earlier tests' images are removed first (their queries are accounted for): the
    space they held would otherwise stay taken when the filler goes, and with enough of
    them the disk is full before the filler can even be created."""
    for old in mnt.rglob("*"):
        if old.is_file():
            old.unlink()
    filler = mnt / "filler.bin"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    with open(mnt / "probe", "wb") as fh:  # really full now
        with pytest.raises(OSError):
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
    (mnt / "probe").unlink(missing_ok=True)
    return filler


def test_disk_full_fails_fast_with_the_reason_and_health_reports_it(stack, image_fs):
    stack.loop.apply(LIGHT_ONLY)
    r = stack.redis.client()
    filler = _fill(image_fs)
    try:
        ids = [stack.accept(p, slo_s=120) for p in PROMPTS[40:44]]
        rows = {}

        def failed():
            rows.update({i: store.get_query(stack.engine, i) for i in ids})
            return all(x.status in ("done", "dropped", "failed") for x in rows.values())

        wait_for(failed, 30, 0.1, "the queries to end while the disk is full")
        fault = r.get(STORAGE_KEY)
        health = stack.client.get("/v1/health")
        refused = stack.post(PROMPTS[50])
    finally:
        filler.unlink()
    rep = account(stack.engine, "disk_full", ids, stranded=0,
                  health_status=health.status_code, refused_status=refused[0])
    assert rep["lost"] == 0
    for x in rows.values():
        assert x.status == "failed", (x.status, x.reason)
        assert "No space left on device" in x.reason and "image" in x.reason
        assert x.attempts == 1 and "lease" not in x.reason  # failed fast, not retried
    assert not list(image_fs.glob(".*.tmp")), "temporary image files left behind"
    assert fault is not None and b"No space left" in fault
    assert health.status_code == 503 and "storage" in health.get_json()
    assert refused[0] == 503 and refused[1]["error"]["code"] == "storage_unavailable"
    # space is back: the fact expires and new work is served again
    wait_for(lambda: r.get(STORAGE_KEY) is None, STORAGE_RETRY_S * 3, 0.1,
             "the storage fault to expire")
    qid = stack.accept(PROMPTS[51], slo_s=120)
    rep = account(stack.engine, "disk_full_recovered", [qid])
    assert rep["completed"] == 1, stack.logs()
    assert stack.client.get("/v1/health").status_code == 200
