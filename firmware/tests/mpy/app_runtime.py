# Clock, MQTT packets, uplink (emit/build/downlinks), alarm-button state machine -> LED state,
# and health events, on the MicroPython VM with a fake board and link (argv[1] = scratch dir).
import os
import struct
import sys
import time

from app_harness import check, eq, run_all

import mqtt
from app.uplink import Uplink
from clock import Clock
from outbox import PRIO_ALARM, PRIO_NORMAL
from protocol import frame

ROOT = sys.argv[1]
D = None
KEY = bytes(range(32))
DEV = 0x1234
NOW = 1790000000


def fresh(name):
    global D
    D = ROOT + "/" + name
    os.mkdir(D)
    # Tasks a test left scheduled would run in the next test's tasks.run() (as with asyncio): the
    # supervisor tests' always-failing tasks, restarted every few ms for ever, grew their logs in
    # the later uplink tests until one met MemoryError at 256 KB (a CI failure, on a loaded
    # machine only). Every test starts with no task of an earlier one.
    import tasks

    left = [t for t in tasks._all if not tasks.done(t)]
    for t in left:
        tasks.cancel(t)
    del tasks._all[:]
    if left:
        print("setup %s: cancelled %d task(s) left by the previous test" % (name, len(left)))


class FakeTicks:
    def __init__(self):
        self.t = 1000

    def __call__(self):
        return self.t


class Hist:
    def __init__(self):
        self.v = None

    def rgb(self, r, g, b):
        self.v = (r, g, b)

    def on(self):
        self.v = 1

    def off(self):
        self.v = 0


class FakeBoard:
    def __init__(self):
        self.level = 0
        self.open = 0
        self.mv = 4000
        self.led = Hist()
        self.led.is_rgb = True
        self.buzzer = Hist()

    def button(self):
        return self.level

    def tamper(self):
        return self.open

    def battery_mv(self):
        return self.mv

    def rssi(self):
        return None


class FakeLink:
    up = True
    sessions = 1


def cfg():
    return {"device_id": DEV, "key_id": 1, "key": KEY, "settings": {"heartbeat_interval_s": 300,
            "checkin_repeat_s": 600, "hold_ms": 1000, "low_battery_mv": 3400}}


def downlink(seq, msg_type, body, key=KEY, topic=None):
    _ku, kd = frame.derive_keys(key)
    t = topic or frame.downlink_topic(DEV)
    return t, frame.encode(kd, frame.downlink_topic(DEV), msg_type, DEV, 1, seq, NOW, body)


# -- clock ----------------------------------------------------------------------------------
def test_clock_unknown_until_adopted_then_follows_ticks():
    tk = FakeTicks()
    c = Clock(tk)
    eq(c.now(), 0, "unknown")
    check(not c.adopt(12345), "implausible time refused")
    check(c.adopt(NOW), "adopt")
    tk.t += 2500
    eq(c.now(), NOW + 2, "2.5 s later")
    eq(c.at_ticks(1000), NOW, "at the adoption instant")


def test_clock_reanchors_so_ticks_never_overflow_the_offset():
    tk = FakeTicks()
    c = Clock(tk)
    c.adopt(NOW)
    for hour in range(1, 30):  # a day without acks, advancing in steps under half the period
        tk.t = time.ticks_add(tk.t, 3600 * 1000)
        eq(c.now(), NOW + hour * 3600, "hour %d" % hour)


# -- MQTT packets ---------------------------------------------------------------------------
def test_mqtt_packets_bytes():
    eq(mqtt.connect_packet("0000002a", "pw", 60, "a/b"),
       b"\x10\x22\x00\x04MQTT\x04\xc2\x00\x3c\x00\x080000002a\x00\x080000002a\x00\x02pw"
       b"\x82\x08\x00\x01\x00\x03a/b\x01", "CONNECT, then SUBSCRIBE")
    eq(mqtt.publish_packet("t", b"xy", 7), b"\x32\x07\x00\x01t\x00\x07xy", "PUBLISH qos1")
    big = mqtt.publish_packet("t", b"z" * 200, 1)
    eq(big[1:3], b"\xcd\x01", "two-byte remaining length (2 + 1 + 2 + 200 = 205)")


def test_mqtt_parse_publish_and_bad_packets():
    eq(mqtt.parse_publish((0x32, b"\x00\x01t\x00\x07xy")), ("t", 7, b"xy"), "qos1")
    eq(mqtt.parse_publish((0x30, b"\x00\x01txy")), ("t", None, b"xy"), "qos0")
    for first, body in ((0x32, b"\x00"), (0x32, b"\x00\x09abc"), (0x36, b"\x00\x01t\x00\x01"),
                        (0x30, b"\x00\x01\xff")):
        try:
            mqtt.parse_publish((first, body))
            check(False, "accepted %r" % body)
        except mqtt.MqttError as e:
            eq(e.args[0], "BadPacket", "named BadPacket")


