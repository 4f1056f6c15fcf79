"""A long history does not make ``/metrics``, the gallery or the dashboard slower (issue
16.6): on a SQLite database with thousands of finished queries, every statement these pages
run on ``queries`` is an index search (SQLite's ``EXPLAIN QUERY PLAN``: no ``SCAN``) bounded
by a time range or by LIMIT on an index walked in order (the gallery sorts no done query),
and ``/metrics`` reads only the rows finished since its last scrape. The milliseconds are
measured by ``python -m bench.webhistory``, not here."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event, func, select, update

from bench.webhistory import fill
from hadis_celery import db, store
from hadis_celery.celery import make_app
from hadis_celery.tables import QueryRow
from tests.stack.conftest import make_settings
from webapp.auth import Principal

REDIS = "redis://127.0.0.1:6379/14"
ROWS, PLANS = 4000, 300


@pytest.fixture
def history(tmp_path, web_router) -> Iterator[object]:
    from webapp import create_app

    r = redis.Redis.from_url(REDIS)
    r.flushdb()
    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    e = store.serving_engine(url)
    db.upgrade(e)
    fill(e, ROWS, PLANS, time.time())
    e.dispose()
    s = make_settings(url, tmp_path / "images", broker_url=REDIS)
    app = create_app(s, router=web_router, celery_app=make_app(s, fast_fail=True))
    try:
        yield app
    finally:
        app.extensions["hadis"].engine.dispose()
        r.flushdb()
        r.close()


class Statements:
    """The SQL statements an engine runs while this is open."""

    def __init__(self, engine) -> None:
        self.engine, self.seen = engine, []

    def _on(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append((statement, parameters))

    def __enter__(self) -> Statements:
        event.listen(self.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)

    def plans(self) -> list[tuple[str, tuple, list[str]]]:
        """(statement, parameters, EXPLAIN QUERY PLAN lines) of each read of ``queries``."""
        out = []
        with self.engine.connect() as c:
            for stmt, params in self.seen:
                if re.search(r"\bFROM queries\b", stmt) and stmt.lstrip().startswith("SELECT"):
                    rows = c.exec_driver_sql("EXPLAIN QUERY PLAN " + stmt, params).all()
                    out.append((stmt, tuple(params), [r[-1] for r in rows]))
        return out


def _bounded(plans: list[tuple[str, tuple, list[str]]]) -> None:
    """No read of ``queries`` scans it, and a read of finished rows (whose number grows with
    history) is bounded: a range on ``updated_at`` in the index search, or an index walked
    in order and stopped by LIMIT (no sort of every row first)."""
    assert plans, "no statement read the queries table"
    for stmt, params, lines in plans:
        assert not [x for x in lines if re.match(r"SCAN queries\b", x)], (stmt, lines)
        if not {"done", "dropped", "failed"} & set(params):
            continue  # open rows only: as many as are waiting or running
        ranged = any("updated_at>" in x or "updated_at<" in x for x in lines)
        walked = "LIMIT" in stmt and not [x for x in lines if "TEMP B-TREE" in x]
        assert ranged or walked, (stmt, lines)


def _scrape(client) -> dict:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    out = {}
    for fam in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _status(m: dict, status: str) -> float:
    return m.get(("hadis_queries_total", (("status", status),)), 0.0)


def _sql_counts(engine) -> dict[str, int]:
    with engine.connect() as c:
        return dict(c.execute(select(QueryRow.status, func.count())
                              .group_by(QueryRow.status)).all())


def test_metrics_read_only_the_rows_finished_since_the_last_scrape(history):
    c, engine = history.test_client(), history.extensions["hadis"].engine
    first = _scrape(c)
    counts = _sql_counts(engine)
    for status in ("done", "dropped", "failed"):
        assert _status(first, status) == counts.get(status, 0), status
    assert first[("hadis_plans_total", ())] == PLANS
    # Rewrite old finished rows behind the scrape's back (nothing real does this): if a
    # scrape re-read the history, its totals would move.
    old = time.time() - 7200
    with db.transaction(engine) as s:
        changed = s.execute(update(QueryRow).where(QueryRow.status == "done",
                                                   QueryRow.updated_at < old)
                            .values(status="failed")).rowcount
    assert changed > 1000
    now = time.time()
    with db.transaction(engine) as s:
        for i in range(3):
            s.add(QueryRow(id=f"{i:x}".rjust(32, "f"), client="t", prompt="new", seed=i,
                           slo_s=60.0, status="done", queue="light_sdxl", route="light",
                           hardness=0.5, models=[0], served_model=0, attempts=1,
                           received_at=now - 2, deadline=now + 58, finished_at=now,
                           model_s=1.0, updated_at=now))
    with Statements(engine) as st:
        second = _scrape(c)
    assert _status(second, "done") == _status(first, "done") + 3
    assert _status(second, "failed") == _status(first, "failed")
    from webapp.frontdoor import model_name

    name = model_name(history.extensions["hadis"].registry, 0)
    count = ("hadis_latency_seconds_count", (("model", name),))
    assert second[count] == first[count] + 3
    _bounded(st.plans())


def test_gallery_and_dashboard_read_through_indexes(history):
    c, engine = history.test_client(), history.extensions["hadis"].engine
    for path in ("/ui/gallery", "/ui/dashboard", "/ui/dashboard.json"):
        with Statements(engine) as st:
            assert c.get(path).status_code == 200, path
        _bounded(st.plans())
    # a key's own gallery walks the owner index from its end, whatever the history
    from webapp.pages import gallery_query

    stmt = gallery_query(Principal(owner="ab" * 16, operator=False))
    with engine.connect() as conn:
        compiled = stmt.compile(conn, compile_kwargs={"literal_binds": True})
        lines = [r[-1] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
    assert any("ix_queries_owner_status_updated_at" in x for x in lines), lines
    assert not [x for x in lines if "TEMP B-TREE" in x or x.startswith("SCAN")], lines
