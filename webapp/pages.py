"""The human side of the front door: a web form, result pages, a gallery and a dashboard.

Server-rendered Jinja (autoescaped: a prompt is user text and is never marked safe), a
little vendored-free JavaScript under ``static/`` that only sets ``textContent``, and plots
drawn here as inline SVG, so nothing needs a build step or the network. The form is
protected by a per-session CSRF token; bad input re-renders the form with a message and
the typed text, never a stack trace. When the API requires keys the form is off (it would
otherwise be an unauthenticated way in), the dashboard stays readable.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import time
from dataclasses import dataclass

import redis.exceptions
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from kombu.exceptions import OperationalError as KombuOperationalError
from markupsafe import Markup, escape
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from hadis_celery import store
from hadis_celery.deployment import model_queues
from hadis_celery.live import BEAT_KEY
from hadis_celery.models import PlanRow, QueryRow
from hadis_celery.router.prompt import MAX_PROMPT_CHARS
from webapp.frontdoor import ApiError, FrontDoor, describe, parse_request

FINAL = ("done", "dropped", "failed")
GALLERY_SIZE = 24
SERIES_WINDOW_S = 3600.0  # the plots show the last hour
SERIES_BUCKET_S = 60.0
SERIES_ROWS = 5000  # at most this many finished queries are read for the plots
ID_LEN = 32

bp = Blueprint("pages", __name__, url_prefix="/ui", template_folder="templates",
               static_folder="static", static_url_path="/static")


def _door() -> FrontDoor:
    return current_app.extensions["hadis"]


def csrf_token() -> str:
    """The session's CSRF token (made on first use; the session cookie is signed)."""
    tok = session.get("csrf")
    if not tok:
        tok = session["csrf"] = secrets.token_urlsafe(32)
    return tok


def _csrf_ok(sent: str) -> bool:
    tok = session.get("csrf")
    return bool(tok) and hmac.compare_digest(str(tok), sent or "")


def _form(prompt: str = "", slo: str = "", error: str | None = None, status: int = 200):
    door = _door()
    body = render_template("form.html", prompt=prompt, slo=slo, error=error,
                           max_chars=MAX_PROMPT_CHARS, default_slo=door.s.slo_s,
                           max_slo=door.s.max_slo_s, keys_required=bool(door.s.api_keys))
    return body, status


@bp.get("/")
def form():
    return _form()


@bp.post("/generate")
def generate():
    """Validate like the JSON API does, submit, then redirect to the result page."""
    door = _door()
    prompt = request.form.get("prompt", "")
    slo_text = request.form.get("slo_s", "").strip()
    if not _csrf_ok(request.form.get("csrf_token", "")):
        return _form(prompt, slo_text, "The form expired or was not sent from this site; "
                     "please submit it again.", 400)
    if door.s.api_keys:
        return _form(prompt, slo_text, "This front door requires API keys; the web form is "
                     "off. Use the JSON API with a key.", 403)
    if len(prompt) > MAX_PROMPT_CHARS:
        return _form(prompt, slo_text, f"The prompt is too long: {len(prompt)} characters, "
                     f"at most {MAX_PROMPT_CHARS}.", 400)
    body: dict = {"prompt": prompt}
    if slo_text:
        try:
            body["slo_s"] = float(slo_text)
        except ValueError:
            return _form(prompt, slo_text, "The SLO must be a number of seconds.", 400)
    try:
        req = parse_request(body, door.s.max_slo_s)
        row, _ = door.submit(req, g.client, g.t0)
    except ApiError as exc:
        msg = "The prompt is empty." if exc.code == "empty_prompt" else exc.message
        return _form(prompt, slo_text, msg[:1].upper() + msg[1:], exc.status)
    except (redis.exceptions.RedisError, KombuOperationalError, DBAPIError, OSError):
        return _form(prompt, slo_text, "The service is unavailable right now (queue or "
                     "database down); nothing was recorded, please retry later.", 503)
    return redirect(url_for("pages.result", qid=row.id), 303)


def _row_or_404(qid: str) -> QueryRow:
    if len(qid) != ID_LEN or any(c not in "0123456789abcdef" for c in qid):
        abort(404)
    row = store.get_query(_door().engine, qid)
    if row is None:
        abort(404)
    return row


def _ui_describe(row: QueryRow) -> dict:
    """The API's description, with the UI's own image URL and the prompt."""
    out = describe(row, _door().registry)
    out["prompt"] = row.prompt
    out["image_url"] = url_for("pages.image", qid=row.id) if out["image_url"] else None
    return out


