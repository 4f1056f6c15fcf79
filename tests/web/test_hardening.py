"""The smaller holes of issue 16 (items 5 and 7), on the real stack: a cross-site form cannot
create queries (``/v1/generations`` takes only JSON), a chunked body over the limit is 413,
a request with both Content-Length and Transfer-Encoding is 400, ``nosniff`` everywhere,
the session cookie is SameSite=Lax and HttpOnly, and a prompt is cut after NFC."""

from __future__ import annotations

import http.client
import json
import unicodedata
from urllib.parse import urlsplit

from sqlalchemy import func, select

from hadis_celery.tables import QueryRow
from planner.router.prompt import MAX_PROMPT_CHARS


def _rows(stack) -> int:
    with stack.app.extensions["hadis"].engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(QueryRow)).scalar_one())


def _conn(stack) -> http.client.HTTPConnection:
    u = urlsplit(stack.url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=20)


def _chunked(stack, body: bytes, headers: dict | None = None) -> tuple[int, dict, dict]:
    c = _conn(stack)
    try:
        c.putrequest("POST", "/v1/generations")
        for k, v in {"Content-Type": "application/json", "Transfer-Encoding": "chunked",
                     **(headers or {})}.items():
            c.putheader(k, v)
        c.endheaders()
        for i in range(0, len(body), 4096):
            part = body[i:i + 4096]
            c.send(b"%x\r\n%s\r\n" % (len(part), part))
        c.send(b"0\r\n\r\n")
        resp = c.getresponse()
        return resp.status, json.loads(resp.read()), dict(resp.getheaders())
    finally:
        c.close()


def test_generations_take_only_json_so_a_cross_site_form_cannot_post(stack):
    c = stack.client
    before = _rows(stack)
    body = b'{"prompt": "a cat from another site"}'
    for ctype in ("text/plain", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", None):
        resp = c.post("/v1/generations", data=body, content_type=ctype)
        assert resp.status_code == 415, (ctype, resp.status_code, resp.data[:200])
        assert resp.get_json()["error"]["code"] == "unsupported_media_type"
    assert _rows(stack) == before  # nothing was recorded
    for ctype in ("application/json", "application/json; charset=utf-8"):
        resp = c.post("/v1/generations", data=body, content_type=ctype)
        assert resp.status_code == 202, (ctype, resp.data[:200])
        stack.wait_done(resp.get_json()["id"])
    doc = c.get("/v1/openapi.json").get_json()
    assert "415" in doc["paths"]["/v1/generations"]["post"]["responses"]


def test_a_chunked_body_over_the_limit_is_413_and_one_under_it_is_accepted(stack):
    limit = stack.s.max_request_bytes
    big = json.dumps({"prompt": "x" * (limit + 100)}).encode()
    status, body, headers = _chunked(stack, big)
    assert status == 413 and body["error"]["code"] == "request_too_large", (status, body)
    status, body, _ = _chunked(stack, json.dumps({"prompt": "a chunked cat"}).encode())
    assert status == 202, body
    stack.wait_done(body["id"])


def test_content_length_and_transfer_encoding_together_are_refused(stack):
    before = _rows(stack)
    payload = json.dumps({"prompt": "a smuggled cat"}).encode()
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    c = _conn(stack)
    try:
        c.putrequest("POST", "/v1/generations")
        c.putheader("Content-Type", "application/json")
        c.putheader("Content-Length", str(len(framed)))
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        c.send(framed)
        resp = c.getresponse()
        status, body = resp.status, json.loads(resp.read())
    finally:
        c.close()
    assert status == 400 and body["error"]["code"] == "ambiguous_length", (status, body)
    assert _rows(stack) == before


def test_nosniff_on_api_responses_and_a_lax_httponly_session_cookie(stack):
    c = stack.app.test_client()
    for resp in (c.post("/v1/generations", json={"prompt": "a nosniff cat"}),
                 c.get("/v1/generations/" + "0" * 32), c.get("/v1/openapi.json"),
                 c.get("/v1/health"), c.get("/v1/plans"), c.get("/metrics"),
                 c.get("/ui/dashboard.json")):
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", resp.request.path
    page = c.get("/ui/")  # the form sets the session (its CSRF token)
    cookie = page.headers["Set-Cookie"]
    assert "SameSite=Lax" in cookie and "HttpOnly" in cookie, cookie


def test_a_prompt_is_cut_after_nfc_normalisation(stack):
    # U+FB2C is one character that NFC turns into three
    prompt = "\ufb2c" * MAX_PROMPT_CHARS
    assert len(unicodedata.normalize("NFC", prompt)) == 3 * MAX_PROMPT_CHARS
    resp = stack.client.post("/v1/generations", json={"prompt": prompt})
    assert resp.status_code == 202, resp.data[:200]
    qid = resp.get_json()["id"]
    stored = stack.client.get(f"/ui/results/{qid}.json").get_json()["prompt"]
    assert len(stored) == MAX_PROMPT_CHARS
    assert stored == unicodedata.normalize("NFC", prompt)[:MAX_PROMPT_CHARS]
    stack.wait_done(qid)
