"""The Celery app: ``celery -A hadis_celery worker -Q light_sdxl -c 1`` finds ``app`` here.

Queue topology comes from the model registry of the configuration table: for every model
``m``, ``light_<m>`` (generate, then discriminate) and ``heavy_<m>`` (generate); plus
``hadis_control`` for the beat's planner and sweeper tasks.

Delivery: late acks with reject-on-worker-lost (a worker killed mid-batch leaves its message
on the queue for another), prefetch 1 (a worker holds one message at a time: batching drains
more itself, see ``workers.serving``), and a Redis visibility timeout above the longest
profiled batch (at the time factor) and the hard time limit, so a long batch is never
redelivered while it runs. Publishing uses Celery's anonymous exchange (routing key = queue
name), so a Redis that restarted empty, without kombu's binding keys, still routes.

Time limits (``docs/stack.md``, failures and recovery): each batch is limited to
``batch_time_limit_s`` in the worker itself; ``hard_time_limit_s`` is Celery's hard limit for a
``hadis.generate`` message, the backstop for a backend that cannot be interrupted.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import setup_logging
from kombu import Queue

from hadis_celery import remote  # noqa: F401  (the hadis_worker inspect command, CLI too)
from hadis_celery.deployment import CONTROL_QUEUE, model_queues, registry
from hadis_celery.settings import Settings, settings
from planner.registry import Registry

TASK_MODULES = ["workers.tasks", "workers.control"]


def longest_batch_s(reg: Registry, time_factor: float = 1.0) -> float:
    """Seconds of the slowest profiled batch of any model, at the replay time factor."""
    return max(m.batch_latency(max(m.batch_sizes)) for m in reg) * max(time_factor, 0.0)


MODEL_LOAD_ALLOWANCE_S = 600.0  # loading a model's weights when the plan moves a worker


def batch_time_limit_s(s: Settings, predicted_s: float) -> float:
    """The per-batch limit: a batch predicted to take ``predicted_s`` that runs longer than
    this is stopped and its queries fail (a hung backend must not hold a worker forever)."""
    return max(s.task_timeout_min_s, s.task_timeout_factor * max(predicted_s, 0.0))


def hard_time_limit_s(s: Settings, reg: Registry) -> float:
    """Celery's hard limit for one ``hadis.generate`` message (the pool child is killed past
    it): ``HADIS_TASK_HARD_TIMEOUT_S``, else the per-batch limit of the slowest profiled
    batch plus a model load. Only a backend that ignores the per-batch limit reaches it."""
    if s.task_hard_timeout_s > 0:
        return float(s.task_hard_timeout_s)
    return batch_time_limit_s(s, longest_batch_s(reg, s.time_factor)) + MODEL_LOAD_ALLOWANCE_S


def sweep_period_s(s: Settings) -> float:
    """Seconds between sweeps (``HADIS_SWEEP_PERIOD_S``, else max(plan period, 5 s))."""
    if s.sweep_period_s > 0:
        return max(0.5, float(s.sweep_period_s))
    return max(float(s.plan_period_s), 5.0)


def visibility_timeout_s(reg: Registry, time_factor: float = 1.0,
                         hard_limit_s: float = 0.0) -> int:
    """Above the longest batch and the hard time limit, with a wide margin (Redis redelivers
    unacked messages after this long, so it must never fire while a batch is still running)."""
    return int(max(3600.0, 4.0 * longest_batch_s(reg, max(time_factor, 1.0)) + 60.0,
                   hard_limit_s + 60.0))


def make_app(s: Settings | None = None, fast_fail: bool = False) -> Celery:
    """A Celery app for settings ``s`` (``HADIS_*`` from the environment by default).

    ``fast_fail``: publishing gives up after one quick reconnect (the front door answers
    503 within a fraction of a second when Redis is down, instead of retrying for seconds).
    """
    s = s or settings()
    reg = registry(s)
    app = Celery("hadis", broker=s.broker_url, backend=s.state_url, include=TASK_MODULES)
    queues = [Queue(q, routing_key=q) for q in model_queues(reg)]
    queues.append(Queue(CONTROL_QUEUE, routing_key=CONTROL_QUEUE))
    period = max(0.5, float(s.plan_period_s))
    sweep = sweep_period_s(s)
    app.conf.update(
        task_queues=queues,
        task_default_queue=CONTROL_QUEUE,
        task_routes={"hadis.plan": {"queue": CONTROL_QUEUE},
                     "hadis.sweep": {"queue": CONTROL_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        # a pool child loads and warms up its model before it reports up (workers.tasks)
        worker_proc_alive_timeout=MODEL_LOAD_ALLOWANCE_S,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s(reg, s.time_factor,
                                                       hard_time_limit_s(s, reg)),
            "socket_connect_timeout": 2},
        result_backend_transport_options={"socket_connect_timeout": 2},
        result_expires=600,
        beat_schedule={
            "hadis-plan": {"task": "hadis.plan", "schedule": period,
                           "options": {"queue": CONTROL_QUEUE, "expires": period}},
            "hadis-sweep": {"task": "hadis.sweep", "schedule": sweep,
                            "options": {"queue": CONTROL_QUEUE, "expires": sweep}},
        },
    )
    if s.prune_after_s > 0:  # retention: HADIS_PRUNE_AFTER (hadis_celery.retention)
        from hadis_celery.retention import prune_period_s

        every = prune_period_s(s.prune_after_s)
        app.conf.beat_schedule["hadis-prune"] = {
            "task": "hadis.prune", "schedule": every,
            "options": {"queue": CONTROL_QUEUE, "expires": every}}
    if fast_fail:
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options, "max_retries": 1, "interval_start": 0,
            "interval_step": 0.2, "interval_max": 0.2}
    app.conf.hadis_settings = s
    return app


@setup_logging.connect
def _structured_logs(loglevel=None, **_) -> None:
    """Workers and beat log JSON lines (``HADIS_LOG_FORMAT``), like the front door."""
    from hadis_celery.logs import configure

    configure(level=loglevel or "INFO")


app = make_app()