def test_mqtt_recv_reads_a_packet_and_polls_without_waiting():
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)

    class Sock:
        def __init__(self, data):
            self.data = data

        def readinto(self, mv):
            if not self.data:
                return None  # non-blocking: nothing yet
            n = min(len(mv), len(self.data), 3)
            mv[:n] = self.data[:n]
            self.data = self.data[n:]
            return n

    one = bytearray(1)
    check(not mqtt.poll(Sock(b""), one), "nothing arrived: poll says so at once")
    sock = Sock(b"\x32\xcd\x01" + b"z" * 205)
    check(mqtt.poll(sock, one), "a packet has begun")
    first, body = tasks.run(mqtt.recv(sock, one, 1))
    eq((first, len(body)), (0x32, 205), "two-byte remaining length, body read in pieces")
    try:
        tasks.run(mqtt.recv(Sock(b"\x30\xff\xff\x7f"), one))
        check(False, "accepted an oversize packet")
    except mqtt.MqttError as e:
        eq(e.args[0], "BadPacket", "oversize refused")


def test_tls_context_rejects_non_pem_ca():
    try:
        mqtt.tls_context("not a certificate")
        check(False, "accepted garbage CA")
    except mqtt.MqttError as e:
        eq(e.args[0], "TlsFailure", "named TlsFailure")


def test_link_backoff_doubles_with_jitter_up_to_the_cap():
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)
    from link import Link

    calls = []

    class NoNet:
        def network_up(self, cfg):
            calls.append(time.ticks_ms())
            return False

    c = cfg()
    c.update({"broker_host": "127.0.0.1", "broker_port": 1, "tls": False})
    link = Link(NoNet(), c, None, log=lambda m: None, backoff_min_ms=50, backoff_max_ms=400)

    async def scenario():
        t = tasks.create_task(link.run())
        await tasks.sleep_ms(2600)
        tasks.cancel(t)

    tasks.run(scenario())
    gaps = [time.ticks_diff(b, a) for a, b in zip(calls, calls[1:])]
    check(len(gaps) >= 5, "attempts: %r" % gaps)
    for i, want in enumerate((50, 100, 200, 400, 400)):
        check(want <= gaps[i] <= want * 1.5 + 150, "gap %d = %d, want %d..%d" % (i, gaps[i], want, want * 1.5))
    check(len(set(gaps)) > 1 and not link.up and link.failures == len(calls), "jittered, down, counted")


# -- uplink ---------------------------------------------------------------------------------
def sent_frame(up):
    """The first frame the sender task (up.run) publishes, through a link that captures it."""
    got = sent_frames(up, 1)
    check(got, "a frame was published")
    return got[0]


def test_uplink_emit_build_and_ack_removes_and_sets_clock():
    c = Clock()
    up = Uplink(cfg(), D, c)
    seq = up.emit(frame.UP_ALARM, [0], PRIO_ALARM)
    data = sent_frame(up)
    k_up, _kd = frame.derive_keys(KEY)
    f = frame.decode(k_up, frame.uplink_topic(DEV), data, downlink=False)
    eq((f.name, f.seq, f.body, f.device_time), ("alarm", seq, [0], None), "frame")
    acks = []

    class L:
        def on_ack(self, s, stage):
            acks.append((s, stage))

    up.listeners.append(L())
    up.on_message(*downlink(1, frame.DOWN_ACK, [seq, 0, NOW]))
    eq(acks, [(seq, 0)], "listener told")
    eq(len(up.outbox), 0, "removed from outbox")
    check(abs(c.now() - NOW) <= 1, "clock adopted")


def test_uplink_event_stored_without_clock_is_stamped_once_clock_known():
    c = Clock()
    up = Uplink(cfg(), D, c)
    seq = up.emit(frame.UP_CHECKIN, [5, b"\x01\x02\x03\x04"], PRIO_NORMAL)
    c.adopt(NOW)
    k_up, _kd = frame.derive_keys(KEY)
    f = frame.decode(k_up, frame.uplink_topic(DEV), sent_frame(up), downlink=False)
    eq(f.seq, seq, "the event's frame")
    check(f.device_time is not None and abs(f.device_time - NOW) <= 1, "stamped from ticks: %r" % f.device_time)


