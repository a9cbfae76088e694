"""`fengqiao bench gateway` runs end to end with a tiny load (figures are not asserted: benches print them)."""

import json
import subprocess
import sys

import pytest

from tools.testing.procs import REPO_ROOT


@pytest.mark.timeout(150)
def test_bench_gateway_smoke(tmp_path):
    argv = [sys.executable, "-m", "tools.cli", "bench", "gateway", "--json", "--devices", "4", "--procs", "1",
            "--events", "40", "--repeat", "1", "--rate", "40", "--latency-s", "1", "--workdir", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=140, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bench"] == "gateway" and result["events"] == 40 and result["forwarded"] == 40
    for key in ("bare_limit_events_per_s", "gateway_events_per_s", "ratio", "p50_ms", "p99_ms"):
        assert result[key] > 0, key
    assert result["latency_events"] > 0 and result["latency_lost"] == 0
    assert set(result["met"]) == {"events_per_s", "ratio", "p99_ms"}
