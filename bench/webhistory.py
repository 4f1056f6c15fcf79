"""What a long history costs the web side: ``/metrics``, the gallery and the dashboard over a
SQLite database holding many finished queries and plans.

``python -m bench.webhistory [--rows 200000] [--plans 10000]`` (Redis on 127.0.0.1; it uses
and flushes only database 13, ``--redis`` to change). Rows are written through the
project's own models and engine (``hadis_celery.store.serving_engine``, the migrated
schema), spread over the past 30 days, a few hundred in the last hour. The front door is
the real ``webapp.create_app`` (a stub router: no prompt is scored). The last line is one
JSON object:

- ``metrics_first_ms``: the first ``/metrics`` scrape of the process;
- ``metrics_ms``, ``gallery_ms``, ``dashboard_ms``, ``dashboard_json_ms``: the median of
  ``--repeat`` requests after that (each page's cost at steady state);
- ``rows``, ``plans``: the history they ran over.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

DAY = 86400.0


class StubRouter:
    """The front door needs a router only to score prompts; nothing is submitted here."""

    def score(self, prompt: str) -> float:
        return 0.5


def fill(engine, rows: int, plans: int, now: float, seed: int = 1) -> None:
    """``rows`` finished queries and ``plans`` plans, in batches of 5,000 per transaction."""
    from sqlalchemy import insert

    from hadis_celery.db import transaction
    from hadis_celery.tables import PlanRow, QueryRow

    cols = set(QueryRow.__table__.columns.keys())
    rng = random.Random(seed)
    batch: list[dict] = []
    for i in range(rows):
        recent = i >= rows - 300  # the last hour has a few hundred
        t = now - rng.uniform(0, 3000) if recent else now - rng.uniform(3600, 30 * DAY)
        status = rng.choices(("done", "dropped", "failed"), (0.9, 0.08, 0.02))[0]
        lat = rng.uniform(0.5, 90.0)
        row = dict(id=f"{i:032x}", client="bench", prompt=f"a photo of object {i % 997}",
                   seed=i, slo_s=60.0, status=status, queue="light_sdxl", route="light",
                   hardness=rng.random(), theta=0.5, tau=0.3, plan_id=None, models=[0],
                   served_model=rng.choice((0, 3)) if status == "done" else None,
                   quality=rng.random() if status == "done" else None,
                   image=f"{i:032x}.png" if status == "done" else None,
                   attempts=1, received_at=t - lat, deadline=t - lat + 60.0,
                   enqueued_at=t - lat, started_at=t - lat / 2,
                   finished_at=t if status == "done" else None, model_s=1.0, updated_at=t)
        if "owner" in cols:
            row["owner"] = None
        batch.append(row)
        if len(batch) == 5000 or i == rows - 1:
            with transaction(engine) as s:
                s.execute(insert(QueryRow), batch)
            batch = []
    body = {"router_ratio": 0.0, "disc_ratio": 0.1, "workers": {"light_sdxl": 1},
            "batch": {"0": 1, "3": 1}}
    prow = [dict(planner="bench", light=rng.choice((0, 1)), heavy=3, demand=1.0, fid=20.0,
                 overloaded=False, body=body, live={}, bindings={}) for _ in range(plans)]
    for k in range(0, plans, 5000):
        with transaction(engine) as s:
            s.execute(insert(PlanRow), prow[k:k + 5000])


def _ms(client, path: str, repeat: int) -> float:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        resp = client.get(path)
        out.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise SystemExit(f"{path}: HTTP {resp.status_code} {resp.data[:200]!r}")
    return round(statistics.median(out), 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.webhistory")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--plans", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = ap.parse_args(argv)

    import redis

    from hadis_celery import db, store
    from hadis_celery.celery import make_app
    from hadis_celery.settings import Settings
    from webapp import create_app

    r = redis.Redis.from_url(args.redis)
    r.flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'history.sqlite'}"
        engine = store.serving_engine(url)
        db.upgrade(engine)
        t0 = time.perf_counter()
        fill(engine, args.rows, args.plans, time.time())
        print(f"filled {args.rows} rows, {args.plans} plans in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        engine.dispose()
        s = Settings(database_url=url, broker_url=args.redis, redis_url="",
                     image_dir=Path(tmp) / "images", api_keys=(), rate_limit_per_min=0)
        app = create_app(s, router=StubRouter(), celery_app=make_app(s, fast_fail=True))
        c = app.test_client()
        out = {"rows": args.rows, "plans": args.plans,
               "metrics_first_ms": _ms(c, "/metrics", 1),
               "metrics_ms": _ms(c, "/metrics", args.repeat),
               "gallery_ms": _ms(c, "/ui/gallery", args.repeat),
               "dashboard_ms": _ms(c, "/ui/dashboard", args.repeat),
               "dashboard_json_ms": _ms(c, "/ui/dashboard.json", args.repeat)}
        app.extensions["hadis"].engine.dispose()
    r.flushdb()
    r.close()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
