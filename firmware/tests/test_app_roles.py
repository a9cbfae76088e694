"""The roles on host boards against the project's real Mosquitto and a scripted gateway peer.

Alarm button: a tap does nothing, a hold raises an alarm, and the LED walks sending -> stored ->
coming as the gateway's acks arrive (failing while it cannot get through); a triple tap cancels;
a siren downlink sounds the buzzer. Check-in point: stored beep at once (even offline), confirmed
beep on the ack, the same card counted once per interval.
"""

import os
import time

import pytest

from protocol import frame
from tools.hostboard import HostBoard, board_heap, provision_dir
from tools.simulate import ScriptedGateway, led_state
from tools.testing.procs import wait_for

HEAP = board_heap()  # a board's 64 KB (code in ROMFS); the 200-event bound is test_app_memory.py
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000", "--failing-s", "3"]


@pytest.fixture(scope="module")
def village(tmp_path_factory):
    from gateway.broker import ProjectBroker

    work = tmp_path_factory.mktemp("roles")
    broker = ProjectBroker(str(work / "broker")).start()
    gw = ScriptedGateway("127.0.0.1", broker.port, broker.gateway_credentials, auto_ack=False)
    boards = []

    def board(role, dev, port=None, **settings):
        key = os.urandom(32)
        flash = work / ("%s-%x" % (role, dev))
        cfg = {"device_id": dev, "key": key, "role": role, "broker_host": "127.0.0.1",
               "broker_port": port or broker.port, "checkpoint_id": 7, "settings": settings}
        provision_dir(str(flash), cfg)
        broker.add_device(dev, key)
        gw.add_device(dev, key)
        hb = HostBoard(str(flash), heap=HEAP, args=FAST, wdt=True).start()  # watchdog armed: must be fed
        boards.append(hb)
        return hb

    yield broker, gw, board
    for hb in boards:
        # With --wdt a board whose supervisor stopped feeding is killed (reset reason 2): every
        # board must still be the process we started (one start each, except deliberate restarts).
        assert hb.alive, "board %s died (watchdog?): %s" % (hb.flash_dir, hb.log_tail(800))
        hb.stop()
    gw.close()
    broker.stop()


def wait_led(hb, state, timeout_s=8.0):
    return wait_for(lambda: led_state(hb) == state, timeout_s,
                    "LED state %s (now %s)" % (state, led_state(hb)), interval_s=0.1)


@pytest.mark.timeout(90)
def test_alarm_led_states_follow_the_acks_and_triple_tap_cancels(village):
    broker, gw, board = village
    dev = 0xA1
    hb = board("alarm", dev)
    gw.wait_frame(dev, "boot")
    hb.tap(150)  # a child's tap: nothing
    time.sleep(1.5)
    assert gw.of(dev, "alarm") == []
    assert led_state(hb) == "idle"
    hb.hold(1300)
    wait_led(hb, "sending")
    alarm = gw.wait_frame(dev, "alarm")
    assert alarm.body == [0]
    wait_led(hb, "failing", timeout_s=8)  # no ack after failing_s: "not getting through"
    gw.ack(dev, alarm.seq, 0)
    wait_led(hb, "stored")
    gw.ack(dev, alarm.seq, 2)
    wait_led(hb, "coming")
    assert hb.led() == (0, 1, 0)  # steady green
    hb.button_script([(1, 120), (0, 150), (1, 120), (0, 150), (1, 120), (0, 0)])
    cancel = gw.wait_frame(dev, "alarm_cancel")
    assert cancel.body == [alarm.seq] and cancel.seq > alarm.seq
    gw.ack(dev, cancel.seq, 0)
    wait_led(hb, "idle")


@pytest.mark.timeout(60)
def test_alarm_with_no_broker_shows_failing_and_keeps_the_alarm_on_flash(village):
    broker, gw, board = village
    from tools.testing.procs import free_port

    hb = board("alarm", 0xA2, port=free_port())  # nobody listens there
    hb.hold(1300)
    wait_led(hb, "failing")
    time.sleep(1.5)
    assert led_state(hb) == "failing"  # still trying, still saying so
    with open(os.path.join(hb.flash_dir, "data", "outbox.log"), "rb") as f:
        raw = f.read()
    assert raw.count(b"\xfaE") == 2 and b"\x03" in raw  # boot + alarm event records on flash


@pytest.mark.timeout(60)
def test_siren_downlink_sounds_the_buzzer_pattern(village):
    broker, gw, board = village
    dev = 0xA3
    hb = board("alarm", dev)
    gw.wait_frame(dev, "boot")
    time.sleep(0.5)  # subscribed before the boot frame went out; give the broker a moment
    before = len(hb.buzzer_history())
    gw.send(dev, frame.DOWN_SIREN, [True, 1, 2])  # neighbour alarm, 2 s
    wait_for(lambda: len(hb.buzzer_history()) - before >= 6, 5, "siren pattern 1 toggling the buzzer")
    hist = hb.buzzer_history()[before:]
    ons = [t for t, v in hist if v == 1]
    gaps = [b - a for a, b in zip(ons, ons[1:])]
    assert all(400 <= g <= 700 for g in gaps[:3]), gaps  # 250 on / 250 off
    wait_for(lambda: hb.buzzer() == 0 and time.sleep(0.6) is None and hb.buzzer() == 0, 5, "siren to end")


