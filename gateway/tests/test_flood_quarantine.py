"""Issue 13: a device flooding the broker (raw mosquitto_pub, QoS 0, full loopback speed) is
quarantined at the broker within 2 s and raised as a device fault, while another device's alarm is
acknowledged and sounds its neighbours' sirens; released after the cool-down or by an operator.
Real Mosquitto, real gateway (cases + quarantine plugins), the sample village. Figures: `fengqiao
bench flood`."""

import argparse
import time

import paho.mqtt.client as mqtt
import pytest

from gateway import quarantine_cli
from gateway.config import write_config
from gateway.console import live
from gateway.console.testing import Township
from gateway.quarantine import Quarantine
from protocol import frame as pframe
from tools.bench_flood import Flooder
from tools.testing.procs import wait_for

VICTIM, NEIGHBOURS, FLOODER = 0x102, (0x101, 0x103, 0x104), 0x201


@pytest.fixture
def township(tmp_path):
    t = Township(tmp_path, county=False, plugins=("gateway.cases", "gateway.quarantine"),
                 sections={"quarantine": {"cooldown_s": 3.0, "check_interval_s": 0.2}})
    t.start()
    yield t
    t.stop()


def _events(t, kind):
    return [e for e in t.app.store.gateway_events((kind,)) if e.device_id == FLOODER]


def _quiet(t):
    """Until what the broker took from the flooder before the cut-off has reached the gateway."""
    dropped = lambda: t.app.metrics.counter("fengqiao_rejections_total", {"reason": "Quarantined"})  # noqa: E731
    last = [-1]

    def settled():
        now, last[0] = dropped(), dropped()
        return now == last[0] and not t.app.service._incoming and time.sleep(0.2) is None and dropped() == now
    wait_for(settled, 10, "the flood's last messages to drain")


def _can_connect(t):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
    c.username_pw_set(*t.broker.device_credentials(FLOODER, t.keys[FLOODER]))
    try:
        c.connect("127.0.0.1", t.broker.port, 10)
        deadline = time.monotonic() + 10
        while not c.is_connected() and time.monotonic() < deadline:
            if c.loop(0.1) != mqtt.MQTT_ERR_SUCCESS:
                return False
        return c.is_connected()
    finally:
        c.disconnect()


