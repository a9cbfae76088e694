"""Cases with real firmware: host boards (the MicroPython Unix port running firmware/main.py from its
compiled image), the project's Mosquitto, the real gateway with the cases plugin and the sample
village, and `fengqiao case ...` run as its own process, as the duty officer does.

Covers, from issue 5's Tests: an alarm sounds the group's sirens and nobody else's; escalation fires
at each deadline with an injected clock; the button's LED goes stored -> someone is coming when a
responder acknowledges; a cancel closes the case and silences the sirens. (The same scenarios on a
real board over a serial port are the lead's HIL suite.)
"""

import os
import subprocess
import sys
import time

import pytest

from gateway.cli import GatewayApp
from gateway.config import from_dict
from gateway.tests.conftest import gateway_config
from gateway.village.cli import sync_registry
from gateway.village.config import parse_village
from gateway.village.db import import_village, open_db
from gateway.village.testing import sample_text
from tools.hostboard import HostBoard, board_heap, provision_dir
from tools.simulate import led_state
from tools.testing.procs import REPO_ROOT, wait_for

HEAP = board_heap()  # a board's 64 KB, code in ROMFS (firmware/LINK.md, Memory)
FAST = ["--backoff-min-ms", "200", "--backoff-max-ms", "1000", "--failing-s", "20"]
PRESSER, NEIGHBOUR, OTHER_GROUP, GATE = 0x101, 0x102, 0x201, 0x301


def start_village(work, broker, devices, clock=None):
    """The gateway (cases plugin, sample village) and one host board per (device id, registry role)."""
    raw = gateway_config(work, broker, gateway={"plugins": ["gateway.cases"]}, cases={"tick_s": 0.2})
    app = GatewayApp(from_dict(raw), clock=clock)
    os.makedirs(app.data_dir, mode=0o700, exist_ok=True)
    db_path = os.path.join(app.data_dir, "gateway.db")
    data = parse_village(sample_text(), "sample_village.toml")
    db = open_db(db_path)
    import_village(db, data, "sample")
    db.close()
    boards = {}
    try:
        app.start()
        for dev, role in devices:
            key = os.urandom(32)
            app.registry.add_device(dev, role, None, key=key)
            broker.add_device(dev, key)
            flash = work / ("board-%x" % dev)
            fw_role = "checkin" if role == "checkpoint" else "alarm"
            provision_dir(str(flash), {"device_id": dev, "key": key, "role": fw_role, "broker_host": "127.0.0.1",
                                       "broker_port": broker.port, "checkpoint_id": 101})
            boards[dev] = HostBoard(str(flash), heap=HEAP, args=FAST).start()
        sync_registry(app.registry, data)
        wait_for(lambda: {e.device_id for e in app.store.events_after(0, 1000) if e.kind == "boot"} == set(boards),
                 60, "every board's boot frame stored (connected)")
        time.sleep(0.5)                        # subscribed before boot went out; let the broker settle
    except BaseException:
        stop_village(app, boards)
        raise
    return app, boards, db_path


def stop_village(app, boards):
    for hb in boards.values():
        hb.stop()
    app.stop()


@pytest.fixture(scope="module")
def village(tmp_path_factory):
    from gateway.broker import ProjectBroker

    work = tmp_path_factory.mktemp("cases-fw")
    broker = ProjectBroker(str(work / "broker")).start()
    try:
        app, boards, db_path = start_village(work, broker, [
            (PRESSER, "alarm_button"), (NEIGHBOUR, "alarm_button"), (OTHER_GROUP, "alarm_button"), (GATE, "checkpoint")])
        try:
            yield app, boards, db_path
        finally:
            stop_village(app, boards)
    finally:
        broker.stop()


