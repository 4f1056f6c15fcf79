"""The shared serving policy (plain Python): routing, batch choice, verdicts, rebinding."""

from __future__ import annotations

import math

import pytest

from hadis_celery.examples import sd35_registry
from hadis_celery.live import decode_message
from planner import policy
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


def test_a_pinned_query_goes_only_where_the_plan_serves_that_models_own_images():
    pair = _active(theta=0.5)  # light 0 (sdxl) -> heavy 3 (sd35_large)
    assert policy.pinned_route(pair, 3) == ("heavy", "heavy_sd35_large")
    assert "light model" in policy.pinned_route(pair, 0)
    assert "not in the active plan" in policy.pinned_route(pair, 2)
    single = policy.ActivePlan.from_plan(plan_for(2, 2, theta=-math.inf), sd35_registry())
    assert policy.pinned_route(single, 2) == ("light", "light_sd35_medium")
    assert isinstance(policy.pinned_route(single, 3), str)


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


def test_orphan_destination_only_ever_chooses_a_queue_with_a_consumer():
    p = _active(tau=0.3)  # pair SDXL-Lightning -> SD3.5-Large
    both = {"light_sdxl", "heavy_sd35_large"}
    assert policy.orphan_destination(p, "heavy_sd35_medium", both) == "heavy_sd35_large"
    assert policy.orphan_destination(p, "light_sd35_medium", both) == "light_sdxl"
    assert policy.orphan_destination(p, "light_sdxl", both) is None  # consumed: stays
    # an all-heavy plan (θ = -inf, every worker on heavy_<m>): the light backlog was not
    # generated yet, so it goes heavy instead of staying where nobody takes it
    heavy = {"heavy_sd35_large"}
    assert policy.orphan_destination(p, "light_sdxl", heavy) == "heavy_sd35_large"
    assert policy.orphan_destination(p, "light_sd35_medium", heavy) == "heavy_sd35_large"
    # no heavy worker left: heavy-role work never falls back to the light model (whose
    # image was judged not good enough); it waits for a plan with a heavy worker
    light = {"light_sdxl"}
    assert policy.orphan_destination(p, "heavy_sd35_medium", light) is None
    assert policy.orphan_destination(p, "heavy_sd35_medium", {"heavy_sdxl"}) is None
    # nothing of the plan has a consumer: it stays (the sweeper drops it at its deadline)
    assert policy.orphan_destination(p, "light_sd35_medium", {"heavy_sdxl"}) is None
    assert policy.orphan_destination(p, "light_sd35_medium", set()) is None
    queues = ["light_sdxl", "heavy_sdxl", "light_sd35_large", "heavy_sd35_large",
              "light_sd35_medium", "heavy_sd35_medium"]
    for served in (both, heavy, light, {"heavy_sdxl"}, set()):
        for q in queues:
            d = policy.orphan_destination(p, q, served)
            assert d is None or (d in served and d != q)


def test_a_plan_may_keep_orphaned_light_work_on_its_model():
    """``orphans_keep_model``: light work of a model the plan runs as heavy goes to that
    model's heavy queue, not to the new light model; otherwise, and without the flag, the
    rule is unchanged. The flag travels with the plan the beat publishes."""
    from dataclasses import replace

    p = _active(tau=0.3)  # pair SDXL-Lightning -> SD3.5-Large
    keep = replace(p, orphans_keep_model=True)
    both = {"light_sdxl", "heavy_sd35_large"}
    assert policy.orphan_destination(p, "light_sd35_large", both) == "light_sdxl"
    assert policy.orphan_destination(keep, "light_sd35_large", both) == "heavy_sd35_large"
    # a model the plan does not run: the plan's light queue, as without the flag, even
    # when some worker still consumes that model's heavy queue
    assert policy.orphan_destination(keep, "light_sd35_medium", both) == "light_sdxl"
    stale = both | {"heavy_sd35_medium"}
    assert policy.orphan_destination(keep, "light_sd35_medium", stale) == "light_sdxl"
    # heavy work is not touched by the flag
    assert policy.orphan_destination(keep, "heavy_sd35_medium", both) == "heavy_sd35_large"
    assert policy.orphan_destination(keep, "light_sd35_large", {"light_sdxl"}) == "light_sdxl"
    assert policy.ActivePlan.from_dict(keep.to_dict()).orphans_keep_model
    assert not policy.ActivePlan.from_dict(p.to_dict()).orphans_keep_model
    plan = replace(plan_for(0, 3, tau=0.3), orphans_keep_model=True)
    assert policy.ActivePlan.from_plan(plan, sd35_registry()).orphans_keep_model
    assert type(plan).from_dict(plan.to_dict()).orphans_keep_model


