"""Issue 3, item 10: either role runs in a 64 KB heap (`micropython -X heapsize=64k`, code from
ROMFS as a board runs it) through the memory scenario of `fengqiao bench firmware`: 200 queued
events drained over MQTT, a broker restart and reconnect, one more event of the role. The run
fails on any MemoryError, even one the supervisor recovered from. The bench prints the figures
(smallest heap that passes, GC high-water mark); here the bound itself is asserted."""

import pytest

from tools.bench_firmware import run_scenario


@pytest.mark.timeout(150)
@pytest.mark.parametrize("role", ["alarm", "checkin"])
def test_200_queued_events_and_a_reconnect_in_64k(role, tmp_path):
    figures = run_scenario(role, 64, str(tmp_path / role))
    assert figures["frames"] >= 202  # 200 queued + boot + the event after the reconnect
    assert 0 < figures["code_bytes"] < figures["live_peak"] < 64 * 1024
    assert figures["qstrs"] < 620  # the next qstr pool block would take another 7.1 KB
