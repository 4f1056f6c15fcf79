"""The OpenAI images API (issue 22) through the real ``openai`` SDK against a real front
door: ``python -m webapp`` (gunicorn, ``BufferedWorker``: waiting requests are parked) with
keys, over the web stack's replay worker, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from dataclasses import dataclass

import openai
import pytest

from bench.openai_wait import hold
from tests.stack.conftest import plan_for, stop_process
from tests.web.conftest import default_plan
from tests.web.test_production import _start_gunicorn

USER, OPS = "sk-user-one", "sk-ops-one"
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Door:
    base: str  # http://host:port
    stack: object

    def client(self, key: str = USER, retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=retries,
                             timeout=120)


@pytest.fixture(scope="module")
def door(stack, tmp_path_factory):
    from dataclasses import replace

    s = replace(stack.s, api_keys=(USER,), operator_keys=(OPS,))
    proc, host, port = _start_gunicorn(s, tmp_path_factory.mktemp("openai") / "fd.log",
                                       HADIS_WEB_WORKERS="1", HADIS_WEB_THREADS="2")
    stack.use_plan(default_plan())
    try:
        yield Door(f"http://{host}:{port}", stack)
    finally:
        stop_process(proc)
        stack.use_plan(default_plan())


def test_models_list_the_deployment_models_and_the_routed_alias(door):
    ids = [m.id for m in door.client().models.list()]
    assert ids[0] == "hadis"
    assert {"SDXL-Lightning", "SD3.5-Large"} <= set(ids)
    assert door.client().models.retrieve("SD3.5-Large").id == "SD3.5-Large"


def test_b64_images_come_back_and_n_gives_n_images_with_consecutive_seeds(door):
    out = door.client().images.generate(model="hadis", prompt="a red fox in the snow",
                                        n=3, size="1024x1024", response_format="b64_json",
                                        user="u1", extra_body={"seed": 41, "slo_s": 60})
    assert len(out.data) == 3
    for img in out.data:
        assert base64.b64decode(img.b64_json).startswith(PNG)
    meta = out.model_extra["hadis"]
    assert [m["seed"] for m in meta] == [41, 42, 43]
    assert len({m["id"] for m in meta}) == 3
    assert all(m["model"] == "SDXL-Lightning" for m in meta)  # the plan sends all light


def test_urls_come_back_and_serve_the_png_with_the_key(door):
    out = door.client().images.generate(prompt="a lighthouse at dusk", response_format="url")
    url = out.data[0].url
    assert url.startswith(door.base + "/v1/images/") and url.endswith(".png")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {USER}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.read().startswith(PNG)


def test_a_named_model_pins_it_and_an_unservable_one_is_refused(door):
    out = door.client().images.generate(model="SD3.5-Large", prompt="a castle on a hill")
    assert out.model_extra["hadis"][0]["model"] == "SD3.5-Large"  # not the routed light
    for name, why in (("SDXL-Lightning", "light model of the active pair"),
                      ("SD3.5-Medium", "not in the active plan")):
        with pytest.raises(openai.InternalServerError) as e:
            door.client().images.generate(model=name, prompt="a castle on a hill")
        assert e.value.status_code == 503 and why in e.value.message
        assert e.value.code == "model_not_served" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as e:
        door.client().images.generate(model="dall-e-3", prompt="a castle")
    assert e.value.code == "model_not_found"


def test_errors_surface_as_the_sdks_exception_types(door):
    with pytest.raises(openai.AuthenticationError) as e:
        door.client(key="sk-wrong").images.generate(prompt="a cat")
    assert e.value.body["type"] == "authentication_error"
    bad = [({"n": 11}, "n"), ({"size": "512x512"}, "size"),
           ({"response_format": "jpeg"}, "response_format"), ({"prompt": "   "}, "prompt"),
           ({"extra_body": {"style_preset": "x"}}, "style_preset"),
           ({"extra_body": {"slo_s": -1}}, "slo_s"), ({"extra_body": {"seed": -2}}, "seed")]
    for kw, param in bad:
        args = {"prompt": "a cat", **kw}
        with pytest.raises(openai.BadRequestError) as e:
            door.client().images.generate(**args)
        assert e.value.body["param"] == param, (kw, e.value.body)
        assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]


def test_a_query_dropped_for_its_deadline_is_a_clear_error_sent_once(door):
    """A deadline no model can meet: the worker drops the query and the SDK gets 504
    ``deadline_exceeded`` at once (no hang), and does not retry (``x-should-retry``)."""
    from sqlalchemy import func, select

    from hadis_celery.tables import QueryRow

    engine = door.stack.app.extensions["hadis"].engine

    def count() -> int:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(QueryRow)).scalar_one()

    before = count()
    with pytest.raises(openai.InternalServerError) as e:
        door.client(retries=2).images.generate(prompt="a very slow cathedral",
                                               extra_body={"slo_s": 0.001})
    assert e.value.status_code == 504 and e.value.code == "deadline_exceeded"
    assert "dropped" in e.value.message
    assert e.value.response.headers["x-should-retry"] == "false"
    assert count() == before + 1  # one query: the SDK did not send it again


def test_the_curl_line_of_the_readme_writes_a_png(door, tmp_path):
    import subprocess

    out = tmp_path / "out.png"
    body = json.dumps({"prompt": "a watercolor fox", "model": "hadis"})
    cmd = (f"curl -s {door.base}/v1/images/generations -H 'Authorization: Bearer {USER}' "
           f"-H 'Content-Type: application/json' -d '{body}' "
           f"| jq -r '.data[0].b64_json' | base64 -d > {out}")
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, timeout=120)
    assert out.read_bytes().startswith(PNG)


def test_one_process_holds_200_waiting_requests_and_still_answers_new_ones(door):
    """200 image requests whose queue no worker consumes wait at once on one front-door
    process with two app threads; new requests are answered meanwhile; every waiting one
    ends with 504 ``deadline_exceeded`` after its deadline (never a hang)."""
    door.stack.use_plan(plan_for(2, 2, workers={"light_sd35_medium": 1}, batch={2: 1}))
    try:
        got = asyncio.run(hold(door.base, 200, 6.0, probes=6, probe_timeout_s=30.0,
                               headers={"Authorization": f"Bearer {OPS}"}, settle_s=60.0))
    finally:
        door.stack.use_plan(default_plan())
        import redis

        redis.Redis.from_url(door.stack.s.broker_url).delete("light_sd35_medium")
    assert got["parked_when_probed"] >= 200, got
    assert got["answered_before_probe"] == 0, got
    assert got["probes_answered"] == 6, got  # no new request refused or stalled past 30 s
    assert got["statuses"] == {"504": 200} and got["error_codes"] == ["deadline_exceeded"]


def test_without_the_parking_server_the_view_waits_in_its_thread(stack):
    """The Flask test client cannot park: the same view blocks until the image is ready."""
    stack.use_plan(default_plan())
    resp = stack.client.post("/v1/images/generations",
                             json={"prompt": "a small blue boat", "n": 2, "seed": 7})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    assert [m["seed"] for m in body["hadis"]] == [7, 8]
    assert all(base64.b64decode(d["b64_json"]).startswith(PNG) for d in body["data"])
    assert "X-Hadis-Park" not in resp.headers


def test_openapi_lists_the_openai_routes(stack):
    doc = stack.client.get("/v1/openapi.json").get_json()
    assert "post" in doc["paths"]["/v1/images/generations"]
    assert "get" in doc["paths"]["/v1/models"]
    props = doc["components"]["schemas"]["ImagesRequest"]["properties"]
    assert {"model", "prompt", "n", "size", "response_format", "user", "seed",
            "slo_s"} == set(props)