def test_uplink_rejects_forged_replayed_and_misrouted_downlinks():
    up = Uplink(cfg(), D, Clock())
    seq = up.emit(frame.UP_ALARM, [0], PRIO_ALARM)
    up.on_message(*downlink(5, frame.DOWN_ACK, [seq, 0, NOW], key=bytes(32)))  # wrong key
    eq(len(up.outbox), 1, "forged ack ignored")
    up.on_message(frame.downlink_topic(DEV), b"\x01\x81" + b"\x00" * 40)
    up.on_message(*downlink(5, frame.DOWN_ACK, [seq + 50, 0, NOW]))  # fine, acks nothing waiting
    up.on_message(*downlink(5, frame.DOWN_ACK, [seq, 0, NOW]))  # replay of downlink seq 5
    eq(len(up.outbox), 1, "replayed ack ignored")
    t, data = downlink(6, frame.DOWN_ACK, [seq, 0, NOW])
    up.on_message(frame.downlink_topic(DEV + 1), data)
    eq(len(up.outbox), 1, "frame on another topic ignored")
    eq(up.rejected.get("BadMac"), 1, "counted BadMac: %r" % up.rejected)
    eq(up.rejected.get("MalformedFrame"), 1, "counted MalformedFrame")
    eq(up.rejected.get("Replay"), 1, "counted Replay")
    eq(up.rejected.get("TopicMismatch"), 1, "counted TopicMismatch")
    # SPEC section 2 step 2: a frame made for another device (its MAC valid under our key, on our
    # topic) and one made under another key id are refused before the MAC
    _ku, kd = frame.derive_keys(KEY)
    other = frame.encode(kd, frame.downlink_topic(DEV + 1), frame.DOWN_ACK, DEV + 1, 1, 7, NOW, [seq, 0, NOW])
    up.on_message(frame.downlink_topic(DEV), other)
    old_key = frame.encode(kd, frame.downlink_topic(DEV), frame.DOWN_ACK, DEV, 2, 8, NOW, [seq, 0, NOW])
    up.on_message(frame.downlink_topic(DEV), old_key)
    eq(len(up.outbox), 1, "acks for another device or key id ignored")
    eq(up.rejected.get("UnknownDevice"), 1, "counted UnknownDevice: %r" % up.rejected)
    eq(up.rejected.get("UnknownKey"), 1, "counted UnknownKey: %r" % up.rejected)


def test_uplink_config_downlink_updates_settings():
    c = cfg()
    up = Uplink(c, D, Clock())
    got = []

    class L:
        def on_config(self, changed):
            got.append(changed)

    up.listeners.append(L())
    up.on_message(*downlink(1, frame.DOWN_CONFIG, [{1: 60, 3: 1500, 99: 7}]))
    eq(c["settings"]["heartbeat_interval_s"], 60, "heartbeat interval")
    eq(c["settings"]["hold_ms"], 1500, "hold")
    eq(got, [{"heartbeat_interval_s": 60, "hold_ms": 1500}], "unknown key 99 ignored")


def test_seq_survives_uplink_restart():
    up = Uplink(cfg(), D, Clock())
    a = up.emit(frame.UP_ALARM, [0], PRIO_ALARM)
    up2 = Uplink(cfg(), D, Clock())
    b = up2.emit(frame.UP_ALARM, [0], PRIO_ALARM)
    check(b > a, "new boot numbers above old: %d > %d" % (b, a))
    eq(list(up2.outbox.seqs()), [a, b], "both waiting, in order")


def test_uplink_resends_each_record_until_its_own_ack_whatever_later_acks_say():
    """Issue 14: seq 6-10 PUBACKed into a broker session lost by a kill -9, 11 acked by the
    gateway: 6-10 must still be resent (they are unacked) until each gets its own ack."""
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)

    up = Uplink(cfg(), D, Clock(), ack_ms=150)
    seqs = [up.emit(frame.UP_CHECKIN, [5, bytes([4, i, 2, 3])], PRIO_NORMAL) for i in range(4)]
    k_up, _kd = frame.derive_keys(KEY)
    got = []

    class Capture:
        up = True
        sessions = 1
        topic = frame.uplink_topic(DEV)

        async def publish(self, data):
            got.append(frame.decode(k_up, self.topic, data, downlink=False).seq)

    up.link = Capture()
    ack_seq = [10]

    async def scenario():
        t = tasks.create_task(up.run())
        for _ in range(100):
            await tasks.sleep_ms(10)
            if len(got) >= 4:
                break
        # The gateway acks only the newest (the older ones went to the lost session) ...
        up.on_message(*downlink(ack_seq[0], frame.DOWN_ACK, [seqs[3], 0, NOW]))
        ack_seq[0] += 1
        first_pass = list(got)
        # ... and keeps acking other things; the three older records are resent anyway.
        for _ in range(100):
            await tasks.sleep_ms(10)
            if len(got) >= 7:
                break
        resent = got[len(first_pass):]
        # Then their own acks arrive, oldest last: nothing is resent once all are acked.
        for s in (seqs[1], seqs[2], seqs[0]):
            up.on_message(*downlink(ack_seq[0], frame.DOWN_ACK, [s, 0, NOW]))
            ack_seq[0] += 1
        n = len(got)
        await tasks.sleep_ms(600)
        tasks.cancel(t)
        return first_pass, resent, len(got) - n

    first_pass, resent, after = tasks.run(scenario())
    up.link = None
    eq(first_pass, seqs, "first pass, in order")
    eq(resent[:3], seqs[:3], "the three unacked records resent, in order, after a later ack")
    eq(len(up.outbox), 0, "all acked")
    eq(after, 0, "nothing resent once every record has its own ack")


