"""The Flask front door: ``create_app()`` builds the JSON API (``/v1``), its OpenAPI page, the
web pages (``/ui``, ``webapp.pages``) and ``/metrics``.

Views are thin: ``webapp.frontdoor`` holds the logic. Every ``/v1`` error is JSON
``{"error": {"code", "message"}}``: bad input is a 4xx, a Redis or SQL outage a 503 with
``Retry-After``, anything unforeseen a 500 in the same shape (never a stack trace). The
same errors on a ``/ui`` page are an HTML page. Every submission's outcome is one
structured log record (``query.accepted`` / ``query.refused``, ``hadis_celery.logs``).
Keys, ownership and the login session: ``webapp.auth``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time

import redis.exceptions
from flask import Flask, Response, current_app, g, jsonify, redirect, request, send_file, session
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from hadis_celery.logs import event
from hadis_celery.settings import Settings, settings
from webapp import auth
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
from webapp.readiness import model_readiness, readiness

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


AMBIGUOUS = "hadis.ambiguous_length"
DRAIN_BYTES = 1 << 20  # read past an oversize chunked body, so the 413 reaches the client


class ChunkedBodyLimit:
    """WSGI middleware for bodies without a Content-Length. Werkzeug cuts a chunked body at
    the app's limit without saying so (the truncated JSON then answers 400); here the body
    is read up to ``cap + 1`` bytes and handed on with its length, so every route's own
    limit answers 413. A request with both Content-Length and Transfer-Encoding (a request
    smuggling shape) is marked and refused with 400 by the app."""

    def __init__(self, app, cap: int) -> None:
        self.app, self.cap = app, cap

    def __call__(self, environ, start_response):
        te = environ.get("HTTP_TRANSFER_ENCODING", "")
        if te and environ.get("CONTENT_LENGTH"):
            environ[AMBIGUOUS] = True
            return self.app(environ, _closing(start_response))
        if "chunked" in te.lower() and environ.get("wsgi.input_terminated"):
            stream = environ["wsgi.input"]
            body = stream.read(self.cap + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]
            if len(body) > self.cap:  # answered 413; the rest is read (bounded), not parsed
                left = DRAIN_BYTES
                while left > 0 and (chunk := stream.read(min(left, 65536))):
                    left -= len(chunk)
                return self.app(environ, _closing(start_response))
        return self.app(environ, start_response)


def _closing(start_response):
    """``start_response`` that ends the connection after this response (its body was not
    read to the end, or its framing is ambiguous)."""

    def sr(status, headers, exc_info=None):
        headers = [(k, v) for k, v in headers if k.lower() != "connection"]
        return start_response(status, [*headers, ("Connection", "close")], exc_info)

    return sr


def one_blas_thread() -> None:
    """One BLAS thread for the router's matrix products: on a busy machine OpenBLAS threads
    fight each other and a 12 ms prompt parse becomes 80 ms (measured on 2 cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


def rate_limiter(app: Flask, s: Settings) -> Limiter | None:
    """The per-client limit on submissions (``HADIS_RATE_LIMIT_PER_MIN``, 0: none): a moving
    window in Redis shared by every front-door process, checked in ``before_request`` (so a
    refused request costs one Redis round trip, not a parse), over ``POST /v1/generations``
    and ``POST /ui/generate`` together, keyed by API key when keys are set, else by the
    client's address (``HADIS_TRUSTED_PROXIES``: the forwarded one)."""
    if s.rate_limit_per_min <= 0:
        return None
    limiter = Limiter(
        key_func=lambda: g.get("client") or request.remote_addr or "?",
        application_limits=[f"{s.rate_limit_per_min}/minute"],
        application_limits_exempt_when=lambda: not (
            request.method == "POST" and request.path in SUBMIT_PATHS),
        strategy="moving-window", storage_uri=s.state_url, key_prefix="hadis:rl",
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 2},
        headers_enabled=False, swallow_errors=False)
    limiter.init_app(app)
    return limiter


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
    app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_HTTPONLY=True)
    app.json.sort_keys = False
    reg = load_table(s).registry
    router = router or load_router(s)
    router.score("warm up the parser")  # the first parse is slow; pay it before serving
    door = FrontDoor(s, store.serving_engine(s.database_url), LiveState.from_url(s.state_url),
                     celery_app or make_app(s, fast_fail=True), router, reg)
    app.extensions["hadis"] = door
    from webapp import metrics, pages

    keys = auth.Keys(s.api_keys, s.operator_keys)
    app.extensions["hadis_keys"] = keys
    pages.register(app)
    metrics.register(app, door)
    from hadis_celery.imagestore import image_store

    images = image_store(s)  # a folder or an fsspec URL shared with the workers
    app.wsgi_app = ChunkedBodyLimit(app.wsgi_app, max(s.max_request_bytes,
                                                      pages.FORM_MAX_BYTES))
    if s.trusted_proxies > 0:  # X-Forwarded-For/-Proto from that many proxies in front
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=s.trusted_proxies,
                                x_proto=s.trusted_proxies)

    @app.before_request
    def _auth():
        g.t0 = time.time()
        g.client = request.remote_addr or "?"
        g.principal = auth.OPEN
        if request.environ.get(AMBIGUOUS):
            return _error(400, "ambiguous_length", "the request has both Content-Length and "
                          "Transfer-Encoding; send one of them")
        if not keys.required:
            return None
        path = request.path
        sent = auth.header_key(request.headers.get("X-API-Key"),
                               request.headers.get("Authorization"))
        p = keys.by_key(sent) if sent else None
        if p is None and not sent and auth.session_counts(path):
            p = keys.by_id(session.get("key_id"))
        if p is None:
            g.principal = auth.ANONYMOUS
            if auth.is_public(path):
                return None
            if pages.is_page(path) and request.method == "GET" and not sent:
                return redirect(pages.login_url(request.full_path), 303)
            resp = _error(401, "unauthorized", "a valid API key is required (header "
                          "X-API-Key or Authorization: Bearer; the web pages: /ui/login)")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="hadis"'
            return resp
        g.principal, g.client = p, p.client
        if auth.needs_operator(path) and not p.operator:
            return _error(403, "forbidden", "this page needs an operator key "
                          "(HADIS_OPERATOR_KEYS)")
        return None

    limiter = rate_limiter(app, s)  # after _auth: the limit is keyed by its g.client

    def _owned(row):
        """The row, or 404 when the caller may not read it (as if it did not exist)."""
        if row is None or not auth.can_read(g.principal, row.owner):
            raise ApiError(404, "not_found", "no generation with this id")
        return row

    @app.post("/v1/generations")
    def create_generation():
        raw = request.get_data(cache=False)  # first: an oversize body is 413 whatever its type
        if request.mimetype != "application/json":  # a cross-site form cannot send this type
            raise ApiError(415, "unsupported_media_type", "send the body as JSON with "
                           "Content-Type: application/json")
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
        except RecursionError:  # e.g. 16 kB of "[": the parser gives up, not the server
            raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
        if body is None:
            raise ApiError(400, "invalid_json", "the body is empty; send a JSON object")
        req = parse_request(body, s.max_slo_s)
        row, added = _door().submit(req, g.client, g.t0, owner=g.principal.owner)
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
        row = _owned(store.get_query(_door().engine, qid))
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
        row = _owned(store.get_query(_door().engine, m.group(1)))
        if row.status != "done" or not row.image:
            raise ApiError(409, "not_ready", f"the generation is {row.status}, not done")
        try:  # the name is built from the checked id only
            data = images.open(f"{m.group(1)}.png")
        except FileNotFoundError:
            raise ApiError(404, "image_missing", "the image file is gone from the image "
                                                 "store") from None
        return send_file(data, mimetype="image/png", max_age=3600,
                         download_name=f"{m.group(1)}.png")

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
        try:  # set by a worker that could not write an image (hadis_celery.live)
            fault = door.live.storage_fault()
            out["storage"] = "ok" if fault is None else f"unwritable: {fault.get('errno', '?')}"
        except Exception:
            out["storage"] = "unknown"
        ok = (out["redis"] == "ok" and out["sql"] == "ok"
              and not out["storage"].startswith("unwritable"))
        resp = jsonify(out)
        resp.status_code = 200 if ok else 503
        if not ok:
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    @app.get("/livez")
    def livez():
        return jsonify({"live": True})

    def _checks() -> tuple[dict, list[dict]]:
        """Each readiness check's outcome, and the models' readiness (``webapp.readiness``)."""
        from sqlalchemy import text

        door = _door()
        checks = {"redis": "ok", "sql": "ok", "plan": "ok", "workers": "ok"}
        plan, workers = None, {}
        try:
            plan = door.live.get_plan()
            workers = door.live.live_workers()
            if plan is None:
                checks["plan"] = "no plan is published (is the beat running?)"
            if not workers:
                checks["workers"] = "no worker heartbeat is alive"
        except Exception as exc:
            checks["redis"] = f"down: {type(exc).__name__}"
            checks["plan"] = checks["workers"] = "unknown (Redis is down)"
        try:
            with door.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            checks["sql"] = f"down: {type(exc).__name__}"
        return checks, model_readiness(reg, plan, workers)

    @app.get("/readyz")
    def readyz():
        ok, body = readiness(*_checks())
        resp = jsonify(body)
        resp.status_code = 200 if ok else 503
        if not ok:
            resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp

    @app.get("/v1/models/readiness")
    def models_readiness():
        checks, models = _checks()
        if checks["redis"] != "ok":
            raise ApiError(503, "redis_unavailable", "the queue (Redis) is unavailable; "
                           "worker heartbeats cannot be read", RETRY_AFTER_S)
        return jsonify({"models": models})

    @app.get("/")
    def index():
        return jsonify({"name": "HADIS-Celery front door", "openapi": "/v1/openapi.json",
                        "create": "POST /v1/generations", "health": "/v1/health",
                        "live": "/livez", "ready": "/readyz",
                        "models": "/v1/models/readiness",
                        "web": "/ui/", "dashboard": "/ui/dashboard", "metrics": "/metrics"})

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        fields = {"down": "plan"} if exc.code == "no_plan" else {}
        return _error(exc.status, exc.code, exc.message, exc.retry_after, **fields)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        retry = 60
        try:  # when the oldest request of the window leaves it (one more round trip)
            if limiter is not None and limiter.current_limit is not None:
                retry = int(limiter.current_limit.reset_at - time.time()) + 1
        except Exception:
            pass
        return _error(429, "rate_limited", f"more than {s.rate_limit_per_min} requests a "
                      "minute from this client", max(1, min(retry, 61)))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed",
                415: "unsupported_media_type"}.get(
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

    @app.after_request
    def _nosniff(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    return app
