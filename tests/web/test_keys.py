"""API keys and ownership (issue 16.2): a query belongs to the key that made it, a key reads
only its own queries and images, an operator key reads everything, and ``/ui`` and
``/metrics`` follow the same rules (login form, signed session, or the key in a header).
Runs on the real stack (both databases) with a second front door that requires keys."""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from hadis_celery import store
from webapp.auth import key_id

ALICE, BOB, OP = "k-alice-0123", "k-bob-4567", "k-operator-89"
LOGIN_TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def keyed(stack, web_router):
    """A front door on the stack's database and queues that requires keys."""
    from hadis_celery.celery import make_app
    from webapp import create_app

    s = dataclasses.replace(stack.s, api_keys=(ALICE, BOB), operator_keys=(OP,))
    return create_app(s, router=web_router, celery_app=make_app(s, fast_fail=True))


def _post(c, key: str, prompt: str, bearer: bool = False) -> str:
    headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-Key": key}
    resp = c.post("/v1/generations", json={"prompt": prompt, "slo_s": 60}, headers=headers)
    assert resp.status_code == 202, resp.data[:300]
    return resp.get_json()["id"]


def _h(key: str) -> dict:
    return {"X-API-Key": key}


def _login(c, key: str, nxt: str = ""):
    page = c.get("/ui/login")
    assert page.status_code == 200 and 'type="password"' in page.get_data(as_text=True)
    tok = LOGIN_TOKEN_RE.search(page.get_data(as_text=True)).group(1)
    return c.post("/ui/login", data={"key": key, "csrf_token": tok, "next": nxt})


def _two_queries(stack, keyed) -> tuple[str, str]:
    c = keyed.test_client()
    a = _post(c, ALICE, "a lighthouse for alice")
    b = _post(c, BOB, "a windmill for bob", bearer=True)
    for qid in (a, b):
        assert stack.wait_done(qid)["status"] == "done"
    return a, b


def test_a_key_reads_only_its_own_queries_and_an_operator_reads_all(stack, keyed):
    a, b = _two_queries(stack, keyed)
    row = store.get_query(stack.app.extensions["hadis"].engine, a)
    assert row.owner == key_id(ALICE) and ALICE not in (row.owner, row.client)
    c = keyed.test_client()
    for key, mine, theirs in ((ALICE, a, b), (BOB, b, a)):
        assert c.get(f"/v1/generations/{mine}", headers=_h(key)).status_code == 200
        other = c.get(f"/v1/generations/{theirs}", headers=_h(key))
        assert other.status_code == 404 and other.get_json()["error"]["code"] == "not_found"
        img = c.get(f"/v1/images/{mine}.png", headers=_h(key))
        assert img.status_code == 200 and img.data[:4] == b"\x89PNG"
        assert c.get(f"/v1/images/{theirs}.png", headers=_h(key)).status_code == 404
    for qid in (a, b):
        assert c.get(f"/v1/generations/{qid}", headers={"Authorization": f"Bearer {OP}"}
                     ).status_code == 200
        assert c.get(f"/v1/images/{qid}.png", headers=_h(OP)).status_code == 200
        no_key = c.get(f"/v1/generations/{qid}")
        assert no_key.status_code == 401 and "Bearer" in no_key.headers["WWW-Authenticate"]
        assert c.get(f"/v1/generations/{qid}", headers=_h("k-wrong")).status_code == 401
    # plans need a key; /metrics and the dashboard an operator key
    assert c.get("/v1/plans").status_code == 401
    assert c.get("/v1/plans", headers=_h(BOB)).status_code == 200
    assert c.get(f"/v1/plans/{stack.plan_id}").status_code == 401
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers=_h(ALICE)).status_code == 403
    assert c.get("/metrics", headers={"Authorization": f"bearer {OP}"}).status_code == 200
    # public: health and the API document
    assert c.get("/v1/health").status_code == 200
    assert c.get("/v1/openapi.json").status_code == 200


