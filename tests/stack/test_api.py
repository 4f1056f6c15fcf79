"""The front door's JSON API on bad input and outages: always a JSON error with the right
status, never a 500 page, and nothing half-written (no SQL row without its message)."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select

from hadis_celery import db
from hadis_celery.live import LiveState
from hadis_celery.tables import QueryRow
from planner.policy import ActivePlan
from tests.stack.conftest import BROKER, CLOSED_PG, CLOSED_REDIS, database, make_settings
from webapp import create_app

PLAN = ActivePlan(plan_id=7, light=0, heavy=3, light_queue="light_sdxl",
                  heavy_queue="heavy_sd35_large", theta=math.inf, tau=-math.inf,
                  routing="score", router_ratio=0.0, batch={0: 1})


@pytest.fixture(scope="module")
def sql_url(tmp_path_factory):
    with database("sqlite", tmp_path_factory.mktemp("api")) as url:
        yield url


@pytest.fixture()
def live(redis_db):
    redis_db.flushdb()
    state = LiveState.from_url(BROKER)
    state.publish_plan(PLAN)
    yield state
    redis_db.flushdb()


def _app(router, sql_url, tmp_path, **kw):
    return create_app(make_settings(sql_url, tmp_path / "img", **kw), router=router)


@pytest.fixture()
def client(router, sql_url, tmp_path, live):
    return _app(router, sql_url, tmp_path).test_client()


def _rows(url: str) -> int:
    e = db.make_engine(url)
    try:
        with db.transaction(e) as s:
            return int(s.scalar(select(func.count()).select_from(QueryRow)))
    finally:
        e.dispose()


def _err(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    assert resp.is_json, resp.data[:300]
    body = resp.get_json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def test_accepts_a_good_request_and_reports_it(client, live):
    resp = client.post("/v1/generations", json={"prompt": "a cat", "slo_s": 30, "seed": 5})
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["status"] == "queued" and body["route"] == "light" and body["seed"] == 5
    assert resp.headers["Location"] == body["status_url"] == f"/v1/generations/{body['id']}"
    assert body["theta"] is None and body["plan_id"] == 7 and body["image_url"] is None
    assert live.queue_lengths(["light_sdxl"]) == {"light_sdxl": 1}
    got = client.get(body["status_url"]).get_json()
    assert got["id"] == body["id"] and got["status"] == "queued"
    _err(client.get(f"/v1/images/{body['id']}.png"), 409, "not_ready")


@pytest.mark.parametrize("data, code", [
    (b"{not json", "invalid_json"),
    (b"", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_json"),
    (b'["a cat"]', "invalid_body"),
    (b'"a cat"', "invalid_body"),
    (b"{}", "missing_prompt"),
    (b'{"slo_s": 10}', "missing_prompt"),
    (b'{"prompt": 12}', "invalid_prompt"),
    (b'{"prompt": null}', "invalid_prompt"),
    (b'{"prompt": ["a cat"]}', "invalid_prompt"),
    (b'{"prompt": ""}', "empty_prompt"),
    (b'{"prompt": "  \\n\\t "}', "empty_prompt"),
    (b'{"prompt": "a cat", "slo_s": -1}', "invalid_slo"),
    (b'{"prompt": "a cat", "slo_s": 0}', "invalid_slo"),
    (b'{"prompt": "a cat", "slo_s": 1e12}', "invalid_slo"),
    (b'{"prompt": "a cat", "slo_s": "60"}', "invalid_slo"),
    (b'{"prompt": "a cat", "slo_s": true}', "invalid_slo"),
    (b'{"prompt": "a cat", "slo_s": NaN}', "invalid_slo"),
    (b'{"prompt": "a cat", "slo_s": Infinity}', "invalid_slo"),
    (b'{"prompt": "a cat", "seed": -1}', "invalid_seed"),
    (b'{"prompt": "a cat", "seed": 1.5}', "invalid_seed"),
    (b'{"prompt": "a cat", "seed": 99999999999}', "invalid_seed"),
    (b'{"prompt": "a cat", "steps": 4}', "unknown_field"),
    (b'{"prompt": "a cat", "queue": "heavy_sd35_large"}', "unknown_field"),
])
def test_bad_bodies_are_400_json_and_write_nothing(client, live, sql_url, data, code):
    before = _rows(sql_url)
    _err(client.post("/v1/generations", data=data, content_type="application/json"), 400, code)
    assert _rows(sql_url) == before
    assert live.queue_lengths(["light_sdxl", "heavy_sd35_large"]) == {
        "light_sdxl": 0, "heavy_sd35_large": 0}


def test_a_1mb_prompt_is_413(client, sql_url):
    before = _rows(sql_url)
    _err(client.post("/v1/generations", json={"prompt": "x" * 1_000_000}), 413,
         "request_too_large")
    assert _rows(sql_url) == before


@pytest.mark.parametrize("path, status", [
    ("/v1/generations/0123456789abcdef0123456789abcdef", 404),
    ("/v1/generations/not-an-id", 404),
    ("/v1/generations/..%2F..%2Fetc%2Fpasswd", 404),
    ("/v1/images/0123456789abcdef0123456789abcdef.png", 404),
    ("/v1/images/..%2F..%2Fetc%2Fpasswd", 404),
    ("/v1/images/../../etc/passwd", 404),
    ("/v1/images/%2e%2e%2fhadis.sqlite", 404),
    ("/v1/nothing", 404),
])
def test_unknown_ids_and_traversal_are_404_json(client, path, status):
    _err(client.get(path), status)


def test_wrong_method_is_405_json(client):
    _err(client.get("/v1/generations"), 405, "method_not_allowed")
    _err(client.delete("/v1/generations/0123456789abcdef0123456789abcdef"), 405)


def test_api_keys_when_configured(router, sql_url, tmp_path, live):
    c = _app(router, sql_url, tmp_path, api_keys=("k1", "k2")).test_client()
    _err(c.post("/v1/generations", json={"prompt": "a cat"}), 401, "unauthorized")
    _err(c.post("/v1/generations", json={"prompt": "a cat"}, headers={"X-API-Key": "no"}),
         401)
    assert c.post("/v1/generations", json={"prompt": "a cat"},
                  headers={"X-API-Key": "k2"}).status_code == 202
    assert c.post("/v1/generations", json={"prompt": "a cat"},
                  headers={"Authorization": "Bearer k1"}).status_code == 202
    assert c.get("/v1/openapi.json").status_code == 200  # the document stays public


def test_per_client_rate_limit_is_429_with_retry_after(router, sql_url, tmp_path, live):
    c = _app(router, sql_url, tmp_path, rate_limit_per_min=2).test_client()
    first = [c.post("/v1/generations", json={"prompt": "a cat"}) for _ in range(2)]
    assert [r.status_code for r in first] == [202, 202]
    # a third in the same minute is refused (a fourth too, if the minute turned meanwhile)
    resp = next(r for r in (c.post("/v1/generations", json={"prompt": "a cat"})
                            for _ in range(4)) if r.status_code != 202)
    _err(resp, 429, "rate_limited")
    assert 1 <= int(resp.headers["Retry-After"]) <= 61


def test_no_published_plan_is_503(client, redis_db, sql_url):
    redis_db.flushdb()
    before = _rows(sql_url)
    resp = client.post("/v1/generations", json={"prompt": "a cat"})
    _err(resp, 503, "no_plan")
    assert int(resp.headers["Retry-After"]) > 0 and _rows(sql_url) == before


def test_redis_down_is_503_with_retry_after_and_nothing_written(router, sql_url, tmp_path):
    c = _app(router, sql_url, tmp_path, broker_url=CLOSED_REDIS).test_client()
    before = _rows(sql_url)
    resp = c.post("/v1/generations", json={"prompt": "a cat"})
    _err(resp, 503, "redis_unavailable")
    assert int(resp.headers["Retry-After"]) > 0 and _rows(sql_url) == before
    health = c.get("/v1/health")
    assert health.status_code == 503 and health.get_json()["redis"].startswith("down")


def test_broker_down_after_the_row_is_written_rolls_the_row_back(router, sql_url, tmp_path,
                                                                  live):
    # the plan comes from the state Redis, the message cannot be sent: no row may remain
    c = _app(router, sql_url, tmp_path, redis_url=BROKER, broker_url=CLOSED_REDIS).test_client()
    before = _rows(sql_url)
    resp = c.post("/v1/generations", json={"prompt": "a cat"})
    _err(resp, 503, "redis_unavailable")
    assert "Retry-After" in resp.headers and _rows(sql_url) == before


def test_postgresql_down_is_503_and_nothing_enqueued(router, tmp_path, live):
    c = _app(router, CLOSED_PG, tmp_path).test_client()
    resp = c.post("/v1/generations", json={"prompt": "a cat"})
    _err(resp, 503, "database_unavailable")
    assert int(resp.headers["Retry-After"]) > 0
    assert live.queue_lengths(["light_sdxl"]) == {"light_sdxl": 0}
    _err(c.get("/v1/generations/0123456789abcdef0123456789abcdef"), 503,
         "database_unavailable")
    _err(c.get("/v1/images/0123456789abcdef0123456789abcdef.png"), 503)
    assert c.get("/v1/health").status_code == 503


def test_openapi_document_lists_the_api(client):
    doc = client.get("/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    assert {"/v1/generations", "/v1/generations/{id}", "/v1/images/{id}.png"} <= set(
        doc["paths"])
    req = doc["components"]["schemas"]["GenerationRequest"]
    assert req["required"] == ["prompt"] and req["additionalProperties"] is False
