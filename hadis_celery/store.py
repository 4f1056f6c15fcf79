"""SQL operations of the serving stack on the tables of ``hadis_celery.tables``.

Every state change of a query is one short transaction, and each is conditional on the
state it expects, so a duplicate message (the sweeper re-sent one, Celery redelivered after
a worker died, Redis was refilled from SQL) is a no-op and no result is written twice:

- ``claim`` only takes rows still waiting on that queue, and stamps them with the batch's
  token (``worker``);
- a worker's writes (``finish(..., token=)``, ``release``, ``renew``) apply only to rows that
  still carry its token, so a worker that lost its rows to the sweeper cannot overwrite the
  result of the worker that took them over;
- the sweeper's writes (``sweep_update``) apply only if the row is still in the state and
  as old as when it was read.

The lease: while a batch runs, its worker renews ``updated_at`` of the rows it holds every
``HADIS_LEASE_S / 3``; a ``running`` row older than the lease belongs to a worker that died
(or lost SQL) and is re-sent by the sweeper.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, and_, delete, event, exc, or_, select, update

from hadis_celery.db import make_engine, transaction
from hadis_celery.tables import ModelLoad, PlanRow, QueryRow, WorkerHeartbeat
from planner.status import FINAL as FINAL  # re-exported: the groups of states
from planner.status import OPEN, WAITING, QueryStatus

UNSENT_AT = 0.0  # updated_at of a waiting row whose message could not be sent


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached now (retry later), as opposed
    to a bug or bad data."""
    if isinstance(error, (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)):
        return True
    return isinstance(error, exc.DBAPIError) and bool(error.connection_invalidated)


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


def delete_queries(engine: Engine, query_ids: Sequence[str]) -> None:
    """Undo the inserts of a batch whose messages could not be sent: one ``DELETE``."""
    if query_ids:
        with transaction(engine) as s:
            s.execute(delete(QueryRow).where(QueryRow.id.in_(list(query_ids))))


def withdraw(engine: Engine, query_ids: Sequence[str], reason: str, now: float) -> int:
    """Drop the rows of ``query_ids`` that no worker has claimed yet, with ``reason`` (a
    multi-image request refused part-way: its accepted images would serve nobody); a
    worker's ``claim`` then skips their messages. Returns how many were withdrawn."""
    if not query_ids:
        return 0
    with transaction(engine) as s:
        result = s.execute(update(QueryRow)
                           .where(QueryRow.id.in_(list(query_ids)),
                                  QueryRow.status.in_(WAITING))
                           .values(status=QueryStatus.DROPPED, reason=reason,
                                   finished_at=now, updated_at=now)
                           .execution_options(synchronize_session=False))
        return int(result.rowcount)


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
                  .values(status=QueryStatus.RUNNING, worker=token, updated_at=now))
        rows = {r.id: r for r in s.scalars(
            select(QueryRow).where(QueryRow.id.in_(list(ids)), QueryRow.worker == token,
                                   QueryRow.status == QueryStatus.RUNNING))}
        for r in rows.values():
            if r.started_at is None or math.isnan(r.started_at):
                r.started_at = now
            if (r.enqueued_at is None or math.isnan(r.enqueued_at)) and sent_at:
                r.enqueued_at = sent_at.get(r.id, now)
    return [rows[i] for i in ids if i in rows]


def release(engine: Engine, ids: Iterable[str], now: float, token: str | None = None) -> None:
    """Put claimed rows back to waiting (their messages were given back); with ``token``,
    only rows that batch still holds."""
    ids = list(ids)
    if ids:
        q = update(QueryRow).where(QueryRow.id.in_(ids), QueryRow.status == QueryStatus.RUNNING)
        if token is not None:
            q = q.where(QueryRow.worker == token)
        with transaction(engine) as s:
            s.execute(q.values(status=QueryStatus.QUEUED, updated_at=now)
                      .execution_options(synchronize_session=False))


def finish(engine: Engine, updates: Sequence[dict], now: float,
           token: str | None = None) -> list[str]:
    """Apply per-row updates (each a dict with ``id`` and column values) in one transaction;
    return the ids updated. With ``token`` (a worker's batch), only rows still open and
    still carrying that token are updated: a row the sweeper re-sent and another worker
    claimed keeps that worker's result."""
    applied: list[str] = []
    if not updates:
        return applied
    with transaction(engine) as s:
        for u in updates:
            values = {k: v for k, v in u.items() if k != "id"}
            values["updated_at"] = now
            q = update(QueryRow).where(QueryRow.id == u["id"])
            if token is not None:
                q = q.where(QueryRow.worker == token, QueryRow.status.in_(OPEN))
            result = s.execute(q.values(**values).execution_options(synchronize_session=False))
            if result.rowcount:
                applied.append(u["id"])
    return applied


