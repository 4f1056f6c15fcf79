"""The shared serving policy (plain Python): routing, batch choice, verdicts, rebinding."""

from __future__ import annotations

import math

import pytest

from hadis_celery import policy
from hadis_celery.live import decode_message
from planner.registry import sd35_registry
from tests.stack.conftest import plan_for


def _active(**kw) -> policy.ActivePlan:
    return policy.ActivePlan.from_plan(plan_for(0, 3, **kw), sd35_registry(), plan_id=3)


def test_route_by_score_random_none_and_single_model():
    p = _active(theta=0.5)
    assert policy.route(p, 0.5, 0.9) == ("light", "light_sdxl")  # strictly above θ goes heavy
    assert policy.route(p, 0.51, 0.0) == ("heavy", "heavy_sd35_large")
    r = _active(theta=0.7, routing="random")
    assert policy.route(r, 99.0, 0.5)[0] == "light" and policy.route(r, -9, 0.8)[0] == "heavy"
    assert policy.route(_active(routing="none", router_ratio=0.4), 99, 1)[0] == "light"
    assert policy.route(_active(routing="none", router_ratio=1.0), -9, 0)[0] == "heavy"
    single = policy.ActivePlan.from_plan(plan_for(2, 2, theta=-math.inf), sd35_registry())
    assert single.queues == ("light_sd35_medium",)
    assert policy.route(single, 5.0, 1.0) == ("light", "light_sd35_medium")


def test_plan_view_round_trips_through_json_with_infinities():
    p = _active(theta=math.inf, tau=-math.inf, batch={0: 4, 3: 2})
    assert policy.ActivePlan.from_dict(p.to_dict()) == p
    assert p.batch_for(0, 16) == 4 and p.batch_for(0, 2) == 2 and p.batch_for(1, 16) == 1
    with pytest.raises(ValueError):
        policy.ActivePlan.from_plan(plan_for(0, 3, theta=math.nan), sd35_registry())
    assert policy.ActivePlan.from_plan(plan_for(0, 3, theta=math.nan, router_ratio=0.2),
                                       sd35_registry(), theta_for=lambda r: r).theta == 0.2


def test_take_batch_drops_the_hopeless_shrinks_to_deadlines_and_gives_back():
    secs = {1: 1.0, 2: 1.8, 3: 2.6, 4: 3.4}.__getitem__
    # deadlines relative to now=0: 0.5 cannot make it even alone
    c = policy.take_batch(0.0, [10, 0.5, 10, 2.0, 10, 10], 4, secs)
    assert c.drop == [1]
    assert c.run == [0, 2] and c.back == [3, 4, 5]  # 3 members would need 2.6 s > 2.0
    c = policy.take_batch(0.0, [10] * 6, 4, secs)
    assert c.run == [0, 1, 2, 3] and c.back == [4, 5] and c.drop == []
    empty = policy.take_batch(0.0, [], 4, secs)
    assert empty.run == empty.drop == empty.back == []
    # the scan stops at the cap: a long queue is read only as far as needed
    long = policy.take_batch(0.0, [10] * 1000, 2, secs)
    assert long.seen == 2 and long.run == [0, 1] and len(long.back) == 998
    assert policy.take_batch(5.0, [5.9], 1, secs).drop == [0]


def test_verdict_judges_only_the_active_light_model_on_its_light_queue():
    p = _active(tau=0.3)
    assert policy.verdict(p, "light_sdxl", 0, 0.2) == policy.REROUTE
    assert policy.verdict(p, "light_sdxl", 0, 0.3) == policy.ACCEPT
    assert policy.verdict(p, "heavy_sd35_large", 3, 0.0) == policy.ACCEPT
    assert policy.verdict(p, "light_sd35_medium", 2, 0.0) == policy.ACCEPT  # old pair
    assert policy.orphan_destination(p, "heavy_sd35_medium") == "heavy_sd35_large"
    assert policy.orphan_destination(p, "light_sd35_medium") == "light_sdxl"


def test_assign_queues_keeps_workers_in_place_and_moves_the_fewest():
    cur = {"a": ["light_sdxl"], "b": ["light_sdxl"], "c": ["heavy_x"], "d": ["light_sdxl",
                                                                           "heavy_y"]}
    out = policy.assign_queues(cur, {"light_sdxl": 2, "heavy_y": 2})
    assert out == {"a": "light_sdxl", "b": "light_sdxl", "c": "heavy_y", "d": "heavy_y"}
    assert policy.assign_queues(cur, {"q": 1}) == {w: "q" for w in cur}  # extra join busiest
    assert policy.assign_queues({}, {"q": 3}) == {}
    assert policy.assign_queues({"a": ["q"]}, {}) == {}


def test_decode_message_reads_our_tasks_only():
    import base64
    import json

    body = base64.b64encode(json.dumps([["abc", "light_sdxl", 2, 1.5], {}, {}]).encode())
    env = {"body": body.decode(), "headers": {"task": "hadis.generate"},
           "properties": {"body_encoding": "base64"}}
    m = decode_message(json.dumps(env).encode())
    assert (m.query_id, m.queue, m.attempt, m.sent_at) == ("abc", "light_sdxl", 2, 1.5)
    env["headers"]["task"] = "other"
    assert decode_message(json.dumps(env).encode()) is None
    assert decode_message(b"garbage") is None
