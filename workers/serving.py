"""What a GPU worker does with one Celery message: a batch, from claim to SQL result.

``WorkerRuntime.run(message)`` (one per worker process, built on first use):

1. read the active plan (Redis; the last one seen when Redis has none or is down);
2. batching: the Celery message is the first query; up to ``B - 1`` more ``hadis.generate``
   messages are drained raw from the same Redis list (``LiveState.drain``). Only the first
   message is acked by Celery; the drained ones are covered by SQL: their rows are claimed
   (``running``) before the batch runs, and the sweeper re-sends rows left open too long;
3. ``policy.take_batch`` drops queries that cannot meet their deadline (status ``dropped``
   with the reason) and gives back what does not fit (drained messages to the head of the
   list, the Celery message re-sent);
4. the backend for the queue's model generates (a worker switches models when the beat moves
   it to another model's queue); light outputs are judged by ``policy.verdict``: accepted, or
   rerouted to the plan's heavy queue with the original deadline (row first, then message);
5. images go to ``image_dir/<id>.png``, the rows are updated, the heartbeat row too.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from hadis_celery import policy, store
from hadis_celery.deployment import load_table
from hadis_celery.live import GENERATE_TASK, LiveState, QueuedMessage
from hadis_celery.settings import Settings
from planner.registry import ModelSpec

log = logging.getLogger(__name__)


def send_generate(app: Celery, query_id: str, queue: str, attempt: int,
                  sent_at: float | None = None) -> None:
    """Publish one ``hadis.generate`` message on ``queue`` (no retry: the caller decides)."""
    app.send_task(GENERATE_TASK, args=[query_id, queue, attempt,
                                       time.time() if sent_at is None else sent_at],
                  queue=queue, routing_key=queue, retry=False, ignore_result=True)


def fallback_plan(spec: ModelSpec, queue: str) -> policy.ActivePlan:
    """Before any plan was published: run this queue's model alone at batch 1, no judging."""
    return policy.ActivePlan(plan_id=0, light=spec.id, heavy=spec.id, light_queue=queue,
                             heavy_queue=queue, theta=math.inf, tau=-math.inf,
                             routing="none", router_ratio=0.0, batch={})


