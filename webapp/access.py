"""Who is calling: the key check every request passes before its view (``webapp.auth``
holds the rules, this blueprint applies them), and the headers every response carries."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, g, redirect, request, session

from webapp import auth
from webapp.errors import error_response

AMBIGUOUS = "hadis.ambiguous_length"  # set by ``webapp.ChunkedBodyLimit``
bp = Blueprint("access", __name__)


@bp.before_app_request
def check_key():
    """Set ``g.t0``, ``g.client`` and ``g.principal``; answer 400/401/403 (or a login
    redirect for a page) when the request may not go on."""
    from webapp import pages

    g.t0 = time.time()
    g.client = request.remote_addr or "?"
    g.principal = auth.OPEN
    if request.environ.get(AMBIGUOUS):
        return error_response(400, "ambiguous_length", "the request has both Content-Length "
                              "and Transfer-Encoding; send one of them")
    keys: auth.Keys = current_app.extensions["hadis_keys"]
    if not keys.required:
        return None
    path = request.path
    sent = auth.header_key(request.headers.get("X-API-Key"),
                           request.headers.get("Authorization"))
    p = keys.by_key(sent) if sent else None
    if p is None and not sent and auth.session_counts(path):
        p = keys.by_id(session.get("key_id"))
    if p is None:
        g.principal = auth.ANONYMOUS
        if auth.is_public(path):
            return None
        if pages.is_page(path) and request.method == "GET" and not sent:
            return redirect(pages.login_url(request.full_path), 303)
        resp = error_response(401, "unauthorized", "a valid API key is required (header "
                              "X-API-Key or Authorization: Bearer; the web pages: /ui/login)")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="hadis"'
        return resp
    g.principal, g.client = p, p.client
    if auth.needs_operator(path) and not p.operator:
        return error_response(403, "forbidden", "this page needs an operator key "
                              "(HADIS_OPERATOR_KEYS)")
    return None


@bp.after_app_request
def nosniff(resp: Response) -> Response:
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    return resp
