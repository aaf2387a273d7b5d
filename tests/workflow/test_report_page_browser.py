"""The report page the smoke DAG wrote, opened from disk in a real browser (chromium through Selenium,
tests/browser.py): every picture decodes, the console stays clean, every table is there; a full-page screenshot."""
from __future__ import annotations

from pathlib import Path

import yaml
from browser import broken_images, console_errors, screenshot, screenshot_dir

from workflow.report import FIGURES, TABLES

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = yaml.safe_load((ROOT / "configs" / "scales" / "smoke.yaml").read_text())["experiments"]


def test_the_report_page_renders_from_disk(smoke_local, page, request, tmp_path):
    from selenium.webdriver.common.by import By
    page.get((smoke_local / "report.html").resolve().as_uri())
    assert page.title == "SIM reproduction report: smoke scale"
    widths = page.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);")
    pngs = [n for f, (exp, files) in FIGURES.items() if exp in EXPERIMENTS for n in files if n.endswith(".png")]
    assert len(widths) == len(pngs) == 3 and all(w > 0 for w in widths), widths
    assert broken_images(page) == []
    assert console_errors(page) == []
    shown = [t.get_attribute("data-table") for t in page.find_elements(By.CSS_SELECTOR, "table.results")]
    assert shown == [t for t in TABLES if t in EXPERIMENTS] == ["table1", "table2"]
    for t in shown:  # the paper's rows and ours, each a visible table body
        for source in ("paper", "ours"):
            body = page.find_element(By.CSS_SELECTOR, f'table[data-table="{t}"] tbody.{source}')
            assert body.is_displayed() and body.size["height"] > 0
    assert len(page.find_elements(By.CSS_SELECTOR, "table.runs")) == 4  # table1, table2, figure2, lr_sweep
    # the page fits a laptop's width: wide tables scroll inside their box, not the page
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    shot = screenshot(page, screenshot_dir(request, tmp_path), "report-page", full_page=True)
    assert shot.stat().st_size > 10_000
