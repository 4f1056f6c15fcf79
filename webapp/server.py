"""The production server of the front door: gunicorn, with a worker that buffers requests.

``python -m webapp`` (and ``hadis up``) run ``serve()``: a gunicorn master with
``HADIS_WEB_WORKERS`` processes, each building the app once (``create_app``).

The default worker class, ``BufferedWorker``, is gunicorn's Tornado worker with bounds: the
Tornado event loop reads each request (headers, then body) without a thread, and the app
runs on a pool of ``HADIS_WEB_THREADS`` threads only once the whole request is in. A
client that stalls mid-request (slowloris) holds a socket and a few kilobytes, never a
thread, and is cut after ``HADIS_WEB_CLIENT_TIMEOUT_S`` for its headers and as long again
for its body. gunicorn's own ``sync``/``gthread`` workers hand a connection to a thread as
soon as its first bytes arrive, so 200 stalled bodies hold 200 threads (or all of them).
Any gunicorn worker class can be chosen instead (``HADIS_WEB_WORKER_CLASS``), e.g. behind a
buffering proxy such as nginx.

A request that waits for its images (``POST /v1/images/generations``) is parked by
``BufferedWorker``: the app answers a marker (``webapp.parking``), the container awaits
the queries on the event loop with one SQL poller for the whole process, then runs the app
again to render the answer. Waiting costs a socket and a future, not a thread; under other
worker classes the view blocks its thread until the deadline.
"""

from __future__ import annotations

import concurrent.futures
import gc
import io
import logging
import os
import sys
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gtornado import TornadoWorker

from hadis_celery.settings import Settings
from webapp.parking import CAN_PARK, PARK_HEADER, RESUME, Poller, parse_park

# A body this far over the largest route limit is still read, so the app answers 413 itself
# (``webapp.ChunkedBodyLimit`` reads up to 1 MiB past a chunked body's limit too).
log = logging.getLogger(__name__)
BODY_SLACK = 1 << 20
MAX_HEADER_BYTES = 64 * 1024


def gunicorn_options(s: Settings, bind: str) -> dict[str, Any]:
    """gunicorn's settings from ours (``hadis up`` and ``python -m webapp`` share them)."""
    return {
        "bind": bind, "workers": max(1, s.web_workers), "threads": max(1, s.web_threads),
        "worker_class": s.web_worker_class, "timeout": max(1, int(s.web_timeout_s)),
        "graceful_timeout": 10, "keepalive": max(1, int(s.web_keepalive_s)),
        "accesslog": None, "errorlog": "-", "loglevel": "warning",
        "limit_request_line": 8190, "limit_request_fields": 100,
        "proc_name": "hadis-frontdoor",
    }


class FrontDoorServer(BaseApplication):
    """gunicorn over ``webapp.create_app(settings)``, configured from ``Settings``."""

    def __init__(self, s: Settings, bind: str) -> None:
        self.s, self.options = s, gunicorn_options(s, bind)
        super().__init__()

    def load_config(self) -> None:
        for k, v in self.options.items():
            self.cfg.set(k, v)
        self.cfg.set("when_ready", _announce)
        self.cfg.set("logger_class", JsonLogger)

    def load(self):
        from hadis_celery.logs import configure
        from webapp import create_app

        configure()
        app = create_app(self.s)
        # The router's spaCy pipeline and vectors are hundreds of thousands of long-lived
        # objects; without this every full collection walks them all (a p99 spike of
        # several ms on the request that triggers it). Frozen objects are never collected.
        gc.collect()
        gc.freeze()
        return app


def _announce(arbiter) -> None:
    """The first line on stdout, once the socket is bound (``--port 0`` picks one): what
    ``hadis up``, the tests and a person read."""
    host, port = arbiter.LISTENERS[0].sock.getsockname()[:2]
    print(f"front door on http://{host}:{port}", flush=True)
    arbiter.log.warning("front door on http://%s:%s: gunicorn, %s x %s, %s threads each",
                        host, port, arbiter.cfg.workers, arbiter.cfg.worker_class_str,
                        arbiter.cfg.threads)


