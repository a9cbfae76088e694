"""Device supervision: offline after interval x factor, back online, battery and tamper, restart."""

import time

import pytest

from gateway.clock import ManualClock
from gateway.events import NewDeviceEvent
from gateway.metrics import Metrics
from gateway.pipeline import NEW, Incoming, Outcome
from gateway.registry import Registry
from gateway.store import EventStore
from gateway.supervision import Supervisor
from gateway.tests.conftest import SimDevice
from protocol import frame
from tools.testing.procs import wait_for


class Ctx:
    def __init__(self, clock, store, registry):
        self.clock, self.store, self.registry, self.metrics = clock, store, registry, Metrics()

    def emit(self, kind, body, device_id=None, place_id=None, actor="system"):
        return self.store.append_gateway_event(kind, body, device_id=device_id, place_id=place_id, actor=actor)


@pytest.fixture
def ctx(tmp_path):
    clock = ManualClock(1_767_225_600)
    reg = Registry(tmp_path / "g.db", tmp_path / "m.key", clock)
    reg.add_place("v", "county", "V")
    reg.add_device(1, "alarm_button", "v", heartbeat_interval_s=30)
    reg.add_device(2, "checkpoint", "v", heartbeat_interval_s=300, power="battery")
    store = EventStore(tmp_path / "g.db", clock)
    yield Ctx(clock, store, reg)
    store.close()
    reg.close()


def _up(device_id, kind, body, seq=1):
    return Outcome(NEW, Incoming("t", b""), device_id=device_id, kind=kind, seq=seq,
                   new=NewDeviceEvent(kind, device_id, 1, seq, list(body), b"", "t", None))


def _kinds(ctx):
    return [(e.kind, e.device_id) for e in ctx.store.events_after(0) if e.source == "gateway"]


def test_silent_button_reported_within_90_s_and_cleared(ctx):
    sup = Supervisor(ctx, default_interval_s=30, offline_factor=2.5)
    sup.observe([_up(1, "heartbeat", (3700, 10, 0, None, 10000))])
    detected = None
    for step in range(1, 40):  # the 5 s supervision timer, 200 s of silence
        ctx.clock.advance(5)
        if sup.check() and detected is None:
            detected = step * 5
    assert detected is not None and 75 < detected <= 80  # goal: within 90 s with a 30 s heartbeat
    assert _kinds(ctx) == [("device_offline", 1)]       # raised once, device 2 (300 s) still fine
    assert ctx.store.events_after(0)[0].body["limit_s"] == 75
    assert ctx.metrics._gauges[("fengqiao_devices_offline", ())] == 1
    sup.observe([_up(1, "alarm", (0,), seq=2)])
    assert _kinds(ctx)[-1] == ("device_online", 1)
    ctx.clock.advance(60)
    assert sup.check() == []


def test_battery_and_tamper_raised_once_per_change(ctx):
    sup = Supervisor(ctx, low_battery_mv=3300, battery_ok_mv=3500)
    sup.observe([_up(2, "heartbeat", (3250, 1, 0, None, 1))])
    sup.observe([_up(2, "battery_low", (3240,)), _up(2, "heartbeat", (3400, 1, 0, None, 1))])
    sup.observe([_up(2, "heartbeat", (3600, 1, 0, None, 1))])
    sup.observe([_up(1, "tamper", (True,)), _up(1, "tamper", (True,)), _up(1, "tamper", (False,))])
    assert _kinds(ctx) == [("device_battery_low", 2), ("device_battery_ok", 2), ("device_tamper_open", 1),
                           ("device_tamper_closed", 1)]


def test_state_survives_restart(ctx):
    sup = Supervisor(ctx)
    ctx.clock.advance(100)
    assert sup.check() == [1]
    again = Supervisor(ctx)  # gateway restarted: device 1 is still known to be offline
    assert 1 in again.offline
    ctx.clock.advance(1000)
    assert again.check() == [2]  # no second device_offline for device 1
    assert [k for k, _ in _kinds(ctx)] == ["device_offline", "device_offline"]


@pytest.mark.timeout(60)
def test_offline_detected_by_the_running_gateway(running_gateway, project_broker, clients):
    app = running_gateway(supervision={"default_heartbeat_interval_s": 1, "offline_factor": 2.0, "check_interval_s": 0.2})
    key = bytes(range(32))
    app.registry.add_device(7, "alarm_button", None, key=key)
    project_broker.add_device(7, key)
    dev = SimDevice(project_broker, 7, key, clients).start()
    dev.send(1, frame.UP_HEARTBEAT, (3700, 5, 0, None, 10000))
    wait_for(lambda: 1 in dev.acked(), 10, "heartbeat ack")
    silent_from = time.monotonic()
    wait_for(lambda: any(e.kind == "device_offline" for e in app.store.events_after(0)), 10, "device_offline")
    took = time.monotonic() - silent_from
    assert 1.8 <= took <= 6.0, took   # interval 1 s x factor 2, + one 0.2 s check (+ a busy shared CPU)
    dev.send(2)
    wait_for(lambda: any(e.kind == "device_online" for e in app.store.events_after(0)), 10, "device_online")


def _skewed(device_id, kind, body, seq, skew_s):
    o = _up(device_id, kind, body, seq)
    o.skew_s = skew_s
    return o


def test_clock_off_by_more_than_the_tolerance_is_a_device_fault(ctx, caplog):
    sup = Supervisor(ctx, clock_tolerance_s=120)
    hb = (3700, 10, 0, None, 10000)
    sup.observe([_skewed(1, "heartbeat", hb, 1, 30)])                # within: nothing
    with caplog.at_level("WARNING", logger="fengqiao.supervision"):
        sup.observe([_skewed(1, "alarm", (0,), 2, 3 * 365 * 86400)])  # 3 years ahead
    assert _kinds(ctx) == [("device_clock_fault", 1)]
    assert any(r.message == "device_clock_fault" for r in caplog.records)
    sup.observe([_skewed(1, "alarm", (0,), 3, 400)])                 # still off: raised once
    sup.observe([_skewed(1, "heartbeat", hb, 4, -5)])
    assert _kinds(ctx)[-1] == ("device_clock_ok", 1) and len(_kinds(ctx)) == 2
    # behind: a resent backlog (old times) is not a fault; a heartbeat sent at once is
    sup.observe([_skewed(2, "checkin", (1,), 1, -30 * 86400), _skewed(2, "heartbeat", (3700, 9, 3, None, 1), 2, -30 * 86400)])
    assert len(_kinds(ctx)) == 2
    sup.observe([_skewed(2, "heartbeat", (3700, 9, 0, None, 1), 3, -30 * 86400)])
    assert _kinds(ctx)[-1] == ("device_clock_fault", 2)
    again = Supervisor(ctx, clock_tolerance_s=120)                  # a restart keeps the flag
    assert again.clock_fault == {2}