@pytest.mark.timeout(90)
def test_flooder_quarantined_while_an_alarm_gets_through(township, tmp_path):
    t = township
    q = next(p for p in t.app._plugins if isinstance(p, Quarantine))
    victim = t.sim_button(VICTIM)
    neighbours = [t.sim_button(d) for d in NEIGHBOURS]
    flooder = Flooder(t.broker.port, *t.broker.device_credentials(FLOODER, t.keys[FLOODER]), pframe.uplink_topic(FLOODER))
    try:
        t0 = time.monotonic()
        state = t.app.service._flood[0]._state
        topic = pframe.uplink_topic(FLOODER)
        wait_for(lambda: topic in state or not flooder.running(), 10, "the flood to reach the gateway")
        seq = victim.alarm()                       # while the broker still carries the flood
        wait_for(lambda: FLOODER in q.refused_at, 10, "the flooder to be cut off and refused at the broker")
        to_quarantine_s = q.refused_at[FLOODER] - t0
        wait_for(lambda: not flooder.running(), 10, "the broker to drop the flooder's connection")
        assert not _can_connect(t)
        (ev,) = _events(t, "device_quarantined")
        assert ev.body["reason"] == "flood" and ev.body["offence"] == 1 and ev.body["msgs_per_s"] > 400
        # the duty side: a device fault the console's live stream relays (with device_offline etc.)
        assert live.relevant(ev) and live.summary(ev)["device"] == "%08x" % FLOODER
        wait_for(lambda: 1 in victim.acks.get(seq, []), 10, "the alarm's dispatched ack")
        wait_for(lambda: all(n.sirens for n in neighbours), 10, "the neighbours' sirens")
        ack_s = victim.ack_times[seq][0] - t0
        print("flood detected %.3f s, connection dropped %.3f s, login refused %.3f s after it began; alarm acked"
              " at %.3f s" % (q.detected_at[FLOODER] - t0, q.quarantined_at[FLOODER] - t0, to_quarantine_s, ack_s))
        assert victim.acks[seq][0] == 0 and to_quarantine_s < 2.0
    finally:
        flooder.stop()
    # the cool-down (3 s) ends: released, and it may connect again
    wait_for(lambda: _events(t, "device_released"), 10, "release after the cool-down")
    assert _events(t, "device_released")[0].body == {"by": "cooldown"} and FLOODER not in t.app.service.held()
    wait_for(lambda: _can_connect(t), 10, "the broker to take the released device back (SIGHUP)")
    # a second flood: quarantined again with the cool-down doubled; an operator lets it back
    flooder = Flooder(t.broker.port, *t.broker.device_credentials(FLOODER, t.keys[FLOODER]), pframe.uplink_topic(FLOODER))
    try:
        wait_for(lambda: len(_events(t, "device_quarantined")) == 2, 10, "the second quarantine")
    finally:
        flooder.stop()
    _quiet(t)
    assert _events(t, "device_quarantined")[1].body["offence"] == 2
    assert _events(t, "device_quarantined")[1].body["cooldown_s"] == 6.0
    cfg = write_config(tmp_path / "release.toml", {"gateway": {"data_dir": str(tmp_path / "gw")},
                                                   "broker": {"manage": False, "workdir": t.broker.workdir}})
    assert quarantine_cli.run(argparse.Namespace(id="%08x" % FLOODER, config=cfg)) == 0
    wait_for(lambda: len(_events(t, "device_released")) == 2, 10, "the operator's release to be seen")
    assert _events(t, "device_released")[1].body == {"by": "operator"}
    wait_for(lambda: _can_connect(t), 10, "the broker to take the released device back (SIGHUP)")


@pytest.mark.timeout(90)
def test_a_flood_right_after_a_gateway_reconnect_is_cut_off_in_the_backlog_grace(township):
    """Issue 13: a flood that followed a gateway reconnect (which reopens backlog_grace_s: no
    throttling while the broker hands over what it kept for us) once held 18 of 20 alarms. The
    gateway's connection is cut (a network blip: it reconnects to its persistent session), the
    flood starts while the grace is open, and the flood guard still names the flooder once it has
    sent more than the broker could have kept (max_inflight + max_queued): cut off within 2 s,
    the victim's alarm acknowledged and sounding the neighbours' sirens."""
    import socket

    t = township
    svc = t.app.service
    q = next(p for p in t.app._plugins if isinstance(p, Quarantine))
    victim = t.sim_button(VICTIM)
    neighbours = [t.sim_button(d) for d in NEIGHBOURS]
    connects, present = svc._connects, []
    on_connect = svc._client.on_connect

    def watch(client, userdata, flags, reason_code, properties):
        present.append(bool(flags.session_present))
        on_connect(client, userdata, flags, reason_code, properties)

    svc._client.on_connect = watch
    svc._client.socket().shutdown(socket.SHUT_RDWR)     # the broker link drops under the gateway
    wait_for(lambda: svc._connects > connects and svc.connected, 20, "the gateway to reconnect")
    assert present == [True], "not a reconnect to the persistent session: %r" % present
    t0 = time.monotonic()
    assert svc._throttle_from > t0, "the backlog grace is not open"
    flooder = Flooder(t.broker.port, *t.broker.device_credentials(FLOODER, t.keys[FLOODER]), pframe.uplink_topic(FLOODER))
    try:
        wait_for(lambda: pframe.uplink_topic(FLOODER) in svc._flood[0]._state or not flooder.running(), 10,
                 "the flood to reach the gateway")
        seq = victim.alarm()
        wait_for(lambda: FLOODER in q.refused_at, 10, "the flooder to be cut off and refused at the broker")
        to_quarantine_s = q.refused_at[FLOODER] - t0
        wait_for(lambda: 1 in victim.acks.get(seq, []), 10, "the alarm's dispatched ack")
        wait_for(lambda: all(n.sirens for n in neighbours), 10, "the neighbours' sirens")
        print("after the reconnect: flood detected %.3f s, login refused %.3f s after it began; alarm acked at %.3f s"
              % (q.detected_at[FLOODER] - t0, to_quarantine_s, victim.ack_times[seq][0] - t0))
        assert to_quarantine_s < 2.0 and q.detected_at[FLOODER] < svc._throttle_from
    finally:
        flooder.stop()
    (ev,) = _events(t, "device_quarantined")
    assert ev.body["reason"] == "flood"


