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

The boards run at 64 KB, over plain MQTT by default and over TLS with FQ_FAULTS_TLS=1 or make
soak (see TLS below). Over TLS a check-in point has 2-3 KB free after boot (64-bit Unix port):
MemoryErrors happen (counted in each summary as board_memory_errors), and a board whose
supervisor reboots it (5 in a row, exit 3) is powered on again by the township, as a real
board's reset comes back by itself (board_reboots). The invariant holds through both: a
MemoryError is a fault like a power cut (firmware/LINK.md).
"""

import os
import random
import time

import pytest

from tools.testing.procs import wait_for
from tools.testing.smalldisk import SmallDisk, SmallDiskUnavailable
from tools.testing.township import FaultTownship

SOAK = os.environ.get("FQ_SOAK", "") not in ("", "0")
# The boards talk plain MQTT through the proxy by default: at 64 KB over TLS a check-in point on
# the 64-bit Unix port has 2-3 KB free after boot, and its MemoryErrors then wedged the control
# channel in about 1 run in 3 -- the heap margin issue 11 is about, not what this suite checks.
# FQ_FAULTS_TLS=1 (and make soak) runs it over TLS, MemoryErrors and reboots counted.
TLS = os.environ.get("FQ_FAULTS_TLS", "1" if SOAK else "") not in ("", "0")
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
                    " channel; on a real board (--hil-port) the real-board wiring file is not built yet")
    work = tmp_path_factory.mktemp("faults")
    disk = SmallDisk(os.path.join(str(work), "gw"), size_mb=64)
    try:
        disk.mount()
    except SmallDiskUnavailable as exc:
        disk = None
        reason = str(exc)
    else:
        reason = None
    t = FaultTownship(str(work), boards=2, tls=TLS)
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


def test_county_down_for_a_while(township):
    down_s = n("county_down_s")
    township.county.stop()
    try:
        at_county = township.recorder.count()
        t0 = time.monotonic()
        township.burst(n("burst")).join()
        # stored and acked at the township while the county is away (the store is the queue)
        wait_for(lambda: not township._missing_at_gateway(), 60, "the taps stored at the gateway, county down")
        assert township.recorder.count() == at_county, "the county was down, yet envelopes arrived"
        left = down_s - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)   # the fault itself: the county stays down this long
    finally:
        township.county.start()
    print("county down %.0f s:" % down_s, township.check_invariant(timeout_s=60 + down_s))


def test_device_power_cut_at_random_instants(township):
    from tools.hostboard import HostBoardError

    seed = int(os.environ.get("FQ_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print("power cuts: FQ_SEED=%d" % seed)
    devices = sorted(township.boards)
    for i in range(n("power_cuts")):
        device_id = rng.choice(devices)
        b = township.burst(None, boards=[device_id])
        # the power goes at a random instant: before the card is read, while it is written to
        # flash, while it is sent, while its ack is on the way, or after
        time.sleep(rng.uniform(0.0, 1.2))
        township.power_cut(device_id)
        try:
            b.stop()
        except AssertionError as exc:   # the tap the cut interrupted: it may not have shown "stored"
            if not isinstance(exc.__cause__, HostBoardError):
                raise
        finally:                        # the next scenario needs the board running, even after a failure
            township.power_on(device_id)
    print("power cuts x%d:" % n("power_cuts"), township.check_invariant())


def test_wifi_flapping_drops_delays_and_half_open_connections(township):
    proxy = township.proxy
    boards = len(township.boards)
    b = township.burst(None)
    try:
        for _cycle in range(n("flap_cycles")):
            for action in ("drop", "delay", "half_open", "down"):
                shown = b.shown()
                accepted = proxy.counts["accepted"]
                if action == "drop":
                    proxy.drop()
                elif action == "delay":
                    proxy.set_delay(300)
                elif action == "half_open":
                    proxy.half_open()
                else:
                    proxy.set_down(True)
                b.wait_shown(shown + 2 * boards)           # the units keep taking cards meanwhile
                if action == "delay":
                    proxy.set_delay(0)
                elif action == "down":
                    proxy.set_down(False)
                if action in ("drop", "half_open", "down"):
                    # every unit found out by itself (RST / its keepalive) and connected again
                    wait_for(lambda: proxy.counts["accepted"] >= accepted + boards, 30,
                             "every board to reconnect after %s (%s)" % (action, proxy.stats()))
    finally:
        proxy.set_down(False)
        proxy.set_delay(0)
        b.stop()
    print("wifi flapping:", proxy.stats(), township.check_invariant())


def test_disk_full_under_the_gateway_database(township):
    if township.disk is None:
        pytest.skip("disk full needs a size-limited file system: %s" % township.disk_unavailable)
    before = len(township.device_rows())
    ballast = township.disk.fill()
    try:
        township.burst(n("burst")).join()         # the units store on their own flash regardless
        # what happens at the gateway: nothing acked that is not stored (the units keep resending)
        time.sleep(2)   # the fault itself: the disk stays full while the units resend
        stored_while_full = len(township.device_rows()) - before
        alive = township.gateway.poll() is None
    finally:
        township.disk.unfill()
    if not alive:
        township.start_gateway()
    print("disk full (%d byte ballast): %d device events stored while full, gateway alive: %s"
          % (ballast, stored_while_full, alive), township.check_invariant())
    assert alive, "the gateway process exited on a full disk:\n%s" % township.gateway_log_text()[-3000:]


def test_deleted_or_damaged_store_is_refused_and_the_backup_loses_nothing(township):
    import shutil

    township.burst(n("burst")).join()
    township.check_invariant()
    backup = os.path.join(township.work, "backup-%d.db" % time.monotonic_ns())
    status, out = township.gateway_cli("backup", backup)
    assert status == 0, out
    township.stop_gateway()
    head = township.head()
    db = township.db_path
    aside = os.path.join(township.work, "damaged-%d" % time.monotonic_ns())
    os.makedirs(aside)

    def move_aside():
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                shutil.move(db + suffix, os.path.join(aside, os.path.basename(db) + suffix + ".%d" % time.monotonic_ns()))
    try:
        # taps while the gateway is down: shown as stored on the units, must arrive after the restore
        township.burst(2).join()
        # (1) the store deleted: the signing key already signed a chain -> NewChainRequired
        move_aside()
        status, text = township.run_gateway_expecting_refusal()
        assert status == 1 and "--new-chain" in text and "Traceback" not in text, text
        # (2) a zero-length file, (3) 4 KB of garbage in the middle -> StoreDamaged, no traceback
        open(db, "wb").close()
        status, text = township.run_gateway_expecting_refusal()
        assert status == 1 and "damaged" in text and "Traceback" not in text, text
        move_aside()
        shutil.copyfile(backup, db)
        size = os.path.getsize(db)
        with open(db, "r+b") as f:
            f.seek(max(4096, size // 2 // 4096 * 4096))
            f.write(os.urandom(4096))
        status, text = township.run_gateway_expecting_refusal()
        assert status == 1 and "damaged" in text and "Traceback" not in text, text
        # restore (gateway/README.md, Backup and restore): damaged files aside, the backup copied in
        move_aside()
        shutil.copyfile(backup, db)
        os.chmod(db, 0o600)
    finally:
        if township.gateway.poll() is not None:
            township.start_gateway()
    assert township.head() >= head
    township.burst(2).join()
    print("store deleted/damaged, restored:", township.check_invariant())