@pytest.mark.timeout(60)
def test_tamper_and_low_battery_raise_their_events_once(village):
    broker, gw, board = village
    dev = 0xA5
    hb = board("alarm", dev, low_battery_mv=3400)
    gw.wait_frame(dev, "boot")
    hb.tamper(True)
    assert gw.wait_frame(dev, "tamper").body == [True]
    hb.tamper(False)
    assert gw.wait_frame(dev, "tamper", count=2).body == [False]
    hb.battery(3300)
    assert gw.wait_frame(dev, "battery_low", timeout_s=10).body[0] < 3400
    hb.battery(3350)  # still below: no second event
    time.sleep(4)
    assert len(gw.of(dev, "battery_low")) == 1


@pytest.mark.timeout(60)
def test_config_downlink_changes_settings_and_survives_a_reboot(village):
    import json

    broker, gw, board = village
    dev = 0xA4
    hb = board("alarm", dev)
    gw.wait_frame(dev, "boot")
    time.sleep(0.3)
    gw.send(dev, frame.DOWN_CONFIG, [{1: 2, 3: 1500, 42: 9}])  # heartbeat every 2 s, hold 1.5 s

    def saved():
        with open(os.path.join(hb.flash_dir, "data", "identity.cfg")) as f:
            return json.loads(f.readline())["settings"]

    wait_for(lambda: saved()["heartbeat_interval_s"] == 2, 5, "the new settings saved in the identity")
    assert saved()["hold_ms"] == 1500
    gw.wait_frame(dev, "heartbeat", timeout_s=6)  # the new interval is in force already
    hb.hold(1200)  # shorter than the new hold: no alarm
    time.sleep(1.5)
    assert gw.of(dev, "alarm") == []
    hb.restart()
    gw.wait_frame(dev, "boot", count=2)
    hb.hold(1700)
    gw.wait_frame(dev, "alarm")


@pytest.mark.timeout(60)
def test_checkin_beeps_stored_offline_then_confirmed_and_counts_a_card_once(village):
    broker, gw, board = village
    dev = 0xC1
    hb = board("checkin", dev, checkin_repeat_s=600)
    boot = gw.wait_frame(dev, "boot")
    assert boot.device_time is None  # no RTC: time unknown until the gateway's first ack
    gw.ack(dev, boot.seq, 0)  # carries gateway_time: the clock is known from here on
    time.sleep(0.5)
    hb.network(False)  # Wi-Fi gone: checked before each connect; drop the session with the broker
    broker.revoke_device(dev)
    time.sleep(1.0)
    n0 = len(hb.buzzer_history())
    hb.card("04a1b2c3d4e5f6")
    wait_for(lambda: [v for _t, v in hb.buzzer_history()[n0:]].count(1) >= 1, 3, "stored beep while offline")
    time.sleep(0.5)
    hb.remove_card()
    time.sleep(0.5)
    hb.card("04a1b2c3d4e5f6")  # same card again: beep, but no second event
    time.sleep(0.6)
    hb.remove_card()
    broker.add_device(dev, gw_key(gw, dev, hb))
    hb.network(True)
    ci = gw.wait_frame(dev, "checkin", timeout_s=15)
    assert ci.body == [7, bytes.fromhex("04a1b2c3d4e5f6")]
    assert abs(ci.device_time - time.time()) < 30  # the tap's device time, from the adopted clock
    n1 = len(hb.buzzer_history())
    gw.ack(dev, ci.seq, 0)
    wait_for(lambda: [v for _t, v in hb.buzzer_history()[n1:]].count(1) >= 2, 3, "confirmed double beep")
    time.sleep(1.0)
    assert len(gw.of(dev, "checkin")) == 1


def gw_key(gw, dev, hb):
    import json

    with open(os.path.join(hb.flash_dir, "data", "identity.cfg")) as f:
        return bytes.fromhex(json.loads(f.readline())["key"])


@pytest.mark.timeout(60)
def test_unprovisioned_board_serves_the_console_and_shows_unprovisioned(tmp_path):
    import binascii
    import json
    import select

    hb = HostBoard(str(tmp_path / "blank"), heap=HEAP, console="pipe")
    hb.start()
    try:
        body = json.dumps({"id": 1, "cmd": "identify"}).encode()
        hb.proc.stdin.write(b"FQ1 " + body + b" %08x\n" % (binascii.crc32(body) & 0xFFFFFFFF))
        hb.proc.stdin.flush()
        ready, _, _ = select.select([hb.proc.stdout], [], [], 10)
        assert ready, "no console reply"
        line = hb.proc.stdout.readline()
        assert line.startswith(b"FQ1 "), line
        reply = json.loads(line[4:].rsplit(b" ", 1)[0])
        assert reply["ok"] and reply["provisioned"] is False, reply
        wait_for(lambda: hb.led() == (1, 0, 1), 5, "the magenta 'unprovisioned' flash")
    finally:
        hb.stop()
        for f in (hb.proc.stdin, hb.proc.stdout):
            f.close()
