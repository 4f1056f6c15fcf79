"""The native JSON API (``/v1``): submit a generation (202 and an id), read it, its image
and the plans. Views are thin: ``webapp.frontdoor`` holds the logic, ``webapp.errors`` the
error shape."""

from __future__ import annotations

import json
import re

from flask import Blueprint, current_app, g, jsonify, request, send_file

from hadis_celery import store
from planner.status import QueryStatus
from webapp import auth
from webapp.frontdoor import ApiError, FrontDoor, describe, describe_plan, parse_request
from webapp.openapi import openapi_document

ID_RE = re.compile(r"[0-9a-f]{32}")  # fullmatch only: "$" would let a trailing newline in
IMAGE_RE = re.compile(r"([0-9a-f]{32})\.png")
PLAN_ID_RE = re.compile(r"[0-9]{1,12}")  # ASCII digits: str.isdigit() takes "²", int() not
LIMIT_RE = re.compile(r"[0-9]{1,4}")
bp = Blueprint("api", __name__)


def door() -> FrontDoor:
    """The process's front door (``create_app`` keeps it in ``app.extensions["hadis"]``)."""
    return current_app.extensions["hadis"]


def owned(row):
    """The row, or 404 when the caller may not read it (as if it did not exist)."""
    if row is None or not auth.can_read(g.principal, row.owner):
        raise ApiError(404, "not_found", "no generation with this id")
    return row


def json_body() -> object:
    """The request's JSON body: 413 when oversize (whatever its type), 415 unless it is
    ``application/json`` (a cross-site form cannot send that type), 400 when malformed."""
    raw = request.get_data(cache=False)
    if request.mimetype != "application/json":
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
    return body


@bp.post("/v1/generations")
def create_generation():
    d = door()
    req = parse_request(json_body(), d.s.max_slo_s)
    row, added = d.submit(req, g.client, g.t0, owner=g.principal.owner)
    out = describe(row, d.registry)
    resp = jsonify(out)
    resp.status_code = 202
    resp.headers["Location"] = out["status_url"]
    resp.headers["X-Hadis-Added-Ms"] = f"{added * 1000:.3f}"
    return resp


@bp.get("/v1/generations/<qid>")
def get_generation(qid: str):
    if not ID_RE.fullmatch(qid):
        raise ApiError(404, "not_found", "no generation with this id")
    row = owned(store.get_query(door().engine, qid))
    return jsonify(describe(row, door().registry))


@bp.get("/v1/plans/<plan_id>")
def get_plan(plan_id: str):
    if not PLAN_ID_RE.fullmatch(plan_id):
        raise ApiError(404, "not_found", "no plan with this id")
    row = store.get_plan(door().engine, int(plan_id))
    if row is None:
        raise ApiError(404, "not_found", "no plan with this id")
    return jsonify(describe_plan(row, door().registry))


@bp.get("/v1/plans")
def list_plans():
    raw = request.args.get("limit", "20")
    if not LIMIT_RE.fullmatch(raw) or not 1 <= int(raw) <= 500:
        raise ApiError(400, "bad_limit", "limit must be an integer from 1 to 500")
    rows = store.latest_plans(door().engine, int(raw))
    return jsonify({"plans": [describe_plan(r, door().registry) for r in rows]})


@bp.get("/v1/images/<name>")
def get_image(name: str):
    m = IMAGE_RE.fullmatch(name)
    if not m:
        raise ApiError(404, "not_found", "no image with this name (expected <id>.png)")
    row = owned(store.get_query(door().engine, m.group(1)))
    if row.status != QueryStatus.DONE or not row.image:
        raise ApiError(409, "not_ready", f"the generation is {row.status}, not done")
    try:  # the name is built from the checked id only
        data = current_app.extensions["hadis_images"].open(f"{m.group(1)}.png")
    except FileNotFoundError:
        raise ApiError(404, "image_missing", "the image file is gone from the image "
                                             "store") from None
    return send_file(data, mimetype="image/png", max_age=3600,
                     download_name=f"{m.group(1)}.png")


@bp.get("/v1/openapi.json")
def openapi():
    return jsonify(openapi_document())


@bp.get("/")
def index():
    return jsonify({"name": "HADIS-Celery front door", "openapi": "/v1/openapi.json",
                    "create": "POST /v1/generations",
                    "openai_images": "POST /v1/images/generations", "health": "/v1/health",
                    "live": "/livez", "ready": "/readyz",
                    "models": "/v1/models/readiness",
                    "web": "/ui/", "dashboard": "/ui/dashboard", "metrics": "/metrics"})
