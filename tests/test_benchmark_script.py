"""The iteration benchmark runs and prints its ratios (timings themselves are not asserted: benchmarks are
scripts, not timed tests)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_iterations_prints_ratios():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_iterations.py"), "--batch", "8",
                        "--reps", "3"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    ratio = float(re.search(r"ratio SIM iteration / floor: ([0-9.]+)", p.stdout).group(1))
    assert 0.3 < ratio < 10  # the loop is its passes plus bookkeeping: neither free nor an order of magnitude off
    for m in ("sim", "sid", "di"):
        assert re.search(rf"^{m}\s+[0-9.]+\s+[0-9.]+", p.stdout, re.M)
