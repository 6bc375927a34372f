"""The dashboard in a real browser: Debian's chromium, headless, through its chromedriver, with
every host but the test server unresolvable (nothing may come from the internet).

Each view is clicked through and what it shows is checked against the API's numbers, formatted as
the CLI formats them (`tables.number`): a backtest (table, price chart with entries and exits,
the run's trades), a sweep (DSR, PBO, a heatmap slice), a portfolio (accounts, equity against
equal-weight buy & hold), the run history (a past run opened), the admin cards and /docs.
Screenshots go to the test's temporary folder, or beside CRYPTOBT_SCREENSHOT (a .png path: the
backtest view there, the others as <name>-sweep.png, -portfolio.png, -runs.png, -admin.png).
Skips with one line naming what is missing; `make browser-test` installs it and runs this.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline import demo
from pipeline.core import tables
from pipeline.core.config import Settings
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
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1250",
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



@pytest.fixture(scope="module")
def lake(build_lake) -> Path:
    return build_lake(n_symbols=20, years=0.5, sample=demo.DEFAULT_SAMPLE, futures_sample=demo.DEFAULT_FUTURES)


@pytest.fixture
def site(lake, tmp_path, redis_url, redis_prefix):
    """(base URL, httpx client) of a real server over the lake with a results table of its own."""
    import httpx

    settings = Settings(lake_root=lake, results_root=tmp_path / "results", redis_url=redis_url,
                        cache_prefix=redis_prefix, admin_token="browser-token")
    with serving(settings) as (base, _), httpx.Client(base_url=base, timeout=120) as client:
        yield base, client


def shot(browser, tmp_path: Path, view: str = "") -> Path:
    """Save a screenshot: CRYPTOBT_SCREENSHOT (<name>.png; a view's as <name>-<view>.png) or the temp folder."""
    main = Path(os.environ.get("CRYPTOBT_SCREENSHOT") or tmp_path / "dashboard.png")
    path = main.with_name(f"{main.stem}-{view}.png") if view else main
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    print(f"screenshot: {path}")
    return path


def cells(browser, table: str) -> list[dict[str, str]]:
    """The rows of a dashboard table as {column key: shown text}."""
    return browser.execute_script("""
        return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(tr => Object.fromEntries(
            [...tr.querySelectorAll('td')].map(td => [td.dataset.key, td.textContent])));""", table)


def shown(value, column: str = "") -> str:
    """A value as the CLI prints it: in its column's kind (`tables.cell`), else as `tables.number`."""
    return tables.cell(column, value) if tables.kind_of(column) else tables.number(value)


# The lake's series: 20 synthetic, 4 real spot pairs and the sample perpetual (XRP_USDT_USDT:futures).
SYMBOLS = 25


def open_trades(r: dict) -> int:
    return r["num_trades"] - r["closed_trades"]


def as_price(value: float) -> str:
    """A price as the dashboard shows it: six significant digits (two decimals would read 0.0874 as 0.09)."""
    return f"{value:.6g}"


def drawn_blue(browser, selector: str) -> int:
    """Pixels of the equity line's blue on a canvas: something was drawn."""
    return browser.execute_script("""
        const c = document.querySelector(arguments[0]); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let blue = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 2] > 150 && d[i + 3] > 0) blue++;
        return blue;""", selector)


def fill(browser, element_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, element_id) if not element_id.startswith("#") else \
        browser.find_element(By.CSS_SELECTOR, element_id)
    field.clear()
    field.send_keys(text)


def rsi_sweep_tab(browser, base: str, wait, period: str, oversold: str, overbought: str) -> None:
    """Open the dashboard's Sweep tab with rsi and its three parameters' fields filled."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(base + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#symbols option")) == SYMBOLS)
    browser.find_element(By.ID, "tab-sweep").click()
    Select(browser.find_element(By.ID, "strategy")).select_by_visible_text("rsi")
    fill(browser, "#params input[data-param=rsi_period]", period)
    fill(browser, "#params input[data-param=oversold_threshold]", oversold)
    fill(browser, "#params input[data-param=overbought_threshold]", overbought)


def rsi_portfolio_tab(browser, base: str, wait) -> None:
    """Open the dashboard's Portfolio tab with rsi chosen."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(base + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#symbols option")) == SYMBOLS)
    browser.find_element(By.ID, "tab-portfolio").click()
    Select(browser.find_element(By.ID, "strategy")).select_by_visible_text("rsi")


def start(browser, wait) -> str:
    """Click Run, wait for the run to finish; its run id."""
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "start").click()
    wait.until(lambda d: d.find_element(By.ID, "status-text").text.startswith(("done:", "error:")))
    assert browser.find_element(By.ID, "status-text").text.startswith("done:"), \
        browser.find_element(By.ID, "status-text").text
    return browser.find_element(By.ID, "status-text").get_attribute("data-run-id")


