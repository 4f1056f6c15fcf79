"""Every error the front door answers, in one shape per kind of path.

``/v1`` answers JSON ``{"error": {"code", "message"}}`` (the OpenAI-compatible paths,
``webapp.openai_images.OPENAI_PATHS``, add ``type`` and ``param`` as OpenAI's clients expect);
a ``/ui`` page answers an HTML page. Bad input is a 4xx, a Redis or SQL outage a 503 with
``Retry-After``, anything unforeseen a 500 in the same shape (never a stack trace). A refused
submission is one ``query.refused`` log record, any other 5xx a ``request.failed`` one.
"""

from __future__ import annotations

import logging
import time

import redis.exceptions
from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from hadis_celery.logs import event
from webapp.frontdoor import RETRY_AFTER_S, ApiError, log_refused

log = logging.getLogger("webapp")
SUBMIT_PATHS = ("/v1/generations", "/ui/generate", "/v1/images/generations")
bp = Blueprint("errors", __name__)


def _log_outcome(status: int, code: str, message: str, fields: dict) -> None:
    """A refused submission is a ``query.refused`` record; any other 5xx a
    ``request.failed`` one (with ``down`` when a backing service is)."""
    if request.method == "POST" and request.path in SUBMIT_PATHS:
        log_refused(status, code, message, g.get("client") or request.remote_addr,
                    request.path, **fields)
    elif status >= 500:
        event(log, "request.failed", logging.WARNING, status=status, code=code,
              method=request.method, path=request.path[:200], **fields)


def error_response(status: int, code: str, message: str, retry_after: int | None = None,
                   *, param: str | None = None, **fields: object) -> Response:
    """The error response: JSON for the API (OpenAI's shape on its paths), an HTML page for
    a ``/ui`` page; logged."""
    from webapp import openai_images, pages

    _log_outcome(status, code, message, fields)
    if pages.is_page(request.path):
        resp = pages.error_page(status, code, message)
    elif openai_images.is_openai_path(request.path):
        resp = openai_images.error_body(status, code, message, param)
    else:
        resp = jsonify({"error": {"code": code, "message": message}})
        resp.status_code = status
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


@bp.app_errorhandler(ApiError)
def _api_error(exc: ApiError):
    fields = {"down": "plan"} if exc.code == "no_plan" else {}
    return error_response(exc.status, exc.code, exc.message, exc.retry_after,
                          param=getattr(exc, "param", None), **fields)


@bp.app_errorhandler(RateLimitExceeded)
def _rate_limited(exc: RateLimitExceeded):
    limiter = current_app.extensions.get("hadis_limiter")
    retry = 60
    try:  # when the oldest request of the window leaves it (one more round trip)
        if limiter is not None and limiter.current_limit is not None:
            retry = int(limiter.current_limit.reset_at - time.time()) + 1
    except Exception:
        pass
    per_min = current_app.extensions["hadis"].s.rate_limit_per_min
    return error_response(429, "rate_limited", f"more than {per_min} requests a "
                          "minute from this client", max(1, min(retry, 61)))


@bp.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    code = {413: "request_too_large", 404: "not_found", 405: "method_not_allowed",
            415: "unsupported_media_type"}.get(
        exc.code or 500, (exc.name or "error").lower().replace(" ", "_"))
    limit = current_app.extensions["hadis"].s.max_request_bytes
    msg = (f"the request body is larger than {limit} bytes"
           if exc.code == 413 else exc.description or exc.name)
    return error_response(exc.code or 500, code, msg)


@bp.app_errorhandler(redis.exceptions.ConnectionError)
@bp.app_errorhandler(redis.exceptions.TimeoutError)
@bp.app_errorhandler(KombuOperationalError)
def _redis_down(exc: Exception):
    return error_response(503, "redis_unavailable", "the queue (Redis) is unavailable; "
                          "nothing was recorded, retry later", RETRY_AFTER_S, down="redis",
                          error=f"{type(exc).__name__}: {str(exc)[:200]}")


@bp.app_errorhandler(OperationalError)
@bp.app_errorhandler(DBAPIError)
def _sql_down(exc: Exception):
    first = (str(exc).splitlines() or [""])[0][:200]
    return error_response(503, "database_unavailable", "the database is unavailable; "
                          "nothing was recorded, retry later", RETRY_AFTER_S,
                          down="database", error=f"{type(exc).__name__}: {first}")


@bp.app_errorhandler(Exception)
def _unexpected(exc: Exception):
    if isinstance(exc, (ConnectionError, OSError)):
        return error_response(503, "unavailable", f"a backing service is unavailable "
                              f"({type(exc).__name__}); retry later", RETRY_AFTER_S,
                              down=type(exc).__name__)
    log.exception("unexpected error")
    return error_response(500, "internal_error", "unexpected error; it was logged")
