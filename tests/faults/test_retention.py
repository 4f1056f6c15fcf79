"""Retention (issue 16): ``hadis db prune`` and ``HADIS_PRUNE_AFTER`` on a real SQLite file, a
private Redis with real Celery messages and a real image folder; and the beat pruning by
itself. Open queries, the active plan and plans open queries reference are never touched."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from hadis_celery import db, store
from hadis_celery.celery import make_app
from hadis_celery.commands.db import command as db_command
from hadis_celery.imagestore import ImageStore
from hadis_celery.live import LiveState
from hadis_celery.retention import parse_duration, prune
from hadis_celery.tables import PlanRow, QueryRow
from hadis_celery.transport import GenerateMessage, publish
from tests.faults.conftest import PrivateRedis, fault_stack, stack_settings
from tests.stack.conftest import wait_for

DAY = 86400.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("2.5", 2.5), ("30d", 30 * DAY), ("12h", 43200.0), ("1d12h", 1.5 * DAY),
    ("90m", 5400.0), ("2w", 14 * DAY), ("45s", 45.0), (" 1D 2H ", DAY + 7200.0), ("0", 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "d", "5d-", "-5d", "-3", "nan", "inf",
                                  "1d 2", "3 days"])
def test_bad_durations_are_refused_with_a_hint(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("arg", "message"), [
    ("abc", "'abc' is not a duration: use a number with a unit s, m, h, d or w"),
    ("0", "'0' must be more than 0"), ("-5d", "is not a duration"), ("", "an empty duration")])
def test_the_cli_refuses_bad_durations_without_a_traceback(tmp_path, arg, message):
    url = f"sqlite:///{tmp_path / 'x.sqlite'}"
    res = CliRunner().invoke(db_command, ["prune", "--older-than", arg, "--url", url])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(db_command, ["prune", "--url", url])
    assert res.exit_code == 2 and "--older-than" in res.output


def _row(qid: str, status: str, age_s: float, now: float, **kw) -> QueryRow:
    base = dict(id=qid, client="t", prompt="a red ball", seed=1, slo_s=60, status=status,
                queue="light_sdxl", route="light", hardness=0.0, models=[], attempts=1,
                received_at=now - age_s, deadline=now - age_s + 60, model_s=0.0,
                updated_at=now - age_s)
    base.update(kw)
    return QueryRow(**base)


def _plan(engine, age_s: float, now: float) -> int:
    return store.save_plan(engine, PlanRow(
        planner="t", light=0, heavy=3, demand=1.0, fid=20.0, overloaded=False, body={},
        live={}, bindings={}, created=datetime.fromtimestamp(now - age_s, UTC)))


@pytest.fixture
def world(tmp_path):
    """SQLite with old and new, open and finished rows; images; a private Redis with real
    messages; returns what each piece is."""
    rds = PrivateRedis(tmp_path)
    url = f"sqlite:///{tmp_path / 'hadis.sqlite'}"
    engine = store.serving_engine(url)
    db.upgrade(engine)
    images = tmp_path / "images"
    images.mkdir()
    s = stack_settings(url, rds.url, tmp_path)
    app = make_app(s)
    now = time.time()
    old, new = 40 * DAY, 3600.0
    p_old_free, p_old_ref, p_active_old = (_plan(engine, old, now) for _ in range(3))
    p_latest = _plan(engine, old, now)  # old too, but the latest row: kept
    rows = {
        "old_done": _row("a" * 32, "done", old, now, image="a" * 32 + ".png", plan_id=p_old_free),
        "old_dropped": _row("b" * 32, "dropped", old, now, reason="late"),
        "old_failed": _row("c" * 32, "failed", old, now, reason="boom"),
        "new_done": _row("d" * 32, "done", new, now, image="d" * 32 + ".png"),
        "old_queued": _row("e" * 32, "queued", old, now, deadline=now + 60,
                           plan_id=p_old_ref),
        "old_running": _row("f" * 32, "running", old, now, deadline=now + 60, worker="w/1/x"),
    }
    for r in rows.values():
        store.insert_query(engine, r)
    for name in ("a" * 32, "d" * 32):
        (images / f"{name}.png").write_bytes(b"\x89PNG fake")
    stray_old = images / ("9" * 32 + ".png")
    stray_new = images / ("8" * 32 + ".png")
    tmp_left = images / (".7" + "7" * 31 + ".png.tmp")
    for p in (stray_old, stray_new, tmp_left):
        p.write_bytes(b"x")
    for p in (stray_old, tmp_left, images / ("a" * 32 + ".png")):
        os.utime(p, (now - old, now - old))
    # messages: one for the open row (kept), one for a finished row and one for a row that
    # does not exist (dead)
    for qid in ("e" * 32, "b" * 32, "0" * 32):
        publish(app, GenerateMessage(qid, "light_sdxl", 1))
    live = LiveState.from_url(rds.url)
    from planner.policy import ActivePlan

    live.publish_plan(ActivePlan(plan_id=p_active_old, light=0, heavy=3, light_queue="light_sdxl",
                                 heavy_queue="heavy_sd35_large", theta=0.0, tau=0.0,
                                 routing="score", router_ratio=0.5, batch={}))
    try:
        yield dict(engine=engine, live=live, images=images, rows=rows, now=now,
                   plans=dict(free=p_old_free, ref=p_old_ref, active=p_active_old,
                              latest=p_latest),
                   stray=(stray_old, stray_new, tmp_left), rds=rds, url=url, s=s)
    finally:
        engine.dispose()
        rds.stop()


def _ids(engine) -> set[str]:
    with db.transaction(engine) as s:
        return set(s.scalars(select(QueryRow.id)))


def _plans(engine) -> set[int]:
    with db.transaction(engine) as s:
        return set(s.scalars(select(PlanRow.id)))


@pytest.mark.parametrize("url", [False, True], ids=["folder", "fsspec-file-url"])
def test_prune_removes_finished_history_and_keeps_what_is_open_or_active(world, url):
    e, live, rows = world["engine"], world["live"], world["rows"]
    queues = ["light_sdxl", "heavy_sd35_large"]
    # the same images through a plain folder or an fsspec URL (what a shared store uses)
    images = ImageStore(f"file://{world['images']}" if url else world["images"])
    before_ids, before_plans = _ids(e), _plans(e)
    dry = prune(e, 30 * DAY, store=images, live=live, queues=queues, images=True,
                plans=True, dry_run=True, now=world["now"])
    assert (dry.queries, dry.images, dry.plans, dry.dead_messages, dry.stray_images) == \
        (3, 1, 1, 2, 2)
    assert _ids(e) == before_ids and _plans(e) == before_plans  # a dry run removes nothing
    assert live.r.llen("light_sdxl") == 3
    rep = prune(e, 30 * DAY, store=images, live=live, queues=queues, images=True,
                plans=True, now=world["now"])
    assert rep.to_dict() | {"dry_run": True, "cutoff": dry.cutoff} == dry.to_dict()
    gone = {rows[k].id for k in ("old_done", "old_dropped", "old_failed")}
    assert _ids(e) == before_ids - gone  # open rows stay, however old
    p = world["plans"]
    assert _plans(e) == before_plans - {p["free"]}  # active, latest, referenced stay
    left = sorted(f.name for f in world["images"].iterdir())
    assert left == sorted(["d" * 32 + ".png", world["stray"][1].name])
    msgs = live.messages(queues)["light_sdxl"]
    assert [m.query_id for m in msgs] == ["e" * 32]  # the open row's message stays
    again = prune(e, 30 * DAY, store=images, live=live, queues=queues,
                  images=True, plans=True, now=world["now"])
    assert (again.queries, again.plans, again.dead_messages, again.stray_images) == (0, 0, 0, 0)


def test_the_cli_prunes_and_says_what_it_removed(world, monkeypatch):
    monkeypatch.setenv("HADIS_IMAGE_DIR", str(world["images"]))
    monkeypatch.setenv("HADIS_BROKER_URL", world["rds"].url)
    monkeypatch.delenv("HADIS_REDIS_URL", raising=False)
    args = ["prune", "--older-than", "30d", "--url", world["url"]]
    res = CliRunner().invoke(db_command, args + ["--dry-run"])
    assert res.exit_code == 0, res.output
    assert "would remove 3 finished queries older than 30d (1 image files), 0 plans, " \
           "2 dead messages" in res.output
    res = CliRunner().invoke(db_command, args + ["--plans", "--images"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("removed 3 finished queries older than 30d (1 image files), "
                                 "1 plans, 2 dead messages, 2 unreferenced image files")
    assert len(_ids(world["engine"])) == 3


def test_the_beat_prunes_when_hadis_prune_after_is_set(tmp_path, router):
    url = f"sqlite:///{tmp_path / 'hadis.sqlite'}"
    e = db.make_engine(url)
    db.upgrade(e)
    now = time.time()
    with fault_stack(tmp_path, url, router, "light_sdxl", 0, prune_after_s=3.0) as st:
        images = st.s.image_dir
        images.mkdir(parents=True, exist_ok=True)
        store.insert_query(e, _row("a" * 32, "done", 60, now, image="a" * 32 + ".png"))
        store.insert_query(e, _row("b" * 32, "queued", 60, now, deadline=now + 600))
        (images / ("a" * 32 + ".png")).write_bytes(b"x")
        wait_for(lambda: _ids(e) == {"b" * 32}, 20, 0.2, "the beat to prune the old row")
        assert not (images / ("a" * 32 + ".png")).exists()
        # The beat logs the event after the prune returns (plans and dead messages come
        # after the rows), so the row can be gone a moment before the line is written.
        wait_for(lambda: st.control.events("history.pruned"), 20, 0.2,
                 "the beat to log history.pruned")
    e.dispose()
