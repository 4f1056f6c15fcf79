"""Celery tasks: thin adapters over ``workers.serving`` and ``hadis_celery.beat``.

- ``hadis.generate(*GenerateMessage.args())`` (``hadis_celery.transport``): one message = one
  query; the worker drains up to B - 1 more from the same queue and runs them as one batch.
  Celery's hard time limit (``hadis_celery.celery.hard_time_limit_s``) kills a pool child
  stuck in a backend that ignores the per-batch limit; when SQL is unavailable the message
  is requeued after a back-off (the worker cannot claim anything, and the message must not be lost).
- ``hadis.plan``: the beat's planner tick (``hadis_celery.beat.PlanLoop.tick``).
- ``hadis.sweep``: re-send accepted queries whose message was lost, move work off queues no
  worker consumes (``hadis_celery.beat.sweep``).
- ``hadis.prune``: retention, when ``HADIS_PRUNE_AFTER`` is set (``hadis_celery.beat.prune``).
- ``hadis.bench_sleep``: a bare task for ``bench.frontdoor``'s baseline.
"""

from __future__ import annotations

import functools
import logging
import time

from celery.exceptions import Reject
from celery.signals import celeryd_after_setup, worker_process_init

from hadis_celery.celery import app, hard_time_limit_s
from hadis_celery.deployment import registry
from hadis_celery.logs import event
from hadis_celery.transport import GENERATE_TASK, GenerateMessage
from workers import metrics as _metrics  # noqa: F401  (the exporter's signal handlers)

log = logging.getLogger(__name__)
SQL_BACKOFF_MAX_S = 5.0
_sql_failures = 0  # consecutive claims that found SQL down, in this process


@functools.lru_cache(maxsize=1)
def runtime():
    from workers.serving import WorkerRuntime

    return WorkerRuntime(app.conf.hadis_settings, app)


@functools.lru_cache(maxsize=1)
def plan_loop():
    from hadis_celery.beat import PlanLoop

    return PlanLoop.from_settings(app.conf.hadis_settings, app)


_WORKER: dict = {"hostname": "", "queues": []}  # set in the main process, seen by children


@celeryd_after_setup.connect
def _setup(sender=None, instance=None, **_) -> None:
    """Remember the worker's name and ``-Q`` queues before the pool starts (its children
    inherit them); a solo pool runs tasks in this process, so it preloads here."""
    _WORKER["hostname"] = str(sender or "")
    try:
        _WORKER["queues"] = list(instance.app.amqp.queues.consume_from or {})
    except AttributeError:
        _WORKER["queues"] = []
    if "solo" in str(getattr(instance, "pool_cls", "")).lower():
        _warm()


@worker_process_init.connect
def _warm(**_) -> None:
    """Open SQL and Redis, then load and warm up the model of the worker's queue, in each
    pool process before it reports up (so before it takes a message): the first batch does
    not pay the load (``worker_proc_alive_timeout`` allows for it)."""
    try:
        rt = runtime()
    except Exception:  # reported again, with context, by the first task
        log.exception("worker runtime not ready")
        return
    try:
        rt.preload(_WORKER["queues"], _WORKER["hostname"])
    except Exception:  # the first message retries the load and fails its rows with why
        log.exception("cannot preload the model of %s", _WORKER["queues"])


def sql_backoff_s(failures: int) -> float:
    """Seconds to wait before requeueing after ``failures`` claims in a row found SQL down
    (0.5, 1, 2, 4, then 5): the worker neither spins on the queue nor sleeps long after
    SQL returns."""
    return min(SQL_BACKOFF_MAX_S, 0.5 * 2 ** min(max(0, failures - 1), 16))


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
          time_limit=hard_time_limit_s(app.conf.hadis_settings,
                                       registry(app.conf.hadis_settings)))
def generate(self, *args: object) -> dict:
    """One ``hadis.generate`` message (its arguments: ``GenerateMessage.args``)."""
    from workers.serving import SqlUnavailable

    global _sql_failures
    msg = GenerateMessage.from_args(args)
    try:
        out = runtime().run(msg, self.request.hostname or "worker").to_dict()
    except SqlUnavailable as exc:
        _sql_failures += 1
        wait = sql_backoff_s(_sql_failures)
        event(log, "query.requeued", logging.WARNING, query_id=msg.query_id, queue=msg.queue,
              reason=f"{exc}; message requeued after {wait:g} s")
        time.sleep(wait)
        raise Reject(str(exc), requeue=True) from exc
    _sql_failures = 0
    return out


@app.task(name="hadis.plan")
def plan_tick() -> dict:
    return plan_loop().tick()


@app.task(name="hadis.sweep")
def sweep() -> dict:
    return plan_loop().sweep()


@app.task(name="hadis.prune")
def prune() -> dict:
    """``HADIS_PRUNE_AFTER``: finished queries with their images, unreferenced images, old
    plans and dead messages (``hadis_celery.retention``), scheduled only when it is set."""
    return plan_loop().prune()


@app.task(name="hadis.bench_sleep", ignore_result=False, acks_late=False)
def bench_sleep(seconds: float) -> float:
    """Sleep like a model would; return the wall-clock time it ended (epoch seconds)."""
    time.sleep(float(seconds))
    return time.time()
