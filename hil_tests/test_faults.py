"""The HIL fault suite (issue 14): every single fault, and after each one the same invariant
(tools/testing/township.py, FaultTownship.check_invariant): every card a check-in point showed as
stored is stored once at the gateway and once at the county, in per-device order, no seq reused,
and `fengqiao verify` passes on the county's copy.

One township (county broker + recorder, the project's broker, the gateway as its own process, two
host boards running the real firmware behind a flapping Wi-Fi proxy) serves the whole module: the
boards boot once, and each scenario adds its own fault on top of what came before, so the
invariant is checked over the whole history so far. A scenario that kills something brings it back
in a `finally`, so the next one starts from a running township.

Counts are small by default (`make test`); `FQ_SOAK=1` (`make soak`) runs the long versions: 50
power cuts, the county down for 2 minutes, 20 Wi-Fi flap cycles, longer bursts. The gateway's data
directory is a 64 MB tmpfs (tools/testing/smalldisk.py) when that can be mounted (root), so the
disk-full scenario fills a real file system; without root that scenario skips and says why.

Not here yet: the device MemoryError scenario (the firmware's MemoryError handling is being built
elsewhere; see the report of issue 14).
"""

import os
import random
import time

import pytest

from tools.testing.procs import wait_for
from tools.testing.smalldisk import SmallDisk, SmallDiskUnavailable
from tools.testing.township import FaultTownship

SOAK = os.environ.get("FQ_SOAK", "") not in ("", "0")
# (make test, make soak)
COUNTS = {
    "burst": (4, 30),           # taps per board in a burst
    "power_cuts": (3, 50),
    "county_down_s": (3, 120),
    "flap_cycles": (1, 20),
}


def n(name):
    return COUNTS[name][1 if SOAK else 0]


pytestmark = pytest.mark.timeout(1800 if SOAK else 300)


@pytest.fixture(scope="module")
def township(tmp_path_factory, request):
    if request.config.getoption("--hil-port"):
        pytest.skip("the fault suite kills and restarts boards and taps cards through the host board's control"
                    " channel; on a real board (--hil-port) only the wiring check runs (hil_tests/wiring/)")
    work = tmp_path_factory.mktemp("faults")
    disk = SmallDisk(os.path.join(str(work), "gw"), size_mb=64)
    try:
        disk.mount()
    except SmallDiskUnavailable as exc:
        disk = None
        reason = str(exc)
    else:
        reason = None
    t = FaultTownship(str(work), boards=2)
    t.disk, t.disk_unavailable = disk, reason
    try:
        t.start()
        yield t
    finally:
        t.close()
        if disk is not None:
            disk.unmount()


def _burst_with(township, fault, recover, fault_after=None):
    """A burst on every board; `fault()` once some taps are shown, `recover()` after a few more."""
    count = n("burst")
    total = count * len(township.boards)
    before = sum(len(v) for v in township.shown.values())
    b = township.burst(count)
    try:
        b.wait_shown(before + (fault_after or max(1, total // 4)))
        fault()
        b.wait_shown(before + max(2, total // 2))
    finally:
        recover()
    b.join()
    summary = township.check_invariant()
    print(fault.__name__, summary)
    return summary


def test_broker_kill9_mid_burst(township):
    _burst_with(township, township.kill9_broker, township.start_broker)


def test_gateway_kill9_mid_burst(township):
    _burst_with(township, township.kill9_gateway, township.start_gateway)


def test_broker_and_gateway_kill9_at_once(township):
    def both():
        township.kill9_broker()
        township.kill9_gateway()

    def back():
        township.start_broker()
        township.start_gateway()
    _burst_with(township, both, back)
