"""End-to-end test in a real browser: Playwright drives Debian's Chromium against ``streamlit run app.py``.

The browser is the system's ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it),
never one downloaded by ``playwright install``. The app runs on the quick suite of tests/_app_builders.py
with a 400-image gallery (and a fake CIFAR-100: random images, untrained models); screenshots go to
``tests/_artifacts/``. The layout checks read the DOM: an element is cut when its ``scrollWidth`` exceeds its
``clientWidth``.
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
from _app_builders import fake_cifar, quick_suite_dir

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
def cifar(tmp_path_factory) -> tuple[Path, Path]:
    """A fake CIFAR-100: (data directory, model directory)."""
    return fake_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def app_url(pytestconfig, cifar):
    """``streamlit run app.py`` on a free port of 127.0.0.1, stopped at the end of the module."""
    port = _free_port()
    env = {**os.environ, "BACKFILL_APP_MODELS": str(quick_suite_dir(pytestconfig)), "BACKFILL_APP_PER_CLASS": "40",
           "BACKFILL_APP_CURVE_QUERIES": "200", "BACKFILL_APP_CACHE": "off", "BACKFILL_CIFAR100": str(cifar[0])}
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

    # Upload an image at once, while the fresh server still computes the curves (a timed fragment rerun used
    # to drop such an upload half the time): it becomes the query, with the new model's prediction and three
    # result rows of k = 8.
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(SAMPLE))
    page.get_by_text(f"uploaded {SAMPLE.name}").wait_for()
    assert page.get_by_text("The new model predicts").is_visible()
    for label in ("naive (new-partial)", "rank merge", "full (metric-compatible ψ)"):
        page.get_by_text(label, exact=True).first.wait_for()
    k = 8
    page.wait_for_function(f"() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= {3 * k}")
    wait_for_marker(page, 50)

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


# Visible elements whose text is cut: metric values, table cells, button labels (with the selector that found them).
CUT = """() => {
    const selectors = ['[data-testid="stMetricValue"]', '[data-testid="stMetricValue"] *', '[data-testid="stTable"] td',
                       '[data-testid="stTable"] th', 'button', 'button p', '[data-testid="stMarkdownContainer"] p'];
    const cut = [];
    for (const selector of selectors) {
        for (const el of document.querySelectorAll(selector)) {
            if (!el.offsetParent || el.closest('[data-testid="stSidebar"]')) continue;
            if (el.scrollWidth > el.clientWidth + 1) cut.push(`${selector}: ${el.textContent.trim().slice(0, 40)}`);
        }
    }
    return cut;
}"""
IDLE = """() => !document.querySelector('[data-testid="stStatusWidget"]') &&
                 !document.body.innerText.includes('Evaluating the curves')"""


def open_page(browser, app_url, width: int, height: int, query: str = ""):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(120_000)
    page.goto(f"{app_url}/{query}")
    page.get_by_text("At 50% re-embedded").wait_for()
    page.wait_for_function(IDLE)
    page.wait_for_selector('[data-testid="stMetricValue"]')
    return page


def test_nothing_is_cut_at_1280x800(app_url, browser):
    page = open_page(browser, app_url, 1280, 800)
    assert page.evaluate(CUT) == []
    page.screenshot(path=str(ARTIFACTS / "app_1280.png"), full_page=True)
    page.close()


def test_cifar100_page_reads_completely_at_1280x800(app_url, browser, cifar):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(240_000)  # a new suite: its gallery is embedded and its curves evaluated first
    page.goto(f"{app_url}/?dataset=cifar100")
    page.get_by_text("Advanced").click()
    models = page.get_by_label("Model directory")
    models.fill(str(cifar[1]))
    models.press("Enter")
    page.get_by_text("At 50% re-embedded").wait_for()
    page.wait_for_function(IDLE)
    page.wait_for_selector('[data-testid="stMetricValue"]')
    assert page.get_by_text("test images of CIFAR-100").count() == 1
    assert page.evaluate(CUT) == []
    assert not page.locator('[data-testid="stException"]').count()
    page.screenshot(path=str(ARTIFACTS / "app_cifar100_1280.png"), full_page=True)
    page.close()


def test_phone_width_needs_no_horizontal_scrolling(app_url, browser):
    page = open_page(browser, app_url, 390, 844)
    wide = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert wide[0] <= wide[1], f"the page scrolls sideways: {wide}"
    page.screenshot(path=str(ARTIFACTS / "app_390.png"), full_page=True)
    page.close()


def test_order_change_with_every_method_on_answers_at_once(app_url, browser):
    page = open_page(browser, app_url, 1440, 900)
    for label in ("old/old", "offline (switch at 100%)", "RT merge (regression ψ)", "full + ρ"):
        page.get_by_text(label, exact=True).first.click()
        page.wait_for_function(IDLE)
    sidebar = page.locator('[data-testid="stSidebar"]')
    elapsed = {}
    # The first pass may find curves still being computed in the background (the page shows their progress
    # meanwhile); the second is the warm app, which must answer at once.
    for attempt in ("first", "warm"):
        for order in ("deployable: old model's uncertainty first", "oracle (peeks at new embeddings; reference only)",
                      "random (the paper's)"):
            start = time.monotonic()
            sidebar.get_by_text(order, exact=True).click()
            page.get_by_text(f"{order} order.", exact=False).wait_for()  # the caption under the curves
            page.wait_for_function(IDLE)
            elapsed[attempt, order[:12]] = time.monotonic() - start
    print("order changes with 7 methods on, seconds until idle:", {k: round(v, 2) for k, v in elapsed.items()})
    warm = max(v for (attempt, _), v in elapsed.items() if attempt == "warm")
    assert warm < 3, f"a warm order change took {warm:.1f} s to settle"
    assert not page.locator('[data-testid="stException"]').count()
    page.close()
