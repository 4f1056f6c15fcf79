"""The OpenAI images API over the front door: ``POST /v1/images/generations`` and
``GET /v1/models``, so the ``openai`` SDK and curl scripts written for OpenAI, vLLM-Omni or
SGLang talk to HADIS unchanged.

A request is ``n`` queries accepted exactly as ``POST /v1/generations`` accepts one
(``FrontDoor.submit``: rate limit, keys, routing, the row before the message), with seeds
``seed, seed + 1, ...``; the answer waits until every image is ready or the deadline has
passed (``webapp.parking``: parked on the event loop under the production server, never a
thread per request). ``model`` is ``hadis`` (the default: the router and the plan choose)
or a deployment model's name, which pins the queries to that model (``pin_route``).
Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``; an error
after the queries were accepted (dropped at the deadline, failed) carries
``x-should-retry: false`` so the SDK does not submit them twice.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import select

from hadis_celery import store
from hadis_celery.logs import event
from hadis_celery.tables import QueryRow
from planner import policy
from planner.policy import ActivePlan
from planner.registry import ModelSpec, Registry
from planner.status import QueryStatus
from webapp.api import door, json_body
from webapp.frontdoor import (
    RETRY_AFTER_S,
    SEED_MAX,
    ApiError,
    FrontDoor,
    GenerationRequest,
    parse_request,
)
from webapp.parking import CAN_PARK, PARK_HEADER, RESUME, park_value, wait_blocking

log = logging.getLogger(__name__)

ALIAS = "hadis"  # the routed model: the router and the active plan choose
FIELDS = ("model", "prompt", "n", "size", "response_format", "user", "seed", "slo_s")
FORMATS = ("b64_json", "url")
MAX_N = 10  # OpenAI's own bound
GRACE_S = 5.0  # past the last deadline: a batch finishing, the sweeper's next pass
OPENAI_PATHS = ("/v1/images/generations", "/v1/models")
bp = Blueprint("openai_images", __name__)


def is_openai_path(path: str) -> bool:
    """The paths whose errors take OpenAI's shape (``/v1/models/readiness`` is ours)."""
    return path in OPENAI_PATHS or (path.startswith("/v1/models/")
                                    and path != "/v1/models/readiness")


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(status: int, code: str, message: str, param: str | None = None) -> Response:
    """OpenAI's error JSON (``webapp.errors`` calls it for these paths)."""
    resp = jsonify({"error": {"message": message, "type": error_type(status),
                              "param": param, "code": code}})
    resp.status_code = status
    return resp


class OpenAIError(ApiError):
    """An ``ApiError`` naming the request field at fault (OpenAI's ``param``)."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(status, code, message, retry_after)
        self.param = param


@dataclass(frozen=True)
class ImagesRequest:
    model: ModelSpec | None  # None: the routed alias
    generations: tuple[GenerationRequest, ...]
    response_format: str


def served_models(registry: Registry) -> list[ModelSpec]:
    """The models a request may name: the deployment's planned models."""
    return list(registry.planned())


