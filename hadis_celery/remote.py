"""The ``hadis_worker`` inspect command: which queues a worker consumes and the batch size
the active plan gives each.

It lives beside the Celery app (``hadis_celery.celery`` imports this module) rather than
with the worker's tasks because ``celery -A hadis_celery inspect hadis_worker`` checks the
command name against the commands registered *in the calling process*: a command that only
the worker imports answers a broadcast but is "not recognized" by the CLI. Celery's docs
say the same: register custom commands in a module the app's module imports.
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from hadis_celery.deployment import CONTROL_QUEUE

_live: dict[str, Any] = {}


def live_state(url: str):
    """One ``LiveState`` per Redis URL and process."""
    if url not in _live:
        from hadis_celery.live import LiveState

        _live[url] = LiveState.from_url(url)
    return _live[url]


def worker_view(consumer) -> dict:
    """The worker's queues, and B for each from the active plan (1 when not planned)."""
    from hadis_celery.deployment import registry

    s = consumer.app.conf.hadis_settings
    queues = sorted(q.name for q in consumer.task_consumer.queues) \
        if consumer.task_consumer is not None else []
    reg = registry(s)
    try:
        plan = live_state(s.state_url).get_plan()
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
    """Queues, model ids, batch sizes and plan id of this worker
    (``celery -A hadis_celery inspect hadis_worker``)."""
    return worker_view(state.consumer)
