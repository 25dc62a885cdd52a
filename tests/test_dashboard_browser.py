"""The jobs dashboard in a real browser: ``dask-batchapi serve`` on 127.0.0.1, Debian's Chromium
driven by Playwright (never a downloaded browser).

One job fails a batch whose items are HTML and script (user data must show as text, never run),
another runs long enough to be watched and stopped. The test logs in with ``?token=`` once,
follows the cookie, checks the list, the job page (metrics, logs, dead letter), Stop and Retry,
and saves screenshots to ``test-output/dashboard-*.png``.

Needs: ``apt-get install -y chromium chromium-driver`` and ``playwright``
(``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1``; never run ``playwright install``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from service_fixtures import *  # noqa: F401,F403 - the services and sleepy_api fixtures
from service_fixtures import items

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
OUT = ROOT / "test-output"
XSS = ["<img src=x onerror=window.__xss=1>", "fail-<script>window.__xss=2</script>"]

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _row(page, job_id: str):
    return page.locator(f"tr[data-job-id='{job_id}']")


@pytest.mark.timeout(240)
def test_dashboard_lists_jobs_shows_a_job_and_stops_and_retries(services, sleepy_api, browser):
    service = services()
    hostile = {"workers": 1, "item_list": {"items": XSS, "batch_size": 1}}
    failed = service.post("/sleepy", json=hostile).json()["job_id"]
    service.wait_status("sleepy", failed, {"completed_with_failures"})
    long = service.post("/sleepy", json=items(60, sleep=0.5)).json()["job_id"]

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{service.url}/?token={service.token}")
    assert page.url == f"{service.url}/"  # the token left the address bar for a cookie
    row = _row(page, long)
    row.locator("td", has_text="running").wait_for(timeout=60_000)
    # live: the running job's progress moves without a reload
    first = row.locator("td").nth(2).inner_text()
    page.wait_for_function(
        "([id, before]) => document.querySelector(`tr[data-job-id='${id}'] td:nth-child(3)`)"
        ".textContent !== before",
        arg=[long, first],
        timeout=15_000,
    )
    cells = _row(page, failed).locator("td")
    assert cells.nth(1).inner_text() == "completed_with_failures"
    assert cells.nth(2).inner_text().strip() == "2/2 (100%)"
    assert row.locator("td").nth(5).inner_text() == "1/1"  # workers held/asked
    page.screenshot(path=str(_shot("dashboard-jobs.png")))

    # the failed job: its dead letter shows the payload and error as text; nothing ran
    _row(page, failed).locator("a").click()
    page.locator(".dead").first.wait_for(timeout=15_000)
    dead = page.locator("#dead-letter").inner_text()
    assert XSS[1] in dead and "ValueError" in dead and "Traceback" in dead
    page.locator("#logs", has_text="handling").wait_for(timeout=30_000)
    assert XSS[0] in page.locator("#logs").inner_text()
    assert page.evaluate("window.__xss") is None
    assert page.locator("#logs img, #dead-letter img, #dead-letter script").count() == 0
    assert page.locator("#stop").is_disabled() and page.locator("#retry").is_enabled()
    page.screenshot(path=str(_shot("dashboard-dead-letter.png")), full_page=True)

    # Retry: a new job of the failed batch, shown on its own page
    page.locator("#retry").click()
    page.wait_for_url(lambda url: failed not in url and "job=" in url, timeout=30_000)
    page.locator("#status", has_text="completed_with_failures").wait_for(timeout=90_000)
    assert page.locator("#counts").inner_text().startswith("1/1")

    # the long job: follow it, then Stop it from its page
    page.goto(f"{service.url}/_/job?api=sleepy&job={long}")
    page.locator("#following", has_text="following").wait_for(timeout=15_000)
    page.locator("#metrics", has_text="succeeded").wait_for()
    link = page.locator("#dask-dashboard")
    if link.is_visible():
        assert link.get_attribute("href").startswith(("http://", "https://"))
    page.locator("#stop").click()
    page.locator("#status", has_text="stopped").wait_for(timeout=60_000)
    assert page.locator("#action").inner_text() == f"stopped job {long}"
    page.screenshot(path=str(_shot("dashboard-job.png")), full_page=True)
    assert _shot("dashboard-job.png").stat().st_size > 10_000


def _shot(name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT / name