def parse_images(body: object, registry: Registry, max_slo_s: float) -> ImagesRequest:
    """Check an images request; raise ``OpenAIError`` (400/404) naming the bad field."""
    if not isinstance(body, dict):
        raise OpenAIError(400, "invalid_body", "the body must be a JSON object "
                          '({"prompt": "...", "model": "hadis", "n": 1})')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise OpenAIError(400, "unknown_parameter", f"unknown parameter(s) "
                          f"{', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}",
                          param=unknown[0])
    name = body.get("model") or ALIAS
    if not isinstance(name, str):
        raise OpenAIError(400, "invalid_model", "'model' must be a string", param="model")
    models = {m.name: m for m in served_models(registry)}
    if name != ALIAS and name not in models:
        raise OpenAIError(404, "model_not_found", f"the model {name!r} does not exist here; "
                          f"use {ALIAS!r} (routed) or one of {sorted(models)} (GET /v1/models)",
                          param="model")
    model = None if name == ALIAS else models[name]
    n = body.get("n", 1)
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise OpenAIError(400, "invalid_n", f"'n' must be an integer from 1 to {MAX_N}, "
                          f"got {n!r}", param="n")
    fmt = body.get("response_format") or "b64_json"
    if fmt not in FORMATS:
        raise OpenAIError(400, "invalid_response_format", "'response_format' must be "
                          f"'b64_json' or 'url', got {fmt!r}", param="response_format")
    size = body.get("size")
    sizes = sorted({f"{m.resolution}x{m.resolution}"
                    for m in ([model] if model else models.values())})
    if size not in (None, "auto") and size not in sizes:
        raise OpenAIError(400, "invalid_size", f"'size' must be 'auto' or one of {sizes} "
                          f"(the model's own resolution), got {size!r}", param="size")
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise OpenAIError(400, "invalid_user", "'user' must be a string of at most 256 "
                          "characters", param="user")
    seed = body.get("seed")
    if seed is not None and isinstance(seed, int) and not isinstance(seed, bool) \
            and seed + n - 1 > SEED_MAX >= seed:
        raise OpenAIError(400, "invalid_seed", f"'seed' + n - 1 must be at most {SEED_MAX} "
                          "(the images use seeds seed, seed + 1, ...)", param="seed")
    try:
        first = parse_request({k: body[k] for k in ("prompt", "slo_s", "seed") if k in body},
                              max_slo_s)
    except ApiError as exc:
        param = next((f for f in ("prompt", "slo_s", "seed") if f in exc.code
                      or f.split("_")[0] in exc.code), None)
        raise OpenAIError(exc.status, exc.code, exc.message, param=param) from None
    gens = tuple(GenerationRequest(first.prompt, first.slo_s,
                                   None if first.seed is None else first.seed + i)
                 for i in range(n))
    return ImagesRequest(model, gens, fmt)


def pin_route(model: ModelSpec):
    """``FrontDoor.submit``'s ``pin`` for a named model (``policy.pinned_route``); a model
    the active plan cannot serve is refused now rather than dropped at its deadline."""

    def pin(plan: ActivePlan) -> tuple[str, str]:
        got = policy.pinned_route(plan, model.id)
        if isinstance(got, tuple):
            return got
        raise OpenAIError(503, "model_not_served", f"the model {model.name!r} {got}; use "
                          f"{ALIAS!r} to let the router choose, or retry later",
                          param="model", retry_after=RETRY_AFTER_S)

    return pin


def _rows(d: FrontDoor, ids: list[str]) -> list[QueryRow | None]:
    with d.engine.connect() as conn:
        got = {r.id: r for r in conn.execute(select(QueryRow).where(QueryRow.id.in_(ids)))}
    return [got.get(i) for i in ids]


def _final_error(status: int, code: str, message: str) -> Response:
    """An error after the queries were accepted: the SDK must not send them again."""
    from webapp.errors import error_response

    resp = error_response(status, code, message)
    resp.headers["x-should-retry"] = "false"
    return resp