def interp_seconds(spec: ModelSpec, b: int) -> float:
    """Registry batch latency, linear between profiled sizes (the simulator's rule)."""
    from workers.backends.replay import batch_seconds

    return batch_seconds(spec, b)


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
        self.image_dir = Path(s.image_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)

    # -- plan, backend, timing --------------------------------------------------------
    def plan(self, spec: ModelSpec, queue: str) -> policy.ActivePlan:
        try:
            p = self.live.get_plan()
            if p is not None:
                self.last_plan = p
        except Exception as exc:  # Redis down: keep the last plan
            log.warning("cannot read the plan (%s); keeping the last one", exc)
        return self.last_plan or fallback_plan(spec, queue)

    def backend_for(self, spec: ModelSpec):
        """The loaded backend for ``spec``; switching models unloads the previous one."""
        from workers.backends import load_backend

        if self.backend is not None and self.backend.spec.id == spec.id:
            return self.backend
        switching = self.backend is not None
        if self.backend is not None:
            log.info("switching model %s -> %s", self.backend.spec.name, spec.name)
            self.backend.unload()
            self.backend = None
        opts = {}
        if spec.backend == "replay":  # a swap costs what the simulator charges for it
            opts = {"time_factor": self.s.time_factor,
                    "load_delay_s": self.s.swap_delay_s if switching else 0.0}
        self.backend = load_backend(spec, **opts)
        return self.backend

    def seconds(self, spec: ModelSpec) -> Callable[[int], float]:
        """Predicted wall seconds of a batch of ``b`` on this worker."""
        factor = self.s.time_factor if spec.backend == "replay" else 1.0
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

    # -- one message ------------------------------------------------------------------
    def run(self, first: QueuedMessage, hostname: str) -> BatchReport:
        now = time.time()
        queue = first.queue
        spec = self.reg.by_queue(queue)
        plan = self.plan(spec, queue)
        backend = self.backend_for(spec)
        cap = plan.batch_for(spec.id, backend.max_batch)
        try:
            extra = self.live.drain(queue, cap - 1)
        except Exception as exc:
            log.warning("cannot drain %s (%s); running one query", queue, exc)
            extra = []
        msgs = [first] + extra
        by_id = {m.query_id: m for m in msgs}
        token = f"{hostname}/{uuid.uuid4().hex[:8]}"
        sent = {m.query_id: m.sent_at for m in msgs if m.sent_at is not None}
        rows = store.claim(self.engine, list(by_id), queue, token, now, sent)
        claimed = {r.id for r in rows}
        report = BatchReport(queue, spec.id, 0, [], [], [], [], [],
                             [i for i in by_id if i not in claimed])
        if not rows:
            return report
        choice = policy.take_batch(now, [r.deadline for r in rows], cap, self.seconds(spec))
        one = self.seconds(spec)(1)
        updates = []
        for i in choice.drop:
            r = rows[i]
            updates.append({"id": r.id, "status": "dropped", "finished_at": now,
                            "reason": f"cannot meet its deadline on {queue}: needs {one:.3f} s, "
                                      f"{max(r.deadline - now, 0.0):.3f} s left"})
            report.dropped.append(r.id)
        store.finish(self.engine, updates, now)
        back = [rows[i] for i in choice.back]
        if back:
            self._give_back(back, by_id, first, queue)
            report.given_back = [r.id for r in back]
        batch = [rows[i] for i in choice.run]
        if batch:
            self._run_batch(batch, spec, plan, queue, backend, report)
        self._heartbeat(hostname, spec, queue, plan)
        return report

    def _give_back(self, rows, by_id, first: QueuedMessage, queue: str) -> None:
        now = time.time()
        store.release(self.engine, [r.id for r in rows], now)
        raw = [by_id[r.id] for r in rows if by_id[r.id] is not first]
        try:
            self.live.push_back(queue, raw)
        except Exception as exc:  # the sweeper re-sends them from SQL
            log.warning("cannot give back %d messages (%s)", len(raw), exc)
        if any(by_id[r.id] is first for r in rows):
            send_generate(self.app, first.query_id, queue, first.attempt, first.sent_at)

    def _run_batch(self, batch, spec: ModelSpec, plan: policy.ActivePlan, queue: str,
                   backend, report: BatchReport) -> None:
        prompts = [r.prompt for r in batch]
        report.batch = len(batch)
        report.ran = [r.id for r in batch]
        try:
            gen = backend.generate(prompts, [r.seed for r in batch])
            quality, clip = self.judge(gen.images, prompts, gen.quality)
        except Exception as exc:
            now = time.time()
            store.finish(self.engine, [{"id": r.id, "status": "failed", "finished_at": now,
                                        "reason": f"{spec.name}: {exc}"[:2000]}
                                       for r in batch], now)
            log.exception("batch on %s failed", queue)
            return
        now = time.time()
        updates, resend = [], []
        for r, img, q, c in zip(batch, gen.images, quality, clip, strict=True):
            models = list(r.models or []) + [spec.id]
            base = {"id": r.id, "models": models, "model_s": (r.model_s or 0.0) + gen.seconds}
            judged = q is not None and not math.isnan(q)
            if judged and policy.verdict(plan, queue, spec.id, q) == policy.REROUTE:
                updates.append({**base, "status": "rerouted", "queue": plan.heavy_queue,
                                "light_quality": q, "attempts": (r.attempts or 0) + 1})
                resend.append((r, plan.heavy_queue))
                report.rerouted.append(r.id)
                continue
            name = f"{r.id}.png"
            img.save(self.image_dir / f".{name}.tmp", format="PNG")
            os.replace(self.image_dir / f".{name}.tmp", self.image_dir / name)
            extra = {"light_quality": q} if policy.discriminates(plan, queue, spec.id) else {}
            updates.append({**base, **extra, "status": "done", "served_model": spec.id,
                            "quality": q, "clip": c, "image": name, "finished_at": now})
            report.accepted.append(r.id)
        store.finish(self.engine, updates, now)
        for r, q in resend:  # row first, then message; a lost send is re-sent by the sweeper
            try:
                send_generate(self.app, r.id, q, (r.attempts or 0) + 1)
                self.live.count_enqueue(q)
            except Exception as exc:
                log.warning("cannot reroute %s to %s (%s); the sweeper will", r.id, q, exc)

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
