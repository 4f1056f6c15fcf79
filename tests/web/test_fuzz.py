"""API fuzzing with Hypothesis against the real Flask app on real Redis (database 10, flushed
before and after) and SQLite / PostgreSQL (a schema of its own), with no worker, so every
accepted query's message stays on its queue where the test can count it.

Requests are drawn from the OpenAPI document the app serves (``/v1/openapi.json``: its
paths, methods, parameters and the ``GenerationRequest`` schema) and from deliberate
damage: random JSON values, wrong types, extra fields, bad ``slo_s``/``seed`` (NaN, ±inf,
booleans, negative, huge), odd unicode prompts (NUL, lone surrogates, RTL marks, emoji,
control characters, very long ones near the body limit), invalid UTF-8, deep nesting,
wrong content types and methods, odd paths, ids and query strings; the web form too.

After every request: no 5xx; ``/v1`` answers JSON (strict: no NaN or Infinity), errors as
``{"error": {"code", "message"}}``, ``/ui`` pages answer HTML errors; a 202 has its SQL
row and exactly one message on the queue it names; anything else wrote nothing (no row,
no message). Examples are derandomised and bounded (about 500 requests per database).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from hadis_celery import db, store
from hadis_celery.beat import PlanLoop
from hadis_celery.celery import make_app
from hadis_celery.live import decode_message
from hadis_celery.settings import Settings
from hadis_celery.tables import QueryRow
from tests.stack.conftest import database, make_settings, plan_for
from tests.web.conftest import form_token
from webapp.openai_images import is_openai_path

BROKER = "redis://127.0.0.1:6379/10"
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example,
                                       HealthCheck.function_scoped_fixture])
MAX_BYTES = Settings().max_request_bytes  # make_settings keeps the default
DOC_HOLDER: dict = {}  # the served OpenAPI document, set by the fixture


@dataclass
class Fuzz:
    app: object
    client: object
    engine: object
    r: redis.Redis
    doc: dict
    accepted: dict[str, str] = field(default_factory=dict)  # query id -> queue
    requests: int = 0

    def __repr__(self) -> str:  # short in Hypothesis' falsifying examples
        return f"Fuzz({self.engine.url.get_backend_name()}, {len(self.accepted)} accepted)"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fz(request, tmp_path_factory, web_router) -> Iterator[Fuzz]:
    from webapp import create_app

    r = redis.Redis.from_url(BROKER)
    r.ping()
    r.flushdb()
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    try:
        with database(request.param, tmp) as url:
            s = make_settings(url, tmp / "images", broker_url=BROKER)
            capp = make_app(s)
            # random routing (a uniform draw from the query id above θ = 0.5 goes heavy)
            # splits queries half and half, whatever scale the router's scores have
            PlanLoop.from_settings(s, capp).apply(
                plan_for(0, 3, theta=0.5, tau=-math.inf, workers={"light_sdxl": 1},
                         batch={0: 1, 3: 1}, routing="random", router_ratio=0.5),
                workers=[])
            app = create_app(s, router=web_router, celery_app=make_app(s, fast_fail=True))
            engine = db.make_engine(url)
            client = app.test_client()
            doc = client.get("/v1/openapi.json").get_json()
            DOC_HOLDER["doc"] = doc  # the strategies below read the served document
            try:
                yield Fuzz(app, client, engine, r, doc)
            finally:
                engine.dispose()
    finally:
        r.flushdb()
        r.close()


# -- what every response must satisfy --------------------------------------------------

def _strict(data: bytes):
    def no_constant(name: str):
        raise AssertionError(f"non-standard JSON constant {name} in a response")
    return json.loads(data, parse_constant=no_constant)


def _state(fz: Fuzz) -> tuple[int, int]:
    """(rows in SQL, messages on every Redis list)."""
    with fz.engine.connect() as c:
        rows = c.execute(select(func.count()).select_from(QueryRow)).scalar_one()
    msgs = sum(fz.r.llen(k) for k in fz.r.scan_iter(_type="list"))
    return int(rows), int(msgs)


def _is_page(path: str) -> bool:
    return (path == "/ui" or path.startswith("/ui/")) and not path.endswith(".json")


def check(fz: Fuzz, method: str, resp, before: tuple[int, int]) -> None:
    fz.requests += 1
    status, path = resp.status_code, resp.request.path
    what = f"{method} {path} -> {status}: {resp.data[:300]!r}"
    assert status < 500, what
    assert b"Traceback" not in resp.data, what
    if method not in ("HEAD", "OPTIONS") and not (300 <= status < 400):
        if status >= 400 and _is_page(path):
            assert resp.mimetype == "text/html", what
        elif status >= 400 or (path.startswith("/v1/") and not path.startswith("/v1/images")):
            assert resp.is_json, what
            body = _strict(resp.data)
            if status >= 400:
                assert set(body) == {"error"}, what
                err = body["error"]
                assert set(err) == ({"code", "message", "type", "param"}
                                    if is_openai_path(path) else {"code", "message"}), what
                assert isinstance(err["code"], str) and err["code"], what
                assert isinstance(err["message"], str) and err["message"], what
    after = _state(fz)
    if status == 202:
        body = _strict(resp.data)
        qid, queue = body["id"], body["queue"]
        assert set(body) == set(fz.doc["components"]["schemas"]["Generation"]["properties"])
        assert resp.headers["Location"] == f"/v1/generations/{qid}", what
        _assert_queued_once(fz, qid, queue)
        assert after == (before[0] + 1, before[1] + 1), (what, before, after)
    elif status == 303 and method == "POST":  # the form accepted a query
        m = re.fullmatch(r"/ui/results/([0-9a-f]{32})", resp.headers["Location"])
        assert m, what
        row = store.get_query(fz.engine, m.group(1))
        assert row is not None, what
        _assert_queued_once(fz, row.id, row.queue)
        assert after == (before[0] + 1, before[1] + 1), (what, before, after)
    else:
        assert after == before, (what, before, after)


def _assert_queued_once(fz: Fuzz, qid: str, queue: str) -> None:
    row = store.get_query(fz.engine, qid)
    assert row is not None and row.status == "queued" and row.queue == queue, qid
    mine = [m for m in map(decode_message, fz.r.lrange(queue, 0, -1))
            if m is not None and m.query_id == qid]
    assert len(mine) == 1, (qid, queue, len(mine))
    fz.accepted[qid] = queue


# -- strategies derived from the OpenAPI document, plus deliberate damage ----------------

ODD = ["\x00", "\ud800", "\udfff", "\udbff\udc00", "\u202e", "\u200f", "\u200b", "\ufeff",
       "\x7f", "\x85", "\u2028", "\x1b[31m", "🐱", "👩\u200d👩\u200d👧", "ﷺ", "مرحبا", "שלום",
       "日本語", "\t", "\n", "\r\n", "e\u0301", "𝔘", "\U0010ffff", "<script>alert(1)</script>",
       "'; DROP TABLE queries; --", "%s%n", "{0}", "../../etc/passwd", " ", "\\", '"']
odd_text = st.lists(st.one_of(st.sampled_from(ODD), st.characters(), st.text(max_size=8)),
                    max_size=12).map("".join)
long_text = st.one_of(
    st.integers(1990, 2010).map(lambda n: "x" * n),
    st.integers(1990, 2010).map(lambda n: "🐱" * n),
    st.integers(MAX_BYTES - 40, MAX_BYTES + 8).map(lambda n: "y" * n),  # the body limit
    st.integers(600, 1200).map(lambda n: "\u0627 " * n),
)
any_text = st.one_of(st.text(max_size=30), odd_text, long_text)


def _resolve(doc: dict, ref: str) -> dict:
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def from_schema(schema: dict, doc: dict) -> st.SearchStrategy:
    """Values valid for a JSON schema (the subset the document uses)."""
    if "$ref" in schema:
        return from_schema(_resolve(doc, schema["$ref"]), doc)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema.get("type")
    if isinstance(t, list):
        return st.one_of([from_schema({**schema, "type": x}, doc) for x in t])
    if t == "object":
        props, req = schema.get("properties", {}), set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, doc) for k, v in props.items() if k in req},
            optional={k: from_schema(v, doc) for k, v in props.items() if k not in req})
    if t == "string":
        return any_text.filter(lambda s: len(s) >= schema.get("minLength", 0))
    if t == "number":
        lo = schema.get("exclusiveMinimum", schema.get("minimum"))
        return st.floats(min_value=lo, max_value=schema.get("maximum"),
                         exclude_min="exclusiveMinimum" in schema, allow_nan=False,
                         allow_infinity=False)
    if t == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    return st.nothing()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | any_text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids,
                                                                max_size=4),
    max_leaves=12)
bad_numbers = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, True, False, 0, -0.0, -1, 5e-324, 1e-320,
                     1e308, 10**20, 2**31, 2**31 - 1, 2**63, -(2**63), 10**400, "60", "", None,
                     [], {}, [60], {"s": 1}, 3600, 3600.000001, 0.5, "NaN"]),
    st.floats(), st.integers())


def _encode(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode(
        "utf-8", "surrogatepass")


@st.composite
def generation_bodies(draw) -> bytes:
    """Bodies for ``POST /v1/generations``: valid per the document, mutated, or junk."""
    schema = {"$ref": "#/components/schemas/GenerationRequest"}
    valid = from_schema(schema, DOC_HOLDER["doc"])
    kind = draw(st.sampled_from(["valid", "mutated", "json", "bytes"]))
    if kind == "valid":
        return _encode(draw(valid), draw(st.booleans()))
    if kind == "mutated":
        body = dict(draw(valid))
        how = draw(st.sampled_from(["extra", "replace", "drop", "bad_number"]))
        if how == "extra":
            body[draw(st.text(max_size=10))] = draw(json_values)
        elif how == "replace":
            body[draw(st.sampled_from(["prompt", "slo_s", "seed"]))] = draw(json_values)
        elif how == "drop":
            body.pop("prompt", None)
        else:
            body[draw(st.sampled_from(["slo_s", "seed"]))] = draw(bad_numbers)
        return _encode(body, draw(st.booleans()))
    if kind == "json":
        return _encode(draw(json_values), draw(st.booleans()))
    return draw(st.one_of(
        st.binary(max_size=64),
        st.integers(50, MAX_BYTES - 10).map(lambda n: b"[" * n),
        st.integers(50, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.sampled_from([b"", b"null", b"{", b'{"prompt": "a cat"', b"\xef\xbb\xbf{}",
                         b'{"prompt": "\xff\xfe a cat"}', b'{"prompt": "a\\ud800 cat"}',
                         b'{"prompt": "a cat", "slo_s": NaN}', b'{"prompt": "a cat", '
                         b'"seed": 1e999}', '{"prompt": "a cat"}'.encode("utf-16"),
                         b'{"prompt": "a cat", "prompt": 7}', b'{"prompt": "a cat"}\x00',
                         b'{"prompt": "a cat"} {"prompt": "b"}', b"1" * 5000]),
    ))


CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "text/plain", "",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=latin-1", "application/xml", "*/*"])


def test_served_openapi_document_is_the_source_of_the_strategies(fz):
    from webapp.openapi import openapi_document

    assert fz.doc == DOC_HOLDER["doc"] == json.loads(json.dumps(openapi_document()))
    ops = {(p, m) for p, item in fz.doc["paths"].items() for m in item}
    assert ("/v1/generations", "post") in ops and ("/v1/plans/{id}", "get") in ops


@settings(FUZZ, max_examples=100)
@given(body=st.deferred(generation_bodies), ctype=CONTENT_TYPES)
def test_fuzz_post_generations(fz, body, ctype):
    before = _state(fz)
    resp = fz.client.post("/v1/generations", data=body, content_type=ctype or None)
    check(fz, "POST", resp, before)


@settings(FUZZ, max_examples=30)
@given(body=st.deferred(lambda: from_schema(
    {"$ref": "#/components/schemas/GenerationRequest"}, DOC_HOLDER["doc"])))
def test_schema_valid_bodies_are_accepted_or_refused_for_a_stated_reason(fz, body):
    before = _state(fz)
    resp = fz.client.post("/v1/generations", json=body)
    check(fz, "POST", resp, before)
    if resp.status_code != 202:
        code = _strict(resp.data)["error"]["code"]
        # whitespace/control-only prompts are empty after cleaning; slo_s has a server
        # maximum (HADIS_MAX_SLO_S) the schema cannot state; the body limit is bytes
        assert (resp.status_code, code) in {(400, "empty_prompt"), (400, "invalid_slo"),
                                             (413, "request_too_large")}, resp.data[:200]


# -- methods, paths, ids, query strings -------------------------------------------------

def _quote(text: str, slash: bool) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="/" if slash else "")


ODD_IDS = ["0" * 32, "F" * 32, "0" * 31, "0" * 33, "0" * 32 + "\n", "²", "١٢", "１", "9" * 12,
           "9" * 13, "-1", "1.5", "..", "../../etc/passwd", "\x00", " 1", "1 ", "1e3", "0x10",
           "null", "", ".png", "0" * 32 + ".png\x00", "+1", "٣", "0" * 12, "500", "501"]
ids = st.one_of(
    st.sampled_from(ODD_IDS),
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.integers(-10, 10**13).map(str),
    any_text.filter(lambda s: len(s) < 300),
)
UI_ID_PATHS = ["/ui/results/{id}", "/ui/results/{id}.json", "/ui/images/{id}.png",
               "/ui/static/{id}"]
EXTRA_PATHS = ["/", "/metrics", "/v1", "/v1/", "/v1//generations", "/v1/generations/",
               "/ui", "/ui/", "/ui/gallery", "/ui/dashboard", "/ui/dashboard.json",
               "/ui/generate", "/{id}", "/v1/{id}", "/ui/{id}", *UI_ID_PATHS]
# waits for its images (no worker here): tests/web/test_openai_images.py covers it
WAITING_PATHS = {"/v1/images/generations"}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def _send(fz: Fuzz, method: str, path: str, query: str = "", body: bytes = b"") -> None:
    before = _state(fz)
    resp = fz.client.open(path, method=method, query_string=query, data=body,
                          content_type="application/json")
    check(fz, method, resp, before)


@st.composite
def any_request(draw) -> tuple[str, str, str, bytes]:
    doc_paths = sorted(set(DOC_HOLDER["doc"]["paths"]) - WAITING_PATHS)
    template = draw(st.sampled_from(doc_paths + EXTRA_PATHS))
    path = template.replace("{id}", _quote(draw(ids), draw(st.booleans())))
    ops = [m.upper() for m in DOC_HOLDER["doc"]["paths"].get(template, {})]
    method = draw(st.sampled_from(ops)) if ops and draw(st.booleans()) else \
        draw(st.sampled_from(METHODS))
    params = draw(st.lists(st.tuples(st.sampled_from(["limit", "refresh", "id", "x"]) |
                                     st.text(max_size=5), ids), max_size=3))
    query = "&".join(f"{_quote(k, False)}={_quote(v, False)}" for k, v in params)
    query = draw(st.sampled_from([query, query, "limit=%FF", "limit=1&limit=abc", "%", "a=%"]))
    body = draw(st.one_of(st.just(b""), st.deferred(generation_bodies)))
    return method, path, query, body


@settings(FUZZ, max_examples=70)
@given(req=st.deferred(any_request))
def test_fuzz_methods_paths_and_bodies(fz, req):
    _send(fz, *req)


def test_odd_ids_in_every_id_path(fz):
    """Every odd id in every path that takes one (a sweep: rare pairs are not left to luck)."""
    templates = sorted(p for p in fz.doc["paths"] if "{id}" in p) + UI_ID_PATHS
    for template in templates:
        for qid in ODD_IDS:
            _send(fz, "GET", template.replace("{id}", _quote(qid, False)))


@settings(FUZZ, max_examples=40)
@given(template=st.deferred(lambda: st.sampled_from(
    sorted(p for p in DOC_HOLDER["doc"]["paths"] if "{id}" in p) + UI_ID_PATHS)),
    qid=ids, slash=st.booleans(), method=st.sampled_from(["GET", "GET", "HEAD", "DELETE"]))
def test_fuzz_ids_in_every_id_path(fz, template, qid, slash, method):
    _send(fz, method, template.replace("{id}", _quote(qid, slash)))


@settings(FUZZ, max_examples=40)
@given(path=st.sampled_from(["/v1/plans", "/ui/dashboard", "/ui/dashboard.json"]),
       name=st.sampled_from(["limit", "refresh"]), values=st.lists(ids, min_size=1,
                                                                   max_size=2))
def test_fuzz_query_strings(fz, path, name, values):
    _send(fz, "GET", path, "&".join(f"{name}={_quote(v, False)}" for v in values))


# -- the web form ------------------------------------------------------------------------

slo_texts = st.one_of(st.just(""), st.sampled_from(
    ["60", " 30 ", "nan", "inf", "-inf", "1e999", "0", "-1", "1_000", "0x10", "3600", "3601",
     "1e-320", "٣٠", "60s", "\x00", "１２"]), odd_text.filter(lambda s: len(s) < 40))


@settings(FUZZ, max_examples=40)
@given(prompt=any_text, slo=slo_texts, token_ok=st.booleans())
def test_fuzz_web_form(fz, prompt, slo, token_ok):
    c = fz.app.test_client()
    tok = form_token(c) if token_ok else "forged"
    before = _state(fz)
    form = urlencode({"prompt": prompt, "slo_s": slo, "csrf_token": tok},
                     errors="surrogatepass")  # lone surrogates become invalid UTF-8
    resp = c.post("/ui/generate", data=form, content_type="application/x-www-form-urlencoded")
    check(fz, "POST", resp, before)
    assert resp.status_code in (303, 400, 413), resp.status_code
    if resp.status_code == 400:
        html = resp.get_data(as_text=True)
        assert 'id="form-error"' in html and "<textarea" in html


def test_no_accepted_query_was_lost(fz):
    """Over the whole module: SQL holds exactly the accepted ids, each queued once."""
    with fz.engine.connect() as c:
        rows = dict(c.execute(select(QueryRow.id, QueryRow.queue)).all())
    assert rows == fz.accepted
    queued: dict[str, int] = {}
    for key in fz.r.scan_iter(_type="list"):
        for m in map(decode_message, fz.r.lrange(key, 0, -1)):
            assert m is not None, f"a message that is not a generate task on {key!r}"
            queued[m.query_id] = queued.get(m.query_id, 0) + 1
            assert rows[m.query_id] == key.decode()
    assert queued == {q: 1 for q in rows}
    assert len(rows) > 20 and {"light_sdxl", "heavy_sd35_large"} <= set(rows.values())
    assert fz.requests >= 300
