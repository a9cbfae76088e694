"""`fengqiao bench e2e` end to end with tiny counts (2 rounds per phase, 10 background devices at
100 events/s): the JSON shape and plausible bounds, not the figures (benches print them). ~15 s."""

import json
import subprocess
import sys

import pytest

from tools.testing.procs import REPO_ROOT


@pytest.mark.timeout(120)
def test_bench_e2e_small():
    argv = [sys.executable, "-m", "tools.cli", "bench", "e2e", "--json", "--rounds", "2", "--load", "100",
            "--bg-devices", "10"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=110, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "e2e" and result["rounds"] == 2
    for phase in ("idle", "load"):
        for what in ("at_gateway", "dispatched", "stored", "county", "sirens"):
            s = result[phase][what]
            assert s["n"] == 2 and s["missed"] == 0, (phase, what, s)
            assert 0 < s["p50"] <= s["p99"] <= s["max"] < 10_000, (phase, what, s)
        # stored at the gateway before the button's LED could show it
        assert result[phase]["at_gateway"]["p50"] < result[phase]["stored"]["p50"]
    bg = result["load"]["background"]
    assert bg["events"] > 0 and bg["acked"] == bg["events"] and not bg["errors"], bg
