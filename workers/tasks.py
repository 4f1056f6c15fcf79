"""Celery tasks: thin adapters over ``workers.serving`` and ``planner.beat``.

- ``hadis.generate(query_id, queue, attempt, sent_at)``: one message = one query; the worker
  drains up to B - 1 more from the same queue and runs them as one batch.
- ``hadis.plan``: the beat's planner tick (``planner.beat.PlanLoop.tick``).
- ``hadis.sweep``: re-send accepted queries whose message was lost (``planner.beat.sweep``).
- ``hadis.bench_sleep``: a bare task for ``bench.frontdoor``'s baseline.
"""

from __future__ import annotations

import functools
import time

from celery.signals import worker_process_init

from hadis_celery.celery import app
from hadis_celery.live import GENERATE_TASK, QueuedMessage


@functools.lru_cache(maxsize=1)
def runtime():
    from workers.serving import WorkerRuntime

    return WorkerRuntime(app.conf.hadis_settings, app)


@functools.lru_cache(maxsize=1)
def plan_loop():
    from planner.beat import PlanLoop

    return PlanLoop.from_settings(app.conf.hadis_settings, app)


@worker_process_init.connect
def _warm(**_) -> None:
    """Open SQL and Redis in each pool process before its first message arrives."""
    try:
        runtime()
    except Exception:  # reported again, with context, by the first task
        pass


@app.task(name=GENERATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def generate(self, query_id: str, queue: str, attempt: int = 0,
             sent_at: float | None = None) -> dict:
    msg = QueuedMessage(str(query_id), str(queue), int(attempt), sent_at)
    return runtime().run(msg, self.request.hostname or "worker").to_dict()


@app.task(name="hadis.plan")
def plan_tick() -> dict:
    return plan_loop().tick()


@app.task(name="hadis.sweep")
def sweep() -> dict:
    return plan_loop().sweep()


@app.task(name="hadis.bench_sleep", ignore_result=False, acks_late=False)
def bench_sleep(seconds: float) -> float:
    """Sleep like a model would; return the wall-clock time it ended (epoch seconds)."""
    time.sleep(float(seconds))
    return time.time()
