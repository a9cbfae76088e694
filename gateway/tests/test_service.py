"""The running gateway against a real Mosquitto and real SQLite: verify, store, ack, count, hooks."""

import time
import urllib.request

import pytest

from gateway.tests.conftest import SimDevice
from protocol import frame
from tools.testing.procs import wait_for

KEY_A, KEY_B = bytes(range(32)), bytes(range(50, 82))
A, B = 0x2A, 0x2B


def _provision(app, broker, *devs):
    for device_id, key in devs:
        app_reg = app.registry
        app_reg.add_device(device_id, "alarm_button", None, key=key)
        broker.add_device(device_id, key)


def _metrics(app):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % app.metrics_port, timeout=5) as r:
        return r.read().decode()


@pytest.mark.timeout(60)
def test_alarm_stored_then_acked_with_gateway_time(running_gateway, project_broker, clients):
    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A))
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    before = int(time.time())
    dev.send(1, t=before)
    wait_for(lambda: 1 in dev.acked(), 10, "ack of seq 1")
    # no paho wake pair: it cost two system calls per uplink (service._Client.loop)
    assert app.service._client._sockpairW is None
    ack = dev.downlinks[0]
    assert ack.body[:2] == [1, 0] and abs(ack.body[2] - before) <= 5
    (ev,) = app.store.events_after(0)
    assert (ev.kind, ev.device_id, ev.seq, ev.body) == ("alarm", A, 1, [0])
    assert ev.frame == dev.frame(1, t=before)
    text = _metrics(app)
    assert 'fengqiao_events_total{kind="alarm"} 1' in text
    assert "fengqiao_verify_to_ack_seconds_count 1" in text
    # connected clients, from the broker's $SYS tree (at least the gateway itself)
    wait_for(lambda: (app.metrics._gauges.get(("fengqiao_broker_clients_connected", ())) or 0) >= 1, 15,
             "$SYS connected-clients gauge")


@pytest.mark.timeout(60)
def test_rejections_each_counted_by_reason_and_never_acked(running_gateway, project_broker, clients):
    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A), (B, KEY_B))
    a = SimDevice(project_broker, A, KEY_A, clients).start()
    b = SimDevice(project_broker, B, KEY_B, clients)
    a.send(300)
    wait_for(lambda: 300 in a.acked(), 10, "ack of seq 300")
    good = a.frame(301)
    a.send_raw(good[:-1] + bytes([good[-1] ^ 0x55]))                       # forged MAC
    a.send(3)                                                               # replay: below the window under 300, never stored
    a.send_raw(frame.sign(b.k_up, a.topic, b.frame(1)[:-16]))               # B's frame on A's topic
    unknown = SimDevice(project_broker, 0x99, KEY_A, clients)
    a.send_raw(frame.sign(unknown.k_up, a.topic, unknown.frame(1)[:-16]))  # unregistered device id
    a.send_raw(b"\x01\x03" + bytes(10))                                     # malformed (short)
    a.send_raw(frame.sign(a.k_up, a.topic, good[:15] + b"\x81\x18\x00"))     # non-canonical body
    a.send(300)                                                               # duplicate: re-acked
    a.send(302)
    wait_for(lambda: 302 in a.acked(), 10, "ack of seq 302")
    want = {"BadMac": 1, "OutsideReplayWindow": 1, "TopicMismatch": 1, "UnknownDevice": 1, "MalformedFrame": 1, "NonCanonical": 1}
    wait_for(lambda: all(app.metrics.counter("fengqiao_rejections_total", {"reason": r}) == n for r, n in want.items()),
             10, "every rejection counted")
    assert a.acks == {300: [0, 0], 302: [0]}
    assert [e.seq for e in app.store.events_after(0)] == [300, 302]
    assert app.metrics.counter("fengqiao_duplicates_total") == 1
    assert app.metrics.counter("fengqiao_seq_gaps_total") == 1
    text = _metrics(app)
    for reason in want:
        assert 'fengqiao_rejections_total{reason="%s"} 1' % reason in text


@pytest.mark.timeout(60)
def test_handlers_timers_and_context(running_gateway, project_broker, clients):
    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A))
    seen, ticks = [], []

    def handler(event, ctx):
        seen.append((event.source, event.kind))
        if event.kind == "alarm":
            ctx.send_ack(event.device_id, event.seq, 1)           # dispatched
            ctx.emit("case_opened", {"alarm_event": event.event_id}, device_id=event.device_id)

    def broken(event, ctx):
        raise RuntimeError("handler bug")

    app.service.add_event_handler(broken)
    app.service.add_event_handler(handler)
    app.service.add_timer(lambda ctx: ticks.append(ctx.clock.now()), 0.1)
    app.service.set_stage_lookup(lambda ev: 1)
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    dev.send(1)
    wait_for(lambda: dev.acks.get(1) == [0, 1], 10, "stage 0 then stage 1 ack")
    wait_for(lambda: ("gateway", "case_opened") in seen, 10, "handler to see the gateway event")
    dev.send(1)  # resend after a lost ack: re-acknowledged at the current stage
    wait_for(lambda: dev.acks.get(1) == [0, 1, 1], 10, "re-ack at stage 1")
    assert app.metrics.counter("fengqiao_handler_errors_total", {"handler": "test_handlers_timers_and_context.<locals>.broken"}) >= 2
    wait_for(lambda: len(ticks) >= 2, 5, "timer to run twice")
    seqs = [f.seq for f in dev.downlinks]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # downlink seq strictly increasing
    assert app.store.verify_chain() == 2


