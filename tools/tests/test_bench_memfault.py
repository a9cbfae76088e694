"""tools/bench_memfault.py and the host board's `hog` op on the real VM, 64 KB heap, real
Mosquitto and a scripted gateway: a MemoryError-driven reboot keeps the outbox and the sequence
counter, and a few injections during sends lose nothing. The 100-injection figure is the
bench's (`fengqiao bench memfault`), not asserted here."""

import random
import re

import pytest

from tools import bench_memfault as mf
from tools.bench_firmware import Port
from tools.testing.procs import wait_for


@pytest.mark.timeout(90)
def test_memoryerror_reboot_keeps_the_outbox_and_the_sequence_counter(tmp_path):
    """No acks at first, so everything stays queued; the hog holds the whole heap until the
    supervisor gives up on a task (5 MemoryErrors in a row) and the board exits 3; powered on
    again it still has every event and hands out seqs above all of them; acked, it drains."""
    unit = mf._Unit("checkin", str(tmp_path), Port(), 10, auto_ack=False)
    try:
        unit.power_on()
        wait_for(lambda: len(unit.frames()) >= 11, 20, "the 10 queued events and the boot event, unacked")
        before = max(f.seq for f in unit.frames())
        unit.hb.request("hog", leave=96, ms=20000)
        wait_for(lambda: not unit.check_alive() or unit.reboots, 30, "the supervisor's reboot (exit 3)")
        assert (unit.reboots, unit.crashes) == (1, []), unit.hb.log_tail(3000)
        wait_for(lambda: len(re.findall(r"role up", unit.hb.log_tail(1 << 20))) >= 2, 20, "the board to boot again")
        log = unit.hb.log_tail(1 << 20)
        assert "failing: reboot" in log, log[-3000:]  # (the MemoryError lines themselves may not fit)
        ups = re.findall(r"role up, device \w+, outbox (\d+) waiting", log)
        assert ups[-1] == "12", ups  # 10 queued + the first boot event + this boot's
        unit.gw.auto_ack = True
        wait_for(lambda: mf._last_outbox(unit.hb.log_tail(600)) == 0, 60, "the outbox to drain once acked")
        got = set(f.seq for f in unit.frames())
        assert set(unit.prefilled) <= got
        boots = sorted(set(f.seq for f in unit.frames("boot")))
        assert len(boots) == 2 and boots[1] > before, (boots, before)
        assert mf._seq_check(unit) == []
    finally:
        unit.close()


@pytest.mark.timeout(90)
def test_injections_during_sends_lose_nothing(tmp_path):
    """A few of the bench's cycles (a card, then the hog at a random instant): every check-in
    stored in the end, nothing queued lost, no seq reused, the board never crashed."""
    fig = mf.run_role("checkin", 3, str(tmp_path / "checkin"), random.Random(7), prefill=10, long_every=0,
                      report=lambda msg: None, max_cycles=6)
    assert fig["injections"] >= 3 and fig["injected_failures"] >= 1, fig
    assert mf.violations(fig) == [], fig
