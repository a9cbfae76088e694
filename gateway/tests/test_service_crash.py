"""kill -9 of the gateway in the middle of a burst loses nothing that a device saw acknowledged."""

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from gateway.cli import GatewayApp
from gateway.config import from_dict
from gateway.store import EventStore
from gateway.clock import SystemClock
from gateway.tests.conftest import SimDevice, gateway_config, write_config
from tools.testing.procs import REPO_ROOT, wait_for

KEYS = {0x100 + i: bytes([i + 1]) * 32 for i in range(4)}
PER_DEVICE = 750


def _start_gateway(cfg_path, log_path):
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "gateway", "run", "--config", cfg_path],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def ready():
        if proc.poll() is not None:
            with open(log_path, "rb") as f:
                raise RuntimeError("gateway exited:\n" + f.read()[-3000:].decode(errors="replace"))
        with open(log_path, "rb") as f:
            return f.read().count(b"gateway running") >= ready.n

    return proc, ready


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_kill_9_mid_burst_loses_nothing_acknowledged(tmp_path, project_broker, clients):
    raw = gateway_config(tmp_path, project_broker, pipeline={"device_rate_per_s": 100000.0, "device_burst": 100000})
    cfg_path = write_config(tmp_path / "gateway.toml", raw)
    app = GatewayApp(from_dict(raw))
    reg = app.open_registry()
    for device_id, key in KEYS.items():
        reg.add_device(device_id, "alarm_button", None, key=key)
    reg.close()
    project_broker.add_devices(list(KEYS.items()))
    log_path = str(tmp_path / "gateway.log")

    proc, ready = _start_gateway(cfg_path, log_path)
    ready.n = 1
    try:
        wait_for(ready, 30, "gateway to connect (log: %s)" % log_path)
        devices = [SimDevice(project_broker, d, k, clients).start() for d, k in KEYS.items()]

        def burst(dev):
            for seq in range(1, PER_DEVICE + 1):
                dev.send(seq, body=(seq % 4,), wait=False)
                if seq % 50 == 0:
                    threading.Event().wait(0.005)  # a burst, not one TCP write

        threads = [threading.Thread(target=burst, args=(d,)) for d in devices]
        for t in threads:
            t.start()
        wait_for(lambda: sum(len(d.acked()) for d in devices) >= 300, 60, "300 acks before the kill")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        acked_at_kill = {d.device_id: d.acked() for d in devices}
        for t in threads:
            t.join(60)
        total_at_kill = sum(len(s) for s in acked_at_kill.values())
        assert total_at_kill < len(KEYS) * PER_DEVICE, "the kill came after the burst; nothing was tested"

        proc, ready = _start_gateway(cfg_path, log_path)
        ready.n = 2
        wait_for(ready, 30, "gateway to restart")
        # Everything the devices published (queued by the broker for the gateway's persistent
        # session) ends up stored and acknowledged — not only what was acknowledged before.
        wait_for(lambda: all(len(d.acked()) == PER_DEVICE for d in devices), 90, "every seq acknowledged after restart")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)

    db = sqlite3.connect(os.path.join(raw["gateway"]["data_dir"], "gateway.db"))
    rows = db.execute("SELECT device_id, seq, COUNT(*) FROM events WHERE source = 'device' GROUP BY device_id, seq").fetchall()
    db.close()
    counts = collections.Counter({(d, s): n for d, s, n in rows})
    for device_id, seqs in acked_at_kill.items():
        for seq in seqs:
            assert counts[(device_id, seq)] == 1, "acked seq %d of %x stored %d times" % (seq, device_id, counts[(device_id, seq)])
    assert len(counts) == len(KEYS) * PER_DEVICE and set(counts.values()) == {1}
    store = EventStore(os.path.join(raw["gateway"]["data_dir"], "gateway.db"), SystemClock())
    assert store.verify_chain() == len(KEYS) * PER_DEVICE
    store.close()
