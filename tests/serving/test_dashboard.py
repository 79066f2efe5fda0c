"""The dashboard in headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serving_support import KEYS

from prognos.core.settings import PROJECT_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = PROJECT_ROOT / "bench" / "results" / "dashboard.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and shutil.which("chromium") is None,
    reason="Debian's chromium is missing: run `make setup` as root (infra/setup.sh)",
)


def test_dashboard_shows_fleet_and_charts_without_console_errors(server_url):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{server_url}/dashboard?key={KEYS['reader']}&refresh=60")
            page.wait_for_selector("#fleet tbody tr.machine")
            rows = page.locator("#fleet tbody tr.machine")
            assert rows.count() == 3
            assert rows.first.get_attribute("data-id") == "FD001-test-0001"  # lowest RUL first
            assert rows.first.locator(".level.red").count() == 1
            assert "key=" not in page.url  # the key left the address bar for sessionStorage

            page.click("th[data-sort=rul]")  # toggles to highest RUL first
            page.wait_for_function(
                "document.querySelector('#fleet tbody tr.machine').dataset.id === 'm2'"
            )

            page.click("tr[data-id='FD001-test-0001']")
            page.wait_for_function(
                "document.getElementById('machine-title').textContent === 'FD001-test-0001'"
            )
            page.wait_for_selector("#sensor-charts svg polyline")
            page.wait_for_selector("#rul-chart polyline")  # true RUL line of a test machine
            assert page.locator("#sensor-charts .chart").count() >= 5
            assert page.locator("#alerts li").first.inner_text().find("FD001-test-0001") >= 0
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert problems == []


def test_dashboard_asks_for_a_key(server_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{server_url}/dashboard")
            page.wait_for_selector("#login:not([hidden])")
            page.fill("#key-input", KEYS["reader"])
            page.click("#login-form button")
            page.wait_for_selector("#fleet tbody tr.machine")
        finally:
            browser.close()


def test_api_docs_render_offline_from_the_server_alone(server_url):
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{server_url}/docs")
            page.wait_for_selector(".op")
            paths = page.locator(".op .path").all_inner_texts()
            assert "/v1/machines/{machine_id}" in paths
            assert "/v1/models/{name}:predict" in paths
            assert page.locator("h2", has_text="models").count() == 1
        finally:
            browser.close()
    assert problems == []
    assert requested and all(url.startswith(server_url) for url in requested), requested
