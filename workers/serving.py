"""What a GPU worker does with one Celery message: a batch, from claim to SQL result.

``WorkerRuntime.run(message)`` (one per worker process, built on first use):

1. read the active plan (Redis; the last one seen when Redis has none or is down);
2. batching: the Celery message is the first query; up to ``B - 1`` more ``hadis.generate``
   messages are drained raw from the same Redis list (``LiveState.drain``). Only the first
   message is acked by Celery; the drained ones are covered by SQL: their rows are claimed
   (``running``, stamped with the batch's token ``host/pid/nonce``) before anything else
   happens, and from then on a daemon thread renews their lease (``updated_at``) every
   ``HADIS_LEASE_S / 3``. If the worker dies, the lease lapses and the next sweep re-sends
   them (``hadis_celery.beat``). If SQL cannot be reached to claim, the drained messages go back
   to the head of the list and the task requeues its own message (``SqlUnavailable``);
3. the backend for the queue's model is loaded (a worker switches models when the beat moves
   it to another model's queue); ``policy.take_batch`` drops queries that cannot meet their
   deadline (status ``dropped`` with the reason) and gives back what does not fit (rows
   first, then the drained messages to the head of the list, the Celery message re-sent);
4. the backend generates under a per-batch time limit (``batch_time_limit_s``: a hung
   backend is interrupted, the batch's queries fail with the reason, the worker is free);
   light outputs are judged by ``policy.verdict``: accepted, or rerouted to the plan's heavy
   queue with the original deadline (row first, then message);
5. images go to ``image_dir/<id>.png`` (a temporary file, then a rename); when the image store
   refuses a write (disk full, read-only), the rest of the batch fails at once with that
   reason, no temporary file is left, and the fault is recorded in Redis for
   ``HADIS_STORAGE_RETRY_S`` (``LiveState.storage_fault``: the front door refuses new work,
   ``/v1/health`` reports it; a later successful write clears it). The rows are updated
   (only those still carrying the batch's token: a row the sweeper took away keeps its new
   owner's result), with retries for ``HADIS_SQL_RETRY_S`` while SQL is unavailable; the
   heartbeat row is updated too.

Every message leaves through ``hadis_celery.transport`` (row first, then message): one that
cannot be sent (Redis down) leaves its row back-dated (``store.mark_unsent``) so the next
sweep sends it. Every state change is one structured log event with the
``query_id`` (``query.claimed``, ``query.done``, ``query.rerouted``, ``query.dropped``,
``query.failed``, ``query.given_back``, and ``query.unrecorded`` / ``query.superseded`` when
a result could not be written or was no longer ours to write).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar

from celery import Celery
from sqlalchemy import Engine

from hadis_celery import store, transport
from hadis_celery.deployment import load_table
from hadis_celery.imagestore import image_store
from hadis_celery.live import LiveState
from hadis_celery.logs import event
from hadis_celery.settings import Settings
from hadis_celery.transport import GenerateMessage
from planner import policy
from planner.registry import ModelSpec
from planner.status import QueryStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


class SqlUnavailable(Exception):
    """SQL could not be reached to claim a message's queries; the drained messages are back
    on their list and the task requeues its own message."""


class BatchTimeout(Exception):
    """A batch ran past its time limit (raised inside the batch by ``time_limit``)."""


@contextmanager
def time_limit(seconds: float, message: str) -> Iterator[None]:
    """Raise ``BatchTimeout(message)`` in the block after ``seconds`` (SIGALRM, so only in
    the main thread, where a prefork or solo pool runs tasks; elsewhere Celery's hard
    limit is the only bound)."""
    if (seconds <= 0 or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def _expire(_signum, _frame) -> None:
        raise BatchTimeout(message)

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Lease:
    """Keeps the rows of the running batch fresh in SQL from a daemon thread (the batch
    itself may sit in one model call for minutes), so the sweeper can tell a slow batch
    from a dead worker."""

    def __init__(self, engine: Engine, lease_s: float) -> None:
        self.engine = engine
        self.period_s = max(0.1, float(lease_s) / 3.0)
        self._token: str | None = None
        self._thread: threading.Thread | None = None

    def hold(self, token: str) -> None:
        self._token = token
        if self._thread is None or not self._thread.is_alive():  # a fork loses threads
            self._thread = threading.Thread(target=self._renew, name="hadis-lease",
                                            daemon=True)
            self._thread.start()

    def drop(self) -> None:
        self._token = None

    def _renew(self) -> None:
        while True:
            time.sleep(self.period_s)
            token = self._token
            if token is None:
                continue
            try:
                store.renew(self.engine, token, time.time())
            except Exception as exc:  # SQL down: the lease lapses, the sweeper decides
                log.warning("cannot renew the lease of %s (%s)", token,
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def interp_seconds(spec: ModelSpec, b: int) -> float:
    """Registry batch latency, linear between profiled sizes (the simulator's rule)."""
    from workers.backends.replay import batch_seconds

    return batch_seconds(spec, b)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class BatchReport:
    """What one ``run`` did (returned by the task, for logs and tests)."""

    queue: str
    model: int
    batch: int
    ran: list[str]
    accepted: list[str]
    rerouted: list[str]
    dropped: list[str]
    given_back: list[str]
    skipped: list[str]
    failed: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # SQL down: the sweeper re-runs them
    superseded: list[str] = field(default_factory=list)  # taken over by another worker

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class WorkerRuntime:
    """Per-process state of a worker: SQL engine, Redis, registry, the loaded backend."""

    def __init__(self, s: Settings, app: Celery) -> None:
        self.s = s
        self.app = app
        self.engine = store.serving_engine(s.database_url)
        self._beat_at = 0.0
        self.live = LiveState.from_url(s.state_url)
        self.table = load_table(s)
        self.reg = self.table.registry
        self.backend = None
        self.discriminator = None
        self.last_plan: policy.ActivePlan | None = None
        self.images = image_store(s)  # a folder or an fsspec URL (hadis_celery.imagestore)
        self.images.ensure()
        self.image_dir = self.images.location  # for messages and the storage fault
        self.lease = Lease(self.engine, s.lease_s)
        self._storage_faulted = False  # this process recorded a storage fault
        self.loads: list[dict] = []
        self._hostname = ""  # this process's timed model loads (tests, logs)

    # -- plan, backend, timing --------------------------------------------------------
    def plan(self, spec: ModelSpec, queue: str) -> policy.ActivePlan:
        try:
            p = self.live.get_plan()
            if p is not None:
                self.last_plan = p
        except Exception as exc:  # Redis down: keep the last plan
            log.warning("cannot read the plan (%s); keeping the last one", exc)
        return self.last_plan or policy.fallback_plan(spec.id, queue)

    def backend_for(self, spec: ModelSpec, hostname: str = ""):
        """The loaded and warmed-up backend for ``spec``; switching models unloads the
        previous one. A load is timed (unload + load, then the warm-up generation) and,
        for backends that really load weights, recorded in SQL (``model_loads``): the
        beat plans with each model's measured swap time (``store.measured_swap_s``)."""
        from workers.backends import is_replay, load_backend

        if self.backend is not None and self.backend.spec.id == spec.id:
            return self.backend
        switching = self.backend is not None
        t0 = time.perf_counter()
        if self.backend is not None:
            log.info("switching model %s -> %s", self.backend.spec.name, spec.name)
            self.backend.unload()
            self.backend = None
        opts = {}
        replay = is_replay(spec.backend)
        if replay:  # a swap costs what the simulator charges for it (the model's own)
            opts = {"time_factor": self.s.time_factor,
                    "load_delay_s": spec.swap_seconds(self.s.swap_delay_s) if switching
                    else 0.0}
        backend = load_backend(spec, **opts)
        t1 = time.perf_counter()
        try:
            backend.warmup()  # the first real batch must not pay set-up
        except Exception:
            backend.unload()
            raise
        t2 = time.perf_counter()
        self.backend = backend
        kind = "swap" if switching else "start"
        self.loads.append({"model": spec.name, "kind": kind, "load_s": t1 - t0,
                           "warmup_s": t2 - t1})
        event(log, "model.loaded", model=spec.name, backend=spec.backend, kind=kind,
              load_s=round(t1 - t0, 4), warmup_s=round(t2 - t1, 4))
        if not replay:  # replay sleeps the declared delay: nothing to measure
            try:
                store.record_load(self.engine, model=spec.name, worker=hostname,
                                  backend=spec.backend, kind=kind, load_s=t1 - t0,
                                  warmup_s=t2 - t1, at=time.time())
            except Exception as exc:  # SQL down: the planner keeps the declared time
                log.warning("model load of %s not recorded (%s)", spec.name, _first_line(exc))
        return self.backend

    def preload(self, queues: Sequence[str], hostname: str = "") -> ModelSpec | None:
        """Load and warm up the model of the worker's first model queue, before the worker
        takes a message (called from the pool child's start, ``workers.tasks``). Returns the
        model, or None when no queue is a model queue (the planner's worker)."""
        for q in queues:
            try:
                spec = self.reg.by_queue(q)
            except KeyError:
                continue
            self.backend_for(spec, hostname)
            return spec
        return None

    def seconds(self, spec: ModelSpec) -> Callable[[int], float]:
        """Predicted wall seconds of a batch of ``b`` on this worker."""
        from workers.backends import is_replay

        factor = self.s.time_factor if is_replay(spec.backend) else 1.0
        return lambda b: interp_seconds(spec, b) * factor

    def judge(self, images, prompts: list[str], quality: list[float] | None
              ) -> tuple[list[float | None], list[float | None]]:
        """Quality and CLIP scores: recorded ones (replay), else the CLIP discriminator
        when ``HADIS_DISC_HEAD`` is set, else unknown (the light image is accepted)."""
        if quality is not None:
            return list(quality), [None] * len(prompts)
        if self.s.disc_head is None:
            return [None] * len(prompts), [None] * len(prompts)
        if self.discriminator is None:
            from workers.discriminator import Discriminator

            self.discriminator = Discriminator.load(self.s.disc_head)
        scores = self.discriminator.score(images, prompts)
        return [sc.quality for sc in scores], [sc.clip for sc in scores]

    # -- SQL with outages -------------------------------------------------------------
    def _retry_sql(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` (SQL work), retried while the database is unavailable, for up to
        ``HADIS_SQL_RETRY_S``: a short outage must not cost a batch of generated images."""
        end = time.monotonic() + max(0.0, self.s.sql_retry_s)
        wait = 0.25
        while True:
            try:
                return fn()
            except Exception as exc:
                if not store.unavailable(exc) or time.monotonic() + wait > end:
                    raise
                log.warning("SQL unavailable while %s (%s); retrying in %.2f s", what,
                            _first_line(exc), wait)
                time.sleep(wait)
                wait = min(2 * wait, 5.0)

    def _record(self, updates: Sequence[dict], token: str, now: float,
                report: BatchReport) -> set[str]:
        """Write a batch's outcomes (only rows still carrying ``token``); returns the ids
        written. If SQL stays down, nothing is written: the rows stay ``running``, their
        lease lapses and the sweeper re-sends them once SQL is back."""
        if not updates:
            return set()
        try:
            applied = set(self._retry_sql("recording results", lambda: store.finish(
                self.engine, updates, now, token=token)))
        except Exception as exc:
            if not store.unavailable(exc):
                raise
            for u in updates:
                report.unrecorded.append(u["id"])
                event(log, "query.unrecorded", logging.WARNING, query_id=u["id"],
                      status=u.get("status"), worker=token,
                      reason=f"SQL unavailable ({_first_line(exc)}); left running, the "
                             "sweeper re-sends it when its lease lapses")
            return set()
        for u in updates:
            if u["id"] not in applied:
                report.superseded.append(u["id"])
                event(log, "query.superseded", logging.WARNING, query_id=u["id"],
                      worker=token, reason="no longer held by this batch (re-sent by the "
                                           "sweeper and claimed again, or finished)")
        return applied

    def _fail(self, rows, token: str, reason: str, report: BatchReport) -> None:
        now = time.time()
        updates = [{"id": r.id, "status": QueryStatus.FAILED, "finished_at": now,
                    "reason": reason[:2000]} for r in rows]
        for qid in sorted(self._record(updates, token, now, report)):
            report.failed.append(qid)
            event(log, "query.failed", logging.WARNING, query_id=qid, worker=token,
                  reason=reason[:500])

    # -- one message ------------------------------------------------------------------
    def run(self, first: GenerateMessage, hostname: str) -> BatchReport:
        self._hostname = hostname
        queue = first.queue
        spec = self.reg.by_queue(queue)
        if self.backend is not None and self.backend.spec.id != spec.id and not first.swapped:
            return self._swap(first, spec)
        plan = self.plan(spec, queue)
        cap = plan.batch_for(spec.id, max(spec.batch_sizes))
        try:
            extra = self.live.drain(queue, cap - 1)
        except Exception as exc:
            log.warning("cannot drain %s (%s); running one query", queue, exc)
            extra = []
        msgs = [first] + extra
        by_id = {m.query_id: m for m in msgs}
        token = f"{hostname}/{os.getpid()}/{uuid.uuid4().hex[:8]}"[:128]
        now = time.time()
        sent = {m.query_id: m.sent_at for m in msgs if m.sent_at is not None}
        self.lease.hold(token)
        try:
            try:
                rows = store.claim(self.engine, list(by_id), queue, token, now, sent)
            except Exception as exc:
                self._return_drained(queue, extra)
                if store.unavailable(exc):
                    raise SqlUnavailable(f"cannot claim on {queue}: {_first_line(exc)}"
                                         ) from exc
                raise
            claimed = {r.id for r in rows}
            report = BatchReport(queue, spec.id, 0, [], [], [], [], [],
                                 [i for i in by_id if i not in claimed])
            for r in rows:
                event(log, "query.claimed", query_id=r.id, queue=queue, worker=token,
                      attempt=r.attempts, status=QueryStatus.RUNNING)
            for qid in report.skipped:  # a duplicate message: the row is taken or final
                event(log, "query.skipped", logging.DEBUG, query_id=qid, queue=queue)
            if rows:
                self._serve(rows, by_id, first, spec, plan, queue, cap, token, report)
        finally:
            self.lease.drop()
        if rows:
            self._heartbeat(hostname, spec, queue, plan)
        return report

    def _swap(self, first: GenerateMessage, spec: ModelSpec) -> BatchReport:
        """The plan moved this worker to another model: hand the message back, then load.
        No query waits on a loading worker (the simulator's rule: a swapping worker holds
        nothing); the worker takes its next message with the new model loaded. A message is
        handed back once only, so a worker bound to two models' queues cannot livelock."""
        report = BatchReport(first.queue, spec.id, 0, [], [], [], [], [first.query_id], [])
        try:  # the row still waits, untouched; the same message, marked swapped
            self._hand_back(first.handed_back(swapped=True))
        except Exception as exc:  # Redis went: the next sweep sends it from SQL
            log.warning("cannot hand %s back (%s)", first.query_id, _first_line(exc))
        event(log, "query.given_back", query_id=first.query_id, queue=first.queue,
              reason=f"worker swapping to {spec.name}")
        try:
            self.backend_for(spec, self._hostname)
        except Exception:  # the next message on this queue retries and fails its rows
            log.exception("cannot load %s", spec.name)
        return report

    def _serve(self, rows, by_id, first: GenerateMessage, spec: ModelSpec,
               plan: policy.ActivePlan, queue: str, cap: int, token: str,
               report: BatchReport) -> None:
        """The claimed rows: load the model, drop, give back, run the batch."""
        try:
            backend = self.backend_for(spec, self._hostname)
        except Exception as exc:
            log.exception("cannot load %s", spec.name)
            self._fail(rows, token, f"{spec.name}: the {spec.backend} backend could not load: "
                                    f"{_first_line(exc)}", report)
            return
        now = time.time()
        choice = policy.take_batch(now, [r.deadline for r in rows], cap, self.seconds(spec))
        one = self.seconds(spec)(1)
        drops = []
        for i in choice.drop:
            r = rows[i]
            drops.append({"id": r.id, "status": QueryStatus.DROPPED, "finished_at": now,
                          "reason": f"cannot meet its deadline on {queue}: needs {one:.3f} s, "
                                    f"{max(r.deadline - now, 0.0):.3f} s left"})
        applied = self._record(drops, token, now, report)
        for u in drops:
            if u["id"] in applied:
                report.dropped.append(u["id"])
                event(log, "query.dropped", query_id=u["id"], queue=queue, worker=token,
                      reason=u["reason"], status=QueryStatus.DROPPED)
        back = [rows[i] for i in choice.back]
        if back:
            self._give_back(back, by_id, first, queue, token)
            report.given_back = [r.id for r in back]
        batch = [rows[i] for i in choice.run]
        if batch:
            self._run_batch(batch, spec, plan, queue, backend, token, report)

    def _return_drained(self, queue: str, extra: list[GenerateMessage]) -> None:
        """Drained messages go back to the head of their list (nothing was claimed)."""
        try:
            self.live.push_back(queue, extra)
        except Exception as exc:  # their rows are still queued: the sweeper re-sends them
            log.warning("cannot return %d drained messages to %s (%s)", len(extra), queue, exc)

    def _give_back(self, rows, by_id, first: GenerateMessage, queue: str, token: str) -> None:
        now = time.time()
        ids = [r.id for r in rows]
        try:  # rows first, then their messages
            store.release(self.engine, ids, now, token)
        except Exception as exc:  # left running: the lease lapses, the sweeper re-sends
            log.warning("cannot release %d rows (%s)", len(ids), _first_line(exc))
        for qid in ids:
            event(log, "query.given_back", query_id=qid, queue=queue, worker=token,
                  status=QueryStatus.QUEUED)
        raw = [by_id[r.id] for r in rows if by_id[r.id] is not first]
        try:
            self.live.push_back(queue, raw)
        except Exception as exc:
            transport.unsent(self.engine, raw, exc)
        if any(by_id[r.id] is first for r in rows):
            try:  # the Celery message is acked: the same message again, first in line
                self._hand_back(first.handed_back())
            except Exception:  # its row is back-dated: the next sweep sends it
                pass

    def _hand_back(self, msg: GenerateMessage) -> None:
        """Re-send a message this worker took but does not run to the *head* of its queue:
        it was next in line, and the simulator's queues are FIFO (a Celery re-send goes to
        the tail, behind the whole backlog: measured, a handed-back query then often missed
        its deadline). Through Celery when the broker's lists cannot be written directly.
        On a Redis error its row is back-dated for the sweep (``transport.unsent``) and the
        error raised."""
        if not transport.plain_redis(self.app):
            transport.send_written(self.app, self.engine, [msg])
            return
        try:
            self.live.push_back(msg.queue, [replace(msg, raw=transport.envelope(self.app, msg))])
        except Exception as exc:
            transport.unsent(self.engine, [msg], exc)
            raise

    def _run_batch(self, batch, spec: ModelSpec, plan: policy.ActivePlan, queue: str,
                   backend, token: str, report: BatchReport) -> None:
        from hadis_celery.celery import batch_time_limit_s

        prompts = [r.prompt for r in batch]
        report.batch = len(batch)
        report.ran = [r.id for r in batch]
        predicted = self.seconds(spec)(len(batch))
        limit = batch_time_limit_s(self.s, predicted)
        timeout = (f"{spec.name}: the batch of {len(batch)} did not finish within its time "
                   f"limit of {limit:.1f} s (max({self.s.task_timeout_min_s:g} s, "
                   f"{self.s.task_timeout_factor:g} x the predicted {predicted:.2f} s)); "
                   "the backend was interrupted")
        try:
            with time_limit(limit, timeout):
                gen = backend.generate(prompts, [r.seed for r in batch])
                quality, clip = self.judge(gen.images, prompts, gen.quality)
        except BatchTimeout as exc:
            log.error("batch on %s timed out", queue)
            self._fail(batch, token, str(exc), report)
            return
        except Exception as exc:
            log.exception("batch on %s failed", queue)
            self._fail(batch, token, f"{spec.name}: {exc}", report)
            return
        now = time.time()
        updates, outcome = [], {}
        unsaved: OSError | None = None  # the image store refused a write: the rest fail
        for r, img, q, c in zip(batch, gen.images, quality, clip, strict=True):
            models = list(r.models or []) + [spec.id]
            base = {"id": r.id, "models": models, "model_s": (r.model_s or 0.0) + gen.seconds}
            if gen.params is not None:  # what this model ran with (the served one last)
                base["params"] = gen.params
            judged = q is not None and not math.isnan(q)
            if judged and policy.verdict(plan, queue, spec.id, q) == policy.REROUTE:
                updates.append({**base, "status": QueryStatus.REROUTED, "queue": plan.heavy_queue,
                                "light_quality": q, "attempts": (r.attempts or 0) + 1})
                outcome[r.id] = (QueryStatus.REROUTED, r, q)
                continue
            if unsaved is None:
                try:
                    name = self._save_image(img, r.id)
                except OSError as exc:
                    unsaved = exc
            if unsaved is not None:
                updates.append({**base, "status": QueryStatus.FAILED, "finished_at": now,
                                "reason": self._storage_reason(unsaved)})
                outcome[r.id] = (QueryStatus.FAILED, r, q)
                continue
            extra = ({"light_quality": q}
                     if policy.discriminates(plan, queue, spec.id) else {})
            updates.append({**base, **extra, "status": QueryStatus.DONE, "served_model": spec.id,
                            "quality": q, "clip": c, "image": name, "finished_at": now})
            outcome[r.id] = (QueryStatus.DONE, r, q)
        if unsaved is not None:
            self._storage_failed(unsaved, token)
        elif self._storage_faulted and any(o[0] == QueryStatus.DONE for o in outcome.values()):
            self._storage_recovered()
        applied = self._record(updates, token, now, report)
        resend = []
        for qid, (what, r, q) in outcome.items():
            if qid not in applied:
                continue
            if what == QueryStatus.FAILED:
                report.failed.append(qid)
                event(log, "query.failed", logging.WARNING, query_id=qid, queue=queue,
                      worker=token, reason=self._storage_reason(unsaved), status=QueryStatus.FAILED)
                continue
            if what == QueryStatus.REROUTED:
                report.rerouted.append(qid)
                resend.append(r)
                event(log, "query.rerouted", query_id=qid, queue=plan.heavy_queue,
                      from_queue=queue, model=spec.id, light_quality=q, status=QueryStatus.REROUTED)
            else:
                report.accepted.append(qid)
                event(log, "query.done", query_id=qid, queue=queue, model=spec.id, quality=q,
                      latency_s=round(now - r.received_at, 6), status=QueryStatus.DONE)
        for r in resend:  # row first (above), then message; a lost send: the sweeper's
            msg = GenerateMessage.for_row(r, plan.heavy_queue, attempts=(r.attempts or 0) + 1)
            try:
                transport.send_written(self.app, self.engine, [msg])
            except Exception:  # its row is back-dated: the next sweep sends it
                continue
            try:
                self.live.count_enqueue(plan.heavy_queue)
            except Exception:  # demand is a little under-counted
                pass

    # -- the image store ----------------------------------------------------------------
    def _save_image(self, img, query_id: str) -> str:
        """Write ``<id>.png`` through the image store, atomically (a folder: a temporary
        file, then a rename; a failed write leaves no temporary file behind). Returns the
        file name; raises ``OSError``."""
        return self.images.write_png(f"{query_id}.png", img)

    @staticmethod
    def _errno(exc: OSError | None) -> str:
        """``ENOSPC: No space left on device``, or the error's first line."""
        if exc is not None and exc.errno:
            return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
        return _first_line(exc) if exc is not None else "?"

    def _storage_reason(self, exc: OSError | None) -> str:
        return (f"the image store {self.image_dir} cannot be written ({self._errno(exc)}); "
                "the image was generated but not saved, and the query is not retried")

    def _storage_failed(self, exc: OSError, token: str) -> None:
        """Record that the image store refused a write, for ``HADIS_STORAGE_RETRY_S``: the
        front door refuses new work and ``/v1/health`` reports it meanwhile."""
        info = {"worker": token, "dir": str(self.image_dir), "t": time.time(),
                "errno": self._errno(exc), "error": self._storage_reason(exc)}
        event(log, "storage.unwritable", logging.ERROR, worker=token, dir=str(self.image_dir),
              reason=info["error"])
        self._storage_faulted = True
        try:
            self.live.set_storage_fault(info, self.s.storage_retry_s)
        except Exception as exc2:  # Redis down: the queries still fail with the reason
            log.warning("cannot record the storage fault (%s)", _first_line(exc2))

    def _storage_recovered(self) -> None:
        try:
            self.live.clear_storage_fault()
            self._storage_faulted = False
            event(log, "storage.writable", dir=str(self.image_dir))
        except Exception as exc:
            log.warning("cannot clear the storage fault (%s)", _first_line(exc))

    def _heartbeat(self, hostname: str, spec: ModelSpec, queue: str,
                   plan: policy.ActivePlan) -> None:
        """At most one SQL heartbeat per ``heartbeat_s`` (the main process beats too)."""
        if time.time() - self._beat_at < self.s.heartbeat_s:
            return
        self._beat_at = time.time()
        try:
            length = self.live.queue_lengths([queue])[queue]
        except Exception:
            length = -1
        try:
            store.heartbeat(self.engine, hostname, time.time(), model=spec.id, queue=queue,
                            batch=plan.batch_for(spec.id, max(spec.batch_sizes)),
                            queue_length=max(length, 0), backend=spec.backend)
        except Exception as exc:
            log.warning("heartbeat not written (%s)", exc)
