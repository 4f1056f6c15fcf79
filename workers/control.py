"""Worker-side remote control: a heartbeat bootstep.

The heartbeat (every ``HADIS_HEARTBEAT_S``, in the worker's main process) writes a Redis key
with a time to live (the beat task's list of live workers, and their queues) and the
worker's SQL heartbeat row. The ``hadis_worker`` inspect command (which queues the worker
consumes and the batch size the active plan gives each) is registered beside the app, in
``hadis_celery.remote``, so that ``celery -A hadis_celery inspect hadis_worker`` knows it.
"""

from __future__ import annotations

import logging
import time

from celery import bootsteps

from hadis_celery.celery import app
from hadis_celery.deployment import CONTROL_QUEUE
from hadis_celery.remote import worker_view

log = logging.getLogger(__name__)
_live = None


def _state():
    global _live
    if _live is None:
        from hadis_celery.remote import live_state

        _live = live_state(app.conf.hadis_settings.state_url)
    return _live


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
