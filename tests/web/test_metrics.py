"""``/metrics`` parses with the Prometheus text parser and its counters move when a query
is served."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _scrape(client) -> dict[tuple[str, tuple], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    out = {}
    for fam in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_when_a_query_is_served(stack):
    before = _scrape(stack.client)
    assert _get(before, "hadis_up", backend="redis") == 1
    assert _get(before, "hadis_up", backend="sql") == 1
    assert ("hadis_queue_length", (("queue", "light_sdxl"),)) in before
    assert _get(before, "hadis_active_plan_id") == stack.plan_id
    assert _get(before, "hadis_plans_total") >= 1

    resp = stack.client.post("/v1/generations", json={"prompt": "a cup of coffee", "slo_s": 60})
    assert resp.status_code == 202
    q = stack.wait_done(resp.get_json()["id"])
    assert q["status"] == "done"
    model = q["served_model"]["name"]

    after = _scrape(stack.client)
    key = dict(method="POST", endpoint="/v1/generations", code="202")
    assert _get(after, "hadis_http_requests_total", **key) == \
        _get(before, "hadis_http_requests_total", **key) + 1
    assert _get(after, "hadis_queries_total", status="done") == \
        _get(before, "hadis_queries_total", status="done") + 1
    assert _get(after, "hadis_latency_seconds_count", model=model) == \
        _get(before, "hadis_latency_seconds_count", model=model) + 1
    assert _get(after, "hadis_latency_seconds_bucket", model=model, le="+Inf") == \
        _get(after, "hadis_latency_seconds_count", model=model)
    assert _get(after, "hadis_latency_seconds_sum", model=model) > \
        _get(before, "hadis_latency_seconds_sum", model=model)


def test_slo_violation_and_plan_change_counters_move(stack):
    from tests.stack.conftest import plan_for

    before = _scrape(stack.client)
    resp = stack.client.post("/v1/generations", json={"prompt": "a cat", "slo_s": 0.001})
    q = stack.wait_done(resp.get_json()["id"])
    assert q["status"] == "dropped"
    after = _scrape(stack.client)
    assert _get(after, "hadis_slo_violations_total", kind="dropped") == \
        _get(before, "hadis_slo_violations_total", kind="dropped") + 1

    import math

    # a different pair, then back: two plan changes; the stack is left as it was
    for light, heavy in ((1, 3), (0, 3)):
        out = stack.loop.apply(plan_for(light, heavy, theta=math.inf, tau=-math.inf,
                                        workers={"light_sdxl": 1}, batch={0: 1, 1: 1, 3: 1}),
                               workers=[])
    stack.plan_id = int(out["plan_id"])
    final = _scrape(stack.client)
    assert _get(final, "hadis_plan_changes_total") == \
        _get(after, "hadis_plan_changes_total") + 2
    assert _get(final, "hadis_plans_total") == _get(after, "hadis_plans_total") + 2
    assert _get(final, "hadis_active_plan_id") == stack.plan_id