@pytest.mark.timeout(90)
def test_flooding_device_is_throttled_without_delaying_others(running_gateway, project_broker, clients):
    app = running_gateway(pipeline={"device_rate_per_s": 20.0, "device_burst": 20, "backlog_grace_s": 0.0})
    _provision(app, project_broker, (A, KEY_A), (B, KEY_B))
    flood = SimDevice(project_broker, A, KEY_A, clients).start()
    calm = SimDevice(project_broker, B, KEY_B, clients).start()
    for seq in range(1, 401):
        flood.send(seq, wait=False)
        if seq % 100 == 0:
            calm.send(seq // 100)
    wait_for(lambda: calm.acked() == {1, 2, 3, 4}, 15, "the calm device's 4 alarms acked")
    wait_for(lambda: app.metrics.counter("fengqiao_rejections_total", {"reason": "Throttled"}) > 0, 10, "throttling")

    def throttled():
        return app.metrics.counter("fengqiao_rejections_total", {"reason": "Throttled"})

    wait_for(lambda: len(flood.acked()) + throttled() == 400, 15, "every flood frame acked or throttled")
    assert len(flood.acked()) < 400 and throttled() >= 300
    # Nothing unacknowledged was stored, nothing acknowledged is missing.
    stored = {e.seq for e in app.store.events_after(0, 1000) if e.device_id == A}
    assert flood.acked() == stored


@pytest.mark.timeout(60)
def test_no_throttling_while_the_backlog_drains(running_gateway, project_broker, clients):
    app = running_gateway(pipeline={"device_rate_per_s": 1.0, "device_burst": 5, "backlog_grace_s": 60.0})
    _provision(app, project_broker, (A, KEY_A))
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    for seq in range(1, 51):
        dev.send(seq, frame.UP_HEARTBEAT, (3700, seq, 0, None, 10000), wait=False)
    wait_for(lambda: len(dev.acked()) == 50, 15, "all 50 acked within the grace period")
    assert app.metrics.counter("fengqiao_rejections_total", {"reason": "Throttled"}) == 0


@pytest.mark.timeout(60)
def test_debug_log_follows_a_frame(running_gateway, project_broker, clients, caplog):
    import logging

    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A))
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    with caplog.at_level(logging.DEBUG, logger="fengqiao.service"):
        logging.getLogger("fengqiao.service").setLevel(logging.DEBUG)
        try:
            dev.send(1)
            wait_for(lambda: 1 in dev.acked(), 10, "ack")
        finally:
            logging.getLogger("fengqiao.service").setLevel(logging.NOTSET)
    (rec,) = [r for r in caplog.records if r.getMessage() == "uplink verified, stored, acked"]
    assert rec.fields["device"] == "0000002a" and rec.fields["event_id"] == 1
    assert rec.fields["frame"] == dev.frame(1).hex()


@pytest.mark.timeout(90)
def test_gateway_reconnects_after_broker_restart(running_gateway, project_broker, clients):
    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A))
    project_broker.stop()
    wait_for(lambda: not app.service.connected, 10, "gateway to notice the broker is gone")
    time.sleep(0.5)  # a few failed reconnects, with back-off
    project_broker.start()
    app.service.wait_connected(20)
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    dev.send(1)
    wait_for(lambda: 1 in dev.acked(), 10, "ack after the broker restart")
    assert app.store.count() == 1


@pytest.mark.timeout(60)
def test_oversize_counted_and_huge_packets_refused_by_the_broker(running_gateway, project_broker, clients):
    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A))
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    dev.send_raw(b"\x01\x03" + bytes(400))
    wait_for(lambda: app.metrics.counter("fengqiao_rejections_total", {"reason": "Oversize"}) == 1, 10, "Oversize")
    dev.mqtt.client.publish(dev.topic, bytes(100_000), qos=1)
    wait_for(dev.mqtt.disconnected.is_set, 10, "broker to drop a client sending 100 kB")
    assert app.store.count() == 0 and app.service.connected


@pytest.mark.timeout(60)
def test_gateway_over_tls(running_gateway, project_broker, clients):
    app = running_gateway(broker={"use_tls": True}, pipeline={"device_rate_per_s": 1000.0, "device_burst": 1000})
    assert app.service.settings.port == project_broker.tls_port and app.service.settings.tls_ca
    _provision(app, project_broker, (A, KEY_A))
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    for seq in range(1, 201):
        dev.send(seq, wait=False)
    wait_for(lambda: len(dev.acked()) == 200, 20, "200 acks through a TLS gateway connection")
    assert app.store.count() == 200
    assert app.service._client._sockpairW is None


def _unread_bytes(sock):
    """Bytes the kernel holds for this socket that nobody has read yet (FIONREAD)."""
    import array
    import fcntl
    import termios

    n = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, n, True)
    return n[0]


