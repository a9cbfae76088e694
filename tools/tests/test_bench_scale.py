"""`fengqiao bench scale` end to end with tiny counts (20 devices, 2 silent, 2 s heartbeats): the
JSON shape and plausible bounds (offline detection near 2.5 heartbeats, no false offline). ~12 s."""

import json
import subprocess
import sys

import pytest

from tools.testing.procs import REPO_ROOT


@pytest.mark.timeout(120)
def test_bench_scale_small():
    argv = [sys.executable, "-m", "tools.cli", "bench", "scale", "--json", "--devices", "20", "--silent", "2",
            "--heartbeat-s", "2", "--procs", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=110, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "scale" and result["devices"] == 20 and result["silent"] == 2
    assert result["heartbeats_sent"] >= 20 and result["heartbeats_acked"] == result["heartbeats_sent"]
    assert result["lost"] == 0 and result["false_offline"] == 0
    assert len(result["offline_detect_s"]) == 2 and None not in result["offline_detect_s"]
    assert 4.0 <= min(result["offline_detect_s"]) <= max(result["offline_detect_s"]) <= 8.0, result["offline_detect_s"]
    assert 0 <= result["gateway_cpu_pct"] <= 200 and result["gateway_peak_rss_kb"] > 1000
    assert result["goal_met"] is True