def test_the_simulator_moves_a_light_backlog_to_the_heavy_queue_of_an_all_heavy_plan():
    """The live defect of issue 16 in the simulator: a light-only plan builds a backlog on
    the light queue, the next plan puts every worker on the heavy queue. Before the shared
    rule the backlog stayed on the light queue and was dropped at the end."""
    import numpy as np

    from planner.cascade import CascadeConfig
    from planner.demand import EwmaDemand
    from planner.plan import Plan
    from planner.registry import ModelSpec, Registry
    from sim.engine import SimSettings, Simulation, Workload
    from sim.fid import FidSurface

    reg = Registry((ModelSpec(id=0, name="light", queue="l", latency={1: 1.0}),
                    ModelSpec(id=1, name="heavy", queue="h", latency={1: 2.0, 2: 3.0})))
    grid = [CascadeConfig(0, 1, r, math.nan, d, math.nan, fid=30 - 10 * r - 5 * d)
            for r in (0.0, 1.0) for d in (0.0, 1.0)]
    light_only = CascadeConfig(0, 1, 0.0, math.inf, 0.0, -math.inf, fid=30.0)
    all_heavy = CascadeConfig(0, 1, 1.0, -math.inf, 0.0, -math.inf, fid=20.0)

    class Switch:
        def __init__(self) -> None:
            self.calls = 0

        def plan(self, state):
            self.calls += 1
            cfg, workers = ((light_only, {"light_l": 1}) if self.calls == 1
                            else (all_heavy, {"heavy_h": 2}))
            return Plan(planner="switch", config=cfg, workers=workers, batch={0: 1, 1: 2},
                        fid=cfg.fid, utilisation={}, demand=state.demand, slo_s=state.slo_s,
                        budget=state.workers, routing="score")

    n = 20
    w = Workload(np.linspace(0.0, 1.0, n), np.zeros(n), {0: np.ones(n), 1: np.ones(n)})
    sim = Simulation(w, reg, grid, Switch(), EwmaDemand(10.0), FidSurface(grid),
                     SimSettings(workers=2, slo_s=1000.0, period_s=2.0, swap_delay_s=0.5))
    res = sim.run()
    assert res.counts()["dropped"] == 0, [r for r in res.drop_reason if r][:3]
    # both workers ran light for 2 s (about 4 queries); the backlog went heavy
    assert set(res.served_model.tolist()) == {0, 1}
    assert int((res.served_model == 1).sum()) >= n - 6


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


def test_shed_at_arrival_refuses_only_what_the_plan_predicts_to_finish_late():
    """``policy.admits``: the queue drains at the plan's workers x batch per batch time, then
    the query's own batch runs; only a plan that sheds refuses, and the flag survives the
    plan's JSON (what the beat publishes) and the live view's."""
    import dataclasses

    from planner.plan import Plan

    plan = dataclasses.replace(plan_for(0, 3, workers={"light_sdxl": 2}, batch={0: 4, 3: 1}),
                               shed_at_arrival=True)
    assert Plan.from_dict(plan.to_dict()).shed_at_arrival
    p = policy.ActivePlan.from_plan(plan, sd35_registry())
    assert p.shed_at_arrival and policy.ActivePlan.from_dict(p.to_dict()).shed_at_arrival

    def seconds(b):
        return 2.0  # any batch of up to 4 runs 2 s

    # 2 workers x 4 per 2 s = 4 queries/s: 36 queued wait 9 s, then its own batch 2 s.
    assert policy.predicted_finish_s(p, "light_sdxl", 36, 0, seconds, 8) == pytest.approx(11.0)
    assert policy.admits(p, "light_sdxl", 36, 0, 11.0, seconds, 8)
    assert not policy.admits(p, "light_sdxl", 37, 0, 11.0, seconds, 8)
    assert policy.predicted_finish_s(p, "light_sdxl", 0, 0, seconds, 2) == 2.0  # capped batch
    assert not policy.admits(p, "light_sdxl", 0, 0, 1.5, seconds, 8)  # even alone: too slow
    assert not policy.admits(p, "heavy_sd35_large", 0, 3, 1e9, seconds, 8)  # no worker on it
    keep_all = dataclasses.replace(p, shed_at_arrival=False)  # HADIS: drops at the deadline
    assert policy.admits(keep_all, "light_sdxl", 10**6, 0, 1.0, seconds, 8)
    assert not policy.ActivePlan.from_dict({**p.to_dict(), "shed_at_arrival": False}
                                           ).shed_at_arrival
    old = p.to_dict()
    del old["shed_at_arrival"]  # a plan published before the flag existed
    assert not policy.ActivePlan.from_dict(old).shed_at_arrival
