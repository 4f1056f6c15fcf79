"""The planner's state survives a beat restart (SQLite and PostgreSQL): each tick stores the
plan with the planner's memory and its inputs; a beat started afresh in another process
resumes from the latest row (previous plan, memory, and the EWMA when Redis lost it), and
``hadis plan replay`` plans the recorded run again to the same decisions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from hadis_celery import db
from hadis_celery.beat import PlanLoop
from hadis_celery.celery import make_app
from hadis_celery.commands.plan import command as plan_command
from hadis_celery.live import BEAT_KEY, LiveState
from hadis_celery.tables import PlanRow
from planner.baselines import make_planner
from planner.plan import Plan, state_from_inputs
from tests.stack.conftest import REPO, database, make_settings, settings_env

BROKER = "redis://127.0.0.1:6379/9"  # its own database: the counters it sets are exact
PERIOD_S = 5.0
T0 = 1_000_000.0  # the ticks' clock: fixed, so the EWMA and rates are exact

TICK = """
import json, sys
from hadis_celery.beat import PlanLoop
from hadis_celery.celery import make_app
from hadis_celery.settings import settings
s = settings()
out = PlanLoop.from_settings(s, make_app(s)).tick(now=float(sys.argv[1]))
print(json.dumps({"plan_id": out["plan_id"]}))
"""


def tick_in_a_new_process(s, now: float) -> int:
    """A beat started afresh (a new process, nothing in memory) ticks once."""
    res = subprocess.run([sys.executable, "-c", TICK, repr(now)], cwd=REPO,
                         env=settings_env(s), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return int(json.loads(res.stdout.strip().splitlines()[-1])["plan_id"])


def rows(engine) -> list[PlanRow]:
    with db.transaction(engine) as s:
        return list(s.scalars(select(PlanRow).order_by(PlanRow.id)))


@pytest.fixture(params=["sqlite", "postgresql"])
def beat(request, tmp_path):
    r = redis.Redis.from_url(BROKER)
    r.flushdb()
    with database(request.param, tmp_path) as url:
        s = make_settings(url, tmp_path / "images", planner="hadis-plus", time_factor=1.0,
                          plan_period_s=PERIOD_S, worker_budget=16, slo_s=60.0,
                          broker_url=BROKER)
        engine = db.make_engine(url)
        yield s, engine
        engine.dispose()
    r.flushdb()


def arrive(live: LiveState, queue: str, n: int) -> None:
    for _ in range(n):
        live.count_arrival(queue)


def test_a_restarted_beat_resumes_the_planner_state_and_the_run_replays(beat):
    s, engine = beat
    live = LiveState.from_url(BROKER)
    loop = PlanLoop.from_settings(s, make_app(s))
    assert loop.previous is None  # an empty database: nothing to resume
    first = loop.tick(now=T0)
    light = loop.table.registry.get(first["pair"][0]).light_queue
    arrive(live, light, 100)  # 20 q/s against an EWMA near 0: a step
    loop.tick(now=T0 + PERIOD_S)
    r = rows(engine)
    assert r[-1].body["memory"]["rise"][1] == 1  # the step detector saw one period of it
    assert r[-1].inputs["previous_id"] == r[0].id

    # the beat restarts (a new process) while the rise goes on: it resumes from SQL
    arrive(live, light, 100)
    third = tick_in_a_new_process(s, T0 + 2 * PERIOD_S)
    r = rows(engine)
    assert r[-1].id == third and r[-1].inputs["beat"]["arrivals"] == 100
    assert r[-1].inputs["previous_id"] == r[-2].id
    assert r[-1].inputs["memory"] == r[-2].body["memory"]
    assert r[-1].body["memory"]["rise"][1] == 2, "the restarted beat forgot the rise"
    # the same inputs without the stored state: the rise starts over (so the check above
    # can fail)
    table, registry = loop.table.rows, loop.table.registry
    forgot = make_planner("hadis-plus", **_options(r[-1])).plan(
        state_from_inputs(r[-1].inputs, table, registry, previous=None))
    assert forgot.memory.get("rise") is None

    # Redis lost the beat's record (a flush): the EWMA resumes from SQL's
    live.r.delete(BEAT_KEY)
    arrive(live, light, 10)
    tick_in_a_new_process(s, T0 + 3 * PERIOD_S)
    r = rows(engine)
    beat_in = r[-1].inputs["beat"]
    assert beat_in["demand_before"] == r[-2].inputs["beat"]["demand"]
    assert beat_in["dt"] == pytest.approx(PERIOD_S)

    # the recorded run, replayed offline, decides the same in every period
    res = CliRunner().invoke(plan_command, ["replay", "--url", s.database_url])
    assert res.exit_code == 0, res.output
    assert f"{len(r)} plans replayed, 0 differ" in res.output
    assert "DIFFERS" not in res.output


def test_replay_flags_a_period_that_plans_otherwise(beat):
    s, engine = beat
    loop = PlanLoop.from_settings(s, make_app(s))
    loop.tick(now=T0)
    loop.tick(now=T0 + PERIOD_S)
    with db.transaction(engine) as ses:  # the record says another pair was chosen
        row = ses.scalars(select(PlanRow).order_by(PlanRow.id.desc())).first()
        body = dict(row.body)
        body["workers"] = {q: n + 1 for q, n in body["workers"].items()}
        row.body = body
    res = CliRunner().invoke(plan_command, ["replay", "--url", s.database_url])
    assert res.exit_code == 0, res.output
    assert "2 plans replayed, 1 differ" in res.output and "DIFFERS" in res.output


def _options(row: PlanRow) -> dict:
    return dict(row.inputs["planner"]["options"])


def test_a_stored_plan_is_the_plan(beat):
    s, engine = beat
    loop = PlanLoop.from_settings(s, make_app(s))
    loop.tick(now=T0)
    assert Plan.from_dict(rows(engine)[-1].body) == loop.previous


def test_replay_says_clearly_what_it_cannot_replay(beat):
    s, engine = beat

    def replay(*args):
        return CliRunner().invoke(plan_command, ["replay", "--url", s.database_url, *args])

    res = replay()
    assert res.exit_code == 1 and "no plan in this database has recorded inputs" in res.output
    loop = PlanLoop.from_settings(s, make_app(s))
    loop.tick(now=T0)
    loop.tick(now=T0 + PERIOD_S)
    ids = [r.id for r in rows(engine)]
    first, last = ids[0], ids[-1]
    for args, message in ((["--run", "999999"], "no recorded plan 999999"),
                          (["--run", f"{last + 1}.."], "no recorded plan in plans"),
                          (["--run", f"{T0 + 60}/"], "no recorded plan in plans made in"),
                          (["--run", "yesterday"], "expected last, a run id"),
                          (["--run", "x..y"], "expected plan ids")):
        res = replay(*args)
        assert res.exit_code in (1, 2), (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)
    for args in ([], ["--run", str(first)], ["--run", f"{first}..{last}"],
                 ["--run", f"{T0 - 1}/{T0 + PERIOD_S}"]):
        res = replay(*args)
        assert res.exit_code == 0 and "2 plans replayed, 0 differ" in res.output, (
            args, res.output)
    res = replay("--json")
    d = json.loads(res.output.strip().splitlines()[-1])
    assert d["replayed"] == 2 and d["differ"] == 0 and not d["plans"][0]["differs"]
    res = CliRunner().invoke(plan_command, ["--workers", "4"])
    assert res.exit_code == 2 and "Missing option '--demand'" in res.output