def sent_frames(up, n):
    """The first n frames the sender task publishes (raw), through a capturing link."""
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)

    got = []

    class Capture:
        up = True
        sessions = 1
        topic = frame.uplink_topic(DEV)

        async def publish(self, data):
            got.append(data)

    up.link = Capture()

    async def scenario():
        t = tasks.create_task(up.run())
        for _ in range(300):
            await tasks.sleep_ms(10)
            if len(got) >= n:
                break
        tasks.cancel(t)

    tasks.run(scenario())
    up.link = None
    return got[:n]


def test_uplink_after_a_rekey_sends_and_acks_old_records_under_the_old_key():
    """A rekey (identity.write.rekey, as the console's `rekey` runs it) with two records waiting:
    they go out signed with the old key id and are acked under it; a new event is numbered above
    them under the new key; under the old key nothing but acks for the old records is taken."""
    import binascii

    from identity import load
    from identity.write import rekey, save

    new_key = bytes(range(100, 132))
    save(D, {"device_id": DEV, "key_id": 1, "key": KEY, "role": "alarm", "broker_host": "gw", "broker_port": 1883})
    up = Uplink(load(D), D + "/data", Clock())
    old = [up.emit(frame.UP_ALARM, [0], PRIO_ALARM), up.emit(frame.UP_CHECKIN, [5, b"\x01\x02\x03\x04"], PRIO_NORMAL)]
    eq(up._pk, None, "no old key before a rekey")
    up = None
    rekey(D, {"device_id": DEV, "key_id": 2, "key": binascii.hexlify(new_key).decode()})
    c = load(D)
    eq((c["key_id"], c["prev_key_id"]), (2, 1), "rekeyed")
    up = Uplink(c, D + "/data", Clock())
    check(up._pk is not None, "the old key held while its records wait")
    seq = up.emit(frame.UP_ALARM, [0], PRIO_ALARM)
    check(seq >= c["prev_below"] > max(old), "the new key numbers above the old records: %d" % seq)
    frames = sent_frames(up, 3)
    eq(len(frames), 3, "all three sent")
    k_old = frame.derive_keys(KEY)
    k_new = frame.derive_keys(new_key)
    topic = frame.uplink_topic(DEV)
    f = [frame.decode(k_old[0], topic, frames[0], False, 1, DEV), frame.decode(k_old[0], topic, frames[1], False, 1, DEV),
         frame.decode(k_new[0], topic, frames[2], False, 2, DEV)]
    eq([(x.key_id, x.seq) for x in f], [(1, old[0]), (1, old[1]), (2, seq)], "old records under key id 1, new under 2")
    dt = frame.downlink_topic(DEV)

    def down(keys, key_id, dseq, t, body):
        return dt, frame.encode(keys[1], dt, t, DEV, key_id, dseq, NOW, body)

    up.on_message(*down(k_old, 1, 1, frame.DOWN_ACK, [old[0], 0, NOW]))   # the gateway acks under the old key id
    eq(list(up.outbox.seqs()), [old[1], seq], "old record acked under the old key")
    up.on_message(*down(k_old, 1, 2, frame.DOWN_ACK, [seq, 0, NOW]))       # the old key acking a new record
    up.on_message(*down(k_old, 1, 3, frame.DOWN_SIREN, [True, 1, 10]))    # or saying anything else
    eq(up.rejected.get("UnknownKey"), 2, "refused under the old key: %r" % up.rejected)
    up.on_message(*down(k_new, 2, 4, frame.DOWN_ACK, [old[1], 0, NOW]))   # a new-key ack for an old record: harmless
    up.on_message(*down(k_new, 2, 5, frame.DOWN_ACK, [seq, 0, NOW]))
    eq(list(up.outbox.seqs()), [], "all acked")
    up.on_message(*down(k_old, 1, 6, frame.DOWN_ACK, [old[0], 0, NOW]))
    eq(up.rejected.get("Replay", 0), 0, "no Replay counted: %r" % up.rejected)
    # nothing numbered under the old key waits: the next boot does not hold it
    eq(Uplink(load(D), D + "/data", Clock())._pk, None, "old key dropped")


