"""The human side of the front door: a web form, result pages, a gallery, a dashboard, and
HTML error pages for every ``/ui`` page.

Server-rendered Jinja (autoescaped: a prompt is user text and is never marked safe), two
small scripts under ``static/`` that set only ``textContent`` and SVG attributes, and plots
drawn here as inline SVG (``webapp.plots``), so nothing needs a build step or the network.
The form is protected by a per-session CSRF token; bad input re-renders the form with a
message and the typed text, never a stack trace. When the front door requires keys, every
page but the login form needs one (``webapp.auth``): ``/ui/login`` checks a key and keeps
its id in the signed session; the pages then show only that key's queries (an operator
key's: all, and the dashboard).
"""

from __future__ import annotations

import hmac
import os
import secrets
from urllib.parse import urlsplit

import redis.exceptions
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_file,
    session,
    url_for,
)
from kombu.exceptions import OperationalError as KombuOperationalError
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from werkzeug.http import HTTP_STATUS_CODES

from hadis_celery import store
from hadis_celery.deployment import load_table
from hadis_celery.tables import QueryRow
from planner.router.prompt import MAX_PROMPT_CHARS
from webapp import auth
from webapp import dashboard as dash
from webapp.frontdoor import (
    ApiError,
    FrontDoor,
    describe,
    log_refused,
    model_name,
    number,
    parse_request,
)
from webapp.plots import svg_plot

FINAL = ("done", "dropped", "failed")
GALLERY_SIZE = 24
ID_LEN = 32
REFRESH_S = 5  # the dashboard's live update period (``?refresh=N`` seconds, 0: off)
# A form post percent-encodes every non-ASCII byte (3 bytes each): a prompt of the largest
# allowed length in 4-byte characters is 24 kB, above the API's default body limit.
FORM_MAX_BYTES = MAX_PROMPT_CHARS * 4 * 3 + 4096

bp = Blueprint("pages", __name__, url_prefix="/ui", template_folder="templates",
               static_folder="static", static_url_path="/static")


def is_page(path: str) -> bool:
    """True for the ``/ui`` paths a browser shows (their errors are HTML); the JSON the
    pages poll (``*.json``) keeps JSON errors."""
    return (path == "/ui" or path.startswith("/ui/")) and not path.endswith(".json")


def error_page(status: int, code: str, message: str) -> Response:
    """An HTML error page in the site's layout (a bare one if even that fails)."""
    title = HTTP_STATUS_CODES.get(status, "Error")
    try:
        html = render_template("error.html", status=status, title=title, code=code,
                               message=message)
    except Exception:  # the layout itself is broken: still no stack trace
        html = (f"<!doctype html><title>{status} {escape(title)}</title>"
                f"<h1>{status} {escape(title)}</h1><p>{escape(message)}</p>")
    resp = make_response(html, status)
    resp.mimetype = "text/html"
    return resp


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


def _form(prompt: str = "", slo: str = "", error: str | None = None, status: int = 200,
          code: str = "", **fields: object):
    """The form page; with ``error``, a refused submission (logged as ``query.refused``)."""
    door = _door()
    if error:
        log_refused(status, code or "invalid_form", error, g.get("client"), request.path,
                    **fields)
    body = render_template("form.html", prompt=prompt, slo=slo, error=error,
                           max_chars=MAX_PROMPT_CHARS, default_slo=door.s.slo_s,
                           max_slo=door.s.max_slo_s)
    return body, status


def _keys() -> auth.Keys:
    return current_app.extensions["hadis_keys"]


def _principal() -> auth.Principal:
    """The caller (set by the app's ``before_request``; if it is missing, nobody)."""
    p = g.get("principal")
    if p is None:
        return auth.ANONYMOUS if _keys().required else auth.OPEN
    return p


def login_url(next_path: str = "") -> str:
    """The login form, coming back to ``next_path`` afterwards."""
    nxt = _safe_next(next_path)
    return url_for("pages.login", next=nxt) if nxt else url_for("pages.login")


def _safe_next(path: str) -> str:
    """Only a page of this site (no scheme, no host, no ``//``): never an open redirect."""
    path = (path or "").rstrip("?")
    parts = urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/ui/") or "\\" in path:
        return ""
    return path


@bp.before_request
def _form_body_limit() -> None:
    """Room for the longest allowed prompt, percent-encoded, in the form's body."""
    if request.endpoint == "pages.generate":
        try:
            request.max_content_length = max(_door().s.max_request_bytes, FORM_MAX_BYTES)
        except AttributeError:  # Flask < 3.1: the app-wide limit applies
            pass


