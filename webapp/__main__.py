"""``python -m webapp [--host H] [--port P]``: serve the front door (threaded WSGI server).

``hadis up`` starts it this way; in production put any WSGI server in front of
``webapp:create_app()`` (e.g. ``gunicorn 'webapp:create_app()'``).
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m webapp")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
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
