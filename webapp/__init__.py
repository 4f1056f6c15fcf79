"""The Flask front door: ``create_app()`` builds the JSON API (``/v1``), its OpenAPI page, the
web pages (``/ui``, ``webapp.pages``) and ``/metrics``.

Views are thin: ``webapp.frontdoor`` holds the logic. Every ``/v1`` error is JSON
``{"error": {"code", "message"}}``: bad input is a 4xx, a Redis or SQL outage a 503 with
``Retry-After``, anything unforeseen a 500 in the same shape (never a stack trace). The
same errors on a ``/ui`` page are an HTML page. Every submission's outcome is one
structured log record (``query.accepted`` / ``query.refused``, ``hadis_celery.logs``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import redis.exceptions
from flask import Flask, Response, current_app, g, jsonify, request, send_file
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from hadis_celery.logs import event
from hadis_celery.settings import Settings, settings
from webapp.frontdoor import (
    RETRY_AFTER_S,
    ApiError,
    FrontDoor,
    describe,
    describe_plan,
    log_refused,
    parse_request,
)
from webapp.openapi import openapi_document

log = logging.getLogger(__name__)
ID_RE = re.compile(r"[0-9a-f]{32}")  # fullmatch only: "$" would let a trailing newline in
IMAGE_RE = re.compile(r"([0-9a-f]{32})\.png")
PLAN_ID_RE = re.compile(r"[0-9]{1,12}")  # ASCII digits: str.isdigit() takes "²", int() not
LIMIT_RE = re.compile(r"[0-9]{1,4}")
SUBMIT_PATHS = ("/v1/generations", "/ui/generate")


def _log_outcome(status: int, code: str, message: str, fields: dict) -> None:
    """A refused submission is a ``query.refused`` record; any other 5xx a
    ``request.failed`` one (with ``down`` when a backing service is)."""
    if request.method == "POST" and request.path in SUBMIT_PATHS:
        log_refused(status, code, message, g.get("client") or request.remote_addr,
                    request.path, **fields)
    elif status >= 500:
        event(log, "request.failed", logging.WARNING, status=status, code=code,
              method=request.method, path=request.path[:200], **fields)


def _error(status: int, code: str, message: str, retry_after: int | None = None,
           **fields: object) -> Response:
    """The error response: JSON for the API, an HTML page for a ``/ui`` page; logged."""
    from webapp import pages

    _log_outcome(status, code, message, fields)
    if pages.is_page(request.path):
        resp = pages.error_page(status, code, message)
    else:
        resp = jsonify({"error": {"code": code, "message": message}})
        resp.status_code = status
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def _door() -> FrontDoor:
    return current_app.extensions["hadis"]


def one_blas_thread() -> None:
    """One BLAS thread for the router's matrix products: on a busy machine OpenBLAS threads
    fight each other and a 12 ms prompt parse becomes 80 ms (measured on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


def create_app(s: Settings | None = None, *, router=None, celery_app=None) -> Flask:
    """The front door for settings ``s``. ``router`` and ``celery_app`` default to the
    process's router (loaded here, about 4 s) and a Celery app for ``s``."""
    from hadis_celery import store
    from hadis_celery.celery import make_app
    from hadis_celery.deployment import load_router, load_table
    from hadis_celery.live import LiveState

    s = s or settings()
    one_blas_thread()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = s.max_request_bytes
    app.json.sort_keys = False
    reg = load_table(s).registry
    router = router or load_router(s)
    router.score("warm up the parser")  # the first parse is slow; pay it before serving
    door = FrontDoor(s, store.serving_engine(s.database_url), LiveState.from_url(s.state_url),
                     celery_app or make_app(s, fast_fail=True), router, reg)
    app.extensions["hadis"] = door
    from webapp import metrics, pages

    pages.register(app)
    metrics.register(app, door)
    image_dir = Path(s.image_dir).resolve()

    @app.before_request
    def _auth():
        g.t0 = time.time()
        if not s.api_keys or not request.path.startswith(("/v1/generations", "/v1/images")):
            g.client = request.remote_addr or "?"
            return None
        key = request.headers.get("X-API-Key", "")
        auth = request.headers.get("Authorization", "")
        if not key and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if key not in s.api_keys:
            return _error(401, "unauthorized", "a valid API key is required "
                          "(header X-API-Key or Authorization: Bearer)")
        g.client = "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
        return None

    @app.post("/v1/generations")
    def create_generation():
        raw = request.get_data(cache=False)
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        except RecursionError:  # e.g. 16 kB of "[": the parser gives up, not the server
            raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
        if body is None:
            raise ApiError(400, "invalid_json", "the body is empty; send a JSON object")
        req = parse_request(body, s.max_slo_s)
        row, added = _door().submit(req, g.client, g.t0)
        out = describe(row, reg)
        resp = jsonify(out)
        resp.status_code = 202
        resp.headers["Location"] = out["status_url"]
        resp.headers["X-Hadis-Added-Ms"] = f"{added * 1000:.3f}"
        return resp

    @app.get("/v1/generations/<qid>")
    def get_generation(qid: str):
        from hadis_celery import store

        if not ID_RE.fullmatch(qid):
            raise ApiError(404, "not_found", "no generation with this id")
        row = store.get_query(_door().engine, qid)
        if row is None:
            raise ApiError(404, "not_found", "no generation with this id")
        return jsonify(describe(row, reg))

    @app.get("/v1/plans/<plan_id>")
    def get_plan(plan_id: str):
        from hadis_celery import store

        if not PLAN_ID_RE.fullmatch(plan_id):
            raise ApiError(404, "not_found", "no plan with this id")
        row = store.get_plan(_door().engine, int(plan_id))
        if row is None:
            raise ApiError(404, "not_found", "no plan with this id")
        return jsonify(describe_plan(row, reg))

    @app.get("/v1/plans")
    def list_plans():
        from hadis_celery import store

        raw = request.args.get("limit", "20")
        if not LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= 500:
            raise ApiError(400, "bad_limit", "limit must be an integer from 1 to 500")
        rows = store.latest_plans(_door().engine, int(raw))
        return jsonify({"plans": [describe_plan(r, reg) for r in rows]})

    @app.get("/v1/images/<name>")
    def get_image(name: str):
        from hadis_celery import store

        m = IMAGE_RE.fullmatch(name)
        if not m:
            raise ApiError(404, "not_found", "no image with this name (expected <id>.png)")
        row = store.get_query(_door().engine, m.group(1))
        if row is None:
            raise ApiError(404, "not_found", "no generation with this id")
        if row.status != "done" or not row.image:
            raise ApiError(409, "not_ready", f"the generation is {row.status}, not done")
        path = image_dir / f"{m.group(1)}.png"  # built from the checked id only
        if not path.is_file():
            raise ApiError(404, "image_missing", "the image file is gone from the image folder")
        return send_file(path, mimetype="image/png", max_age=3600)

    @app.get("/v1/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    @app.get("/v1/health")
    def health():
        door = _door()
        out = {"redis": "ok", "sql": "ok"}
        try:
            door.live.ping()
        except Exception as exc:
            out["redis"] = f"down: {type(exc).__name__}"
        try:
            from sqlalchemy import text

            with door.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            out["sql"] = f"down: {type(exc).__name__}"
        try:
            plan = door.live.get_plan()
            out["plan_id"] = plan.plan_id if plan else None
        except Exception:
            out["plan_id"] = None
        ok = out["redis"] == "ok" and out["sql"] == "ok"
        resp = jsonify(out)
        resp.status_code = 200 if ok else 503
        if not ok:
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    @app.get("/")
    def index():
        return jsonify({"name": "HADIS-Celery front door", "openapi": "/v1/openapi.json",
                        "create": "POST /v1/generations", "health": "/v1/health",
                        "web": "/ui/", "dashboard": "/ui/dashboard", "metrics": "/metrics"})

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        fields = {"down": "plan"} if exc.code == "no_plan" else {}
        return _error(exc.status, exc.code, exc.message, exc.retry_after, **fields)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.code or 500, (exc.name or "error").lower().replace(" ", "_"))
        msg = (f"the request body is larger than {s.max_request_bytes} bytes"
               if exc.code == 413 else exc.description or exc.name)
        return _error(exc.code or 500, code, msg)

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(KombuOperationalError)
    def _redis_down(exc: Exception):
        return _error(503, "redis_unavailable", "the queue (Redis) is unavailable; "
                      "nothing was recorded, retry later", RETRY_AFTER_S, down="redis",
                      error=f"{type(exc).__name__}: {str(exc)[:200]}")

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _sql_down(exc: Exception):
        first = (str(exc).splitlines() or [""])[0][:200]
        return _error(503, "database_unavailable", "the database is unavailable; "
                      "nothing was recorded, retry later", RETRY_AFTER_S, down="database",
                      error=f"{type(exc).__name__}: {first}")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, (ConnectionError, OSError)):
            return _error(503, "unavailable", f"a backing service is unavailable "
                          f"({type(exc).__name__}); retry later", RETRY_AFTER_S,
                          down=type(exc).__name__)
        log.exception("unexpected error")
        return _error(500, "internal_error", "unexpected error; it was logged")

    return app
