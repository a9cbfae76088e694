"""`fengqiao bench flood --json` end to end with short floods (3 s, of 1 and of 10 devices): the JSON
shape the issue asks for (victim ack and siren p50/p99 before, during and after; time to
quarantine; broker peak RSS), that every flooder was cut off and every alarm acknowledged within
the bench's 5 s. Real Mosquitto, real gateway. Figures are `fengqiao bench flood` (60 s, 1 and 10
flooders); here only loose bounds: on the shared machine even the no-flood phase has shown a p99
of 184 ms (2026-12-07, load average 5). ~25 s."""

import json
import subprocess
import sys

import pytest

from tools.testing.procs import REPO_ROOT


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_bench_flood_short():
    argv = [sys.executable, "-m", "tools.cli", "bench", "flood", "--json", "--seconds", "3", "--floods", "1,10"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=140, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "flood" and [r["flooders"] for r in result["runs"]] == [1, 10]
    for run in result["runs"]:
        for phase in ("before", "during", "after"):
            for what in ("ack", "siren"):
                got = run[phase][what]
                assert got["n"] >= 1 and 0 < got["p50_ms"] <= got["p99_ms"] <= got["max_ms"], (phase, what, run)
        # every flooder cut off at the broker within the 2 s (loose here: a loaded machine)
        assert run["quarantined"] == run["flooders"], run
        assert 0 < run["time_to_quarantine_s"]["max"] < 10, run
        assert all(f["detected"] is not None and f["refused"] is not None for f in run["flooders_s"]), run
        # no alarm of the flood phase waited out the bench's 5 s (the issue: 18 of 20 unacked after 30 s)
        assert all(ms is not None for _, ms in run["during_slow_acks"]), run["during_slow_acks"]
        assert 0 < run["broker_peak_rss_kb"] < 64 * 1024, run["broker_peak_rss_kb"]
