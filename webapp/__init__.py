"""The Flask front door: ``create_app()`` configures an app; blueprints register its routes.

- ``webapp.access``: the key check before every view, ``nosniff`` after;
- ``webapp.errors``: every error's shape (JSON, OpenAI's, or an HTML page);
- ``webapp.api``: ``/``, ``/v1/generations``, ``/v1/images/<id>.png``, ``/v1/plans``,
  ``/v1/openapi.json``;
- ``webapp.openai_images``: ``POST /v1/images/generations``, ``GET /v1/models``;
- ``webapp.health``: ``/v1/health``, ``/livez``, ``/readyz``, ``/v1/models/readiness``;
- ``webapp.pages``: ``/ui/...``; ``webapp.metrics``: ``/metrics``, the request counter.

The app's shared objects live in ``app.extensions``: ``hadis`` (the ``FrontDoor``: settings,
SQL engine, Redis state, Celery app, router, registry), ``hadis_keys``, ``hadis_images`` (the
image store) and ``hadis_limiter``. Views are thin: ``webapp.frontdoor`` holds the logic.
Keys, ownership and the login session: ``webapp.auth``.
"""

from __future__ import annotations

import io

from flask import Flask, g, request
from flask_limiter import Limiter

from hadis_celery.settings import Settings, settings
from webapp import auth
from webapp.access import AMBIGUOUS
from webapp.errors import SUBMIT_PATHS
from webapp.frontdoor import FrontDoor
from webapp.parking import RESUME

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
    refused request costs one Redis round trip, not a parse), over ``POST /v1/generations``,
    ``POST /v1/images/generations`` and ``POST /ui/generate`` together, keyed by API key
    when keys are set, else by the client's address (``HADIS_TRUSTED_PROXIES``: the
    forwarded one)."""
    if s.rate_limit_per_min <= 0:
        return None
    limiter = Limiter(
        key_func=lambda: g.get("client") or request.remote_addr or "?",
        application_limits=[f"{s.rate_limit_per_min}/minute"],
        application_limits_exempt_when=lambda: not (
            request.method == "POST" and request.path in SUBMIT_PATHS)
        or RESUME in request.environ,  # a parked request coming back was counted already
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
    from hadis_celery.imagestore import image_store
    from hadis_celery.live import LiveState
    from webapp import access, api, errors, health, metrics, openai_images, pages

    s = s or settings()
    one_blas_thread()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = s.max_request_bytes
    app.config.update(SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_HTTPONLY=True)
    app.json.sort_keys = False
    reg = load_table(s).registry
    router = router or load_router(s)
    router.score("warm up the parser")  # the first parse is slow; pay it before serving
    app.extensions["hadis"] = FrontDoor(
        s, store.serving_engine(s.database_url), LiveState.from_url(s.state_url),
        celery_app or make_app(s, fast_fail=True), router, reg)
    app.extensions["hadis_keys"] = auth.Keys(s.api_keys, s.operator_keys)
    app.extensions["hadis_images"] = image_store(s)  # a folder or an fsspec URL
    # ``access`` first: the rate limit (next) is keyed by the client it sets.
    for bp in (access.bp, errors.bp, api.bp, openai_images.bp, health.bp, pages.bp,
               metrics.bp):
        app.register_blueprint(bp)
    app.extensions["hadis_limiter"] = rate_limiter(app, s)
    app.wsgi_app = ChunkedBodyLimit(app.wsgi_app, max(s.max_request_bytes,
                                                      pages.FORM_MAX_BYTES))
    if s.trusted_proxies > 0:  # X-Forwarded-For/-Proto from that many proxies in front
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=s.trusted_proxies,
                                x_proto=s.trusted_proxies)
    return app
