"""A real browser for the tests: Debian's chromium driven by Selenium through Debian's chromium-driver.

Both come from apt (`scripts/browser.sh install`, which .ci/run calls); nothing is downloaded at run time: the
driver's path is given, so Selenium Manager is never asked for one. Outside CI a machine without them skips the
browser tests with the reason; SIM_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure instead.
"""
from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SIM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SIM_CHROMEDRIVER", "/usr/bin/chromedriver")
WINDOW = (1366, 900)  # a laptop screen


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
            return f"{path} not found (apt-get install {package}, or scripts/browser.sh install)"
    return None


def start():
    """A headless chromium at laptop size that keeps its console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    if os.geteuid() == 0:  # chromium refuses to run as root with its sandbox (CI runs as root)
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager reach the network
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser():
    """One chromium per test module (~1 s to start); each test gets it with its console log emptied."""
    why = missing()
    if why is not None:
        if os.environ.get("SIM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SIM_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    driver = start()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser):
    """The module's browser, with the console log of earlier tests read away and cookies cleared."""
    browser.get("about:blank")
    browser.delete_all_cookies()
    browser.get_log("browser")
    return browser


def console_errors(driver) -> list[str]:
    """The SEVERE console entries since the last call (JavaScript errors, failed loads, CSP refusals)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """The src of every <img> on the page that did not load (naturalWidth 0 once complete)."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
        ".map(i => i.currentSrc || i.src || i.alt).map(s => s.slice(0, 80));")


def screenshot(driver, out_dir, name: str, full_page: bool = True) -> Path:
    """A PNG of the page (the whole page, not just the window) in out_dir; returns its path."""
    out = Path(out_dir) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": full_page})
    data = base64.b64decode(shot["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    tmp = out.with_suffix(".png.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def screenshot_dir(request, tmp_path) -> Path:
    """Where a test's screenshots go: $SIM_SCREENSHOTS/<test> when set (CI keeps them), else its tmp_path."""
    root = os.environ.get("SIM_SCREENSHOTS")
    return Path(root) / request.node.name if root else tmp_path


def click_and_wait(driver, element_id: str, timeout: float = 15):
    """Click a button that submits a form and wait until the next page has replaced this one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    WebDriverWait(driver, timeout).until(expected_conditions.staleness_of(old))
