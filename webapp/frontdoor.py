"""The front door's logic, without Flask: validate a request, route it, record it, send it.

Order of work for ``POST /v1/generations`` (SQL is the record, Redis the transport):

0. the per-client rate limit (``flask-limiter``, a moving window in Redis), before the body
   is read (``create_app``);
1. validate the body (``parse_request``);
2. join the micro-batch (``FrontDoor.submit``): requests that arrive while another is being
   accepted wait and are then accepted together by one thread; a lone request goes at once;
3. score the batch's prompts with the router (one ``score_many`` batch);
4. one Redis round trip: the active plan and the image store's fault flag;
5. route each prompt (``policy.route``: score vs θ of the active plan), stamp its deadline;
   a plan that sheds at arrival refuses (503 ``over_capacity``) a prompt its queue cannot
   finish within the SLO (``policy.admits``; one ``LLEN`` pipeline a batch, only then);
6. write the query rows (status ``queued``), one Core multi-row ``INSERT``;
7. send the Celery messages with the demand counters, one Redis pipeline
   (``webapp.publish``), through ``hadis_celery.transport.dispatch_many`` (rows first, then
   messages); a message that cannot be sent deletes its row and its client gets 503, so
   nothing is half-written (and a row whose message is lost later is re-sent by the
   sweeper). Every request keeps its own outcome: one refused prompt or one unsent message
   fails that request only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from hadis_celery import store, transport
from hadis_celery.live import PLAN_KEY, STORAGE_KEY, LiveState
from hadis_celery.logs import event
from hadis_celery.settings import Settings
from hadis_celery.tables import PlanRow, QueryRow
from hadis_celery.transport import GenerateMessage
from planner import policy
from planner.policy import ActivePlan
from planner.registry import Registry
from planner.router import validate_prompt
from planner.status import QueryStatus

FIELDS = ("prompt", "slo_s", "seed")
SEED_MAX = 2**31 - 1  # a signed 32-bit integer column
RETRY_AFTER_S = 5
BATCH_MAX = 32  # requests one leader accepts together; the rest wait for the next batch
log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API reports as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    slo_s: float | None
    seed: int | None


def _number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def parse_request(body: object, max_slo_s: float) -> GenerationRequest:
    """Check a decoded JSON body; raise ``ApiError`` (400) saying what is wrong."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object "
                       '({"prompt": "...", "slo_s": 60, "seed": 1})')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s) {', '.join(map(repr, unknown))}; "
                       f"allowed: {', '.join(FIELDS)}")
    if "prompt" not in body:
        raise ApiError(400, "missing_prompt", "the field 'prompt' is required")
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        raise ApiError(400, "invalid_prompt",
                       f"'prompt' must be a string, got {type(prompt).__name__}")
    try:
        text = validate_prompt(prompt)
    except ValueError as exc:
        raise ApiError(400, "empty_prompt", str(exc)) from None
    slo = body.get("slo_s")
    if slo is not None:
        if not _number(slo) or not math.isfinite(slo) or not 0 < slo <= max_slo_s:
            raise ApiError(400, "invalid_slo",
                           f"'slo_s' must be a number of seconds in (0, {max_slo_s:g}], "
                           f"got {slo!r}")
        slo = float(slo)
    seed = body.get("seed")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
            raise ApiError(400, "invalid_seed",
                           f"'seed' must be an integer in [0, {SEED_MAX}], got {seed!r}")
    return GenerationRequest(prompt=text, slo_s=slo, seed=seed)


@dataclass(eq=False)
class Submission:
    """One request waiting in (or led through) the front door's micro-batch, and its
    outcome: ``row`` and ``added`` (seconds from ``received_at`` to its message sent), or
    ``error``; ``done`` once either is set."""

    req: GenerationRequest
    client: str
    received_at: float
    via: str = "api"
    owner: str | None = None
    pin: Callable[[ActivePlan], tuple[str, str]] | None = None
    values: dict = field(default_factory=dict)
    score: float = math.nan
    plan: ActivePlan | None = None
    row: QueryRow | None = None
    added: float = 0.0
    error: BaseException | None = None
    done: bool = False

    def succeed(self, row: QueryRow, added: float) -> None:
        self.row, self.added, self.done = row, added, True

    def fail(self, exc: BaseException) -> None:
        self.error, self.done = exc, True


def _draw(query_id: str) -> float:
    """A uniform number fixed by the query id (``random`` routing)."""
    h = hashlib.blake2b(query_id.encode(), digest_size=8).digest()
    return (int.from_bytes(h, "big") + 0.5) / 2.0**64


