"""The memory scenario of `fengqiao bench firmware` runs through (200 queued events, drained,
a broker restart, one more event) for each role. The figures themselves (smallest heap, GC
high-water mark) are printed by the bench, not asserted here."""

import pytest

from tools.bench_firmware import run_scenario


@pytest.mark.timeout(150)
@pytest.mark.parametrize("role", ["alarm", "checkin"])
def test_200_queued_events_and_a_reconnect(role, tmp_path):
    figures = run_scenario(role, 192, str(tmp_path / role))
    assert figures["frames"] >= 202  # 200 queued + boot + the event after the reconnect
    assert figures["live_peak"] > figures["code_bytes"] > 0  # the figures the bench prints exist
