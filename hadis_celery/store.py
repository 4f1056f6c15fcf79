"""SQL operations of the serving stack on the tables of ``hadis_celery.models``.

Every state change of a query is one short transaction, and each is conditional on the
state it expects (``claim`` only takes rows still queued on that queue), so a duplicate
message (the sweeper re-sent one, or Celery redelivered after a worker died) is a no-op.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, delete, event, select, update

from hadis_celery.db import make_engine, transaction
from hadis_celery.models import PlanRow, QueryRow, WorkerHeartbeat

WAITING = ("queued", "rerouted")  # a message for the row is (or should be) on a queue
OPEN = WAITING + ("running",)
FINAL = ("done", "dropped", "failed")


def serving_engine(url: str) -> Engine:
    """``db.make_engine`` tuned for the stack's many short writes from several processes:
    on SQLite, write-ahead logging (readers never block the writer) and ``synchronous=NORMAL``
    (a commit is not an fsync; the WAL is synced at checkpoints), which took a worker's
    three commits per batch from about 12 ms each to about 1 ms here."""
    engine = make_engine(url)
    if engine.url.get_backend_name() == "sqlite" and engine.url.database not in (None, "",
                                                                               ":memory:"):
        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()
    return engine


def new_query_id() -> str:
    return uuid.uuid4().hex


def insert_query(engine: Engine, row: QueryRow) -> None:
    with transaction(engine) as s:
        s.add(row)


def delete_query(engine: Engine, query_id: str) -> None:
    """Undo an insert whose message could not be sent (nothing half-written)."""
    with transaction(engine) as s:
        s.execute(delete(QueryRow).where(QueryRow.id == query_id))


def get_query(engine: Engine, query_id: str) -> QueryRow | None:
    with transaction(engine) as s:
        return s.get(QueryRow, query_id)


def claim(engine: Engine, ids: Sequence[str], queue: str, token: str, now: float,
          sent_at: dict[str, float] | None = None) -> list[QueryRow]:
    """Mark the rows of ``ids`` still waiting on ``queue`` as running under ``token`` and
    return them in the order of ``ids`` (rows already taken or finished are left out)."""
    if not ids:
        return []
    with transaction(engine) as s:
        s.execute(update(QueryRow)
                  .where(QueryRow.id.in_(list(ids)), QueryRow.status.in_(WAITING),
                         QueryRow.queue == queue)
                  .values(status="running", worker=token, updated_at=now))
        rows = {r.id: r for r in s.scalars(
            select(QueryRow).where(QueryRow.id.in_(list(ids)), QueryRow.worker == token,
                                   QueryRow.status == "running"))}
        for r in rows.values():
            if r.started_at is None or math.isnan(r.started_at):
                r.started_at = now
            if (r.enqueued_at is None or math.isnan(r.enqueued_at)) and sent_at:
                r.enqueued_at = sent_at.get(r.id, now)
    return [rows[i] for i in ids if i in rows]


def release(engine: Engine, ids: Iterable[str], now: float) -> None:
    """Put claimed rows back to waiting (their messages were given back)."""
    ids = list(ids)
    if ids:
        with transaction(engine) as s:
            s.execute(update(QueryRow).where(QueryRow.id.in_(ids), QueryRow.status == "running")
                      .values(status="queued", updated_at=now))


def finish(engine: Engine, updates: Sequence[dict], now: float) -> None:
    """Apply per-row updates (each a dict with ``id`` and column values) in one transaction."""
    if not updates:
        return
    with transaction(engine) as s:
        for u in updates:
            row = s.get(QueryRow, u["id"])
            if row is None:
                continue
            for k, v in u.items():
                if k != "id":
                    setattr(row, k, v)
            row.updated_at = now


def stale(engine: Engine, before: float, limit: int = 500) -> list[QueryRow]:
    """Open rows untouched since ``before`` (their message may be lost)."""
    with transaction(engine) as s:
        return list(s.scalars(select(QueryRow).where(QueryRow.status.in_(OPEN),
                                                     QueryRow.updated_at < before)
                              .order_by(QueryRow.updated_at).limit(limit)))


def heartbeat(engine: Engine, worker: str, now: float, **values: object) -> None:
    """Upsert the worker's heartbeat row."""
    with transaction(engine) as s:
        row = s.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.worker == worker)).first()
        if row is None:
            row = WorkerHeartbeat(worker=worker, seen_at=now)
            s.add(row)
        for k, v in values.items():
            setattr(row, k, v)
        row.seen_at = now


def save_plan(engine: Engine, row: PlanRow) -> int:
    with transaction(engine) as s:
        s.add(row)
        s.flush()
        return int(row.id)


def set_plan_live(engine: Engine, plan_id: int, live: dict, bindings: dict) -> None:
    with transaction(engine) as s:
        row = s.get(PlanRow, plan_id)
        if row is not None:
            row.live = live
            row.bindings = bindings


def latest_plans(engine: Engine, limit: int = 10) -> list[PlanRow]:
    with transaction(engine) as s:
        return list(s.scalars(select(PlanRow).order_by(PlanRow.id.desc()).limit(limit)))


def get_plan(engine: Engine, plan_id: int) -> PlanRow | None:
    with transaction(engine) as s:
        return s.get(PlanRow, plan_id)
