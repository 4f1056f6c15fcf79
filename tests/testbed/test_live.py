"""The plain parts of the replay: which arrivals and when, and how live records become the
simulator's result (outcomes, paths, FID windows, timeline, comparison)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hadis_celery.loadgen import Endpoint, select_arrivals, send_offsets
from planner.cascade import CascadeConfig
from sim.engine import DROPPED, LATE, PATHS, SERVED, SimSettings
from sim.fid import FidSurface
from sim.live import LiveRecord, compare, live_result, outcome, overheads, path_of

T0 = 1_000_000.0
K = 2.0


def _surface() -> FidSurface:
    """Pair (0, 1) on a 2 x 2 grid: FID 30 all light, 20 all heavy, 26 / 24 in between."""
    fid = {(0.0, 0.0): 30.0, (1.0, 0.0): 20.0, (0.0, 1.0): 26.0, (1.0, 1.0): 20.0}
    return FidSurface(CascadeConfig(light=0, heavy=1, router_ratio=r, theta=math.nan,
                                    disc_ratio=d, tau=math.nan, fid=f)
                      for (r, d), f in fid.items())


def _rec(i: int, t: float, **kw) -> LiveRecord:
    base = dict(index=i, t_s=t, prompt_index=i, scheduled_at=T0 + t * K, sent_at=T0 + t * K,
                responded_at=T0 + t * K + 0.01, http_status=202, id=f"{i:032x}", route="light",
                plan_id=7, slo_s=120.0, received_at=T0 + t * K,
                deadline=T0 + t * K + 120.0, status="done", models=[0], served_model=0,
                quality=0.5, started_at=T0 + t * K + 1, model_s=1.0)
    base.update(kw)
    base.setdefault("finished_at", T0 + t * K + 10.0)
    return LiveRecord(**base)


PLANS = {7: {"id": 7, "created": "1970-01-12T13:46:30", "light": {"id": 0, "name": "a"},
             "heavy": {"id": 1, "name": "b"}, "router_ratio": 0.5, "disc_ratio": 0.2,
             "workers": {"light_sdxl": 10, "heavy_sd35_large_turbo": 6}, "batch": {"0": 4},
             "demand": 5.0, "fid": 24.0, "overloaded": False}}


def test_select_arrivals_slices_and_times_from_the_start():
    t = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    got = select_arrivals(t, [10, 11, 12, 13, 14, 15], start_s=1.0, duration_s=1.5)
    assert [(a.index, a.t_s, a.prompt_index) for a in got] == [
        (2, 0.0, 12), (3, 0.5, 13), (4, 1.0, 14)]
    assert [a.index for a in select_arrivals(t, range(6), limit=2)] == [0, 1]
    assert send_offsets(got, 4.0) == [0.0, 2.0, 4.0]
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError):
            send_offsets(got, bad)
    with pytest.raises(ValueError):
        select_arrivals(t, range(6), duration_s=0)


def test_endpoint_parse():
    ep = Endpoint.parse("http://127.0.0.1:8123/api/")
    assert (ep.host, ep.port, ep.prefix) == ("127.0.0.1", 8123, "/api")
    assert Endpoint.parse("https://example.org").port == 443
    for bad in ("127.0.0.1:8000", "ftp://host", "http://", "http://h:99999", "http://h/?x=1"):
        with pytest.raises(ValueError):
            Endpoint.parse(bad)


def test_outcomes_and_paths_follow_what_the_stack_said():
    on_time = _rec(0, 0.0)
    late = _rec(1, 1.0, finished_at=T0 + 2.0 + 121.0)
    dropped = _rec(2, 2.0, status="dropped", models=[], served_model=None, quality=None,
                   reason="cannot meet its deadline", finished_at=T0 + 50.0)
    refused = _rec(3, 3.0, http_status=503, id=None, status="refused",
                   error="no_plan: no plan is active yet")
    no_answer = _rec(4, 4.0, http_status=0, id=None, status="no_answer",
                     error="ConnectionRefusedError")
    still_open = _rec(5, 5.0, status="queued", models=[], finished_at=None)
    unsent = _rec(6, 6.0, sent_at=None, http_status=0, id=None, status="unsent")
    direct = _rec(7, 7.0, route="heavy", models=[1], served_model=1)
    rerouted = _rec(8, 8.0, models=[0, 1], served_model=1)
    assert outcome(on_time) == (SERVED, None)
    assert outcome(late)[0] == LATE
    assert outcome(dropped) == (DROPPED, "cannot meet its deadline")
    assert outcome(refused) == (DROPPED, "HTTP 503: no_plan: no plan is active yet")
    assert outcome(no_answer)[1].startswith("no answer: ConnectionRefused")
    assert outcome(still_open)[1] == "still queued when the replay stopped waiting"
    assert outcome(unsent)[1].startswith("not sent")
    assert [PATHS[path_of(r)] for r in (on_time, direct, rerouted)] == [
        "light", "direct", "rerouted"]
    assert path_of(refused) == -1


def test_live_result_is_the_simulators_result_in_profile_time():
    # finishes (profile s): 5, 6, 7, 25 (window 0: 2 light, 1 direct, 1 rerouted), 86 (late,
    # window 2); a drop and a refusal count no image
    recs = [_rec(0, 0.0), _rec(1, 1.0), _rec(2, 2.0, route="heavy", models=[1], served_model=1),
            _rec(3, 20.0, models=[0, 1], served_model=1),
            _rec(4, 21.0, finished_at=T0 + 42.0 + 130.0),
            _rec(5, 22.0, status="dropped", models=[], served_model=None, quality=None,
                 finished_at=T0 + 44.0 + 5.0),
            _rec(6, 23.0, http_status=429, id=None, status="refused", error="rate_limited",
                 models=[], finished_at=None)]
    res = live_result(recs, PLANS, t0=T0, time_scale=K, surface=_surface(),
                      settings=SimSettings(slo_s=60.0))
    assert res.n == 7 and res.counts() == {"served": 4, "late": 1, "dropped": 2}
    assert np.allclose(res.arrival_s, [0, 1, 2, 20, 21, 22, 23])
    assert np.allclose(res.finish_s[:4] - res.arrival_s[:4], 5.0)  # 10 wall s / K
    assert res.executions == {0: 4, 1: 2}
    s = _surface()
    assert [(w["t"], w["images"]) for w in res.fid_windows] == [(0.0, 4), (60.0, 1)]
    assert res.fid_windows[0]["fid"] == pytest.approx(
        s.mix_fid({(0, 1): {"light": 2, "direct": 1, "rerouted": 1}}))
    assert res.fid_windows[1]["fid"] == pytest.approx(30.0)
    assert res.fid == pytest.approx((4 * res.fid_windows[0]["fid"] + 30.0) / 5)
    # the plan (created before t0, naive = UTC) is the one in force at 0, in profile units
    assert res.timeline == [{
        "t": 0.0, "plan_id": 7, "demand_estimate": 10.0, "pair": [0, 1],
        "router_ratio": 0.5, "disc_ratio": 0.2, "planned_fid": 24.0, "overloaded": False,
        "workers": {"light_sdxl": 10, "heavy_sd35_large_turbo": 6}, "batch": {"0": 4}}]
    summary = res.summary()
    assert summary["slo_violation_ratio"] == pytest.approx(3 / 7, abs=1e-5)
    assert summary["plan_changes"] == 0
    over = overheads(recs)
    assert over["send_lag_ms_p50"] == 0.0 and over["batch_overhead_ms_p50"] == pytest.approx(
        8000.0)  # finished 10 s after receipt, started at 1 s, 1 s of model time
    diff = compare(res, res)
    assert diff["within_target"] and diff["slo_violation_diff_points"] == 0.0
    assert diff["pair_share_live"] == {"0:1": 1.0}


def test_compare_flags_differences_beyond_the_targets():
    recs = [_rec(i, float(i)) for i in range(10)]
    a = live_result(recs, PLANS, t0=T0, time_scale=K, surface=_surface())
    worse = [_rec(i, float(i), status="dropped", models=[]) if i < 3 else _rec(i, float(i))
             for i in range(10)]
    b = live_result(worse, PLANS, t0=T0, time_scale=K, surface=_surface())
    diff = compare(b, a)
    assert diff["slo_violation_diff_points"] == pytest.approx(30.0)
    assert not diff["within_target"]
    nofid = live_result(recs, PLANS, t0=T0, time_scale=K, surface=None)
    assert math.isnan(nofid.fid) and not compare(nofid, a)["within_target"]