# -- alarm button: state machine -> LED -----------------------------------------------------
def _alarm_role():
    from alarm_button import AlarmButton

    board = FakeBoard()
    up = Uplink(cfg(), D, Clock())
    up.link = FakeLink()
    role = AlarmButton(board, up, cfg()["settings"], failing_s=1)
    return board, up, role


def _hold(board, role, ms):
    board.level = 1
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        role.step()
        time.sleep_ms(10)
    board.level = 0
    for _ in range(10):
        role.step()
        time.sleep_ms(10)


def test_alarm_tap_is_ignored_hold_raises():
    board, up, role = _alarm_role()
    _hold(board, role, 150)
    eq(len(up.outbox), 0, "tap: no event")
    eq(role.led.state, "idle", "tap: LED idle")
    _hold(board, role, 1100)
    eq(len(up.outbox), 1, "hold: alarm stored")
    eq(role.led.state, "sending", "LED sending")


def test_alarm_led_per_state():
    board, up, role = _alarm_role()
    _hold(board, role, 1100)
    seq = role.alarm_seq
    eq(role.led.state, "sending", "sending")
    time.sleep_ms(1100)
    role.step()
    eq(role.led.state, "failing", "no ack after failing_s")
    up.link.up = False
    role.on_ack(seq, 0)
    role.step()
    eq(role.led.state, "stored", "stage 0: stored (link state no longer matters)")
    role.on_ack(seq, 1)
    role.step()
    eq(role.led.state, "stored", "stage 1: still stored")
    role.on_ack(seq, 2)
    role.step()
    eq(role.led.state, "coming", "stage 2: someone is coming")
    eq(board.led.v, (0, 1, 0), "steady green")
    role.on_ack(seq, 1)  # a late, lower stage never goes back
    role.step()
    eq(role.led.state, "coming", "no regression")
    role.on_ack(seq, 3)
    role.step()
    eq(role.led.state, "idle", "closed")


def test_alarm_link_down_shows_failing_at_once():
    board, up, role = _alarm_role()
    up.link.up = False
    _hold(board, role, 1100)
    eq(role.led.state, "failing", "link down")


def test_alarm_triple_tap_cancels_open_alarm_only():
    board, up, role = _alarm_role()
    for _ in range(3):
        _hold(board, role, 100)
    time.sleep_ms(450)
    role.step()
    eq(len(up.outbox), 0, "triple tap without an alarm: nothing")
    _hold(board, role, 1100)
    alarm = role.alarm_seq
    for _ in range(3):
        _hold(board, role, 100)
    time.sleep_ms(450)
    role.step()
    check(role.cancel_seq is not None, "cancel sent")
    _p, rec = up.outbox.read(role.cancel_seq)
    eq(rec[0], frame.UP_ALARM_CANCEL, "cancel type")
    role.on_ack(role.cancel_seq, 0)
    role.step()
    eq(role.led.state, "idle", "cancel acked: idle")
    check(alarm in list(up.outbox.seqs()), "alarm still waiting for its own ack")


def test_open_alarm_survives_a_reboot():
    from alarm_button import AlarmButton

    board, up, role = _alarm_role()
    _hold(board, role, 1100)
    seq = role.alarm_seq
    role.on_ack(seq, 0)
    # Reboot: new objects on the same flash.
    up2 = Uplink(cfg(), D, Clock())
    up2.link = FakeLink()
    role2 = AlarmButton(board, up2, cfg()["settings"])
    role2.step()
    eq((role2.alarm_seq, role2.stage, role2.led.state), (seq, 0, "stored"), "restored from alarm.state")
    role2.on_ack(seq, 2)
    role2.step()
    eq(role2.led.state, "coming", "later stage after the reboot")
    role2.on_ack(seq, 3)
    up3 = Uplink(cfg(), D, Clock())
    eq(AlarmButton(board, up3, cfg()["settings"]).alarm_seq, None, "closed stays closed")