@pytest.mark.slow
def test_dashboard_runs_a_backtest_with_stops_and_shows_a_rows_price_trades_and_equity(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, api = site
    wait = WebDriverWait(browser, 90)
    browser.get(base + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#strategy option")) >= 5)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#symbols option")) == SYMBOLS)
    # The form offers every interval the API takes.
    intervals = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#interval option")]
    assert intervals == api.get("/api/symbols").json()["intervals"] and "1d" in intervals and "auto" in intervals
    Select(browser.find_element(By.ID, "strategy")).select_by_visible_text("rsi")
    period = browser.find_element(By.CSS_SELECTOR, "#params input[data-param=rsi_period]")
    assert period.get_attribute("value") == "14"  # the registry's default
    fill(browser, "#params input[data-param=rsi_period]", "10")
    fill(browser, "sl", "4")
    fill(browser, "tp", "8")
    browser.find_element(By.ID, "trail").click()
    fill(browser, "size", "0.5")
    fill(browser, "slippage", "0.05")
    Select(browser.find_element(By.ID, "detail")).select_by_visible_text("5m")
    run_id = start(browser, wait)
    assert browser.find_element(By.ID, "progress-bar").get_attribute("data-percent") == "100"
    assert browser.find_element(By.ID, "status-text").text.startswith("done: 4 results")
    # Every cell is the run's row as the CLI prints it, best return first.
    written = {r["symbol"]: r for r in api.get(f"/api/results/{run_id}").json()}
    # The form's stops, trail, size, slippage and detail reached the run (only the sample pairs have 5m bars:
    # the run over all symbols leaves the hourly ones out, and says so).
    assert {(r["sl_pct"], r["tp_pct"], r["trail"], r["size"], r["slippage_pct"], r["detail"])
            for r in written.values()} == {(4.0, 8.0, True, 0.5, 0.05, "5m")}
    table = cells(browser, "#results")
    assert len(table) == 4
    for row in table:
        want = written[row["symbol"]]
        assert row == {"symbol": want["symbol"], "open": shown(open_trades(want), "open"),
                       "days_of_data": shown(want["days_of_data"]), **{k: shown(want[k], k) for k in (
                           "total_return_pct", "buy_hold_return_pct", "closed_trades", "win_rate_pct",
                           "max_drawdown_pct", "sharpe", "bars")}}
    returns = [written[r["symbol"]]["total_return_pct"] for r in table]
    assert returns == sorted(returns, reverse=True)
    browser.find_element(By.CSS_SELECTOR, "#results th[data-key=symbol]").click()
    names = [r["symbol"] for r in cells(browser, "#results")]
    assert names == sorted(names)
    # A row: its price with a marker per fill, its equity, and the round trips the run recorded.
    browser.find_element(By.CSS_SELECTOR, "#results tbody tr[data-symbol=ETH_BTC]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-backtest table.trades tbody tr"))
    title = browser.find_element(By.CSS_SELECTOR, "#detail-backtest h2.title").text
    curve = api.post("/api/equity", json={"strategy": "rsi", "symbol": "ETH_BTC", "params": {"rsi_period": 10},
                                          "sl": 4, "tp": 8, "trail": True, "size": 0.5, "slippage": 0.05,
                                          "detail": "5m", "points": 1500}).json()
    assert title.startswith("ETH_BTC: rsi rsi_period=10 oversold_threshold=30 overbought_threshold=70 sl=4 tp=8 "
                            "trail=True size=0.5 slippage=0.05 (1h, ") and f"{len(curve['trades'])} fills" in title
    price = browser.find_element(By.CSS_SELECTOR, "#detail-backtest canvas.price")
    assert int(price.get_attribute("data-markers")) == len(curve["trades"]) > 0
    assert int(price.get_attribute("data-entries")) == sum(f["action"] == "buy" for f in curve["trades"])
    trips = api.get(f"/api/runs/{run_id}/trades", params={"symbol": "ETH_BTC"}).json()
    assert cells(browser, "#detail-backtest table.trades") == [
        {"entry_time": t["entry_time"][:16], "entry_price": as_price(t["entry_price"]),
         "exit_time": t["exit_time"][:16], "exit_price": as_price(t["exit_price"]), "pnl": shown(t["pnl"], "pnl"),
         "return_pct": shown(t["return_pct"], "return_pct"), "bars_held": shown(t["bars_held"]),
         "exit_reason": t["exit_reason"]}
        for t in trips]
    assert {t["exit_reason"] for t in trips} - {"signal", "end_of_data"}, "the stops fired at least once"
    assert drawn_blue(browser, "#detail-backtest canvas.equity") > 100
    shot(browser, tmp_path)
    # The admin tab shows the run's metrics with the token.
    browser.find_element(By.ID, "tab-admin").click()
    browser.find_element(By.ID, "token").send_keys("browser-token\n")
    wait.until(lambda d: d.find_element(By.ID, "card-runs").text == "1")
    stats = api.get("/api/admin/performance/stats", headers={"Authorization": "Bearer browser-token"}).json()
    assert browser.find_element(By.ID, "card-p95").text == f"{round(stats['duration_p95_s'] * 1000):,} ms"
    shot(browser, tmp_path, "admin")


@pytest.mark.slow
def test_dashboard_sweeps_with_dsr_pbo_and_a_heatmap_slice(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, api = site
    wait = WebDriverWait(browser, 120)
    rsi_sweep_tab(browser, base, wait, "7:28:7", "20,25,30", "70,80")
    fill(browser, "sl", "0,5")
    fill(browser, "top", "2")
    for symbol in ("ETH_BTC", "LTC_BTC", "SYN000", "SYN001"):
        Select(browser.find_element(By.ID, "symbols")).select_by_visible_text(symbol)
    run_id = start(browser, wait)
    # Each symbol's 2 best sets with their deflated Sharpe ratio and PBO, as the results table has them.
    rows = api.get(f"/api/results/{run_id}").json()
    assert len(rows) == 4 * 4 * 3 * 2 * 2

    def key(r: dict) -> tuple:
        p = json.loads(r["params_json"])
        return (r["symbol"], tables.param(p["rsi_period"]), tables.param(p["oversold_threshold"]),
                tables.param(p["overbought_threshold"]), tables.param(r["sl_pct"]))

    written = {key(r): r for r in rows}
    table = cells(browser, "#sweep-results")
    assert len(table) == 8
    for row in table:
        want = written[(row["symbol"], row["paramSet.rsi_period"], row["paramSet.oversold_threshold"],
                        row["paramSet.overbought_threshold"], row["paramSet.sl"])]
        for column in ("total_return_pct", "sharpe", "deflated_sharpe", "pbo", "closed_trades", "win_rate_pct"):
            assert row[column] == shown(want[column], column), (row, column)
        assert row["open"] == shown(open_trades(want), "open")
    assert {row["pbo"] for row in table} != {"-"}
    assert "best 2 per symbol by total_return" in browser.find_element(By.ID, "sweep-title").text
    # The heatmap: rsi_period x oversold_threshold, the other parameters fixed at chosen values.
    heat = "#heat-sweep"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{heat} table.heat td"))
    Select(browser.find_element(By.CSS_SELECTOR, f"{heat} .hx")).select_by_visible_text("rsi_period")
    Select(browser.find_element(By.CSS_SELECTOR, f"{heat} .hy")).select_by_visible_text("oversold_threshold")
    Select(browser.find_element(By.CSS_SELECTOR, f"{heat} [data-fixed=overbought_threshold]")).select_by_visible_text("80")
    Select(browser.find_element(By.CSS_SELECTOR, f"{heat} [data-fixed=sl]")).select_by_visible_text("5")

    def heat_cells() -> dict[tuple[str, str], str]:
        return {(c.get_attribute("data-x"), c.get_attribute("data-y")): c.text
                for c in browser.find_elements(By.CSS_SELECTOR, f"{heat} table.heat td")}

    def expected(symbol: str | None) -> dict[tuple[str, str], str]:
        sets = api.get(f"/api/runs/{run_id}/sets", params={"symbol": symbol} if symbol else {}).json()
        return {(tables.param(s["params"]["rsi_period"]), tables.param(s["params"]["oversold_threshold"])):
                shown(s["total_return_pct"], "total_return_pct") for s in sets
                if s["params"]["overbought_threshold"] == 80 and s["params"]["sl"] == 5}

    assert heat_cells() == expected(None) and len(heat_cells()) == 12
    caption = browser.find_element(By.CSS_SELECTOR, f"{heat} .hcap").text
    assert caption.startswith("mean total return % over the symbols") and "overbought_threshold=80 sl=5" in caption
    # A row's price, fills and equity, recomputed with its set.
    browser.find_elements(By.CSS_SELECTOR, "#sweep-results tbody tr")[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-sweep table.trades tbody tr"))
    assert drawn_blue(browser, "#detail-sweep canvas.equity") > 100
    shot(browser, tmp_path, "sweep")
    Select(browser.find_element(By.CSS_SELECTOR, f"{heat} .hs")).select_by_visible_text("LTC_BTC")
    wait.until(lambda d: "on LTC_BTC" in d.find_element(By.CSS_SELECTOR, f"{heat} .hcap").text)
    assert heat_cells() == expected("LTC_BTC")


def test_dashboard_sweep_shows_the_sweep_statistics(browser, site, tmp_path):
    """--stats on the dashboard (issue 30): the pooled run and each symbol, their SPA p-values, StepM and MCS
    sizes and the best set's numbers as the results table has them."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, api = site
    wait = WebDriverWait(browser, 120)
    rsi_sweep_tab(browser, base, wait, "7:28:7", "20,25,30", "70,80")
    fill(browser, "stats", "all")
    fill(browser, "reps", "300")
    for symbol in ("ETH_BTC", "LTC_BTC"):
        Select(browser.find_element(By.ID, "symbols")).select_by_visible_text(symbol)
    run_id = start(browser, wait)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr"))
    rows = api.get(f"/api/results/{run_id}").json()
    table = {row["symbol"]: row for row in cells(browser, "#stats-table")}
    assert set(table) == {"(pooled)", "ETH_BTC", "LTC_BTC"}
    for symbol in ("ETH_BTC", "LTC_BTC"):
        mine = [r for r in rows if r["symbol"] == symbol]
        assert table[symbol]["spa"].split(" / ")[1] == f"{mine[0]['spa_consistent']:.3f}"
        assert table[symbol]["in_mcs"] == shown(sum(r["in_mcs"] for r in mine), "in_mcs")
        assert table[symbol]["in_stepm"] == shown(sum(r["in_stepm"] for r in mine), "in_stepm")
        (best,) = [r for r in mine if r["psr"] is not None]
        assert table[symbol]["set"] == shown(best["set"], "set")
        assert table[symbol]["psr"] == shown(best["psr"], "psr")
        assert table[symbol]["stats_days"] == shown(best["stats_days"], "stats_days")
    assert "300 bootstrap repetitions" in browser.find_element(By.ID, "stats-title").text
    shot(browser, tmp_path, "sweep-stats")


@pytest.mark.slow
def test_dashboard_sweeps_a_perpetual_over_leverage_and_direction(browser, site, tmp_path):
    """Issue 28: the dashboard's futures fields (market, leverage and direction as sweep axes, margin) reach
    the run, each set's row is the results table's, and a row's detail recomputes it as a perpetual."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, api = site
    wait = WebDriverWait(browser, 120)
    rsi_sweep_tab(browser, base, wait, "6", "40", "60")
    Select(browser.find_element(By.ID, "market")).select_by_visible_text("futures")
    fill(browser, "leverage", "1,3")
    fill(browser, "direction", "long,short,both")
    Select(browser.find_element(By.ID, "margin")).select_by_visible_text("cross")
    fill(browser, "top", "6")
    Select(browser.find_element(By.ID, "symbols")).select_by_visible_text("XRP_USDT_USDT:futures")
    run_id = start(browser, wait)
    rows = api.get(f"/api/results/{run_id}").json()
    assert {(r["market"], r["margin"]) for r in rows} == {("futures", "cross")}
    written = {(r["direction"], tables.param(r["leverage"])): r for r in rows}
    assert set(written) == {(d, lev) for d in ("long", "short", "both") for lev in ("1", "3")}
    table = cells(browser, "#sweep-results")
    assert len(table) == 6
    for row in table:
        want = written[(row["paramSet.direction"], row["paramSet.leverage"])]
        for column in ("total_return_pct", "sharpe", "closed_trades"):
            assert row[column] == shown(want[column], column), (row, column)
    # A row's detail is recomputed as the perpetual it was: its trades are the run's round trips.
    browser.find_elements(By.CSS_SELECTOR, "#sweep-results tbody tr")[0].click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-sweep table.trades tbody tr"))
    assert drawn_blue(browser, "#detail-sweep canvas.equity") > 100
    shot(browser, tmp_path, "futures")


@pytest.mark.slow
def test_dashboard_runs_a_portfolio_and_draws_it_against_equal_weight_buy_and_hold(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, api = site
    wait = WebDriverWait(browser, 120)
    rsi_portfolio_tab(browser, base, wait)
    assert not browser.find_element(By.ID, "sl").is_displayed()  # a portfolio has no stops
    fill(browser, "max-open", "3,8")
    fill(browser, "stake", "10%,25%")
    Select(browser.find_element(By.ID, "rank-by")).select_by_visible_text("name")
    for n in range(10):  # the synthetic symbols: one era (the sample pairs are from 2018)
        Select(browser.find_element(By.ID, "symbols")).select_by_visible_text(f"SYN{n:03d}")
    run_id = start(browser, wait)
    accounts = sorted(api.get(f"/api/results/{run_id}").json(), key=lambda a: -a["total_return_pct"])
    assert len(accounts) == 4
    table = cells(browser, "#accounts")
    keys = ("total_return_pct", "buy_hold_return_pct", "closed_trades", "max_drawdown_pct", "sharpe", "final_value")
    assert [(r["max_open"], r["stake_label"], r["open"], r["skipped"], *[r[k] for k in keys]) for r in table] == [
        (str(a["max_open"]), f"{a['stake'] * 100:g}%", shown(open_trades(a), "open"),
         shown(a["skipped_no_slot"] + a["skipped_no_cash"], "bars"), *[shown(a[k], k) for k in keys])
        for a in accounts]
    best = accounts[0]
    summary = browser.find_element(By.ID, "portfolio-summary").text
    assert summary.startswith(f"best account: final value {shown(best['final_value'], 'final_value')} from 1,000.00") \
        and f"{best['skipped_no_slot']} entries skipped for want of a slot" in summary
    assert f"max open {best['max_open']}, stake {best['stake'] * 100:g}%" in \
        browser.find_element(By.ID, "portfolio-title").text
    contributions = cells(browser, "#contributions")
    assert len(contributions) == 10 and sum(int(c["round_trips"]) for c in contributions) > 0
    assert drawn_blue(browser, "#portfolio-chart") > 100
    shot(browser, tmp_path, "portfolio")


@pytest.mark.slow
def test_dashboard_runs_a_futures_portfolio(browser, site, tmp_path):
    """Issue 28: the portfolio tab speaks futures (market, direction, leverage, margin reach the account) and
    its accounts table shows the liquidations and funding of the results table's rows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, api = site
    wait = WebDriverWait(browser, 120)
    rsi_portfolio_tab(browser, base, wait)
    Select(browser.find_element(By.ID, "market")).select_by_visible_text("futures")
    fill(browser, "leverage", "20")
    fill(browser, "direction", "both")
    Select(browser.find_element(By.ID, "margin")).select_by_visible_text("cross")
    fill(browser, "max-open", "1")
    fill(browser, "stake", "50%,100%")
    Select(browser.find_element(By.ID, "symbols")).select_by_visible_text("XRP_USDT_USDT:futures")
    run_id = start(browser, wait)
    accounts = sorted(api.get(f"/api/results/{run_id}").json(), key=lambda a: -a["total_return_pct"])
    assert [(a["market"], a["direction"], a["leverage"], a["margin"]) for a in accounts] == [
        ("futures", "both", 20.0, "cross")] * 2
    table = cells(browser, "#accounts")
    keys = ("total_return_pct", "closed_trades", "liquidations", "funding_paid", "final_value")
    assert [[r[k] for k in keys] for r in table] == [[shown(a[k], k) for k in keys] for a in accounts]
    assert "perpetuals both 20x cross margin" in browser.find_element(By.ID, "portfolio-title").text
    assert drawn_blue(browser, "#portfolio-chart") > 100
    shot(browser, tmp_path, "portfolio-futures")


@pytest.mark.slow
def test_dashboard_run_history_opens_past_runs(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, api = site
    backtest = api.post("/api/backtest", json={"strategy": "macd", "symbols": ["ETH_BTC", "XMR_BTC", "SYN003"],
                                               "trades": True, "sl": 3, "fee": 0.2, "timerange": "20180110-20180125"})
    sweep = api.post("/api/sweep", json={"strategy": "rsi", "grid": ["rsi_period=7,14", "oversold_threshold=25,30"],
                                         "symbols": ["ETH_BTC", "SYN002"]})
    assert backtest.status_code == sweep.status_code == 200, (backtest.text, sweep.text)
    wait = WebDriverWait(browser, 60)
    browser.get(base + "/")
    browser.find_element(By.ID, "tab-runs").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs tbody tr")) == 2)
    listed = api.get("/api/runs").json()
    assert cells(browser, "#runs") == [
        {"created": r["created_at"][:19], "run_id": r["run_id"], "command": r["command"], "strategy": r["strategy"],
         "symbols": shown(r["symbols"]), "results": shown(r["results"]), "sets": shown(r["sets"]),
         "duration_s": shown(r["duration_s"])} for r in listed]
    run_id = backtest.headers["x-run-id"]
    browser.find_element(By.CSS_SELECTOR, f"#runs tbody tr[data-key='{run_id}']").click()
    wait.until(lambda d: d.find_element(By.ID, "run-open").get_attribute("data-run-id") == run_id)
    header = browser.find_element(By.ID, "run-header").text
    assert f"run {run_id} (api backtest)" in header and "macd on 3 symbol(s) at 1h, 3 result(s)" in header
    assert "fee 0.20 %, initial 1,000.00, timerange 20180110-20180125" in header
    results = {r["symbol"]: r for r in backtest.json()}
    for row in cells(browser, "#run-results"):
        assert row["total_return_pct"] == shown(results[row["symbol"]]["total_return_pct"], "total_return_pct")
        assert row["closed_trades"] == shown(results[row["symbol"]]["closed_trades"], "closed_trades")
    browser.find_element(By.CSS_SELECTOR, "#run-results tbody tr[data-symbol=ETH_BTC]").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detail-runs table.trades tbody tr"))
    trips = results["ETH_BTC"]["round_trips"]
    assert [(r["entry_price"], r["pnl"], r["exit_reason"]) for r in cells(browser, "#detail-runs table.trades")] == [
        (as_price(t["entry_price"]), shown(t["pnl"], "pnl"), t["exit_reason"]) for t in trips]
    price = browser.find_element(By.CSS_SELECTOR, "#detail-runs canvas.price")
    # Recomputed on the run's snapshot with its options (stop, fee, timerange): the same fills.
    assert int(price.get_attribute("data-markers")) == len(results["ETH_BTC"]["trades"])
    shot(browser, tmp_path, "runs")
    sweep_id = sweep.headers["x-run-id"]
    browser.find_element(By.CSS_SELECTOR, f"#runs tbody tr[data-key='{sweep_id}']").click()
    wait.until(lambda d: d.find_element(By.ID, "run-open").get_attribute("data-kind") == "sweep")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#detail-runs table.heat td")) == 4)
    sets = api.get(f"/api/runs/{sweep_id}/sets").json()
    assert sorted(c.text for c in browser.find_elements(By.CSS_SELECTOR, "#detail-runs table.heat td")) == sorted(
        shown(s["total_return_pct"], "total_return_pct") for s in sets)
    assert len(cells(browser, "#run-results")) == 8