class FrontDoor:
    """Everything ``POST /v1/generations`` touches, injected (tests swap any part).

    A batch of requests costs one router batch, one Redis ``MGET`` (the plan and the
    storage flag), one SQL ``INSERT`` (SQLAlchemy Core: the ORM's unit of work cost about
    three times the statement here) and one Redis pipeline for the messages and the demand
    counters (``webapp.publish``); a lone request is a batch of one. The rate limit is
    checked before any of it (``flask-limiter``, in ``create_app``)."""

    def __init__(self, s: Settings, engine: Engine, live: LiveState, celery_app: Celery,
                 router, registry: Registry) -> None:
        from webapp.publish import Publisher

        self.s, self.engine, self.live, self.celery = s, engine, live, celery_app
        self.router, self.registry = router, registry
        self.publisher = Publisher(celery_app, live.r, s.state_url)
        self._insert = QueryRow.__table__.insert()
        self._plan_raw: bytes | None = None
        self._plan: ActivePlan | None = None
        self._lead = threading.Condition()  # the micro-batch: who leads, who waits
        self._waiting: list[Submission] = []
        self._leading = False
        self.batch_max = BATCH_MAX
        self.batches = 0  # batches led by ``submit`` and the requests in them (mean batch)
        self.batched = 0

    def state(self) -> tuple[ActivePlan | None, bool]:
        """The active plan and whether the image store is faulted: one ``MGET`` (cheaper
        than a pipeline); the plan is parsed again only when its JSON changed."""
        raw, fault = self.live.r.mget(PLAN_KEY, STORAGE_KEY)  # (the flag is a string key)
        if raw is None:
            return None, bool(fault)
        if raw != self._plan_raw:  # a race here parses twice, never wrongly
            self._plan, self._plan_raw = ActivePlan.from_dict(json.loads(raw)), raw
        return self._plan, bool(fault)

    def submit(self, req: GenerationRequest, client: str, received_at: float,
               via: str = "api", owner: str | None = None,
               pin: Callable[[ActivePlan], tuple[str, str]] | None = None
               ) -> tuple[QueryRow, float]:
        """Accept one request: returns the row and seconds from ``received_at`` to the
        message being sent, and logs ``query.accepted`` (``via``: api, form or openai).
        ``owner``: the id of the API key that made it (``webapp.auth``), None without keys.
        ``pin``: ``(role, queue)`` under the plan instead of ``policy.route`` (a request
        that names a model; it raises ``ApiError`` when the plan cannot serve it). Raises
        ``ApiError`` (503) or a Redis/SQL error; the caller logs the refusal.

        Requests that arrive together are accepted together (``accept``: one router batch,
        one plan read, one multi-row ``INSERT``, one Redis pipeline): the first thread in
        leads and takes every request already waiting; the others wait for their outcome.
        A lone request never waits for company."""
        item = Submission(req, client[:128], received_at, via, owner, pin)
        with self._lead:
            self._waiting.append(item)
        while True:
            with self._lead:
                while not item.done and self._leading:
                    self._lead.wait()
                if item.done:
                    break
                self._leading = True
                batch = self._waiting[:self.batch_max]
                del self._waiting[:self.batch_max]
                self.batches += 1
                self.batched += len(batch)
            # The whole batch under the lead: its SQL and Redis waits are when the next
            # batch gathers. (Releasing the lead after the router score, to overlap those
            # waits with the next batch's score, was slower: smaller batches, and a thread
            # back from a wait queues for the GIL behind the scoring one.)
            try:
                self.accept(batch)
            finally:
                with self._lead:
                    self._leading = False
                    self._lead.notify_all()
        if item.error is not None:
            raise item.error
        row, plan = item.row, item.plan
        assert row is not None and plan is not None
        if log.isEnabledFor(logging.INFO):
            event(log, "query.accepted", query_id=row.id, route=row.route, queue=row.queue,
                  hardness=_num(round(item.score, 6)), theta=_num(plan.theta),
                  tau=_num(row.tau), plan_id=row.plan_id, slo_s=row.slo_s, client=item.client,
                  via=via, added_ms=round(item.added * 1000, 3))
        return row, item.added

    def _scores(self, batch: Sequence[Submission]) -> list[float | BaseException]:
        """Each request's router score, or its own error (400 for a prompt the router
        refuses): one ``score_many`` batch when several wait, else ``score``."""
        many = getattr(self.router, "score_many", None)
        if len(batch) > 1 and many is not None:
            try:
                return [float(x) for x in many([b.req.prompt for b in batch])]
            except Exception:  # scored one by one below: each request gets its own error
                pass
        out: list[float | BaseException] = []
        for b in batch:
            try:
                out.append(float(self.router.score(b.req.prompt)))
            except ValueError as exc:
                out.append(ApiError(400, "invalid_prompt", str(exc)))
            except Exception as exc:
                out.append(exc)
        return out

    def accept(self, batch: Sequence[Submission]) -> None:
        """Accept ``batch`` together and set each one's outcome (``row``/``added`` or
        ``error``, then ``done``); never raises an ``Exception``. The rules are those of
        one request: the row is written first, then its message; a message that cannot be
        sent deletes its row (``transport.dispatch_many``), so a refused request leaves
        nothing behind."""
        try:
            self._accept(batch, self._scores(batch))
        except BaseException as exc:  # e.g. SQL down: every request not yet answered
            for b in batch:
                if not b.done:
                    b.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _accept(self, batch: Sequence[Submission],
                scores: Sequence[float | BaseException]) -> None:
        plan, faulted = self.state()
        if plan is None:
            raise ApiError(503, "no_plan", "no plan is active yet (is the beat running?)",
                           retry_after=RETRY_AFTER_S)
        if faulted:  # a worker could not write an image
            raise ApiError(503, "storage_unavailable", "the image store is full or cannot be "
                           "written; nothing was recorded, retry later",
                           retry_after=RETRY_AFTER_S)
        now = time.time()
        todo: list[Submission] = []
        queued: dict[str, int] | None = None  # read once a batch, when the plan sheds
        for b, score in zip(batch, scores, strict=True):
            if isinstance(score, BaseException):
                b.fail(score)
                continue
            qid = store.new_query_id()
            try:
                role, queue = policy.route(plan, score, _draw(qid)) if b.pin is None \
                    else b.pin(plan)
            except Exception as exc:
                b.fail(exc)
                continue
            req = b.req
            slo = req.slo_s if req.slo_s is not None else self.s.slo_s
            if plan.shed_at_arrival:
                if queued is None:
                    queued = self.live.queue_lengths(plan.queues)
                refusal = self.shed(plan, queue, queued.get(queue, 0), slo)
                if refusal is not None:
                    b.fail(refusal)
                    continue
                queued[queue] = queued.get(queue, 0) + 1  # ahead of the batch's next ones
            b.score, b.plan = score, plan
            b.values = dict(
                id=qid, client=b.client, owner=b.owner, prompt=req.prompt,
                seed=req.seed if req.seed is not None else random.randrange(SEED_MAX),
                slo_s=slo, status=QueryStatus.QUEUED, queue=queue, route=role,
                hardness=score, theta=plan.theta,
                tau=plan.tau if role == policy.LIGHT else None,
                plan_id=plan.plan_id or None, models=[], attempts=1,
                received_at=b.received_at, deadline=b.received_at + slo, model_s=0.0,
                updated_at=now)
            todo.append(b)
        if not todo:
            return
        by_id = {b.values["id"]: b for b in todo}

        def insert() -> list[GenerateMessage]:
            """One multi-row ``INSERT``; when SQL refuses it (not when SQL is down),
            one by one, so a row SQL refuses fails its own request only."""
            try:
                with self.engine.begin() as conn:
                    conn.execute(self._insert, [b.values for b in todo])
                written = todo
            except DBAPIError as exc:
                if len(todo) == 1 or exc.connection_invalidated or isinstance(
                        exc, OperationalError):
                    raise
                written = []
                for b in todo:
                    try:
                        with self.engine.begin() as conn:
                            conn.execute(self._insert, b.values)
                        written.append(b)
                    except Exception as exc:
                        b.fail(exc)
            sent_at = time.time()
            return [GenerateMessage(b.values["id"], b.values["queue"], 1, sent_at)
                    for b in written]

        outcomes = transport.dispatch_many(
            self.engine, insert, created=True,
            send_many=lambda msgs: self.publisher.send_many(
                msgs, lambda m: transport.publish(self.celery, m)))
        sent = time.time()
        for m, exc in outcomes:
            b = by_id[m.query_id]
            if exc is not None:
                b.fail(exc)
            else:
                b.succeed(QueryRow(**b.values), sent - b.received_at)
        for b in todo:  # (none is left open; a guard against a lost outcome)
            if not b.done:
                b.fail(RuntimeError("the request got no outcome"))

    def shed(self, plan: ActivePlan, queue: str, queued: int, slo_s: float
             ) -> ApiError | None:
        """The 503 for a query the plan sheds at arrival (``policy.admits``), else None."""
        try:
            spec = self.registry.by_queue(queue)
        except KeyError:  # a plan from another deployment: nothing to predict with
            return None
        largest = max(spec.batch_sizes)
        # Profiled seconds are profile time; the replay stack runs them x the time factor,
        # and the request's SLO is wall time (the beat plans in SLO / factor, the same).
        tf = self.s.time_factor if self.s.time_factor > 0 else 1.0

        def seconds(b: int) -> float:
            return spec.batch_seconds(b) * tf

        if policy.admits(plan, queue, queued, spec.id, slo_s, seconds, largest):
            return None
        finish = policy.predicted_finish_s(plan, queue, queued, spec.id, seconds, largest)
        why = ("no worker serves it under the active plan" if not math.isfinite(finish)
               else f"{queued} queued on {queue} would finish it in about {finish:.0f} s")
        return ApiError(503, "over_capacity",
                        f"the cluster cannot answer within the SLO of {slo_s:g} s now ({why}); "
                        "nothing was recorded, retry later", retry_after=RETRY_AFTER_S)


