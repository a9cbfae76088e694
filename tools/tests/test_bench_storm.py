"""`fengqiao bench storm` end to end with tiny counts (20 devices x 5 records within 1 s, one press
at 0.5 s on a host board): the JSON shape and plausible bounds. ~20 s."""

import json
import subprocess
import sys

import pytest

from tools.testing.procs import REPO_ROOT


@pytest.mark.timeout(150)
def test_bench_storm_small():
    argv = [sys.executable, "-m", "tools.cli", "bench", "storm", "--json", "--devices", "20", "--backlog", "5",
            "--window-s", "1", "--press-at", "0.5", "--procs", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=140, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "storm" and result["events"] == 100
    assert result["connected"] == 20 and result["devices_done"] == 20
    assert result["acked"] == 100 and result["unexpected"] == 0
    assert result["stored_at_gateway"] >= 100 and result["county_complete_s"] is not None
    assert 0 < result["drain_s"] < 30 and result["events_per_s"] > 0
    (press,) = result["presses"]
    for what in ("stored", "county", "sirens"):
        assert press[what] is not None and 0 < press[what] < 10_000, press
    assert result["press_ms"]["sirens"]["n"] == 1 and isinstance(result["goal_met"], bool)
