"""End-to-end test in a real browser: Playwright drives Debian's Chromium against ``streamlit run app.py``.

The browser is the system's ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it),
never one downloaded by ``playwright install``. The app runs on the quick suite of tests/test_explorer.py
with a 400-image gallery; a screenshot goes to ``tests/_artifacts/app_browser.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_explorer import quick_suite_dir

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "_artifacts"
SAMPLE = ROOT / "assets" / "samples" / "0000_ankle_boot.png"
SLIDER = 'input[type="range"][aria-label="Re-embedded with the new model (%)"]'

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(pytestconfig):
    """``streamlit run app.py`` on a free port of 127.0.0.1, stopped at the end of the module."""
    port = _free_port()
    env = {**os.environ, "BACKFILL_APP_MODELS": str(quick_suite_dir(pytestconfig)), "BACKFILL_APP_PER_CLASS": "40",
           "BACKFILL_APP_CURVE_QUERIES": "200", "BACKFILL_APP_CACHE": "off"}
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "streamlit.log", "w")  # noqa: SIM115 - closed below, after the server stops
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start; see {ARTIFACTS / 'streamlit.log'}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file() and not shutil.which("chromium"):
        pytest.fail("Chromium is not installed: run `apt-get install chromium` (the end-to-end test drives "
                    "the system browser; `playwright install` is not used)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.is_file()
                                                                  else shutil.which("chromium")),
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# The x values of the slider marker (the trace "current") of the first curve chart, from plotly's DOM node.
MARKER_X = """() => {
    for (const plot of document.querySelectorAll('.js-plotly-plot')) {
        const marker = (plot.data || []).find(t => t.name === 'current');
        if (marker) return marker.x;
    }
    return null;
}"""


def wait_for_marker(page, percent: int) -> None:
    page.wait_for_function(f"() => JSON.stringify(({MARKER_X})()) === JSON.stringify([{percent}, {percent}, "
                           f"{percent}])")


def test_upload_slider_results_and_chart(app_url, browser):
    page = browser.new_page(viewport={"width": 1500, "height": 1900})
    page.set_default_timeout(120_000)
    page.goto(app_url)
    page.get_by_text("At 50% re-embedded").wait_for()
    wait_for_marker(page, 50)

    # Upload an image: it becomes the query, with the new model's prediction and three result rows.
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(SAMPLE))
    page.get_by_text(f"uploaded {SAMPLE.name}").wait_for()
    assert page.get_by_text("The new model predicts").is_visible()
    for label in ("naive (new-partial)", "rank merge", "full (metric-compatible ψ)"):
        page.get_by_text(label, exact=True).first.wait_for()
    k = 8
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= {3 * k}")

    # Move the slider to 100%: the marker moves, the metrics heading and the results follow.
    slider = page.locator(SLIDER)
    slider.focus()
    page.keyboard.press("End")
    page.get_by_text("At 100% re-embedded").wait_for()
    wait_for_marker(page, 100)
    assert page.get_by_text("can reach 400 gallery items").count() == 3  # an upload is not in the gallery
    slider.focus()
    page.keyboard.press("Home")
    page.get_by_text("At 0% re-embedded").wait_for()
    page.get_by_text("nothing reachable yet").wait_for()
    wait_for_marker(page, 0)
    page.keyboard.press("ArrowRight")
    page.get_by_text("At 5% re-embedded").wait_for()
    wait_for_marker(page, 5)
    time.sleep(1)  # let the images of the last rerun paint before the screenshot
    assert not page.locator('[data-testid="stException"]').count()
    page.screenshot(path=str(ARTIFACTS / "app_browser.png"), full_page=True)
    page.close()