def renew(engine: Engine, token: str, now: float) -> int:
    """Renew the lease of the rows the batch ``token`` holds (returns how many)."""
    with transaction(engine) as s:
        return int(s.execute(update(QueryRow)
                             .where(QueryRow.status == QueryStatus.RUNNING,
                                    QueryRow.worker == token)
                             .values(updated_at=now)
                             .execution_options(synchronize_session=False)).rowcount or 0)


def mark_unsent(engine: Engine, ids: Iterable[str]) -> None:
    """Waiting rows whose message could not be sent (Redis down): back-dated, so that the
    next sweep re-sends them instead of waiting ``HADIS_SWEEP_AFTER_S``."""
    ids = list(ids)
    if ids:
        with transaction(engine) as s:
            s.execute(update(QueryRow).where(QueryRow.id.in_(ids),
                                             QueryRow.status.in_(WAITING))
                      .values(updated_at=UNSENT_AT)
                      .execution_options(synchronize_session=False))


def stale(engine: Engine, before: float, limit: int = 500,
          lease_before: float | None = None) -> list[QueryRow]:
    """Open rows the sweeper must look at, oldest first: waiting rows untouched since
    ``before`` (their message may be lost) and running rows untouched since ``lease_before``
    (their worker stopped renewing the lease: it died or lost SQL). Without
    ``lease_before``, running rows are held to ``before`` too."""
    lease_before = before if lease_before is None else lease_before
    cond = or_(and_(QueryRow.status.in_(WAITING), QueryRow.updated_at < before),
               and_(QueryRow.status == QueryStatus.RUNNING, QueryRow.updated_at < lease_before))
    with transaction(engine) as s:
        return list(s.scalars(select(QueryRow).where(cond)
                              .order_by(QueryRow.updated_at).limit(limit)))


def expired(engine: Engine, now: float, exclude_queues: Iterable[str] = (),
            limit: int = 500) -> list[QueryRow]:
    """Waiting rows whose deadline passed, on queues other than ``exclude_queues`` (those
    with a consumer, whose worker drops them itself when it reaches them), oldest deadline
    first: the sweeper drops them with the reason at once."""
    q = select(QueryRow).where(QueryRow.status.in_(WAITING), QueryRow.deadline < now)
    skip = sorted(set(exclude_queues))
    if skip:
        q = q.where(QueryRow.queue.not_in(skip))
    with transaction(engine) as s:
        return list(s.scalars(q.order_by(QueryRow.deadline).limit(limit)))


def sweep_update(engine: Engine, row_id: str, status: str, before: float, values: dict,
                 now: float) -> bool:
    """The sweeper's write: apply ``values`` only if the row is still ``status`` and older
    than ``before`` (it was not claimed, renewed or finished since it was read)."""
    with transaction(engine) as s:
        result = s.execute(update(QueryRow)
                           .where(QueryRow.id == row_id, QueryRow.status == status,
                                  QueryRow.updated_at < before)
                           .values(**values, updated_at=now)
                           .execution_options(synchronize_session=False))
        return bool(result.rowcount)


def waiting(engine: Engine, after_id: str = "", limit: int = 1000) -> list[QueryRow]:
    """Waiting rows in id order from ``after_id`` (the recovery after Redis lost its queues
    pages through them)."""
    with transaction(engine) as s:
        return list(s.scalars(select(QueryRow).where(QueryRow.status.in_(WAITING),
                                                     QueryRow.id > after_id)
                              .order_by(QueryRow.id).limit(limit)))


def heartbeat(engine: Engine, worker: str, now: float, **values: object) -> None:
    """Upsert the worker's heartbeat row."""
    with transaction(engine) as s:
        row = s.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.worker == worker)).first()
        if row is None:
            row = WorkerHeartbeat(worker=worker, seen_at=now)
            s.add(row)
        for k, v in values.items():
            if k == "backend" and isinstance(v, str):  # ``module:Class``: the class name
                v = v.rpartition(":")[2][:32]
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


# -- measured model loads (issue 14): the swap time the planner uses per model ---------------
SWAP_SAMPLES = 5  # the swap time of a model: the median of its last few measured loads


def record_load(engine: Engine, **values: object) -> None:
    """One measured model load (``tables.ModelLoad``: model, worker, backend, kind, load_s,
    warmup_s, at)."""
    with transaction(engine) as s:
        s.add(ModelLoad(**values))


def measured_swap_s(engine: Engine, names: Iterable[str],
                    samples: int = SWAP_SAMPLES) -> dict[str, float]:
    """Model name -> measured swap seconds (load + warm-up, wall): the median of the last
    ``samples`` loads of each of ``names`` (one bounded read each, on the (model, at)
    index); models never measured are left out."""
    import statistics

    out: dict[str, float] = {}
    with transaction(engine) as s:
        for name in sorted(set(names)):
            xs = [a + (0.0 if math.isnan(b) else b) for a, b in s.execute(
                select(ModelLoad.load_s, ModelLoad.warmup_s).where(ModelLoad.model == name)
                .order_by(ModelLoad.at.desc()).limit(samples)) if not math.isnan(a)]
            if xs:
                out[name] = float(statistics.median(xs))
    return out