class _Broker:
    def __init__(self):
        self.files = {}     # held.json

    def held(self):
        return dict(self.files)

    def hold_devices(self, infos, reload=True):
        self.files.update(infos)
        return list(infos)

    def release_devices(self, ids, reload=True):
        return [d for d in ids if self.files.pop(d, None) is not None]


class _Service:
    def __init__(self):
        self.holding = set()

    def held(self):
        return set(self.holding)

    def hold(self, device_id):
        self.holding.add(device_id)

    def release(self, device_id):
        self.holding.discard(device_id)


class _Ctx:
    class registry:
        device = staticmethod(lambda device_id: None)

    class metrics:
        inc = observe = staticmethod(lambda *a, **k: None)

    def __init__(self):
        self.events = []

    def emit(self, kind, body, device_id=None, place_id=None):
        self.events.append((kind, device_id, body))


def test_a_device_held_by_the_mqtt_thread_is_not_released_before_its_request_is_written():
    """The flake of the test above (about 1 run in 9): the MQTT thread holds a flooder (service.hold,
    then on_flood) while the quarantine thread is inside check(); check() saw it held by the
    service and not in held.json, and "released" it by operator: the flood was let through, judged
    again and quarantined a second time. A product race, not a test one. No broker: 0.01 s."""
    broker, service, ctx = _Broker(), _Service(), _Ctx()
    q = Quarantine(broker, service, ctx, cooldown_s=60.0)
    service.hold(FLOODER)                   # MQTT thread: held on arrival ...
    q.check()                               # ... the quarantine thread's periodic round meanwhile
    assert FLOODER in service.held() and ctx.events == []
    q.on_flood(FLOODER, 5000)               # ... then the request
    q._hold_requested()
    assert FLOODER in broker.held() and [e[0] for e in ctx.events] == ["device_quarantined"]
    q.check()
    assert FLOODER in service.held() and len(ctx.events) == 1
    broker.release_devices([FLOODER])       # `fengqiao device release` from a shell
    q.check()
    assert FLOODER not in service.held() and ctx.events[-1][::2] == ("device_released", {"by": "operator"})