def test_unacked_alarm_found_in_outbox_when_state_file_is_torn():
    from alarm_button import AlarmButton

    board, up, role = _alarm_role()
    _hold(board, role, 1100)
    seq = role.alarm_seq
    with open(D + "/alarm.state", "wb") as f:
        f.write(b"\x00\x01")  # torn
    up2 = Uplink(cfg(), D, Clock())
    up2.link = FakeLink()
    up2.link.up = False
    role2 = AlarmButton(board, up2, cfg()["settings"])
    role2.step()
    eq((role2.alarm_seq, role2.led.state), (seq, "failing"), "newest waiting alarm is the open one")


def test_siren_downlink_plays_buzzer():
    board, up, role = _alarm_role()
    up.on_message(*downlink(1, frame.DOWN_SIREN, [True, 0, 0]))
    role.step()
    eq(board.buzzer.v, 1, "steady siren on")
    up.on_message(*downlink(2, frame.DOWN_SIREN, [False, 0, 0]))
    role.step()
    eq(board.buzzer.v, 0, "siren off")


# -- health ---------------------------------------------------------------------------------
def test_health_tamper_battery_heartbeat_events():
    from heartbeat import Health

    board = FakeBoard()
    up = Uplink(cfg(), D, Clock())
    h = Health(board, up, cfg()["settings"], 10000)
    seq = h.heartbeat()
    _p, rec = up.outbox.read(seq)
    eq(rec[0], frame.UP_HEARTBEAT, "heartbeat type")
    board.open = 1
    h.tamper.poll()
    time.sleep_ms(60)
    eq(h.tamper.poll(), 1, "opened")

    board.open = 0
    h.tamper.poll()
    time.sleep_ms(60)
    eq(h.tamper.poll(), 2, "closed")


def test_health_step_emits_tamper_and_one_battery_low_per_crossing():
    from heartbeat import Health

    board = FakeBoard()
    up = Uplink(cfg(), D, Clock())
    h = Health(board, up, cfg()["settings"], 10000)

    def steps(ms):  # the board task steps it every 10 ms (app/runtime.py)
        t0 = time.ticks_ms()
        while time.ticks_diff(time.ticks_ms(), t0) < ms:
            h.step()
            time.sleep_ms(10)

    steps(200)
    board.open = 1
    board.mv = 3300
    steps(2600)  # battery sampled once a second; median of 5 samples
    board.mv = 3350  # still low: no second event
    steps(1200)
    types = [up.outbox.read(s)[1][0] for s in up.outbox.seqs()]
    eq(types.count(frame.UP_TAMPER), 1, "one tamper event: %r" % types)
    eq(types.count(frame.UP_BATTERY_LOW), 1, "one battery_low: %r" % types)


def test_supervisor_restarts_a_failing_task_and_starves_the_watchdog_on_a_stall():
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)
    from supervisor import Supervisor

    class Wdt:
        feeds = 0

        def feed(self):
            Wdt.feeds += 1

    class B:
        def watchdog(self, ms):
            return Wdt()

    logs = []
    sup = Supervisor(B(), logs.append, stall_ms=600, restart_delay_ms=50)
    runs = []

    async def flaky():
        runs.append(1)
        await tasks.sleep_ms(10)
        raise OSError("boom")

    async def stalls():
        sup.alive("stalls")
        await tasks.sleep_ms(100000)  # stops checking in

    async def scenario():
        sup.spawn("flaky", flaky, watch=False)
        sup.spawn("stalls", stalls)
        w = tasks.create_task(sup.watch())
        await tasks.sleep_ms(400)
        fed_early = Wdt.feeds
        await tasks.sleep_ms(1500)
        tasks.cancel(w)
        return fed_early

    fed_early = tasks.run(scenario())
    check(len(runs) >= 3 and sup.restarts["flaky"] >= 3, "restarted: %r" % sup.restarts)
    check(fed_early >= 1, "fed while healthy")
    fed_total = Wdt.feeds
    check(fed_total <= fed_early + 1, "not fed after the stall: %d -> %d" % (fed_early, fed_total))
    check(any("stalled" in m for m in logs) and any("OSError" in m for m in logs), "logged: %r" % logs[:4])


