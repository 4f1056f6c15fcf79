"""Waiting for generations without a thread each: a parked request and its poller.

``POST /v1/images/generations`` answers only when its images are ready. Under the
production worker (``webapp.server.BufferedWorker``) the view does not wait: it answers
an internal marker, the ``PARK_HEADER`` response header naming the query ids and a
deadline, which never reaches the client. The server's container then waits on the event
loop (a future per request, no thread) while one ``Poller`` per process asks SQL, in one
query every ``POLL_S`` on the thread pool, which of all parked ids are final; when all of a
request's ids are (or its deadline passes) the container runs the app again with
``RESUME`` in the WSGI environ, and the view renders the answer from the rows. Both
environ keys are not HTTP headers, so no client can set them. Under any other server (the
Flask test client, gunicorn's ``gthread``) the view blocks in ``wait_blocking`` instead,
bounded by the same deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Collection, Sequence

from sqlalchemy import Engine, select

from hadis_celery.tables import QueryRow
from planner.status import FINAL

PARK_HEADER = "X-Hadis-Park"  # response header: "<id>,<id>,...;<deadline epoch s>"
CAN_PARK = "hadis.can_park"  # environ: the server can park (set by the container)
RESUME = "hadis.resume"  # environ: the parked ids, when the container runs the app again
POLL_S = 0.15  # how often the poller asks SQL about all parked ids
CHUNK = 500  # ids per SQL query
log = logging.getLogger(__name__)


def final_ids(engine: Engine, ids: Collection[str]) -> set[str]:
    """The ids among ``ids`` whose query is final (done, dropped or failed): one SQL query
    per ``CHUNK`` ids, through the primary key."""
    out: set[str] = set()
    listed = list(ids)
    with engine.connect() as conn:
        for i in range(0, len(listed), CHUNK):
            part = listed[i:i + CHUNK]
            out.update(conn.execute(select(QueryRow.id).where(
                QueryRow.id.in_(part), QueryRow.status.in_([str(s) for s in FINAL])
            )).scalars())
    return out


def park_value(ids: Sequence[str], deadline: float) -> str:
    return f"{','.join(ids)};{deadline:.3f}"


def parse_park(value: str) -> tuple[list[str], float]:
    ids, _, deadline = value.partition(";")
    return [i for i in ids.split(",") if i], float(deadline)


def wait_blocking(engine: Engine, ids: Sequence[str], deadline: float,
                  interval: float = 0.2) -> None:
    """Block this thread until every id is final or ``deadline`` (epoch seconds) passes
    (servers that cannot park)."""
    left = set(ids)
    while left:
        left -= final_ids(engine, left)
        if not left or time.time() >= deadline:
            return
        time.sleep(min(interval, max(0.0, deadline - time.time())))


class _Waiter:
    __slots__ = ("left", "future")

    def __init__(self, ids: Collection[str], future: asyncio.Future) -> None:
        self.left, self.future = set(ids), future


class Poller:
    """One per server process: the parked requests' ids, checked together. ``wait`` returns
    when all its ids are final or its deadline passed; SQL runs on ``pool`` (the app's
    threads), never on the event loop."""

    def __init__(self, engine: Engine, pool: concurrent.futures.Executor | None,
                 interval: float = POLL_S) -> None:
        self.engine, self.pool, self.interval = engine, pool, interval
        self.by_id: dict[str, list[_Waiter]] = {}
        self._task: asyncio.Task | None = None
        self.parked = 0  # requests waiting now
        self.peak = 0  # the most at once since start

    async def wait(self, ids: Sequence[str], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(ids, loop.create_future())
        for qid in waiter.left:
            self.by_id.setdefault(qid, []).append(waiter)
        self.parked += 1
        self.peak = max(self.peak, self.parked)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future),
                                   max(0.0, deadline - time.time()))
        except TimeoutError:
            pass
        finally:
            self.parked -= 1
            for qid in waiter.left:
                ws = self.by_id.get(qid)
                if ws is not None and waiter in ws:
                    ws.remove(waiter)
                    if not ws:
                        del self.by_id[qid]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.by_id:
            await asyncio.sleep(self.interval)
            ids = list(self.by_id)
            try:
                done = await loop.run_in_executor(self.pool, final_ids, self.engine, ids)
            except Exception as exc:  # SQL down: the deadlines still end every wait
                log.warning("parked requests: polling SQL failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for qid in done:
                for w in self.by_id.pop(qid, []):
                    w.left.discard(qid)
                    if not w.left and not w.future.done():
                        w.future.set_result(None)
