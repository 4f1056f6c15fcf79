"""Health, liveness and readiness: what a load balancer and an orchestrator ask
(``webapp.readiness`` holds the rules)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from webapp.api import door
from webapp.frontdoor import RETRY_AFTER_S, ApiError
from webapp.readiness import model_readiness, readiness

bp = Blueprint("health", __name__)


@bp.get("/v1/health")
def health():
    d = door()
    out = {"redis": "ok", "sql": "ok"}
    try:
        d.live.ping()
    except Exception as exc:
        out["redis"] = f"down: {type(exc).__name__}"
    try:
        with d.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        out["sql"] = f"down: {type(exc).__name__}"
    try:
        plan = d.live.get_plan()
        out["plan_id"] = plan.plan_id if plan else None
    except Exception:
        out["plan_id"] = None
    try:  # set by a worker that could not write an image (hadis_celery.live)
        fault = d.live.storage_fault()
        out["storage"] = "ok" if fault is None else f"unwritable: {fault.get('errno', '?')}"
    except Exception:
        out["storage"] = "unknown"
    ok = (out["redis"] == "ok" and out["sql"] == "ok"
          and not out["storage"].startswith("unwritable"))
    return _answer(ok, out)


def _answer(ok: bool, body: dict):
    """200, or 503 with ``Retry-After`` (a probe or a client backs off, then asks again)."""
    resp = jsonify(body)
    resp.status_code = 200 if ok else 503
    if not ok:
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
    return resp


@bp.get("/livez")
def livez():
    return jsonify({"live": True})


def checks() -> tuple[dict, list[dict]]:
    """Each readiness check's outcome, and the models' readiness (``webapp.readiness``)."""
    d = door()
    out = {"redis": "ok", "sql": "ok", "plan": "ok", "workers": "ok"}
    plan, workers = None, {}
    try:
        plan = d.live.get_plan()
        workers = d.live.live_workers()
        if plan is None:
            out["plan"] = "no plan is published (is the beat running?)"
        if not workers:
            out["workers"] = "no worker heartbeat is alive"
    except Exception as exc:
        out["redis"] = f"down: {type(exc).__name__}"
        out["plan"] = out["workers"] = "unknown (Redis is down)"
    try:
        with d.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        out["sql"] = f"down: {type(exc).__name__}"
    return out, model_readiness(d.registry, plan, workers)


@bp.get("/readyz")
def readyz():
    return _answer(*readiness(*checks()))


@bp.get("/v1/models/readiness")
def models_readiness():
    out, models = checks()
    if out["redis"] != "ok":
        raise ApiError(503, "redis_unavailable", "the queue (Redis) is unavailable; "
                       "worker heartbeats cannot be read", RETRY_AFTER_S)
    return jsonify({"models": models})