@bp.get("/results/<qid>")
def result(qid: str):
    return render_template("result.html", q=_ui_describe(_row_or_404(qid)), final=FINAL)


@bp.get("/results/<qid>.json")
def result_json(qid: str):
    """What the result page polls (the API's JSON, readable without a key)."""
    return jsonify(_ui_describe(_row_or_404(qid)))


@bp.get("/images/<qid>.png")
def image(qid: str):
    row = _row_or_404(qid)
    if row.status != "done" or not row.image:
        abort(404)
    path = os.path.join(os.path.abspath(str(_door().s.image_dir)), f"{row.id}.png")
    if not os.path.isfile(path):
        abort(404)
    return send_file(path, mimetype="image/png", max_age=3600)


@bp.get("/gallery")
def gallery():
    with _door().engine.connect() as c:
        rows = c.execute(select(QueryRow.id, QueryRow.prompt, QueryRow.served_model,
                                QueryRow.quality, QueryRow.finished_at, QueryRow.received_at)
                         .where(QueryRow.status == "done")
                         .order_by(QueryRow.finished_at.desc()).limit(GALLERY_SIZE)).all()
    reg = _door().registry
    items = [{"id": r.id, "prompt": r.prompt, "model": _name(reg, r.served_model),
              "quality": r.quality,
              "latency": None if r.finished_at is None else r.finished_at - r.received_at}
             for r in rows]
    return render_template("gallery.html", items=items)


def _name(reg, mid: int | None) -> str:
    if mid is None:
        return "-"
    try:
        return reg.get(mid).name
    except KeyError:
        return str(mid)


# -- dashboard ------------------------------------------------------------------------

@dataclass
class Series:
    """One plot: (t, y) points with the y range to draw."""

    title: str
    points: list[tuple[float, float]]
    ymin: float
    ymax: float
    unit: str = ""


