"""``GET /v1/plans`` and ``GET /v1/plans/<id>``: the plans the beat stored, newest first,
with the pair, thresholds, workers and batch sizes they published; bad ids are 404 and bad
limits 400, in the API's JSON error shape."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.web.conftest import default_plan, table_plan


def _err(resp, status: int, code: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.data[:300])
    assert resp.is_json and set(resp.get_json()) == {"error"}
    err = resp.get_json()["error"]
    assert err["code"] == code and isinstance(err["message"], str) and err["message"]


def test_list_is_newest_first_with_pair_theta_workers_and_batch(stack):
    older = stack.use_plan(table_plan(stack.s))
    newest = stack.use_plan(default_plan())
    resp = stack.client.get("/v1/plans")
    assert resp.status_code == 200 and resp.is_json
    plans = resp.get_json()["plans"]
    ids = [p["id"] for p in plans]
    assert ids[:2] == [newest, older] and ids == sorted(ids, reverse=True) and len(ids) <= 20

    p = plans[0]
    schema = stack.client.get("/v1/openapi.json").get_json()["components"]["schemas"]["Plan"]
    assert set(p) == set(schema["properties"])  # the document describes what is sent
    assert p["light"] == {"id": 0, "name": "SDXL-Lightning"}
    assert p["heavy"] == {"id": 3, "name": "SD3.5-Large"}
    assert (p["theta"], p["tau"]) == (None, None)  # infinite: JSON has no infinities
    assert p["workers"] == {"light_sdxl": 1} and p["batch"] == {"0": 1, "3": 1}
    assert p["planner"] == "test" and p["fid"] == 20.0 and p["overloaded"] is False
    assert (p["router_ratio"], p["disc_ratio"]) == (0.5, 0.3)
    assert datetime.fromisoformat(p["created"])

    q = plans[1]  # the table row r = 0, d = 0.1: θ = +inf, a finite τ
    assert (q["router_ratio"], q["disc_ratio"], q["theta"]) == (0.0, 0.1, None)
    assert isinstance(q["tau"], float) and q["fid"] == pytest.approx(27.45)

    one = stack.client.get("/v1/plans?limit=1").get_json()["plans"]
    assert [x["id"] for x in one] == [newest]


def test_one_plan_by_id(stack):
    listed = stack.client.get("/v1/plans?limit=1").get_json()["plans"][0]
    resp = stack.client.get(f"/v1/plans/{listed['id']}")
    assert resp.status_code == 200 and resp.get_json() == listed


@pytest.mark.parametrize("plan_id", [
    "999999999", "0", "000000000000", "abc", "-1", "1.5", "1e3", " 1", "²", "١", "9" * 13,
    "%00", "1%0A",
])
def test_unknown_or_malformed_plan_id_is_404_json(stack, plan_id):
    _err(stack.client.get(f"/v1/plans/{plan_id}"), 404, "not_found")


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "1.5", "", "²", "١", "99999",
                                   "1 ", "0x10"])
def test_bad_limit_is_400_json(stack, limit):
    _err(stack.client.get("/v1/plans", query_string={"limit": limit}), 400, "bad_limit")


def test_plans_are_read_only(stack):
    _err(stack.client.post("/v1/plans", json={}), 405, "method_not_allowed")
    _err(stack.client.delete(f"/v1/plans/{stack.plan_id}"), 405, "method_not_allowed")
