"""The web form, result page and gallery through Flask's test client on the real stack."""

from __future__ import annotations

import re

import pytest

from planner.router.prompt import MAX_PROMPT_CHARS
from tests.web.conftest import TOKEN_RE, wait_for
from tests.web.conftest import form_token as _token
from tests.web.conftest import post_form as _post


def test_form_renders_with_csrf_token_and_security_headers(stack):
    page = stack.client.get("/ui/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert '<textarea id="prompt" name="prompt"' in html and TOKEN_RE.search(html)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_missing_or_wrong_csrf_token_is_refused_and_keeps_text(stack):
    c = stack.app.test_client()
    _token(c)
    resp = c.post("/ui/generate", data={"prompt": "a cat on a mat", "csrf_token": "forged"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "form expired" in html and "a cat on a mat" in html
    fresh = stack.app.test_client()  # no session at all
    resp = fresh.post("/ui/generate", data={"prompt": "a dog"})
    assert resp.status_code == 400 and "a dog</textarea>" in resp.get_data(as_text=True)


def test_empty_oversize_and_bad_slo_rerender_the_form(stack):
    c = stack.client
    resp = _post(c, "   \t ")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "The prompt is empty." in html
    assert 'id="form-error"' in html and "Traceback" not in html

    long = "<b>x</b>" * (MAX_PROMPT_CHARS // 8 + 1)
    resp = _post(c, long)
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "too long" in html
    assert "&lt;b&gt;x&lt;/b&gt;" * 10 in html and "<b>x</b>" not in html  # kept, escaped

    resp = _post(c, "a red apple", slo="soon")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "SLO must be a number" in html
    assert "a red apple</textarea>" in html and 'value="soon"' in html
    resp = _post(c, "a red apple", slo="-3")
    assert resp.status_code == 400 and "slo_s" in resp.get_data(as_text=True)


def test_submit_redirects_to_result_that_shows_details_and_image(stack):
    c = stack.client
    resp = _post(c, "a photo of a cat <script>alert(1)</script>", slo="30")
    assert resp.status_code == 303
    m = re.fullmatch(r"/ui/results/([0-9a-f]{32})", resp.headers["Location"])
    assert m, resp.headers["Location"]
    qid = m.group(1)
    q = stack.wait_done(qid)
    assert q["status"] == "done" and q["slo_s"] == 30

    js = c.get(f"/ui/results/{qid}.json").get_json()
    assert js["prompt"] == "a photo of a cat <script>alert(1)</script>"
    assert js["image_url"] == f"/ui/images/{qid}.png"
    page = c.get(f"/ui/results/{qid}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert f'src="/ui/images/{qid}.png"' in html
    assert re.search(r'id="served">[^<]*sdxl', html, re.I), html
    img = c.get(f"/ui/images/{qid}.png")
    assert img.status_code == 200 and img.data[:8] == b"\x89PNG\r\n\x1a\n"

    gal = c.get("/ui/gallery").get_data(as_text=True)
    assert f'href="/ui/results/{qid}"' in gal
    assert "&lt;script&gt;" in gal and "<script>alert" not in gal


def test_unknown_result_is_404(stack):
    assert stack.client.get("/ui/results/" + "0" * 32).status_code == 404
    assert stack.client.get("/ui/results/nothex").status_code == 404
    assert stack.client.get("/ui/images/" + "0" * 32 + ".png").status_code == 404


def test_dashboard_shows_plan_queues_history_and_plots(stack):
    page = stack.client.get("/ui/dashboard")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert re.search(rf'id="plan-id">{stack.plan_id}<', html)
    assert re.search(r'id="plan-pair">[^<]*→', html)
    assert 'id="plan-theta">∞<' in html and 'id="plan-tau">-∞<' in html
    assert "light_sdxl: 1" in html and 'id="plan-fid">20<' in html
    assert "<td>heavy_sd35_large</td>" in html
    assert html.count('<svg class="plot"') == 2
    rows = re.findall(r"<tr><td>(\d+)</td>", html)
    assert str(stack.plan_id) in rows


def test_dashboard_plot_has_a_point_after_a_query(stack):
    resp = _post(stack.client, "a small boat on a lake")
    qid = resp.headers["Location"].rsplit("/", 1)[1]
    stack.wait_done(qid)
    html = wait_for(lambda: (h := stack.client.get("/ui/dashboard").get_data(as_text=True))
                    and "<circle" in h and h, 10, 0.2, "a plotted point")
    assert re.search(r'<polyline[^>]*points="[\d.]+,[\d.]+', html)


def _html_error(resp, status: int, text: str) -> str:
    html = resp.get_data(as_text=True)
    assert resp.status_code == status, (resp.status_code, html[:300])
    assert resp.mimetype == "text/html" and "Traceback" not in html
    assert re.search(rf'id="error-status">{status} ', html), html[:500]
    assert text in html, html[:800]
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    return html


def test_ui_errors_are_html_pages_and_the_api_keeps_json(stack):
    c = stack.client
    _html_error(c.get("/ui/nothing/here"), 404, "Not Found")
    _html_error(c.get("/ui/results/" + "0" * 32), 404, "Not Found")
    _html_error(c.get("/ui/images/" + "0" * 32 + ".png"), 404, "Not Found")
    _html_error(c.get("/ui/generate"), 405, "Method Not Allowed")
    _html_error(c.post("/ui/dashboard"), 405, "Method Not Allowed")
    from webapp.pages import FORM_MAX_BYTES

    api_limit = c.application.extensions["hadis"].s.max_request_bytes
    big = c.post("/ui/generate", data={"prompt": "x" * max(FORM_MAX_BYTES, api_limit),
                                        "csrf_token": _token(c)})
    _html_error(big, 413, "larger than")
    # what the pages' scripts poll stays JSON, and so does the API
    for resp, status in ((c.get("/ui/results/" + "0" * 32 + ".json"), 404),
                         (c.get("/v1/nothing"), 404), (c.put("/v1/generations"), 405),
                         (c.post("/v1/generations", data=b"x" * (api_limit + 1)), 413)):
        assert resp.status_code == status and resp.is_json
        assert set(resp.get_json()["error"]) == {"code", "message"}


def test_form_takes_the_longest_prompt_in_4_byte_characters(stack):
    prompt = "🐱" * MAX_PROMPT_CHARS  # 24 kB percent-encoded, above the API's body limit
    resp = _post(stack.client, prompt, slo="60")
    assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
    qid = resp.headers["Location"].rsplit("/", 1)[1]
    js = stack.client.get(f"/ui/results/{qid}.json").get_json()
    assert js["prompt"] == prompt
    stack.wait_done(qid)


def test_dashboard_shows_the_configuration_table_and_pareto_plots(stack):
    from hadis_celery.deployment import load_table
    from planner.pareto import pareto_indices
    from tests.web.conftest import default_plan, table_plan

    table = load_table(stack.s)
    pairs = sorted({c.pair for c in table.rows})
    html = stack.client.get("/ui/dashboard").get_data(as_text=True)
    assert html.count('<svg class="scatter"') == len(pairs) == 6
    assert html.count('<tr data-row="cfg-') == len(table.rows)
    front = sum(len(pareto_indices([c for c in table.rows if c.pair == p], cost="total").kept)
                for p in pairs)
    assert len(re.findall(r'class="cfg-row front', html)) == front
    assert len(re.findall(r'<circle class="pt front', html)) == front
    assert len(re.findall(r'class="front-line" fill="none" points="[\d.]+,', html)) == 6
    # the active pair's block comes first and open; the test plan is not a table row
    first = re.search(r'<details class="pair"( open)?>\s*<summary>([^<]*)</summary>', html)
    assert first.group(1) and first.group(2).startswith("SDXL-Lightning → SD3.5-Large")
    assert "not a row of this table" in html and "cfg-row active" not in html

    try:
        stack.use_plan(table_plan(stack.s))  # r = 0, d = 0.1 of the same pair
        html = stack.client.get("/ui/dashboard").get_data(as_text=True)
    finally:
        stack.use_plan(default_plan())
    row = re.search(r'<tr data-row="(cfg-\d+)" class="cfg-row front active">(.*?)</tr>', html,
                    re.S)
    assert row, "the active plan's row is not marked"
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(2))
    assert cells[:5] == ["0", "0.1", "∞", cells[3], "27.45"] and cells[3] != "-∞"
    assert re.search(rf'<circle class="pt front active" data-row="{row.group(1)}"', html)
    assert "not a row of this table" not in html


def test_dashboard_json_is_what_the_page_shows(stack):
    import json

    from markupsafe import escape

    resp = stack.client.get("/ui/dashboard.json")
    assert resp.status_code == 200 and resp.is_json
    d = json.loads(resp.data, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert d["text"]["plan-id"] == str(stack.plan_id) and d["errors"] == []
    assert d["hidden"] == {"plan-table": False, "no-plan": True}
    assert "light_sdxl" in [q[0] for q in d["queues"]]
    assert d["history"][0][0] == str(stack.plan_id)
    assert [p["id"] for p in d["plots"]] == ["plot-violations", "plot-quality"]
    html = stack.client.get("/ui/dashboard?refresh=0").get_data(as_text=True)
    for key, text in d["text"].items():
        if key not in ("updated", "violation-ratio"):  # the clock; a query may finish
            assert f'id="{key}">{escape(text)}<' in html, key
    assert 'data-refresh-ms="0"' in html and "live updates off" in html
    assert 'data-refresh-ms="5000"' in stack.client.get("/ui/dashboard").get_data(as_text=True)


def test_dashboard_shows_outages_instead_of_failing(web_router, tmp_path):
    from tests.stack.conftest import CLOSED_PG, CLOSED_REDIS
    from tests.web.conftest import outage_app

    c = outage_app(web_router, tmp_path, broker_url=CLOSED_REDIS).test_client()
    page = c.get("/ui/dashboard")
    assert page.status_code == 200 and "Redis unavailable" in page.get_data(as_text=True)
    assert c.get("/ui/dashboard.json").get_json()["errors"][0].startswith("Redis unavailable")
    c = outage_app(web_router, tmp_path, db_url=CLOSED_PG).test_client()
    page = c.get("/ui/dashboard")
    assert page.status_code == 200 and "database unavailable" in page.get_data(as_text=True)
    _html_error(c.get("/ui/results/" + "0" * 32), 503, "database is unavailable")
    _html_error(c.get("/ui/gallery"), 503, "database is unavailable")