@bp.get("/")
def form():
    return _form()


def _down(exc: Exception) -> str:
    if isinstance(exc, (redis.exceptions.RedisError, KombuOperationalError)):
        return "redis"
    return "database" if isinstance(exc, DBAPIError) else type(exc).__name__


@bp.get("/login")
def login():
    if not _keys().required:
        return redirect(url_for("pages.form"), 303)
    return render_template("login.html", next=_safe_next(request.args.get("next", ""))), 200


@bp.post("/login")
def login_post():
    """Check the key (CSRF-checked form); keep its id, never the key, in the session."""
    nxt = _safe_next(request.form.get("next", ""))
    if not _keys().required:
        return redirect(url_for("pages.form"), 303)
    if not _csrf_ok(request.form.get("csrf_token", "")):
        return render_template("login.html", next=nxt, error="The form expired or was not "
                               "sent from this site; please sign in again."), 400
    p = _keys().by_key(request.form.get("key", "").strip())
    if p is None:
        log_refused(401, "bad_key", "login with a wrong key", g.get("client"), request.path)
        return render_template("login.html", next=nxt, error="This key is not valid."), 401
    session.clear()  # a new session (and CSRF token) for the signed-in key
    session["key_id"] = p.owner
    return redirect(nxt or url_for("pages.form"), 303)


@bp.post("/logout")
def logout():
    if _csrf_ok(request.form.get("csrf_token", "")):
        session.clear()
    return redirect(url_for("pages.login") if _keys().required else url_for("pages.form"),
                    303)


@bp.post("/generate")
def generate():
    """Validate like the JSON API does, submit, then redirect to the result page."""
    door = _door()
    prompt = request.form.get("prompt", "")
    slo_text = request.form.get("slo_s", "").strip()
    if not _csrf_ok(request.form.get("csrf_token", "")):
        return _form(prompt, slo_text, "The form expired or was not sent from this site; "
                     "please submit it again.", 400, "csrf")
    if len(prompt) > MAX_PROMPT_CHARS:
        return _form(prompt, slo_text, f"The prompt is too long: {len(prompt)} characters, "
                     f"at most {MAX_PROMPT_CHARS}.", 400, "prompt_too_long")
    body: dict = {"prompt": prompt}
    if slo_text:
        try:
            body["slo_s"] = float(slo_text)
        except ValueError:
            return _form(prompt, slo_text, "The SLO must be a number of seconds.", 400,
                         "invalid_slo")
    try:
        req = parse_request(body, door.s.max_slo_s)
        row, _ = door.submit(req, g.client, g.t0, via="form", owner=_principal().owner)
    except ApiError as exc:
        msg = "The prompt is empty." if exc.code == "empty_prompt" else exc.message
        return _form(prompt, slo_text, msg[:1].upper() + msg[1:], exc.status, exc.code)
    except (redis.exceptions.RedisError, KombuOperationalError, DBAPIError, OSError) as exc:
        return _form(prompt, slo_text, "The service is unavailable right now (queue or "
                     "database down); nothing was recorded, please retry later.", 503,
                     "unavailable", down=_down(exc))
    return redirect(url_for("pages.result", qid=row.id), 303)


def _row_or_404(qid: str) -> QueryRow:
    if len(qid) != ID_LEN or any(c not in "0123456789abcdef" for c in qid):
        abort(404, description="There is no query with this id (ids are 32 hex digits).")
    row = store.get_query(_door().engine, qid)
    if row is None or not auth.can_read(_principal(), row.owner):
        abort(404, description="There is no query with this id.")
    return row


def verdict(status: str, finished_at: float | None, deadline: float | None
            ) -> tuple[str, str]:
    """What the result page says of the deadline, and its style (``ok``/``late``/``""``).
    A dropped query counts as a missed deadline (it does in /metrics too), whatever the
    clock said when it was dropped."""
    if status == "dropped":
        return "dropped: missed its deadline", "late"
    if status == "failed":
        return "failed: no image", "late"
    if status != "done" or number(finished_at) is None or number(deadline) is None:
        return "", ""
    return (("missed the deadline", "late") if finished_at > deadline
            else ("within the deadline", "ok"))