def render(d: FrontDoor, ids: list[str], fmt: str) -> Response:
    """The answer for accepted ``ids``: every image, or the first reason there is none."""
    data, meta = [], []
    for qid, row in zip(ids, _rows(d, ids), strict=True):
        status = None if row is None else row.status
        if status == QueryStatus.DONE:
            if fmt == "url":
                data.append({"url": f"{request.host_url}v1/images/{qid}.png"})
            else:
                try:
                    raw = current_app.extensions["hadis_images"].read_bytes(f"{qid}.png")
                except FileNotFoundError:
                    return _final_error(500, "image_missing", f"the image of generation "
                                        f"{qid} is gone from the image store")
                data.append({"b64_json": base64.b64encode(raw).decode("ascii")})
            meta.append({"id": qid, "seed": row.seed,
                         "model": None if row.served_model is None else
                         d.registry.get(row.served_model).name})
            continue
        if status == QueryStatus.DROPPED:
            return _final_error(504, "deadline_exceeded", f"generation {qid} was dropped: "
                                f"it could not be served within its {row.slo_s:g} s deadline "
                                f"({row.reason or 'deadline'}); send a larger slo_s or "
                                "retry later")
        if status == QueryStatus.FAILED:
            return _final_error(500, "generation_failed", f"generation {qid} failed: "
                                f"{row.reason or 'no image'}")
        return _final_error(504, "deadline_exceeded", f"generation {qid} is {status} and "
                            f"was not finished {GRACE_S:g} s past its deadline; "
                            f"GET /v1/generations/{qid} tells what becomes of it")
    return jsonify({"created": int(time.time()), "data": data, "hadis": meta})


@bp.post("/v1/images/generations")
def generate_images():
    d = door()
    req = parse_images(json_body(), d.registry, d.s.max_slo_s)
    resumed = request.environ.get(RESUME)
    if resumed is not None:  # the server parked this request; its queries are accepted
        return render(d, list(resumed), req.response_format)
    pin = None if req.model is None else pin_route(req.model)
    ids, deadline = [], 0.0
    try:
        for gen in req.generations:
            row, _ = d.submit(gen, g.client, g.t0, via="openai", owner=g.principal.owner,
                              pin=pin)
            ids.append(row.id)
            deadline = max(deadline, row.deadline)
    except Exception as exc:
        withdrawn = _withdraw(d, ids, exc)
        if withdrawn and isinstance(exc, ApiError):  # its message must not say "nothing"
            raise OpenAIError(exc.status, exc.code, f"{exc.message} (image {len(ids) + 1} "
                              f"of {len(req.generations)}; the {withdrawn} accepted before "
                              "it were withdrawn, not generated)",
                              param=getattr(exc, "param", None),
                              retry_after=exc.retry_after) from None
        raise
    until = deadline + GRACE_S
    if request.environ.get(CAN_PARK):
        resp = Response(status=202)
        resp.headers[PARK_HEADER] = park_value(ids, until)
        return resp
    wait_blocking(d.engine, ids, until)
    return render(d, ids, req.response_format)


def _withdraw(d, ids: list[str], exc: BaseException) -> int:
    """A request refused after some of its ``n`` images were accepted (e.g. the plan shed
    the rest: 503 over_capacity) answers with the error alone, so the accepted ones would
    serve nobody: drop those no worker has claimed yet (``store.withdraw``); how many."""
    if not ids:
        return 0
    reason = (f"withdrawn: image {len(ids) + 1} of the same request was refused "
              f"({getattr(exc, 'code', type(exc).__name__)})")
    try:
        n = store.withdraw(d.engine, ids, reason, time.time())
    except Exception:  # SQL down too: the accepted images run and are kept, as before
        log.warning("could not withdraw %d accepted image(s) of a refused request", len(ids))
        return 0
    event(log, "query.withdrawn", logging.INFO, query_ids=ids[:10], withdrawn=n,
          reason=reason)
    return n


def _model(id_: str, created: int) -> dict:
    return {"id": id_, "object": "model", "created": created, "owned_by": "hadis"}


@bp.get("/v1/models")
def list_models():
    created = int(current_app.extensions.setdefault("hadis_started", math.floor(time.time())))
    names = [ALIAS] + [m.name for m in served_models(door().registry)]
    return jsonify({"object": "list", "data": [_model(n, created) for n in names]})


@bp.get("/v1/models/<name>")
def get_model(name: str):
    created = int(current_app.extensions.setdefault("hadis_started", math.floor(time.time())))
    if name != ALIAS and name not in {m.name for m in served_models(door().registry)}:
        raise OpenAIError(404, "model_not_found", f"the model {name!r} does not exist here",
                          param="model")
    return jsonify(_model(name, created))
