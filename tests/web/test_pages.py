"""The web form, result page and gallery through Flask's test client on the real stack."""

from __future__ import annotations

import re

from hadis_celery.router.prompt import MAX_PROMPT_CHARS
from tests.web.conftest import wait_for

TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def _token(client) -> str:
    page = client.get("/ui/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    m = TOKEN_RE.search(page.get_data(as_text=True))
    assert m, "no CSRF token on the form"
    return m.group(1)


def _post(client, prompt: str, slo: str = "", token: str | None = None):
    tok = _token(client) if token is None else token
    return client.post("/ui/generate", data={"prompt": prompt, "slo_s": slo,
                                             "csrf_token": tok})


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
