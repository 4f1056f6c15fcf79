"""Worker-side remote control: a heartbeat bootstep and the ``hadis_worker`` inspect command.

The heartbeat (every ``HADIS_HEARTBEAT_S``, in the worker's main process) writes a Redis key
with a time to live (the beat task's list of live workers, and their queues) and the
worker's SQL heartbeat row. ``hadis_worker`` answers, through Celery's inspect API, which
queues the worker consumes and the batch size the active plan gives each of them.
"""

from __future__ import annotations

import logging
import time

from celery import bootsteps
from celery.worker.control import inspect_command

from hadis_celery.celery import app
from hadis_celery.deployment import CONTROL_QUEUE

log = logging.getLogger(__name__)
_live = None


def _state():
    global _live
    if _live is None:
        from hadis_celery.live import LiveState

        _live = LiveState.from_url(app.conf.hadis_settings.state_url)
    return _live


def worker_view(consumer) -> dict:
    """The worker's queues, and B for each from the active plan (1 when not planned)."""
    from hadis_celery.deployment import registry

    queues = sorted(q.name for q in consumer.task_consumer.queues) \
        if consumer.task_consumer is not None else []
    reg = registry(app.conf.hadis_settings)
    try:
        plan = _state().get_plan()
    except Exception:
        plan = None
    batch, models = {}, {}
    for q in queues:
        if q == CONTROL_QUEUE:
            continue
        spec = reg.by_queue(q)
        models[q] = spec.id
        batch[q] = plan.batch_for(spec.id, max(spec.batch_sizes)) if plan else 1
    return {"queues": queues, "models": models, "batch": batch,
            "plan_id": plan.plan_id if plan else None}


@inspect_command()
def hadis_worker(state) -> dict:
    """``app.control.broadcast('hadis_worker', reply=True, destination=[...])``."""
    return worker_view(state.consumer)


class Heartbeat(bootsteps.StartStopStep):
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs) -> None:
        self.tref = None

    def start(self, c) -> None:
        period = max(0.5, float(app.conf.hadis_settings.heartbeat_s))
        self.beat(c)
        self.tref = c.timer.call_repeatedly(period, self.beat, (c,), priority=10)

    def stop(self, c) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def beat(self, c) -> None:
        from hadis_celery import store
        from hadis_celery.deployment import registry

        s = app.conf.hadis_settings
        try:
            view = worker_view(c)
            if CONTROL_QUEUE in view["queues"] or not view["models"]:
                return  # the planner's worker is not a GPU worker
            q = next(iter(view["models"]))
            lengths = _state().queue_lengths(list(view["models"]))
            _state().heartbeat(c.hostname, {**view, "lengths": lengths, "t": time.time()},
                               ttl_s=3 * max(0.5, s.heartbeat_s))
            store.heartbeat(_engine(), c.hostname, time.time(), model=view["models"][q],
                            queue=q, batch=view["batch"][q], queue_length=lengths[q],
                            backend=registry(s).by_queue(q).backend)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)


_eng = None


def _engine():
    global _eng
    if _eng is None:
        from hadis_celery.store import serving_engine

        _eng = serving_engine(app.conf.hadis_settings.database_url)
    return _eng


app.steps["consumer"].add(Heartbeat)
