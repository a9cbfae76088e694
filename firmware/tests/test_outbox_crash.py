"""Outbox crash-safety: kill -9 at random points (>= 50 times), on the real MicroPython VM.

The driver is the one `fengqiao bench outbox` runs 200+ times (tools/bench_outbox.py): nothing
stored and not yet acknowledged may be lost or misread, nothing removed may come back, and no
sequence number may be handed out twice across the kills.
"""

import pytest

from tools.bench_outbox import run_cycles


@pytest.mark.timeout(120)
def test_kill9_at_random_points_50_times(tmp_path):
    stats = run_cycles(50, workdir=str(tmp_path), seed=20261122)
    assert stats["cycles"] == 50
    assert stats["violations"] == 0
    # The run exercised the outbox for real: many stores and acks across the kills.
    assert stats["stored"] > 500 and stats["acked"] > 300, stats
