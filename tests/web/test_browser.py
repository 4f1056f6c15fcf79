"""The web pages in a real headless Chromium (Debian's ``chromium`` and ``chromedriver``,
driven by Selenium): submit the form, wait for the image, check the details; a
``<script>`` prompt is shown as text; the dashboard's plots render with no console errors
and its values change in place (no reload) when the plan changes. Screenshots go to
``out/test-screenshots/<database>-<page>.png``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.web.conftest import SHOTS, default_plan, table_plan

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 40


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    assert shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER), \
        "chromium/chromedriver missing: apt-get install -y chromium chromium-driver"
    profile = tempfile.mkdtemp(prefix="hadis-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--no-first-run", "--window-size=1200,1000",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    drv.set_page_load_timeout(WAIT_S)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _shot(drv: webdriver.Chrome, stack, name: str) -> None:
    drv.save_screenshot(str(SHOTS / f"{stack.kind}-{name}.png"))


def _read(drv: webdriver.Chrome, fn):
    """``fn(drv)`` read again when the live update replaced an element under it (a stale
    element is the page updating, not a failure)."""
    return WebDriverWait(drv, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda d: (fn(d),))[0]


def _texts_cut_off(drv: webdriver.Chrome) -> list[str]:
    """Labels of the dashboard's plots drawn (even in part) outside their SVG, as laid out
    by the browser with the page's font (an axis label cut off at the edge)."""
    return drv.execute_script("""
        const out = [];
        for (const svg of document.querySelectorAll("svg.plot, svg.scatter")) {
          const s = svg.getBoundingClientRect();
          for (const t of svg.querySelectorAll("text")) {
            const b = t.getBoundingClientRect();
            if (b.width === 0) continue;  // hidden ("no data")
            if (b.left < s.left - 0.5 || b.right > s.right + 0.5 ||
                b.top < s.top - 0.5 || b.bottom > s.bottom + 0.5)
              out.push(t.textContent + " @" + Math.round(b.left - s.left) + "," +
                       Math.round(b.top - s.top));
          }
        }
        return out;""")


