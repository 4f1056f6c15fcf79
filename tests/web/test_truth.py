"""Pages and API tell the truth in plain words (issue 20): a dropped query's page says it
missed its deadline, numbers are numbers or null in the API (documented), the form's SLO
label reads "at most 3600 s"."""

from __future__ import annotations

import json
import re

import pytest


def _strict(data: bytes):
    return json.loads(data, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_a_dropped_query_page_says_it_missed_its_deadline(stack):
    resp = stack.client.post("/v1/generations", json={"prompt": "a late cat", "slo_s": 0.001})
    qid = resp.get_json()["id"]
    assert stack.wait_done(qid)["status"] == "dropped"
    js = stack.client.get(f"/ui/results/{qid}.json").get_json()
    assert js["verdict"] == {"text": "dropped: missed its deadline", "kind": "late"}
    html = stack.client.get(f"/ui/results/{qid}").get_data(as_text=True)
    assert re.search(r'id="deadline-verdict" class="late">\(dropped: missed its deadline\)',
                     html), html
    assert "within the deadline" not in html


def test_a_served_query_page_states_its_verdict_and_the_script_uses_the_same_strings(stack):
    resp = stack.client.post("/v1/generations", json={"prompt": "a quick cat", "slo_s": 600})
    qid = resp.get_json()["id"]
    assert stack.wait_done(qid)["status"] == "done"
    js = stack.client.get(f"/ui/results/{qid}.json").get_json()
    assert js["verdict"] == {"text": "within the deadline", "kind": "ok"}
    assert js["display"]["theta"] == "∞" and js["display"]["slo"] == "600"
    html = stack.client.get(f"/ui/results/{qid}").get_data(as_text=True)
    assert 'id="theta">∞<' in html and 'id="slo">600<' in html
    assert 'class="ok">(within the deadline)' in html


def test_infinite_thresholds_are_null_in_the_api_and_documented(stack):
    # the default plan has θ = +inf and τ = -inf
    resp = stack.client.post("/v1/generations", json={"prompt": "a numeric cat"})
    body = _strict(resp.data)
    assert body["theta"] is None and body["route"] == "light"
    assert body["tau"] is None and isinstance(body["hardness"], float)
    got = _strict(stack.client.get(body["status_url"]).data)
    assert got["theta"] is None
    plan = _strict(stack.client.get(f"/v1/plans/{stack.plan_id}").data)
    assert plan["theta"] is None and plan["tau"] is None
    assert isinstance(plan["router_ratio"], (int, float)) and isinstance(plan["fid"], float)
    for k, v in {**body, **plan}.items():
        assert not isinstance(v, str) or k in {"id", "status", "route", "queue", "reason",
                                               "status_url", "image_url", "planner",
                                               "created"}, (k, v)
    doc = stack.client.get("/v1/openapi.json").get_json()["components"]["schemas"]
    for schema in ("Generation", "Plan"):
        theta = doc[schema]["properties"]["theta"]
        assert theta["type"] == ["number", "null"] and "null" in theta["description"]
    stack.wait_done(body["id"])


def test_the_form_reads_its_slo_limits_plainly(stack):
    html = stack.client.get("/ui/").get_data(as_text=True)
    assert "default 60 s, at most 3600 s" in html, html
    assert "e+" not in html