def _ui_describe(row: QueryRow) -> dict:
    """The API's description, with the UI's own image URL, the prompt, the deadline verdict
    and the display strings of the numbers (the page and ``result.js`` show the same)."""
    out = describe(row, _door().registry)
    out["prompt"] = row.prompt
    out["image_url"] = url_for("pages.image", qid=row.id) if out["image_url"] else None
    text, kind = verdict(row.status, out["timings"]["finished_at"], row.deadline)
    out["verdict"] = {"text": text, "kind": kind}
    out["display"] = {k: dash.fmt(getattr(row, k)) for k in
                      ("hardness", "theta", "quality", "light_quality", "tau", "clip")}
    out["display"].update(latency=dash.fmt(out["timings"]["latency_s"]),
                          slo=dash.fmt(row.slo_s, ".6g"))
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
        abort(404, description=f"This query has no image: it is {row.status}.")
    from hadis_celery.imagestore import image_store

    try:
        data = image_store(_door().s).open(f"{row.id}.png")
    except FileNotFoundError:
        abort(404, description="The image file is gone from the image store.")
    return send_file(data, mimetype="image/png", max_age=3600, download_name=f"{row.id}.png")


def gallery_query(p: auth.Principal):
    """The gallery's rows: the newest done queries (the caller's own unless an operator),
    newest first by ``updated_at`` (set when a query finishes), so the read walks the
    ``(status, updated_at)`` or ``(owner, status, updated_at)`` index from its end and
    stops after ``GALLERY_SIZE`` rows, whatever the history."""
    q = select(QueryRow.id, QueryRow.prompt, QueryRow.served_model, QueryRow.quality,
               QueryRow.finished_at, QueryRow.received_at).where(QueryRow.status == "done")
    if not p.operator:
        q = q.where(QueryRow.owner == p.owner)
    return q.order_by(QueryRow.updated_at.desc()).limit(GALLERY_SIZE)


@bp.get("/gallery")
def gallery():
    with _door().engine.connect() as c:
        rows = c.execute(gallery_query(_principal())).all()
    reg = _door().registry
    items = [{"id": r.id, "prompt": r.prompt, "model": model_name(reg, r.served_model),
              "quality": r.quality,
              "latency": None if r.finished_at is None else r.finished_at - r.received_at}
             for r in rows]
    return render_template("gallery.html", items=items)



def _refresh_s() -> int:
    """``?refresh=N``: live update every N seconds (0: off; bad values: the default)."""
    raw = request.args.get("refresh", "")
    if raw.isascii() and raw.isdigit() and len(raw) <= 4:
        return min(int(raw), 3600)
    return REFRESH_S


def _dashboard_view() -> dict:
    door = _door()
    return dash.view(dash.collect(door), door.registry, load_table(door.s), _refresh_s())


@bp.get("/dashboard")
def dashboard():
    door = _door()
    v = _dashboard_view()
    table = load_table(door.s)
    active = tuple(v["active_pair"]) if v["active_pair"] else None
    plots = [(t, svg_plot(t, geo)) for t, geo in zip(v["plot_titles"], v["geometry"],
                                                       strict=True)]
    profile = dash.profile_view(table, v["active_row"], active)
    return render_template("dashboard.html", v=v, plots=plots, profile=profile,
                           table=table, ylabel=dash.quality_label(table))


@bp.get("/dashboard.json")
def dashboard_json():
    """What the dashboard's script polls: the same strings and plot geometry as the page."""
    resp = jsonify(dash.json_view(_dashboard_view()))
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.record_once
def _setup(state) -> None:
    """The CSRF token helper, display filters and a session key for the app."""
    app = state.app
    app.secret_key = app.secret_key or os.environ.get("HADIS_SECRET_KEY") or \
        secrets.token_hex(32)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["signed_in"] = _signed_in
    app.jinja_env.filters["fmt"] = dash.fmt
    app.jinja_env.filters["seconds"] = seconds


@bp.after_app_request
def _headers(resp: Response) -> Response:
    """A strict Content-Security-Policy on every ``/ui`` HTML page."""
    if request.path.startswith("/ui") and resp.mimetype == "text/html":
        resp.headers.setdefault(
            "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
            "script-src 'self'; style-src 'self'; object-src 'none'; frame-ancestors "
            "'none'; form-action 'self'; base-uri 'none'")
    return resp


def seconds(v: object) -> str:
    """A number of seconds as people write it: 3600, 60, 0.5 (never 3.6e+03)."""
    x = number(v)
    return "-" if x is None else format(x, ".6g") if abs(x) < 1e6 else f"{x:,.0f}"


def _signed_in() -> dict | None:
    """For the navigation bar: the signed-in key (its id's first digits, operator or not);
    None when keys are off or nobody signed in."""
    if not _keys().required:
        return None
    p = g.get("principal")
    if p is None or p.owner is None:
        return None
    return {"key": p.owner[:8], "operator": p.operator, "session": "key_id" in session}