def test_supervisor_restarts_a_task_that_runs_out_of_memory_then_reboots_after_five_in_a_row():
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)
    from supervisor import Supervisor

    class B:
        reboots = 0

        def watchdog(self, ms):
            return None

        def reboot(self):
            B.reboots += 1

    logs = []
    sup = Supervisor(B(), logs.append, restart_delay_ms=10, max_fails=5, healthy_ms=300)
    runs = []

    async def greedy():
        runs.append(1)
        await tasks.sleep_ms(1)
        bytearray(1 << 40)  # a real MemoryError from the VM's allocator

    async def healthy_then_fails():
        await tasks.sleep_ms(350)  # longer than healthy_ms before each failure
        raise MemoryError

    async def scenario():
        sup.spawn("greedy", greedy)
        sup.spawn("slow", healthy_then_fails)
        for _ in range(1000):
            await tasks.sleep_ms(10)
            if sup.restarts["slow"] >= 6:
                break
        return sup.restarts["greedy"], B.reboots  # at one instant (no await between)

    greedy_fails, reboots_n = tasks.run(scenario())
    check(len(runs) >= 11, "restarted after each MemoryError: %d runs" % len(runs))
    check(sup.restarts["slow"] >= 6, "the healthy task was restarted: %r" % sup.restarts)
    reboots = [m for m in logs if "reboot" in m]
    check(reboots_n >= 2 and all("greedy" in m for m in reboots),
          "reboots only for the task failing fast (6 healthy runs before failing: none): %r" % reboots)
    eq(reboots_n, greedy_fails // 5, "one reboot per 5 failures in a row (%d failures)" % greedy_fails)
    check(any("greedy MemoryError" in m for m in logs), "logged: %r" % logs[:3])


def test_supervisor_watch_survives_memory_errors_and_reboots_after_max_fails_in_a_row():
    """The watch is the main task: a MemoryError in its check used to end tasks.run (exit 1,
    a dead unit, no reboot). Now it is collected and checked again; max_fails in a row reboot.
    The reboot's own log line meeting MemoryError does not stop the reboot."""
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)
    from supervisor import Supervisor

    class B:
        reboots = 0

        def watchdog(self, ms):
            return None

        def reboot(self):
            B.reboots += 1

    def log(m):
        if "reboot" in m:
            raise MemoryError  # no heap for the reboot's log line
        logs.append(m)

    logs = []
    fail = [2]  # the next checks that fail

    class S(Supervisor):
        def _check(self):
            if fail[0] > 0:
                fail[0] -= 1
                raise MemoryError
            Supervisor._check(self)

    sup = S(B(), log, max_fails=3)

    async def scenario():
        w = tasks.create_task(sup.watch())
        await tasks.sleep_ms(1600)  # two failed checks, then good ones
        eq(B.reboots, 0, "two MemoryErrors in a row: no reboot")
        fail[0] = 3
        await tasks.sleep_ms(1600)
        eq(B.reboots, 1, "three in a row: a reboot (its log line failed too)")
        check(not tasks.done(w), "the watch task is still running")
        tasks.cancel(w)

    tasks.run(scenario())

    # A task failing max_fails in a row reboots even when the reboot's log line fails.
    sup = Supervisor(B(), log, restart_delay_ms=1, max_fails=2)
    B.reboots = 0

    async def oom():
        raise MemoryError

    async def scenario2():
        sup.spawn("oom", oom)
        for _ in range(200):
            await tasks.sleep_ms(5)
            if B.reboots:
                break

    tasks.run(scenario2())
    check(B.reboots >= 1, "rebooted although the log line met MemoryError")


def test_supervisor_reboot_on_the_host_board_leaves_the_event_loop_with_status_3():
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)
    from supervisor import Supervisor

    class B:
        def watchdog(self, ms):
            return None

        def reboot(self):
            sys.exit(3)  # what boards/host.py does after writing the reset reason

    sup = Supervisor(B(), lambda m: None, restart_delay_ms=1, max_fails=2)

    async def oom():
        raise MemoryError

    async def main():
        sup.spawn("oom", oom)
        await tasks.sleep_ms(2000)
        return "not rebooted"

    try:
        got = tasks.run(main())
    except SystemExit as e:
        got = e.args[0]
    eq(got, 3, "the reboot's SystemExit leaves tasks.run (the process exits 3)")