def test_ui_follows_the_same_rules_with_a_login_session(stack, keyed):
    a, b = _two_queries(stack, keyed)
    c = keyed.test_client()
    # without a key: pages send to the login form, what scripts poll answers 401 JSON
    for path in (f"/ui/images/{a}.png", f"/ui/results/{a}", "/ui/gallery", "/ui/dashboard",
                 "/ui/"):
        resp = c.get(path)
        assert resp.status_code == 303, (path, resp.status_code)
        loc = urlsplit(resp.headers["Location"])
        assert loc.path == "/ui/login" and parse_qs(loc.query)["next"] == [path], loc
    for path in (f"/ui/results/{a}.json", "/ui/dashboard.json", "/metrics"):
        resp = c.get(path)
        assert resp.status_code == 401 and resp.is_json, path
    assert c.get("/ui/static/style.css").status_code == 200

    bad = _login(c, "k-wrong")
    assert bad.status_code == 401 and "not valid" in bad.get_data(as_text=True)
    assert c.get("/ui/gallery").status_code == 303
    ok = _login(c, ALICE, nxt=f"/ui/results/{a}")
    assert ok.status_code == 303 and ok.headers["Location"] == f"/ui/results/{a}"
    cookie = ok.headers["Set-Cookie"]
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie and ALICE not in cookie
    assert c.get(f"/ui/results/{a}").status_code == 200
    assert c.get(f"/ui/results/{a}.json").get_json()["prompt"] == "a lighthouse for alice"
    assert c.get(f"/ui/images/{a}.png").status_code == 200
    for path in (f"/ui/results/{b}", f"/ui/results/{b}.json", f"/ui/images/{b}.png"):
        assert c.get(path).status_code == 404, path
    gal = c.get("/ui/gallery").get_data(as_text=True)
    assert f'href="/ui/results/{a}"' in gal and f'href="/ui/results/{b}"' not in gal
    assert "windmill" not in gal and 'id="signed-in"' in gal
    assert c.get("/ui/dashboard").status_code == 403
    assert c.get("/metrics").status_code == 403
    # the form works again, for the signed-in key (CSRF token kept)
    from tests.web.conftest import post_form

    resp = post_form(c, "a form prompt for alice")
    assert resp.status_code == 303, resp.get_data(as_text=True)[:300]
    qid = resp.headers["Location"].rsplit("/", 1)[1]
    assert store.get_query(stack.app.extensions["hadis"].engine, qid).owner == key_id(ALICE)
    stack.wait_done(qid)
    # a header key works on pages too; the session never counts on /v1
    assert c.get(f"/v1/generations/{a}").status_code == 401
    other = keyed.test_client()
    assert other.get(f"/ui/results/{b}", headers=_h(BOB)).status_code == 200
    assert other.get(f"/ui/results/{a}", headers=_h(BOB)).status_code == 404
    # sign out: the session no longer counts
    tok = LOGIN_TOKEN_RE.search(c.get("/ui/gallery").get_data(as_text=True)).group(1)
    assert c.post("/ui/logout", data={"csrf_token": tok}).status_code == 303
    assert c.get("/ui/gallery").status_code == 303

    op = keyed.test_client()
    assert _login(op, OP).status_code == 303
    gal = op.get("/ui/gallery").get_data(as_text=True)
    assert f'href="/ui/results/{a}"' in gal and f'href="/ui/results/{b}"' in gal
    assert "(operator)" in gal
    assert op.get("/ui/dashboard").status_code == 200
    assert op.get("/ui/dashboard.json").status_code == 200
    assert op.get("/metrics").status_code == 200
    assert op.get(f"/ui/images/{b}.png").status_code == 200


def test_login_never_redirects_off_site_and_keys_off_keeps_the_site_open(stack, keyed):
    c = keyed.test_client()
    for nxt in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "/v1/plans"):
        resp = _login(c, BOB, nxt=nxt)
        assert resp.status_code == 303 and resp.headers["Location"] == "/ui/", nxt
    open_c = stack.app.test_client()  # no keys configured: open as before
    assert open_c.get("/ui/gallery").status_code == 200
    assert open_c.get("/metrics").status_code == 200
    assert open_c.get("/ui/login").status_code == 303