def series(engine, now: float) -> tuple[Series, Series]:
    """SLO violation ratio and mean quality per minute over the last hour, from SQL.
    A violation is a dropped query or one that finished after its deadline."""
    since = now - SERIES_WINDOW_S
    with engine.connect() as c:
        rows = c.execute(select(QueryRow.status, QueryRow.updated_at, QueryRow.finished_at,
                                QueryRow.deadline, QueryRow.quality)
                         .where(QueryRow.status.in_(FINAL), QueryRow.updated_at >= since)
                         .order_by(QueryRow.updated_at.desc()).limit(SERIES_ROWS)).all()
    n: dict[int, int] = {}
    bad: dict[int, int] = {}
    qsum: dict[int, float] = {}
    qn: dict[int, int] = {}
    for r in rows:
        b = int((r.updated_at - since) // SERIES_BUCKET_S)
        n[b] = n.get(b, 0) + 1
        late = r.status == "dropped" or (r.finished_at is not None and r.deadline is not None
                                         and r.finished_at > r.deadline)
        bad[b] = bad.get(b, 0) + int(late)
        if r.status == "done" and r.quality is not None and math.isfinite(r.quality):
            qsum[b] = qsum.get(b, 0.0) + r.quality
            qn[b] = qn.get(b, 0) + 1
    viol = [(since + (b + 0.5) * SERIES_BUCKET_S, bad[b] / n[b]) for b in sorted(n)]
    qual = [(since + (b + 0.5) * SERIES_BUCKET_S, qsum[b] / qn[b]) for b in sorted(qn)]
    qs = [y for _, y in qual]
    lo, hi = (min(qs), max(qs)) if qs else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return (Series("SLO violation ratio", viol, 0.0, 1.0),
            Series("Mean quality of served images", qual, lo, hi))


def svg_plot(sr: Series, t0: float, t1: float, w: int = 420, h: int = 160) -> Markup:
    """An inline SVG line plot (axes, min/max labels, one polyline, a dot per point)."""
    pad = 36
    iw, ih = w - pad - 8, h - 2 * 14

    def x(t: float) -> float:
        return pad + (t - t0) / max(t1 - t0, 1e-9) * iw

    def y(v: float) -> float:
        return 14 + (1 - (v - sr.ymin) / max(sr.ymax - sr.ymin, 1e-9)) * ih

    pts = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in sr.points)
    dots = "".join(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5"/>' for t, v in sr.points)
    empty = ("" if sr.points else
             f'<text x="{pad + iw / 2:.0f}" y="{h / 2:.0f}" text-anchor="middle">no data</text>')
    return Markup(
        f'<svg class="plot" role="img" aria-label="{escape(sr.title)}" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(sr.title)}</title>'
        f'<line class="axis" x1="{pad}" y1="14" x2="{pad}" y2="{14 + ih}" stroke="#888"/>'
        f'<line class="axis" x1="{pad}" y1="{14 + ih}" x2="{pad + iw}" y2="{14 + ih}" '
        f'stroke="#888"/>'
        f'<text x="{pad - 4}" y="18" text-anchor="end" font-size="10">{sr.ymax:.3g}</text>'
        f'<text x="{pad - 4}" y="{14 + ih}" text-anchor="end" font-size="10">{sr.ymin:.3g}'
        f'</text><text x="{pad}" y="{h - 1}" font-size="10">-60 min</text>'
        f'<text x="{pad + iw}" y="{h - 1}" text-anchor="end" font-size="10">now</text>'
        f'<polyline class="line" fill="none" stroke="#1f6feb" stroke-width="2" '
        f'points="{pts}"/><g class="dots" fill="#1f6feb">{dots}</g>{empty}</svg>')


def dashboard_data() -> dict:
    """Everything the dashboard shows; Redis or SQL being down is shown, not raised."""
    door = _door()
    reg = door.registry
    now = time.time()
    out: dict = {"now": now, "errors": [], "plan": None, "queues": {}, "beat": {},
                 "workers": {}, "history": [], "plots": []}
    try:
        plan = door.live.get_plan()
        out["queues"] = door.live.queue_lengths(model_queues(reg))
        out["beat"] = door.live.get_json(BEAT_KEY) or {}
        out["workers"] = door.live.live_workers()
        if plan is not None:
            out["plan"] = {**plan.to_dict(), "light_name": _name(reg, plan.light),
                           "heavy_name": _name(reg, plan.heavy),
                           "batch_named": {_name(reg, int(k)): v
                                           for k, v in plan.to_dict()["batch"].items()}}
    except (redis.exceptions.RedisError, OSError) as exc:
        out["errors"].append(f"Redis unavailable ({type(exc).__name__})")
    try:
        plans = store.latest_plans(door.engine, 20)
        out["history"] = [_plan_row(p, reg) for p in plans]
        viol, qual = series(door.engine, now)
        out["plots"] = [(sr.title, svg_plot(sr, now - SERIES_WINDOW_S, now))
                        for sr in (viol, qual)]
        out["violation_ratio"] = (sum(v for _, v in viol.points) / len(viol.points)
                                  if viol.points else None)
    except DBAPIError as exc:
        out["errors"].append(f"database unavailable ({type(exc).__name__})")
    if out["plan"] and out["history"]:
        cur = next((h for h in out["history"] if h["id"] == out["plan"]["plan_id"]), None)
        out["plan"]["fid"] = cur["fid"] if cur else None
        out["plan"]["overloaded"] = cur["overloaded"] if cur else None
    return out


def _plan_row(p: PlanRow, reg) -> dict:
    body = p.body or {}
    cfg = body.get("config", {}) if isinstance(body, dict) else {}
    return {"id": p.id, "created": p.created.strftime("%Y-%m-%d %H:%M:%S") if p.created
            else "", "planner": p.planner, "pair": f"{_name(reg, p.light)} → "
            f"{_name(reg, p.heavy)}", "demand": p.demand, "fid": p.fid,
            "overloaded": bool(p.overloaded), "theta": cfg.get("theta"),
            "tau": cfg.get("tau"), "workers": body.get("workers", {})}


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard.html", d=dashboard_data())


def _fmt(v: object, spec: str = ".3g") -> str:
    """Numbers for humans: None is '-', infinities are ±∞."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return {"inf": "∞", "-inf": "-∞"}.get(v, v)
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def register(app: Flask) -> None:
    """Add the pages, CSRF token helper, security headers and a session key to ``app``."""
    app.secret_key = app.secret_key or os.environ.get("HADIS_SECRET_KEY") or \
        secrets.token_hex(32)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.filters["fmt"] = _fmt
    app.register_blueprint(bp)

    @app.after_request
    def _headers(resp: Response) -> Response:
        if request.path.startswith("/ui") and resp.mimetype == "text/html":
            resp.headers.setdefault(
                "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                "script-src 'self'; style-src 'self'; object-src 'none'; frame-ancestors "
                "'none'; form-action 'self'; base-uri 'none'")
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp
