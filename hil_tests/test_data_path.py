"""The whole data path, end to end, with nothing stubbed:

    button or card -> device outbox (flash) -> link (MQTT over TLS, CA-verified) -> Mosquitto
    (per-device password + ACL, the project's config) -> gateway verify -> durable store -> ack
    back to the device -> signed envelope to the county broker

Host boards run the real firmware image on the MicroPython VM; the gateway is the real
`GatewayApp` (the same composition `fengqiao gateway run` starts) with the upstream plugin
forwarding to a second, county-side Mosquitto.
"""

import os

import pytest

from gateway import envelope
from gateway.cli import GatewayApp
from gateway.config import from_dict
from gateway.county import CountyRecorder
from gateway.keys import SigningKey, load_public_key
from protocol import frame
from tools.hostboard import HostBoard, board_heap, provision_dir
from tools.simulate import led_state
from tools.testing.mosquitto import MosquittoProcess
from tools.testing.procs import free_port, wait_for

HEAP = board_heap()  # a board's 64 KB, code in ROMFS (firmware/LINK.md, Memory)
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000", "--failing-s", "4"]
ALARM, GATE = 0x0501, 0x0601
COUNTY_TOPIC = "fq/v1/county/hil"


@pytest.fixture
def host_only(hil_port):
    if hil_port:
        pytest.skip(reason="needs the host board's control channel (press the button, kill -9) "
                           "which a real board on %s does not have" % hil_port)


class Township:
    """Gateway (own TLS Mosquitto) + county broker/recorder + host boards, in one work dir."""

    def __init__(self, work):
        self.work = work
        self.county = MosquittoProcess(os.path.join(work, "county")).start()
        self.recorder = CountyRecorder("127.0.0.1", self.county.port, COUNTY_TOPIC,
                                       os.path.join(work, "county.jsonl")).start()
        raw = {
            "gateway": {"data_dir": os.path.join(work, "gw"), "plugins": ["gateway.upstream"]},
            "broker": {"port": free_port(), "tls_port": free_port(), "bind": "127.0.0.1"},
            "metrics": {"enabled": False},
            "log": {"level": "warning", "format": "text"},
            "upstream": {"gateway_id": "hil", "host": "127.0.0.1", "port": self.county.port, "topic": COUNTY_TOPIC},
        }
        self.app = GatewayApp(from_dict(raw, os.path.join(work, "gateway.toml"))).start()
        self.boards = {}
        self.keys = {}

    def add_board(self, device_id, role, checkpoint_id=None):
        broker = self.app.broker
        key = self.app.registry.add_device(device_id, "alarm_button" if role == "alarm" else "checkpoint",
                                           None, heartbeat_interval_s=30)
        self.keys[device_id] = key
        broker.add_device(device_id, key)
        with open(broker.ca_path) as f:
            ca = f.read()
        flash = os.path.join(self.work, "board-%08x" % device_id)
        provision_dir(flash, {"device_id": device_id, "key": key, "role": role, "broker_host": "127.0.0.1",
                              "broker_port": broker.tls_port, "tls": True, "ca_pem": ca,
                              "checkpoint_id": checkpoint_id})
        hb = self.boards[device_id] = HostBoard(flash, heap=HEAP, args=FAST).start()
        wait_for(lambda: self.stored(device_id, "boot"), 60, "board %08x's boot frame at the gateway" % device_id)
        return hb

    def stored(self, device_id, kind):
        return [e for e in self.app.store.events_after(0, 100000) if e.device_id == device_id and e.kind == kind]

    def close(self):
        for hb in self.boards.values():
            hb.stop()
        self.app.stop()
        self.recorder.stop()
        self.county.stop()


@pytest.fixture
def township(tmp_path, host_only):
    t = Township(str(tmp_path))
    try:
        yield t
    finally:
        t.close()


def wait_led(hb, state, timeout_s=20):
    return wait_for(lambda: led_state(hb) == state, timeout_s, "LED to show %s (it shows %s)" % (state, led_state(hb)),
                    interval_s=0.1)


@pytest.mark.timeout(240)
def test_a_held_button_travels_the_whole_path_and_the_county_can_verify_it(township):
    hb = township.add_board(ALARM, "alarm")
    hb.hold(1200)
    alarm = wait_for(lambda: township.stored(ALARM, "alarm"), 15, "the alarm stored by the gateway")[0]
    assert alarm.body == [0] and alarm.topic == frame.uplink_topic(ALARM)
    # the exact bytes the device sent verify with its key (gateway verification is not taken on trust)
    k_up, _ = frame.derive_keys(township.keys[ALARM])
    assert frame.decode(k_up, alarm.topic, alarm.frame, downlink=False).seq == alarm.seq
    wait_led(hb, "stored")
    assert township.recorder.wait_count(alarm.event_id, 20), "envelopes up to the alarm at the county"
    public = load_public_key(SigningKey.load_or_create(township.app.config.path_of("upstream_signing_key.pem"))
                             .public_pem())
    with open(township.recorder.path) as f:
        lines = f.readlines()
    report = envelope.verify_envelopes(lines, public, {ALARM: township.keys[ALARM]}, first_event=1)
    assert report.ok, report.problems
    assert report.macs_checked >= 2   # boot and alarm, each device MAC checked at the county

    # one byte changed in transit to the county is caught
    # (the last MAC byte flipped: writing a fixed value would change nothing when it already was that)
    changed = (alarm.frame[:-1] + bytes([alarm.frame[-1] ^ 0x01])).hex()
    tampered = [ln.replace(alarm.frame.hex(), changed) for ln in lines]
    assert tampered != lines
    assert not envelope.verify_envelopes(tampered, public, {ALARM: township.keys[ALARM]}, first_event=1).ok


@pytest.mark.timeout(300)
def test_power_cut_while_the_township_is_unreachable_loses_no_alarm(township):
    hb = township.add_board(ALARM, "alarm")
    township.app.broker.stop()                       # the village's link to the township is down
    hb.hold(1200)
    wait_led(hb, "failing", 30)                      # "not getting through, still trying"
    hb.kill9()                                       # then the power goes
    hb.restart()
    township.app.broker.start()                      # and later both come back
    wait_for(lambda: township.stored(ALARM, "alarm"), 60, "the alarm pressed before the power cut")
    wait_led(hb, "stored", 30)                       # after the reboot the button still shows it got through
    hb.hold(1200)                                    # a second alarm after the reboot
    wait_for(lambda: len(township.stored(ALARM, "alarm")) == 2, 30, "the second alarm stored")
    alarms = township.stored(ALARM, "alarm")
    seqs = [e.seq for e in township.app.store.events_after(0, 100000) if e.device_id == ALARM]
    assert len(seqs) == len(set(seqs)), "a sequence number was reused after the power cut: %s" % seqs
    assert alarms[0].seq < alarms[1].seq
    assert len(alarms) == 2, "each press stored exactly once"


@pytest.mark.timeout(300)
def test_a_checkin_made_offline_is_stored_with_the_time_it_was_made(township):
    import time

    hb = township.add_board(GATE, "checkin", checkpoint_id=101)
    # the first ack has given the device the gateway's time; now the township goes away
    township.app.broker.stop()
    tapped_at = time.time()
    hb.card("04a1b2c3")
    wait_for(lambda: any(on for _t, on in hb.buzzer_history()), 10, "the 'stored' beep while offline")
    hb.remove_card()
    time.sleep(6)
    township.app.broker.start()
    checkin = wait_for(lambda: township.stored(GATE, "checkin"), 60, "the offline check-in synced")[0]
    assert checkin.body == [101, bytes.fromhex("04a1b2c3")]
    assert checkin.device_time is not None and abs(checkin.device_time - tapped_at) <= 3, \
        "device time %s vs tapped at %.0f" % (checkin.device_time, tapped_at)
    assert checkin.received_at - checkin.device_time >= 5, "arrived later than it was made"