def fengqiao(*args):
    result = subprocess.run([sys.executable, "-m", "tools.cli"] + list(args), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_led(hb, state, timeout_s=15.0):
    return wait_for(lambda: led_state(hb) == state, timeout_s, "LED %s (now %s)" % (state, led_state(hb)),
                    interval_s=0.1)


def sounding(hb, since_len, changes=4):
    """The buzzer toggled at least `changes` times since history length `since_len` (a siren pattern)."""
    return len(hb.buzzer_history()) - since_len >= changes


def silent_for(hb, seconds=1.2):
    before = len(hb.buzzer_history())
    time.sleep(seconds)
    return hb.buzzer() == 0 and len(hb.buzzer_history()) == before


def open_case(app, device_id):
    cases = [c for c in app._plugins[-1].cases.list_cases(status="open") if c["device_id"] == device_id]
    return cases[0] if cases else None


@pytest.mark.timeout(240)
def test_group_sirens_and_the_led_through_acknowledgement_and_close(village):
    app, boards, db_path = village
    presser, neighbour, other, gate = (boards[d] for d in (PRESSER, NEIGHBOUR, OTHER_GROUP, GATE))
    marks = {d: len(hb.buzzer_history()) for d, hb in boards.items()}
    presser.hold(1300)
    wait_for(lambda: open_case(app, PRESSER), 20, "a case for the held button")
    wait_led(presser, "stored")
    wait_for(lambda: sounding(neighbour, marks[NEIGHBOUR]), 10, "the neighbour's siren")
    wait_for(lambda: sounding(gate, marks[GATE]), 10, "the village gate check-in point's patrol buzzer")
    time.sleep(1.0)
    assert len(other.buzzer_history()) == marks[OTHER_GROUP], "a household of the other group heard a siren"
    case = open_case(app, PRESSER)

    fengqiao("case", "ack", str(case["case_id"]), "--by", "p-chen-li", "--note", "on my way", "--db", db_path)
    wait_led(presser, "coming")
    assert presser.led() == (0, 1, 0)

    fengqiao("case", "close", str(case["case_id"]), "--by", "p-chen-li", "--note", "burnt pan, no fire", "--db", db_path)
    wait_led(presser, "idle")
    wait_for(lambda: silent_for(neighbour), 15, "the neighbour's siren to stop")
    wait_for(lambda: silent_for(gate), 15, "the gate's buzzer to stop")
    steps = [s["step"] for s in app._plugins[-1].cases.get(case["case_id"])["steps"]]
    assert steps == ["received", "dispatched", "acknowledged", "feedback", "closed"]


@pytest.mark.timeout(240)
def test_triple_tap_cancel_closes_the_case_and_silences_the_sirens(village):
    app, boards, db_path = village
    presser, neighbour = boards[PRESSER], boards[NEIGHBOUR]
    wait_for(lambda: silent_for(neighbour), 15, "quiet before the press")
    mark = len(neighbour.buzzer_history())
    presser.hold(1300)
    wait_for(lambda: open_case(app, PRESSER), 20, "a case for the held button")
    wait_for(lambda: sounding(neighbour, mark), 10, "the neighbour's siren")
    case = open_case(app, PRESSER)
    presser.button_script([(1, 120), (0, 150), (1, 120), (0, 150), (1, 120), (0, 0)])
    wait_for(lambda: app._plugins[-1].cases.get(case["case_id"])["status"] == "cancelled", 20, "case cancelled")
    wait_led(presser, "idle")
    wait_for(lambda: silent_for(neighbour), 15, "the neighbour's siren to stop")
    got = app._plugins[-1].cases.get(case["case_id"])
    assert got["closed_by"] == "person@%08x" % PRESSER
    assert [i["role"] for i in got["inputs"]] == ["first", "cancel"]


@pytest.mark.timeout(240)
def test_escalation_when_nobody_answers_then_an_acknowledgement_lights_the_button(tmp_path, project_broker):
    from gateway.clock import ManualClock

    clock = ManualClock(time.time())
    app, boards, _ = start_village(tmp_path, project_broker, [(PRESSER, "alarm_button")], clock=clock)
    try:
        cases = app._plugins[-1].cases
        boards[PRESSER].hold(1300)
        wait_for(lambda: open_case(app, PRESSER), 20, "a case for the held button")
        case = open_case(app, PRESSER)
        wait_led(boards[PRESSER], "stored")
        t0 = case["opened_at"]                                     # emergency: level 3, 300 s / 1200 s
        clock.set(t0 + 299)
        time.sleep(0.6)
        assert cases.get(case["case_id"])["escalated_to"] == "village"
        clock.set(t0 + 300)
        wait_for(lambda: cases.get(case["case_id"])["escalated_to"] == "township", 10, "escalation to the township")
        clock.set(t0 + 1200)
        wait_for(lambda: cases.get(case["case_id"])["escalated_to"] == "county", 10, "escalation to the county")
        assert led_state(boards[PRESSER]) == "stored"             # still waiting for a responder
        cases.acknowledge(case["case_id"], "p-zhou-min", "township patrol car sent")   # the duty console's call
        wait_led(boards[PRESSER], "coming")
        esc = [e.body for e in app.store.events_after(0, 10_000) if e.kind == "case_escalated"]
        assert [(b["to"], b["at"] - t0) for b in esc] == [("township", 300), ("county", 1200)]
    finally:
        stop_village(app, boards)
