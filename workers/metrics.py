"""Each worker's Prometheus exporter: what a batch cost, per model and batch size.

Off unless ``HADIS_WORKER_METRICS_PORT`` is set (``hadis up --worker-metrics-port BASE``
gives its workers BASE, BASE+1, ...). The pool process that runs the tasks (``-c 1``)
serves ``http://<host>:<port>/metrics`` with prometheus-client's own server:

- ``hadis_worker_batch_seconds{model,batch}``: histogram of a ``hadis.generate`` task's
  wall time (claim, model, judge, record), by the model of its queue and the batch size
  it ran;
- ``hadis_worker_queue_wait_seconds{model}``: histogram of message sent to task start (the
  message's ``sent_at``);
- ``hadis_worker_images_total{model,outcome}``: counter of queries by outcome (``done``,
  ``rerouted``, ``dropped``, ``failed``, ``given_back``);
- ``hadis_worker_gpu_memory_bytes{device,kind}``: ``allocated`` and ``reserved`` CUDA
  memory after each batch, only where torch sees CUDA.

Fed by Celery's ``task_prerun``/``task_postrun`` signals, so the serving code is untouched;
the model label is the deployment's model name. A front-door's ``/metrics`` is about the
stack (SQL, Redis); these are about one worker.
"""

from __future__ import annotations

import logging
import sys
import time

from celery.signals import task_postrun, task_prerun, worker_process_init
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from planner.status import QueryStatus

log = logging.getLogger(__name__)
REGISTRY = CollectorRegistry()
BATCH_SECONDS = Histogram(
    "hadis_worker_batch_seconds", "Wall time of one hadis.generate task (a batch)",
    ["model", "batch"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120))
QUEUE_WAIT = Histogram(
    "hadis_worker_queue_wait_seconds", "Message sent to task start", ["model"],
    registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
IMAGES = Counter("hadis_worker_images_total", "Queries a batch ended, by outcome",
                 ["model", "outcome"], registry=REGISTRY)
GPU_MEMORY = Gauge("hadis_worker_gpu_memory_bytes", "CUDA memory after the last batch",
                   ["device", "kind"], registry=REGISTRY)
# BatchReport field -> the outcome label (the query's new status; given back: none)
OUTCOMES = {"accepted": QueryStatus.DONE, "rerouted": QueryStatus.REROUTED,
            "dropped": QueryStatus.DROPPED, "failed": QueryStatus.FAILED,
            "given_back": "given_back"}
_started: dict[str, float] = {}
_server = None


def _model(queue: str) -> str:
    from hadis_celery.celery import app
    from hadis_celery.deployment import registry

    try:
        return registry(app.conf.hadis_settings).by_queue(queue).name
    except Exception:
        return queue


@worker_process_init.connect
def start_exporter(**_) -> None:
    """Serve ``/metrics`` from the pool process when ``HADIS_WORKER_METRICS_PORT`` is set."""
    global _server
    from hadis_celery.celery import app

    port = int(app.conf.hadis_settings.worker_metrics_port or 0)
    if port <= 0 or _server is not None:
        return
    try:
        _server = start_http_server(port, registry=REGISTRY)
        log.info("worker metrics on port %d", port)
    except OSError as exc:  # a second worker given the same port: say so, keep serving
        log.warning("worker metrics not served on port %d: %s", port, exc)


@task_prerun.connect
def _prerun(task_id=None, task=None, args=None, **_) -> None:
    if task is None or task.name != "hadis.generate":
        return
    _started[task_id] = time.time()
    try:
        sent_at = float(args[3]) if args and len(args) > 3 and args[3] is not None else None
        if sent_at is not None:
            QUEUE_WAIT.labels(_model(str(args[1]))).observe(max(0.0, time.time() - sent_at))
    except (TypeError, ValueError, IndexError):
        pass


@task_postrun.connect
def _postrun(task_id=None, task=None, retval=None, **_) -> None:
    if task is None or task.name != "hadis.generate":
        return
    t0 = _started.pop(task_id, None)
    if not isinstance(retval, dict):
        return
    model = _model(str(retval.get("queue", "")))
    ran = int(retval.get("batch") or 0)
    if t0 is not None and ran > 0:
        BATCH_SECONDS.labels(model, str(ran)).observe(time.time() - t0)
    for key, outcome in OUTCOMES.items():
        n = len(retval.get(key) or [])
        if n:
            IMAGES.labels(model, outcome).inc(n)
    _gpu_memory()


def _gpu_memory() -> None:
    torch = sys.modules.get("torch")  # only where a backend imported it
    try:
        if torch is None or not torch.cuda.is_available():
            return
        for i in range(torch.cuda.device_count()):
            GPU_MEMORY.labels(str(i), "allocated").set(torch.cuda.memory_allocated(i))
            GPU_MEMORY.labels(str(i), "reserved").set(torch.cuda.memory_reserved(i))
    except Exception as exc:  # metrics never fail a batch
        log.debug("GPU memory not read: %s", exc)
