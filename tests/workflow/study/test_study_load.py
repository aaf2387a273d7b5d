"""Many raters at once and a server killed with SIGKILL mid-study: no answer lost, none duplicated."""
from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest
import requests
# fixtures: a conftest.py here would shadow tests/conftest.py for the `from conftest import` of other tests
from study_helpers import image_sets, server_factory, study_dir, study_template  # noqa: F401
from study_helpers import answers, parse_page, tokens

T = 10


def _rater(base, tok, log, stop=None, max_requests=2 * 17 + 3):
    """One rater answering every pair; log: (kind, rater, pair) for 'sent' and 'acked' answers, and errors."""
    s = requests.Session()
    n = 0
    try:
        while n < max_requests and not (stop and stop.is_set()):
            n += 1
            page = parse_page(s.get(f"{base}/r/{tok}", timeout=T).text)
            if page is None:
                log.append(("done", tok, None))
                return
            side = "left" if (page["pair"] + len(tok)) % 2 else "right"
            log.append(("sent", tok, page["pair"]))
            n += 1
            r = s.post(f"{base}/r/{tok}/answer", data={"pair": page["pair"], "choice": side}, timeout=T,
                       allow_redirects=False)
            log.append(("acked" if r.status_code == 303 else f"status {r.status_code}", tok, page["pair"]))
    except requests.RequestException as e:
        log.append(("error", tok, type(e).__name__))


def _per_rater(study_dir):
    ids = {t: i for i, t in enumerate(tokens(study_dir), start=1)}
    return ids


def test_twenty_concurrent_raters_lose_and_duplicate_nothing(study_dir, server_factory):
    srv = server_factory(study_dir)
    toks = tokens(study_dir)[:20]
    logs = [[] for _ in toks]
    threads = [threading.Thread(target=_rater, args=(srv.base, t, lg)) for t, lg in zip(toks, logs)]
    t0 = time.time()
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    dt = time.time() - t0
    assert all(lg[-1][0] == "done" for lg in logs), [lg[-1] for lg in logs]
    acked = {(t, p) for lg in logs for k, t, p in lg if k == "acked"}
    assert len(acked) == 20 * 17 and not any(k.startswith("status") for lg in logs for k, _, _ in lg)
    ids = _per_rater(study_dir)
    rows = answers(study_dir)
    assert len(rows) == 340 and len({(r, p) for r, p, _, _ in rows}) == 340
    assert {(r, p) for r, p, _, _ in rows} == {(ids[t], p) for t, p in acked}
    n_requests = sum(len(lg) for lg in logs)  # one GET per 'sent'/'done', one POST per 'acked'
    print(f"\n20 raters: {n_requests} requests in {dt:.2f} s = {n_requests / dt:.0f} requests/s")


def test_sigkill_mid_study_loses_at_most_the_requests_in_flight(study_dir, server_factory):
    srv = server_factory(study_dir)
    toks = tokens(study_dir)[:20]
    logs = [[] for _ in toks]
    stop = threading.Event()
    threads = [threading.Thread(target=_rater, args=(srv.base, t, lg, stop)) for t, lg in zip(toks, logs)]
    for th in threads:
        th.start()
    t0 = time.time()
    while sum(k == "acked" for lg in logs for k, _, _ in lg) < 120:
        assert time.time() - t0 < 60, "raters too slow"
        time.sleep(0.005)
    os.kill(srv.proc.pid, signal.SIGKILL)  # while the raters are answering
    srv.proc.wait(10)
    stop.set()
    for th in threads:
        th.join(30)
    ids = _per_rater(study_dir)
    acked = {(ids[t], p) for lg in logs for k, t, p in lg if k == "acked"}
    sent = {(ids[t], p) for lg in logs for k, t, p in lg if k == "sent"}
    in_flight = sent - acked
    con = sqlite3.connect(study_dir / "answers.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    srv2 = server_factory(study_dir)  # restart on the same database
    rows = answers(study_dir)
    stored = {(r, p) for r, p, _, _ in rows}
    assert len(rows) == len(stored)  # none duplicated
    assert acked <= stored  # every 303 is on disk
    assert stored - acked <= in_flight  # at most the requests in flight are extra...
    lost = acked - stored
    assert not lost
    committed_unacked = len(stored - acked)
    # ...and the raters finish after the restart, each pair answered once
    logs2 = [[] for _ in toks]
    threads = [threading.Thread(target=_rater, args=(srv2.base, t, lg)) for t, lg in zip(toks, logs2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert all(lg[-1][0] == "done" for lg in logs2), [lg[-1] for lg in logs2]
    rows = answers(study_dir)
    assert len(rows) == 340 and len({(r, p) for r, p, _, _ in rows}) == 340
    con = sqlite3.connect(study_dir / "answers.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    print(f"\nkill -9 after {len(acked)} acknowledged answers: {len(in_flight)} in flight, "
          f"{committed_unacked} of them committed, 0 acknowledged lost")


@pytest.mark.parametrize("k, n, low, high", [(8, 10, 0.4902, 0.9433), (0, 10, 0.0, 0.2775)])
def test_wilson_interval_against_hand_computation(k, n, low, high):
    # 8/10 by hand: centre (0.8 + 1.9208/10) / 1.38415 = 0.71674, half 1.41600 * sqrt(0.016 + 0.0096) = 0.22658;
    # 0/10: centre 0.19208 / 1.38415 = 0.13877 = half, so [0, 0.27753]
    from workflow.study.results import wilson_interval
    lo, hi = wilson_interval(k, n)
    assert abs(lo - low) < 5e-5 and abs(hi - high) < 5e-5
    assert wilson_interval(0, 0) == (0.0, 1.0)
