"""The dashboard in a real browser: Debian's chromium, headless, through its chromedriver.

Loads `/`, starts a run, watches the table fill and the progress reach 100 %, opens a symbol's
chart and saves a screenshot (CRYPTOBT_SCREENSHOT, default the test's temporary folder).
Skips with one line naming what is missing; `make browser-test` installs it and runs this.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline import demo
from pipeline.config import Settings
from tests.api_server import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return "Debian package chromium (apt-get install -y chromium chromium-driver)"
    if not os.path.exists(CHROMEDRIVER):
        return "Debian package chromium-driver (apt-get install -y chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "Python package selenium (pip install '.[browser]')"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=f"browser test needs the {_missing()}")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000",
                 "--disable-gpu", "--no-first-run", "--disable-extensions",
                 # Offline: no host but the test server's resolves, so a page that needs a CDN breaks here.
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def requested(driver) -> list[str]:
    """The URLs the browser asked for since the last call (from Chrome's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def only_from(base: str, urls: list[str]) -> list[str]:
    """The URLs not served by `base` (data: and about: URLs are the page's own)."""
    return [u for u in urls if not u.startswith((base + "/", "data:", "about:", "blob:"))]


def test_docs_render_the_operations_list_offline(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings = Settings(lake_root=tmp_path / "lake", results_root=tmp_path / "results")
    wait = WebDriverWait(browser, 60)
    with serving(settings) as (base, app):
        operations = [(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item]
        browser.get(base + "/docs")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == len(operations))
        shown = {(b.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
                  b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
                 for b in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
        assert shown == set(operations)
        assert browser.find_element(By.CSS_SELECTOR, ".info .title").text.startswith("cryptobt")
        urls = requested(browser)
        assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in urls)
        assert only_from(base, urls) == []


@pytest.mark.slow
def test_dashboard_runs_a_backtest_fills_the_table_and_draws_a_chart(browser, tmp_path, redis_url, redis_prefix):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    lake_root = tmp_path / "lake"
    demo.build_sample_lake(lake_root, n_symbols=20, years=0.5, sample=demo.DEFAULT_SAMPLE)
    settings = Settings(lake_root=lake_root, results_root=tmp_path / "results", redis_url=redis_url,
                        cache_prefix=redis_prefix, admin_token="browser-token")
    wait = WebDriverWait(browser, 60)
    with serving(settings) as (base, _):
        browser.get(base + "/")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#strategy option")) >= 5)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#symbols option")) == 24)
        Select(browser.find_element(By.ID, "strategy")).select_by_visible_text("rsi")
        period = browser.find_element(By.CSS_SELECTOR, "#params input[data-param=rsi_period]")
        assert period.get_attribute("value") == "14"  # the registry's default
        period.clear()
        period.send_keys("10")
        browser.find_element(By.ID, "start").click()
        wait.until(lambda d: d.find_element(By.ID, "progress-bar").get_attribute("data-percent") == "100")
        wait.until(lambda d: d.find_element(By.ID, "status-text").text.startswith("done: 24 results"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert len(rows) == 24
        # Sorted by return, best first (the default sort).
        returns = [float(r.find_elements(By.TAG_NAME, "td")[1].text.replace(",", "")) for r in rows]
        assert returns == sorted(returns, reverse=True)
        # Clicking a header sorts by it.
        browser.find_element(By.CSS_SELECTOR, "th[data-key=symbol]").click()
        names = [r.get_attribute("data-symbol") for r in browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
        assert names == sorted(names)
        browser.find_element(By.CSS_SELECTOR, "#results tbody tr[data-symbol=ETH_BTC]").click()
        wait.until(lambda d: d.find_element(By.ID, "chart").get_attribute("data-symbol") == "ETH_BTC")
        assert "ETH_BTC: rsi equity vs buy & hold" in browser.find_element(By.ID, "chart-title").text
        # Something was drawn: the canvas has non-white pixels of the equity line's colour.
        drawn = browser.execute_script("""
            const c = document.getElementById('chart'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let blue = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 2] > 150 && d[i + 3] > 0) blue++;
            return blue;""")
        assert drawn > 100
        shot = Path(os.environ.get("CRYPTOBT_SCREENSHOT") or tmp_path / "dashboard.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        # The admin tab shows the run's metrics with the token.
        browser.find_element(By.ID, "tab-admin").click()
        browser.find_element(By.ID, "token").send_keys("browser-token\n")
        wait.until(lambda d: d.find_element(By.ID, "card-runs").text == "1")
        assert browser.find_element(By.ID, "card-p95").text.endswith("ms")
        admin_shot = shot.with_name(shot.stem + "-admin.png")
        browser.save_screenshot(str(admin_shot))