@pytest.mark.timeout(90)
def test_an_alarm_is_stored_before_the_heartbeats_and_checkins_in_front_of_it(running_gateway, project_broker,
                                                                                 clients, monkeypatch):
    """Issue 13, the alarm lane: 300 heartbeats and check-ins reach the gateway before an alarm and
    100 more after it, all waiting in its socket at once; the alarm is the next batch (stored and
    acknowledged first), before every one of the 300 in front of it. Deterministic: the gateway's
    MQTT thread is held in the commit of a first frame until the broker has passed all 401 to its
    socket (counted with FIONREAD), so it finds them together."""
    import threading

    app = running_gateway(pipeline={"device_burst": 10000})   # the bucket is not what is tested
    c = 0x2C
    _provision(app, project_broker, (A, KEY_A), (B, KEY_B))
    app.registry.add_device(c, "checkpoint", None, key=KEY_A)
    project_broker.add_device(c, KEY_A)
    beats, alarm, cards = (SimDevice(project_broker, d, k, clients).start() for d, k in ((A, KEY_A), (B, KEY_B),
                                                                                        (c, KEY_A)))
    gate, held = threading.Event(), threading.Event()
    commit = app.store.append_device_events

    def held_commit(events):
        if not gate.is_set():
            held.set()
            gate.wait(30)
        return commit(events)

    monkeypatch.setattr(app.store, "append_device_events", held_commit)
    beats.send(1, frame.UP_HEARTBEAT, (3700, 1, 0, None, 10000))
    wait_for(held.is_set, 10, "the MQTT thread to hold in the first frame's commit")
    sent, size = [], 0
    heartbeat = (frame.UP_HEARTBEAT, (3700, 5, 0, None, 10000))
    checkin = (frame.UP_CHECKIN, (7, b"\x01\x02\x03\x04"))
    for i in range(400):
        dev, (msg_type, body) = (cards, checkin) if i % 4 == 3 else (beats, heartbeat)
        seq = 2 + i
        if i == 300:
            sent.append(alarm.send(1, wait=False))
            size += 1 + 1 + 2 + 17 + 2 + len(alarm.frame(1))      # the PUBLISH the gateway gets (QoS 1)
        sent.append(dev.send(seq, msg_type, body, wait=False))
        size += 1 + 1 + 2 + 17 + 2 + len(dev.frame(seq, msg_type, body))
    sock = app.service._client.socket()
    wait_for(lambda: _unread_bytes(sock) >= size, 20, "the broker to pass all 401 uplinks to the gateway's socket")
    gate.set()
    wait_for(lambda: 1 in alarm.acked() and len(beats.acked()) + len(cards.acked()) == 401, 30, "every ack")
    order = [(e.device_id, e.seq) for e in app.store.events_after(0, 1000)]
    assert order[:2] == [(A, 1), (B, 1)], order[:5]
    assert len(order) == 402


def test_a_later_stage_ack_has_its_gateway_time_in_the_header_time_too():
    """SPEC section 4: the gateway writes an ack's gateway_time in its header `time` as well. A
    case's later-stage ack (ctx.send_ack) read the clock twice; with the second on the next
    second the two differed by one. A clock that ticks a second per reading shows it."""
    from gateway.service import GatewayContext

    class Ticking:
        t = 1_767_225_600.4

        def now(self):
            self.t += 1.0
            return self.t

    class Svc:
        clock, store, metrics = Ticking(), None, None

        class registry:
            device = staticmethod(lambda d: type("Dev", (), {"key_id": 3}))

        def _publish_downlink(self, msg_type, device_id, key_id, body, now_i=None):
            if now_i is None:
                now_i = int(self.clock.now())
            self.sent = (msg_type, device_id, key_id, body, now_i)
            return 7

    svc = Svc()
    assert GatewayContext(svc).send_ack(A, 12, 1) == 7
    msg_type, device_id, key_id, body, header_time = svc.sent
    assert (msg_type, device_id, key_id, body[:2]) == (0x81, A, 3, [12, 1]) and body[2] == header_time


@pytest.mark.timeout(60)
def test_a_qos0_uplink_is_dropped_unread_as_wrong_qos(running_gateway, project_broker, clients):
    """SPEC section 6: uplinks are QoS 1. A valid, signed alarm published at QoS 0 is cut out of the
    gateway's read buffer (WrongQoS): not stored, not acknowledged; the same frame at QoS 1 is."""
    app = running_gateway()
    _provision(app, project_broker, (A, KEY_A))
    dev = SimDevice(project_broker, A, KEY_A, clients).start()
    dev.mqtt.client.publish(dev.topic, dev.frame(1), qos=0)
    wait_for(lambda: app.metrics.counter("fengqiao_rejections_total", {"reason": "WrongQoS"}) == 1, 10,
             "the QoS 0 uplink to be dropped")
    dev.send(2)
    wait_for(lambda: 2 in dev.acked(), 10, "the QoS 1 one acked")
    assert 1 not in dev.acked() and app.store.find_device_event(A, 1, 1) is None
