"""The preference study in a real browser (chromium through Selenium, tests/browser.py) against a real uvicorn
server: a rater clicks through every pair, reloads mid-way, answers one pair twice from two tabs; the admin view
shows what the database holds."""
from __future__ import annotations

import json
import math
import sqlite3

import requests
from browser import broken_images, click_and_wait, console_errors, screenshot, screenshot_dir
# fixtures: a conftest.py here would shadow tests/conftest.py for the `from conftest import` of other tests
from study_helpers import image_sets, server_factory, study_dir, study_template  # noqa: F401
from study_helpers import admin_token, db_state, parse_page, tokens


def _image_id(driver, side: str) -> str:
    from selenium.webdriver.common.by import By
    src = driver.find_element(By.CSS_SELECTOR, f"#{side} img").get_attribute("src")
    return src.rsplit("/", 1)[1].removesuffix(".png")


def _assert_clean(driver):
    assert broken_images(driver) == []
    assert console_errors(driver) == []  # a CSP refusal or a failed load would be a SEVERE entry


def test_a_rater_clicks_through_reloads_and_cannot_answer_twice(page, study_dir, server_factory, request, tmp_path):
    from selenium.webdriver.common.by import By  # here: without selenium the fixture skips with the reason
    shots = screenshot_dir(request, tmp_path)
    srv = server_factory(study_dir)
    study = json.loads((study_dir / "study.json").read_text())
    by_pair = {p["id"]: p for p in study["pairs"]}
    side_of = {p[f"image_{s}"]: s for p in study["pairs"] for s in "ab"}
    tok = tokens(study_dir)[0]
    url = f"{srv.base}/r/{tok}"
    page.get(url)
    clicked = {}  # pair -> the method of the image clicked
    for k in range(1, 18):
        assert page.find_element(By.ID, "progress").text == f"Pair {k} of 17"
        pair = by_pair[int(page.find_element(By.NAME, "pair").get_attribute("value"))]
        assert page.find_element(By.ID, "prompt").text == pair["prompt"]  # shown as text, markup escaped
        assert page.find_element(By.ID, "question").text == study["question"]
        left, right = _image_id(page, "left"), _image_id(page, "right")
        assert {left, right} == {pair["image_a"], pair["image_b"]}
        _assert_clean(page)
        if k == 1:
            screenshot(page, shots, "study-rater-page", full_page=False)
        if k == 6:  # reload mid-way: the same pair again, nothing stored for it
            before = db_state(study_dir)
            page.refresh()
            assert page.find_element(By.ID, "progress").text == "Pair 6 of 17"
            assert (_image_id(page, "left"), _image_id(page, "right")) == (left, right)
            assert db_state(study_dir) == before
        if k == 9:  # the same pair open in a second tab, answered there first: the first tab's click is refused
            first = page.current_window_handle
            page.switch_to.new_window("tab")
            page.get(url)
            assert page.find_element(By.ID, "progress").text == "Pair 9 of 17"
            click_and_wait(page, "choose-right")
            clicked[pair["id"]] = side_of[right]
            assert page.find_element(By.ID, "progress").text == "Pair 10 of 17"
            page.close()
            page.switch_to.window(first)
            before = db_state(study_dir)
            click_and_wait(page, "choose-left")
            assert "409" in page.find_element(By.TAG_NAME, "body").text
            assert "already answered" in page.find_element(By.TAG_NAME, "body").text
            assert db_state(study_dir) == before
            page.get(url)
            page.get_log("browser")  # the 409 is logged as a failed load: expected here
            continue
        choice = "left" if k % 3 else "right"
        click_and_wait(page, f"choose-{choice}")
        clicked[pair["id"]] = side_of[left if choice == "left" else right]
    assert page.find_element(By.ID, "done").text == "Thank you!"
    assert "All 17 pairs answered" in page.find_element(By.ID, "progress").text
    screenshot(page, shots, "study-thank-you", full_page=False)

    con = sqlite3.connect(study_dir / "answers.db")
    rows = con.execute("SELECT pair_id, chosen FROM answers WHERE rater_id = 1").fetchall()
    shown = con.execute("SELECT COUNT(*) FROM shown WHERE rater_id = 1").fetchone()[0]
    con.close()
    assert dict(rows) == clicked and len(rows) == 17 and shown == 17  # one answer per pair, as clicked


def test_the_admin_view_shows_the_databases_win_rate(page, study_dir, server_factory, request, tmp_path):
    from selenium.webdriver.common.by import By
    srv = server_factory(study_dir)
    toks = tokens(study_dir)
    s = requests.Session()
    for r, tok in enumerate(toks[:5]):  # five raters through HTTP, each choosing by a fixed rule
        for _ in range(17):
            p = parse_page(s.get(f"{srv.base}/r/{tok}", timeout=10).text)
            choice = "left" if (p["pair"] + r) % 3 else "right"
            assert s.post(f"{srv.base}/r/{tok}/answer", data={"pair": p["pair"], "choice": choice},
                          timeout=10).status_code == 200
    con = sqlite3.connect(study_dir / "answers.db")
    wins, total = con.execute("SELECT SUM(chosen = 'a'), COUNT(*) FROM answers").fetchone()
    con.close()
    assert total == 85
    p_hat, z = wins / total, 1.959963984540054  # Wilson's interval, by hand
    centre = (p_hat + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p_hat * (1 - p_hat) / total + z * z / (4 * total * total))

    page.get(f"{srv.base}/admin/{admin_token(study_dir)}")
    text = {i: page.find_element(By.ID, i).text for i in ("rate", "wins", "total", "low", "high", "raters")}
    assert text == {"rate": f"{100 * p_hat:.2f}%", "wins": str(wins), "total": "85",
                    "low": f"{100 * (centre - half):.2f}%", "high": f"{100 * (centre + half):.2f}%", "raters": "5"}
    assert len(page.find_elements(By.CSS_SELECTOR, "#pairs tr")) == 18
    _assert_clean(page)
    screenshot(page, screenshot_dir(request, tmp_path), "study-admin")
    page.get(f"{srv.base}/admin/{'x' * 32}")  # a forged admin token sees nothing
    assert "404" in page.find_element(By.TAG_NAME, "body").text and "rate" not in page.page_source