def _console_errors(drv: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _submit(drv, stack, prompt: str, slo: str = "") -> None:
    drv.get(stack.url + "/ui/")
    box = drv.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    if slo:
        drv.find_element(By.ID, "slo_s").send_keys(slo)
    drv.find_element(By.ID, "submit").click()


def test_form_submit_shows_image_and_details(browser, stack):
    drv = browser
    drv.get(stack.url + "/ui/")
    _shot(drv, stack, "form")
    _submit(drv, stack, "a red apple on a wooden table", "45")
    WebDriverWait(drv, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.final || ''") == "done")
    img = drv.find_element(By.ID, "image")
    WebDriverWait(drv, WAIT_S).until(
        lambda d: d.execute_script("const i = arguments[0]; return i.complete && "
                                   "i.naturalWidth > 0", img))
    assert img.is_displayed() and "/ui/images/" in img.get_attribute("src")
    assert drv.find_element(By.ID, "status").text == "done"
    assert "sdxl" in drv.find_element(By.ID, "served").text.lower()
    assert drv.find_element(By.ID, "models").text.strip() not in ("", "-")
    float(drv.find_element(By.ID, "hardness").text)  # a number, not '-'
    assert drv.find_element(By.ID, "quality").text != "-"
    assert float(drv.find_element(By.ID, "latency").text) > 0
    assert drv.find_element(By.ID, "slo").text == "45"
    assert "deadline" in drv.find_element(By.ID, "deadline-verdict").text
    _shot(drv, stack, "result")
    assert _console_errors(drv) == []


def test_a_dropped_query_says_it_missed_its_deadline(browser, stack):
    drv = browser
    _submit(drv, stack, "a cat that cannot be drawn in a millisecond", "0.001")
    WebDriverWait(drv, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.final || ''") == "dropped")
    verdict = drv.find_element(By.ID, "deadline-verdict")
    assert verdict.text == "(dropped: missed its deadline)"
    assert verdict.get_attribute("class") == "late"
    assert drv.find_element(By.ID, "theta").text == "∞"  # the script's strings: the page's
    _shot(drv, stack, "dropped")
    assert _console_errors(drv) == []


def test_script_prompt_is_shown_as_text(browser, stack):
    drv = browser
    prompt = 'a cat <script>window.__pwned = 1</script><img src=x onerror="window.__pwned=2">'
    _submit(drv, stack, prompt)
    WebDriverWait(drv, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.final || ''") != "")
    assert drv.find_element(By.ID, "prompt").text == prompt
    assert drv.execute_script("return window.__pwned === undefined")
    drv.get(stack.url + "/ui/gallery")
    texts = [e.text for e in drv.find_elements(By.CSS_SELECTOR, ".gallery .prompt")]
    assert prompt in texts
    assert drv.execute_script("return window.__pwned === undefined")
    _shot(drv, stack, "gallery")


def test_empty_prompt_shows_error_on_the_form(browser, stack):
    drv = browser
    _submit(drv, stack, "   ", "12")
    # the click returns before the answer page is loaded: wait for it, do not race it
    err = WebDriverWait(drv, WAIT_S).until(lambda d: d.find_elements(By.ID, "form-error"))[0]
    assert "empty" in err.text
    assert drv.find_element(By.ID, "slo_s").get_attribute("value") == "12"
    _shot(drv, stack, "form-error")


def test_dashboard_plots_render_without_console_errors(browser, stack):
    drv = browser
    resp = stack.client.post("/v1/generations", json={"prompt": "a blue kite"})
    assert stack.wait_done(resp.get_json()["id"])["status"] == "done"  # a point to plot
    drv.get_log("browser")  # drop what earlier pages logged
    drv.get(stack.url + "/ui/dashboard?refresh=0")
    assert drv.find_element(By.ID, "plan-id").text == str(stack.plan_id)
    plots = drv.find_elements(By.CSS_SELECTOR, "svg.plot")
    assert len(plots) == 2
    for p in plots:
        box = p.rect
        assert box["width"] > 100 and box["height"] > 50
    assert drv.find_elements(By.CSS_SELECTOR, "svg.plot circle"), "no plotted point"
    assert len(drv.find_elements(By.CSS_SELECTOR, "#plan-history tr")) >= 2
    assert _texts_cut_off(drv) == []
    # the widest y label the ".3g" format writes, as a live update would set it (the mean
    # quality of served images is a discriminator score such as 1.07e-05)
    drv.execute_script("""for (const t of document.querySelectorAll(
        'svg.plot .ymin, svg.plot .ymax')) t.textContent = '-1.23e-05';""")
    assert _texts_cut_off(drv) == []
    _shot(drv, stack, "dashboard")
    drv.execute_script("arguments[0].scrollIntoView()", drv.find_element(By.ID, "plots"))
    drv.find_element(By.ID, "plots").screenshot(str(SHOTS / f"{stack.kind}-plots.png"))
    assert _console_errors(drv) == []


def test_dashboard_updates_in_place_without_a_reload(browser, stack):
    drv = browser
    drv.get_log("browser")
    drv.get(stack.url + "/ui/dashboard?refresh=1")
    old = stack.plan_id
    assert drv.find_element(By.ID, "plan-id").text == str(old)
    assert not drv.find_elements(By.CSS_SELECTOR, "tr.cfg-row.active")  # not a table row
    drv.execute_script("window.__sameDocument = 'yes'")
    try:
        new = stack.use_plan(table_plan(stack.s))  # SDXL-Lightning → SD3.5-Large, r=0, d=0.1
        WebDriverWait(drv, WAIT_S).until(
            lambda d: d.find_element(By.ID, "plan-id").text == str(new))
        assert drv.execute_script("return window.__sameDocument") == "yes", "page reloaded"
        assert _read(drv, lambda d: d.find_element(By.ID, "plan-tau").text) not in ("-∞", "-")
        WebDriverWait(drv, WAIT_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "tr.cfg-row.active"))
        cells, key = _read(drv, lambda d: (
            [c.text for c in d.find_element(By.CSS_SELECTOR, "tr.cfg-row.active")
             .find_elements(By.TAG_NAME, "td")],
            d.find_element(By.CSS_SELECTOR, "tr.cfg-row.active").get_attribute("data-row")))
        assert cells[:2] == ["0", "0.1"]
        assert "active" in _read(drv, lambda d: d.find_element(
            By.CSS_SELECTOR, f'svg.scatter circle[data-row="{key}"]').get_attribute("class"))
        assert _read(drv, lambda d: d.find_elements(
            By.CSS_SELECTOR, "#history-body tr td:first-child")[0].text) == str(new)
        assert int(drv.execute_script("return document.getElementById('dashboard')"
                                      ".dataset.updates")) >= 1
        drv.execute_script("arguments[0].scrollIntoView()",
                           drv.find_element(By.ID, "profile"))
        drv.find_element(By.ID, "profile").screenshot(str(SHOTS / f"{stack.kind}-profile.png"))
        assert _texts_cut_off(drv) == []
        assert drv.execute_script("return window.__sameDocument") == "yes"
    finally:
        stack.use_plan(default_plan())
    WebDriverWait(drv, WAIT_S).until(
        lambda d: d.find_element(By.ID, "plan-id").text == str(stack.plan_id))
    assert not drv.find_elements(By.CSS_SELECTOR, "tr.cfg-row.active")
    assert _console_errors(drv) == []


def test_unknown_page_is_an_html_error_page(browser, stack):
    drv = browser
    drv.get_log("browser")
    drv.get(stack.url + "/ui/results/" + "0" * 32)
    assert drv.find_element(By.ID, "error-status").text == "404 Not Found"
    assert drv.find_element(By.LINK_TEXT, "Back to the form").get_attribute("href") \
        .endswith("/ui/")
    _shot(drv, stack, "not-found")
    assert [e for e in _console_errors(drv) if "404" not in e] == []