def _publish(topic, payload, qos=0):
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (b"\x00\x01" if qos else b"") + payload
    n, length = len(body), bytearray()
    while True:
        n, d = divmod(n, 128)
        length.append(d | (0x80 if n else 0))
        if not n:
            return bytes([0x30 | qos << 1]) + bytes(length) + body


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_read_buffer_cuts_out_qos0_publishes_and_counts_every_topic_at_packet_boundaries(chunk):
    """gateway.service._ReadAhead: QoS 0 PUBLISHes on device topics never reach paho (SPEC section 6:
    uplinks are QoS 1; counted as Quarantined for a held topic, WrongQoS for another), QoS 1 ones
    and other packets do, whole and in order; every PUBLISH on a topic not held is counted for the
    flood guard, once per read; also when the topic is held between two reads (a buffer passed on
    whole may end inside a packet: the stream once lost its framing there). 0.01 s."""
    import collections

    from gateway.service import _ReadAhead

    held_t, other = pframe.uplink_topic(FLOODER), pframe.uplink_topic(VICTIM)
    one = [_publish(held_t, b"f" * 48), _publish(other, b"a" * 60, 1), _publish(held_t, b"x" * 300),
           _publish(held_t, b"q", 1), _publish(other, b"b" * 200), _publish("$SYS/broker/clients/connected", b"3"),
           b"\xd0\x00"]

    class Sock:
        data = b"".join(one) * 3

        def recv(self, n):
            if not self.data:
                raise BlockingIOError
            out, self.data = self.data[:chunk], self.data[chunk:]
            return out

    held, dropped, counted, got, reads = set(), [], collections.Counter(), [], 0
    r = _ReadAhead(Sock(), held, lambda h, o: dropped.append((h, o)), counted.update)
    with pytest.raises(BlockingIOError):
        while True:
            got.append(r.recv(5))
            reads += 1
            if reads == 40:
                held.add(held_t.encode())
    stream, packets, i = b"".join(got), [], 0
    while i < len(stream):
        j, length, shift = i + 1, 0, 0
        while stream[j] & 0x80:
            length, j, shift = length | (stream[j] & 0x7F) << shift, j + 1, shift + 7
        end = j + 1 + (length | stream[j] << shift)
        packets.append(stream[i:end])
        i = end
    assert packets == [one[1], one[3], one[5], one[6]] * 3 and i == len(stream)
    assert sum(h + o for h, o in dropped) == 3 * 3                  # every QoS 0 one on a device topic
    assert counted[other.encode()] == 3 * 2 and b"$SYS/broker/clients/connected" not in counted
    if chunk < 1000:    # held before the last copy was read: cut out of it as Quarantined, no longer counted
        assert sum(h for h, _ in dropped) >= 2 and counted[held_t.encode()] < 3 * 3
    else:               # one read held all three copies: counted, cut as WrongQoS
        assert dropped == [(0, 9)] and counted[held_t.encode()] == 3 * 3


def test_the_flood_guard_judges_the_counts_of_one_read_at_once():
    from gateway.quarantine import FloodDetector

    d = FloodDetector(400, backlog_allowance=1000)
    d.connected(session_present=False)
    assert d.note("t", 10.0, False, 400) is None
    assert d.note("t", 10.02, False, 500) == 900 / 0.05        # one read of many: no rate over < 50 ms
    d.connected(session_present=True)                          # a backlog of up to 1,000 may come at once
    assert d.note("u", 20.0, True, 999) is None and d.note("u", 20.1, True, 2) == 10010
    assert d.note("v", 30.0, False, 401) == 401 / 0.05


def test_a_read_that_a_flood_fills_read_after_read_gives_the_mqtt_thread_back_its_loop():
    """gateway.service._ReadAhead.recv: a socket with nothing but QoS 0 flood messages, read after
    read, makes recv raise BlockingIOError after MAX_EMPTIED_READS reads (the MQTT thread goes
    back to its batches and queued sirens) instead of cutting for as long as the flood lasts; the
    next recv goes on, and a kept packet comes out whole. No broker: 0.01 s."""
    from gateway.service import MAX_EMPTIED_READS, _ReadAhead

    flood = _publish(pframe.uplink_topic(FLOODER), b"f" * 48) * 900
    alarm = _publish(pframe.uplink_topic(VICTIM), b"a" * 33, 1)

    class Sock:
        reads = 0

        def recv(self, n):
            self.reads += 1
            return flood + (alarm if self.reads == MAX_EMPTIED_READS + 3 else b"")

    sock, dropped = Sock(), []
    r = _ReadAhead(sock, set(), lambda h, o: dropped.append(o))
    with pytest.raises(BlockingIOError):
        r.recv(5)
    assert sock.reads == MAX_EMPTIED_READS and sum(dropped) == 900 * MAX_EMPTIED_READS
    got = r.recv(len(alarm))
    assert got == alarm and sock.reads == MAX_EMPTIED_READS + 3
