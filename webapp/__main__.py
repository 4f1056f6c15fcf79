"""``python -m webapp [--host H] [--port P] [--dev]``: serve the front door.

By default under gunicorn (``webapp.server``: ``HADIS_WEB_WORKERS`` processes, a worker that
buffers requests and bounds slow clients); the first line on stdout says where it listens
(``--port 0`` picks a free port). ``--dev`` runs Werkzeug's threaded development server
instead, one thread per connection and no bounds: for debugging only.
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m webapp")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--dev", action="store_true",
                    help="Werkzeug's development server (no slow-client bounds)")
    args = ap.parse_args(argv)
    if not args.dev:
        from webapp.server import serve

        return serve(args.host, args.port)
    from werkzeug.serving import make_server

    from hadis_celery.logs import configure
    from webapp import create_app

    configure()
    server = make_server(args.host, args.port, create_app(), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"front door on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