def log_refused(status: int, code: str, message: str, client: str | None, path: str,
                **fields: object) -> None:
    """One ``query.refused`` record: why a submission was not accepted (503s say what is
    down in ``down``). The prompt is never logged."""
    event(log, "query.refused", logging.WARNING if status >= 500 else logging.INFO,
          status=status, code=code, detail=message[:300], client=(client or "?")[:128],
          path=path, **fields)


def _num(x: float | None) -> float | str | None:
    """A number for a log line: ±inf as "inf"/"-inf" strings (strict JSON, still legible)."""
    if x is None:
        return None
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def number(x: object) -> float | int | None:
    """A number for the API: a finite number or null (JSON has no NaN or infinity; an
    infinite threshold means "no threshold", which ``route``/``router_ratio`` and
    ``models`` tell; see the OpenAPI document)."""
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, (int, float)) and math.isfinite(x):
        return x
    return None


def model_name(registry: Registry, mid: int | None) -> str:
    """A model's display name; its id when the registry does not know it, "-" for none."""
    if mid is None:
        return "-"
    try:
        return registry.get(mid).name
    except KeyError:
        return str(mid)


def describe(row: QueryRow, registry: Registry, base: str = "") -> dict:
    """The public JSON of a query (``GET /v1/generations/<id>``)."""

    def name(m: int) -> str:
        return model_name(registry, m)

    def ok(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    fin, start, enq = ok(row.finished_at), ok(row.started_at), ok(row.enqueued_at)
    timings = {
        "received_at": row.received_at, "enqueued_at": enq, "started_at": start,
        "finished_at": fin, "deadline": row.deadline, "model_s": ok(row.model_s),
        "latency_s": None if fin is None else round(fin - row.received_at, 6),
        "queued_s": None if start is None else round(start - row.received_at, 6),
    }
    done = row.status == QueryStatus.DONE
    return {
        "id": row.id, "status": row.status, "route": row.route, "queue": row.queue,
        "models": [{"id": m, "name": name(m)} for m in (row.models or [])],
        "served_model": None if row.served_model is None else
        {"id": row.served_model, "name": name(row.served_model)},
        "hardness": number(row.hardness), "theta": number(row.theta),
        "tau": number(row.tau), "quality": number(row.quality),
        "light_quality": number(row.light_quality), "clip": number(row.clip),
        "slo_s": number(row.slo_s), "seed": row.seed,
        "timings": timings, "reason": row.reason, "plan_id": row.plan_id,
        "params": getattr(row, "params", None),  # generation parameters actually used
        "status_url": f"{base}/v1/generations/{row.id}",
        "image_url": f"{base}/v1/images/{row.id}.png" if done else None,
    }


def describe_plan(row: PlanRow, registry: Registry) -> dict:
    """The public JSON of a plan (``GET /v1/plans/<id>``): the pair, thresholds, workers and
    batch sizes it published, and its predicted FID."""

    def model(m: int) -> dict:
        return {"id": m, "name": model_name(registry, m)}

    live, body = row.live or {}, row.body or {}
    return {
        "id": row.id, "planner": row.planner,
        "created": row.created.isoformat() if row.created else None,
        "light": model(row.light), "heavy": model(row.heavy),
        "theta": number(live.get("theta")), "tau": number(live.get("tau")),
        "router_ratio": number(body.get("router_ratio")),
        "disc_ratio": number(body.get("disc_ratio")),
        "workers": body.get("workers", {}), "batch": body.get("batch", {}),
        "demand": number(row.demand), "fid": number(row.fid),
        "overloaded": bool(row.overloaded),
        "bindings": row.bindings or {},
    }
