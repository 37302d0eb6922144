"""Every benchmark under bench/ still runs: each in its --smoke mode (tiny sizes, seconds).

Benchmarks are run by hand, so one that no longer runs (an API it calls changed, a helper
moved) would otherwise only be found the next time someone needs its numbers. The ones that
need network namespaces (root) skip those parts themselves, or are skipped here.
"""

import os
import pathlib
import subprocess
import sys

import pytest

from netns import netns_available

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py"))
NEEDS_NETNS = {"bench_nat.py"}  # exits 2 without namespaces
TIMEOUT = 240  # seconds; a smoke run takes 1-45 s on 2 loaded cores


def test_every_bench_is_listed():
    assert len(BENCHES) >= 6, BENCHES


@pytest.mark.parametrize("bench", BENCHES)
def test_bench_runs_in_smoke_mode(bench):
    if bench in NEEDS_NETNS:
        usable, why = netns_available(iptables=True)
        if not usable:
            pytest.skip(why)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, f"{bench} --smoke failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
