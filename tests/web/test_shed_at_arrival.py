"""Issue 21's successor at the front door: a plan that sheds at arrival makes
``POST /v1/generations`` refuse (503 ``over_capacity``, Retry-After) a prompt its queue cannot
finish within the SLO, and records nothing for it; a prompt that fits is accepted and
served; a plan without the flag (HADIS) accepts both. Real Flask app, Redis, SQL (SQLite and
PostgreSQL) and Celery worker."""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy import func, select

from hadis_celery.tables import QueryRow
from hadis_celery.transport import decode
from tests.web.conftest import default_plan


def _rows(stack) -> int:
    with stack.app.extensions["hadis"].engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(QueryRow)).scalar_one())


def test_a_shedding_plan_refuses_what_cannot_finish_in_time(stack):
    registry = stack.app.extensions["hadis"].registry
    spec = registry.by_queue("light_sdxl")
    # the plan runs batch 1 on one worker; the replay stack runs profiled seconds x its
    # time factor, and the request's SLO is wall time
    alone = spec.batch_seconds(1) * stack.s.time_factor
    try:
        stack.use_plan(dataclasses.replace(default_plan(), shed_at_arrival=True))
        before = _rows(stack)
        resp = stack.client.post("/v1/generations",
                                 json={"prompt": "a red kite", "slo_s": alone / 2})
        assert resp.status_code == 503
        err = resp.get_json()["error"]
        assert err["code"] == "over_capacity" and "nothing was recorded" in err["message"]
        assert int(resp.headers["Retry-After"]) > 0
        assert _rows(stack) == before  # nothing accepted, nothing to strand

        ok = stack.client.post("/v1/generations", json={"prompt": "a red kite", "slo_s": 60})
        assert ok.status_code == 202
        assert stack.wait_done(ok.get_json()["id"])["status"] == "done"
    finally:
        stack.use_plan(default_plan())
    # HADIS's plans take everything and drop at the deadline instead.
    late = stack.client.post("/v1/generations", json={"prompt": "a red kite",
                                                      "slo_s": alone / 2})
    assert late.status_code == 202


def test_an_openai_request_refused_part_way_withdraws_the_images_it_had(stack):
    """``n = 2`` on a queue nobody consumes (so its length is known): the first image fits,
    the second would finish past the SLO. The request gets 503 over_capacity in OpenAI's
    shape, and the first image, accepted a moment before, is dropped as withdrawn rather
    than generated for nobody."""
    import redis

    from tests.stack.conftest import plan_for
    from tests.web.conftest import BROKER

    registry = stack.app.extensions["hadis"].registry
    queue = "light_sd35_medium"  # the stack's worker consumes light_sdxl and heavy_sd35_large
    spec = registry.by_queue(queue)
    one = spec.batch_seconds(1) * stack.s.time_factor  # wall seconds of one image
    plan = dataclasses.replace(
        plan_for(spec.id, spec.id, theta=-float("inf"), workers={queue: 1},
                 batch={spec.id: 1}), shed_at_arrival=True)
    r = redis.Redis.from_url(BROKER)
    mine = None
    try:
        stack.use_plan(plan)
        prompt = f"a paper boat {uuid.uuid4().hex[:8]}"  # its rows alone (the stack is shared)
        resp = stack.client.post("/v1/images/generations", json={
            "prompt": prompt, "n": 2, "slo_s": 1.5 * one})
        assert resp.status_code == 503
        err = resp.get_json()["error"]
        assert err["code"] == "over_capacity" and int(resp.headers["Retry-After"]) > 0
        assert "image 2 of 2; the 1 accepted before it were withdrawn" in err["message"]
        with stack.app.extensions["hadis"].engine.connect() as conn:
            rows = conn.execute(select(QueryRow.id, QueryRow.status, QueryRow.reason)
                                .where(QueryRow.prompt == prompt)).all()
        assert len(rows) == 1  # the second was never recorded
        mine, status, reason = rows[0]
        assert status == "dropped" and reason.startswith("withdrawn: image 2 of the same")
    finally:
        for raw in r.lrange(queue, 0, -1):  # the withdrawn image's message, nothing else
            m = decode(raw)
            if m is not None and m.query_id == mine:
                r.lrem(queue, 0, raw)
        stack.use_plan(default_plan())
