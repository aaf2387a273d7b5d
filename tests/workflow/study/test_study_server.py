"""The web application under a real uvicorn process, driven with requests: the page flow, bad requests, the
admin view, the default bind address."""
from __future__ import annotations

import csv
import http.client
import io
import json
import math
import re

import requests
# fixtures: a conftest.py here would shadow tests/conftest.py for the `from conftest import` of other tests
from study_helpers import image_sets, server_factory, study_dir, study_template  # noqa: F401
from study_helpers import admin_token, answers, db_state, parse_page, tokens

T = 10  # every request bounded


def _study(d):
    return json.loads((d / "study.json").read_text())


def test_a_rater_answers_every_pair_and_a_reload_continues(study_dir, server_factory):
    srv = server_factory(study_dir)
    study = _study(study_dir)
    by_pair = {p["id"]: p for p in study["pairs"]}
    tok = tokens(study_dir)[0]
    s = requests.Session()
    r = s.get(f"{srv.base}/r/{tok}", timeout=T)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "img-src 'self'" in csp and "script" not in csp
    assert "<script" not in r.text and "Which image better matches the text and has higher quality?" in r.text
    seen, clicked = [], {}
    for k in range(1, 18):
        page = parse_page(s.get(f"{srv.base}/r/{tok}", timeout=T).text)
        assert (page["k"], page["n"]) == (k, 17)
        pair = by_pair[page["pair"]]
        assert {page["left"], page["right"]} == {pair["image_a"], pair["image_b"]}
        for side in ("left", "right"):
            img = s.get(f"{srv.base}/img/{page[side]}.png", timeout=T)
            assert img.status_code == 200 and img.headers["content-type"] == "image/png"
            assert img.content == (study_dir / "images" / f"{page[side]}.png").read_bytes()
        if k == 9:  # a reload mid-way shows the same pair with the same sides
            again = s.get(f"{srv.base}/r/{tok}", timeout=T).text
            assert parse_page(again) == page
        choice = "left" if k % 3 else "right"
        r = s.post(f"{srv.base}/r/{tok}/answer", data={"pair": page["pair"], "choice": choice}, timeout=T,
                   allow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/r/{tok}"
        seen.append(page["pair"])
        clicked[page["pair"]] = "a" if page[choice] == pair["image_a"] else "b"
        if k == 5:  # answering the same pair again: 409 and nothing changes
            before = db_state(study_dir)
            r = s.post(f"{srv.base}/r/{tok}/answer", data={"pair": page["pair"], "choice": "right"}, timeout=T,
                       allow_redirects=False)
            assert r.status_code == 409 and "already answered" in r.text
            assert db_state(study_dir) == before
    assert sorted(seen) == list(range(1, 18)) and seen != sorted(seen)  # every pair once, in a shuffled order
    done = s.get(f"{srv.base}/r/{tok}", timeout=T)
    assert done.status_code == 200 and parse_page(done.text) is None and "Thank you" in done.text
    rows = answers(study_dir)
    assert len(rows) == 17 and {(p, c) for _, p, _, c in rows} == set(clicked.items())
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in s.get(f"{srv.base}/admin/{admin_token(study_dir)}", timeout=T).text


def _raw(srv, method, path, body=None, headers=None):
    """A request sent byte for byte (no client-side normalisation of the path)."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=T)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None and "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
            c.putheader("Content-Length", str(len(body)))
        c.endheaders()
        if body is not None:
            c.send(body)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_bad_requests_are_4xx_and_change_nothing(study_dir, server_factory):
    srv = server_factory(study_dir)
    toks = tokens(study_dir)
    tok = toks[0]
    # rater 0 has answered one pair and is shown a second; rater 1 has seen nothing
    page = parse_page(requests.get(f"{srv.base}/r/{tok}", timeout=T).text)
    assert requests.post(f"{srv.base}/r/{tok}/answer", data={"pair": page["pair"], "choice": "left"},
                         timeout=T, allow_redirects=False).status_code == 303
    answered = page["pair"]
    page = parse_page(requests.get(f"{srv.base}/r/{tok}", timeout=T).text)
    other = next(p for p in range(1, 18) if p not in (answered, page["pair"]))
    image = page["left"]
    forged = "A" * 32
    ans = f"/r/{tok}/answer"

    def chunks():
        for _ in range(10):
            yield b"pair=1&choice=left&" + b"x" * 1000

    cases = [
        ("GET", f"/r/{forged}", None, {}, 404),
        ("GET", "/r/short", None, {}, 404),
        ("POST", f"/r/{forged}/answer", f"pair={page['pair']}&choice=left", FORM, 404),
        ("POST", ans, "pair=999&choice=left", FORM, 404),                       # unknown pair
        ("POST", ans, f"pair={other}&choice=left", FORM, 409),                  # not the pair shown
        ("POST", ans, f"pair={answered}&choice=left", FORM, 409),               # second answer
        ("POST", ans, f"pair={page['pair']}&choice=middle", FORM, 400),         # wrong choice
        ("POST", ans, f"pair={page['pair']}&choice=LEFT", FORM, 400),
        ("POST", ans, f"pair={page['pair']}", FORM, 400),                       # missing choice
        ("POST", ans, f"pair={page['pair']}&choice=left&choice=right", FORM, 400),
        ("POST", ans, f"pair={page['pair']}&choice=left&extra=1", FORM, 400),
        ("POST", ans, "pair=1%20OR%201=1&choice=left", FORM, 400),
        ("POST", ans, "pair=&choice=left", FORM, 400),
        ("POST", ans, "%%%", FORM, 400),                                        # malformed body
        ("POST", ans, b"pair=1&choice=\xff", FORM, 400),                        # not ASCII
        ("POST", ans, "", FORM, 400),
        ("POST", ans, json.dumps({"pair": page["pair"], "choice": "left"}),
         {"Content-Type": "application/json"}, 415),
        ("POST", ans, "x" * 5000, FORM, 413),                                   # oversized, by its length
        ("POST", ans, "pair=1", {**FORM, "Content-Length": "99999999999"}, 413),
        ("GET", ans, None, {}, 405),                                           # wrong method
        ("PUT", f"/r/{tok}", "", FORM, 405),
        ("DELETE", f"/admin/{admin_token(study_dir)}", None, {}, 405),
        ("GET", "/img/../study.json", None, {}, 404),                            # path traversal
        ("GET", "/img/..%2fstudy.json", None, {}, 404),
        ("GET", "/img/%2e%2e%2f%2e%2e%2fetc%2fpasswd", None, {}, 404),
        ("GET", "/img/..%2fanswers.db", None, {}, 404),
        ("GET", f"/img/{image}.jpg", None, {}, 404),
        ("GET", f"/img/{image[::-1]}.png", None, {}, 404),                       # not an image of the study
        ("GET", f"/images/{image}.png", None, {}, 404),
        ("GET", f"/admin/{forged}", None, {}, 404),                              # forged admin token
        ("GET", f"/admin/{tok}/results.csv", None, {}, 404),                     # a rater's token is no admin's
    ]
    before = db_state(study_dir)
    assert before["answers"] == 1 and before["shown"] == 2
    for method, path, body, headers, want in cases:
        if isinstance(body, str):
            body = body.encode()
        status, text = _raw(srv, method, path, body, headers)
        assert status == want, (method, path, body, status, text)
        assert len(text) < 200 and "Traceback" not in text
        assert db_state(study_dir) == before, (method, path)
    # a chunked body without a length is cut off at the limit as well
    r = requests.post(f"{srv.base}{ans}", data=chunks(), headers=FORM, timeout=T)
    assert r.status_code == 413
    assert db_state(study_dir) == before
    assert len(cases) + 1 >= 15
    # and the server still answers a good request afterwards
    r = requests.post(f"{srv.base}{ans}", data={"pair": page["pair"], "choice": "right"}, timeout=T,
                      allow_redirects=False)
    assert r.status_code == 303 and db_state(study_dir)["answers"] == 2


def _wilson(k, n, z=1.959963984540054):
    # by hand, as in Wilson (1927): (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    p = k / n
    return ((p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n),
            (p + z * z / (2 * n) + z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n))


def test_admin_view_and_csv_show_what_the_database_holds(study_dir, server_factory):
    srv = server_factory(study_dir)
    study = _study(study_dir)
    a_images = {p["image_a"] for p in study["pairs"]}
    for i, tok in enumerate(tokens(study_dir)[:4]):
        s = requests.Session()
        for k in range(17 if i < 3 else 6):
            page = parse_page(s.get(f"{srv.base}/r/{tok}", timeout=T).text)
            # rater i prefers A on pairs whose number is not a multiple of i+2: a known, uneven split
            want_a = page["pair"] % (i + 2) != 0
            side = "left" if (page["left"] in a_images) == want_a else "right"
            assert s.post(f"{srv.base}/r/{tok}/answer", data={"pair": page["pair"], "choice": side},
                          timeout=T, allow_redirects=False).status_code == 303
    rows = answers(study_dir)
    n, k = len(rows), sum(c == "a" for *_, c in rows)
    assert n == 3 * 17 + 6
    low, high = _wilson(k, n)
    html = requests.get(f"{srv.base}/admin/{admin_token(study_dir)}", timeout=T).text
    span = {name: re.search(rf'id="{name}">([^<]*)<', html)[1] for name in ("rate", "wins", "total", "low", "high",
                                                                           "raters", "label-a", "label-b")}
    assert span == {"rate": f"{100 * k / n:.2f}%", "wins": str(k), "total": str(n), "low": f"{100 * low:.2f}%",
                    "high": f"{100 * high:.2f}%", "raters": "4", "label-a": "SIM",
                    "label-b": "PixArt-alpha (20 steps)"}
    r = requests.get(f"{srv.base}/admin/{admin_token(study_dir)}/results.csv", timeout=T)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == n and sum(row["chosen"] == "a" for row in table) == k
    assert {row["chosen_label"] for row in table} <= {"SIM", "PixArt-alpha (20 steps)"}
    for row in table:  # the side clicked and the side A was on give the method chosen
        assert row["chosen"] == ("a" if row["clicked"] == row["a_side"] else "b")
    from workflow.study.results import study_result
    res = study_result(study_dir)
    assert (res["wins_a"], res["total"], res["raters_answered"]) == (k, n, 4)
    assert math.isclose(res["wilson95_low"], low, rel_tol=1e-12) and math.isclose(res["wilson95_high"], high,
                                                                                   rel_tol=1e-12)
    assert sum(p["wins_a"] + p["wins_b"] for p in res["pairs"]) == n


def test_serve_binds_to_loopback_by_default(study_dir, server_factory):
    srv = server_factory(study_dir, host_arg=False)
    assert "http://127.0.0.1:" in srv.output()
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == srv.port:  # 0A: LISTEN
                listening.append(local.split(":")[0])
    assert listening == ["0100007F"]  # 127.0.0.1 only, not 0.0.0.0 or ::