class JsonLogger(glogging.Logger):
    """gunicorn's error log in the stack's format (``hadis_celery.logs``: JSON lines unless
    ``HADIS_LOG_FORMAT=text``); the access log stays off (every request is logged once
    by the app when it is a submission)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        if os.environ.get("HADIS_LOG_FORMAT", "json").lower() != "text":
            from hadis_celery.logs import JsonFormatter

            for h in self.error_log.handlers:
                h.setFormatter(JsonFormatter())


class _Container:
    """A WSGI container for Tornado requests: the app, its body iteration and ``close()``
    run as one job on the thread pool (Tornado's ``WSGIContainer`` hops to the pool for each
    chunk), and a body Tornado decoded from chunks is handed on with its length."""

    def __init__(self, app, pool: concurrent.futures.Executor | None,
                 poller: Poller | None = None) -> None:
        from tornado.wsgi import WSGIContainer

        self.app, self.pool, self.poller = app, pool, poller
        self._environ = WSGIContainer(app).environ

    def __call__(self, request) -> None:
        from tornado.ioloop import IOLoop

        IOLoop.current().spawn_callback(self.handle, request)

    def _run(self, environ: dict) -> tuple[str, list, bytes]:
        data: dict = {}

        def start_response(status, headers, exc_info=None):
            data["status"], data["headers"] = status, headers
            return lambda chunk: None

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return data["status"], data["headers"], body

    def environ(self, request) -> dict:
        environ = self._environ(request)
        te = environ.get("HTTP_TRANSFER_ENCODING", "")
        if "chunked" in te.lower() and "CONTENT_LENGTH" not in environ:
            del environ["HTTP_TRANSFER_ENCODING"]  # Tornado read and decoded the chunks
            environ["CONTENT_LENGTH"] = str(len(request.body))
        environ["wsgi.multithread"] = self.pool is not None
        environ[CAN_PARK] = self.poller is not None
        return environ

    async def respond(self, environ: dict) -> tuple[str, list, bytes]:
        from tornado.ioloop import IOLoop

        try:
            if self.pool is None:
                return self._run(environ)
            return await IOLoop.current().run_in_executor(self.pool, self._run, environ)
        except Exception:  # the app answers its own errors; this is a broken app
            log.exception("the app raised outside its error handlers")
            return "500 Internal Server Error", [], b""

    async def handle(self, request) -> None:
        from tornado import httputil

        environ = self.environ(request)  # (it takes Content-Type/-Length out of the request)
        again = dict(environ)  # before the app and its middleware change it
        status, headers, body = await self.respond(environ)
        park = next((v for k, v in headers if k.lower() == PARK_HEADER.lower()), None)
        if park is not None and self.poller is not None:  # wait on the loop, then render
            ids, deadline = parse_park(park)
            await self.poller.wait(ids, deadline)
            again["wsgi.input"] = io.BytesIO(request.body)  # the app reads the body again
            again[RESUME] = ids
            status, headers, body = await self.respond(again)
        headers = [(k, v) for k, v in headers if k.lower() != PARK_HEADER.lower()]
        code, reason = status.split(" ", 1)
        names = {k.lower() for k, _ in headers}
        if "content-length" not in names and int(code) != 304:
            headers.append(("Content-Length", str(len(body))))
        header_obj = httputil.HTTPHeaders()
        for k, v in headers:
            header_obj.add(k, v)
        request.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", int(code),
                                                                    reason), header_obj,
                                         chunk=body)
        request.connection.finish()


class BufferedWorker(TornadoWorker):
    """gunicorn's Tornado worker whose HTTP server bounds slow clients (headers within
    ``HADIS_WEB_CLIENT_TIMEOUT_S``, the body within as long again, bodies to the app's
    limit plus ``BODY_SLACK``) and runs the app on ``threads`` threads."""

    def run(self) -> None:
        import tornado.httpserver
        from tornado.ioloop import IOLoop, PeriodicCallback

        from hadis_celery.settings import settings
        from webapp.pages import FORM_MAX_BYTES

        door = getattr(self.wsgi, "extensions", {}).get("hadis")
        s = door.s if door is not None else settings()
        self.ioloop = IOLoop.current()
        self.alive = True
        self.server_alive = False
        self.callbacks = [PeriodicCallback(self.watchdog, 1000),
                          PeriodicCallback(self.heartbeat, 1000)]
        for cb in self.callbacks:
            cb.start()
        pool = None if s.web_threads <= 0 else concurrent.futures.ThreadPoolExecutor(
            s.web_threads, thread_name_prefix="frontdoor")  # 0: the app runs on the loop
        worker = self

        class _Server(tornado.httpserver.HTTPServer):
            def on_close(self, server_conn):
                worker.handle_request()
                super().on_close(server_conn)

        timeout = max(0.1, float(s.web_client_timeout_s))
        poller = None if door is None else Poller(door.engine, pool)  # parked requests
        if poller is not None:
            self.wsgi.extensions["hadis_poller"] = poller  # for /metrics
        server = _Server(_Container(self.wsgi, pool, poller), xheaders=False,
                         no_keep_alive=self.cfg.keepalive <= 0,
                         idle_connection_timeout=timeout, body_timeout=timeout,
                         max_header_size=MAX_HEADER_BYTES,
                         max_body_size=max(s.max_request_bytes, FORM_MAX_BYTES) + BODY_SLACK)
        self.server = server
        self.server_alive = True
        for sock in self.sockets:
            sock.setblocking(False)
            server.add_socket(sock)
        server.start(num_processes=1)
        try:
            self.ioloop.start()
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


def serve(host: str, port: int, s: Settings | None = None) -> int:
    """Run the front door under gunicorn until SIGTERM/SIGINT (gunicorn's own signals)."""
    from hadis_celery.settings import settings

    FrontDoorServer(s or settings(), f"{host}:{port}").run()
    return 0


if __name__ == "__main__":
    sys.exit(serve("127.0.0.1", 8000))