def test_link_is_watched_through_a_long_backoff_and_stalls_on_a_socket_that_never_connects():
    import tasks  # the firmware's scheduler drives its coroutines (firmware/tasks.py)
    from app.runtime import link_alive
    from link import Link
    from supervisor import Supervisor

    class NoNet:
        def network_up(self, cfg):
            return False

        def watchdog(self, ms):
            return None

    class Sock:
        def close(self):
            pass

    logs = []
    sup = Supervisor(NoNet(), logs.append, stall_ms=600)
    c = cfg()
    c.update({"broker_host": "127.0.0.1", "broker_port": 1, "tls": False})
    link = Link(NoNet(), c, None, log=lambda m: None, backoff_min_ms=2000, backoff_max_ms=2000)

    async def board_task():
        while True:
            sup.alive("board")
            link_alive(sup, link)
            await tasks.sleep_ms(10)

    async def scenario():
        sup.spawn("link", link.run)
        sup.spawn("board", board_task)
        w = tasks.create_task(sup.watch())
        for _ in range(300):  # through the first back-off sleep (2 s, over 3 x stall_ms)
            await tasks.sleep_ms(10)
            if link.failures >= 2:
                break
        in_backoff = list(logs)
        link.conn = Sock()  # a socket that never becomes a session (as if stuck before CONNACK)
        for _ in range(300):
            await tasks.sleep_ms(10)
            if any("stalled" in m for m in logs):
                break
        tasks.cancel(w)
        return in_backoff

    in_backoff = tasks.run(scenario())
    check(link.failures >= 2, "two connect attempts, a 2 s back-off between: %d" % link.failures)
    check(not any("stalled" in m for m in in_backoff), "not a stall while backing off: %r" % in_backoff)
    check(any("link stalled" in m for m in logs), "stuck before the session: stalled: %r" % logs)


def test_checkin_beeps_stored_even_when_memory_runs_out_right_after_the_store():
    from checkin_point import CheckinPoint

    class NoRoom:  # the bookkeeping after the store: its first allocation fails
        def __len__(self):
            return 0

        def __setitem__(self, k, v):
            raise MemoryError

    board = FakeBoard()
    board.rfid = lambda: None
    up = Uplink(cfg(), D, Clock())
    up.link = FakeLink()
    logs = []
    role = CheckinPoint(board, up, cfg()["settings"], 5, logs.append)
    role.pending = NoRoom()
    seq = role.card(b"\x01\x02\x03\x04")
    check(seq is not None and list(up.outbox.seqs()) == [seq], "stored: %r" % (seq,))
    eq((role.buzzer.once[0], board.buzzer.v), ("stored", 1), "the stored beep sounds")
    eq(role.led.once[0], "checkin_stored", "the stored flash")
    check(any("MemoryError" in m for m in logs), "logged: %r" % logs)


def test_checkin_tap_that_meets_memory_error_is_stored_while_the_card_stays_in_the_field():
    """emit() fails with MemoryError (no heap to store the tap): no beep, and the card is not
    taken as seen, so the next read stores it once there is room: one event, one beep."""
    from checkin_point import CheckinPoint

    class Reader:
        uid = b"\x0a\x0b\x0c\x0d"

        def read_uid(self):
            return self.uid

    board = FakeBoard()
    board.rfid = lambda: Reader()
    up = Uplink(cfg(), D, Clock())
    up.link = FakeLink()
    role = CheckinPoint(board, up, cfg()["settings"], 5, lambda m: None)
    real = up.emit
    fails = [2]

    def emit(*a):
        if fails[0]:
            fails[0] -= 1
            raise MemoryError
        return real(*a)

    up.emit = emit
    before = len(up.outbox)
    role._read()
    role._read()
    eq((len(up.outbox), role.buzzer.once), (before, None), "two failed stores: nothing stored, no beep")
    role._read()
    eq(len(up.outbox), before + 1, "stored at the next read, the card still in the field")
    eq(role.buzzer.once[0], "stored", "the stored beep once it is on flash")
    role._read()
    eq(len(up.outbox), before + 1, "the same card in the field: one event")


def test_alarm_press_that_meets_memory_error_is_kept_shown_failing_and_stored_later():
    board, up, role = _alarm_role()
    real = up.emit
    tries = []

    def emit(*a):
        tries.append(1)
        if len(tries) <= 3:
            bytearray(1 << 40)  # a real MemoryError from the VM's allocator
        return real(*a)

    up.emit = emit
    _hold(board, role, 1100)
    eq((len(up.outbox), role.led.state), (0, "failing"), "not stored yet: failing, not stored")
    t0 = time.ticks_ms()
    while len(up.outbox) == 0 and time.ticks_diff(time.ticks_ms(), t0) < 3000:
        role.step()
        eq(role.led.state, "failing" if len(up.outbox) == 0 else "sending", "LED while retried")
        time.sleep_ms(10)
    eq(len(tries), 4, "three MemoryErrors, then stored")
    eq(list(up.outbox.seqs()), [role.alarm_seq], "one alarm, the open one")
    eq(role.led.state, "sending", "stored: sending")
    for _ in range(30):
        role.step()
        time.sleep_ms(10)
    eq((len(tries), len(up.outbox)), (4, 1), "stored once, no second alarm")


run_all(globals(), setup=fresh)
