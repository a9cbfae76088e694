"""`fengqiao deploy PLAN --port auto` over host boards on real ptys, against a real gateway DB and
Mosquitto: a plan deploys end to end, each board then comes online and its alarm is accepted."""

import json
import os

import pytest

from tools.cli import main
from tools.testing.deploy_rig import DeployRig
from tools.testing.procs import wait_for


@pytest.fixture
def rig(tmp_path):
    r = DeployRig(tmp_path, boards=3, checkins=1).start()
    yield r
    r.close()


def read_identity(flash_dir):
    with open(os.path.join(flash_dir, "data", "identity.cfg"), "rb") as f:
        return json.loads(f.read().split(b"\n")[0])


@pytest.fixture
def rig10(tmp_path):
    r = DeployRig(tmp_path, boards=10, checkins=1).start()
    yield r
    r.close()


@pytest.mark.timeout(180)
def test_plan_deploys_then_boards_come_online_and_alarm_is_accepted(rig10, capsys):
    """The issue's 10-board plan (9 alarm buttons, 1 check-in point): deployed end to end, labels
    drawn, then every board comes online at a real gateway and every alarm button's alarm is
    accepted."""
    from gateway.cli import GatewayApp
    from gateway.config import load_config

    rig = rig10
    plan = rig.write_plan()
    for i in range(rig.n):
        rig.plug(i)
    assert main(rig.deploy_args(plan, "--labels", os.path.join(rig.work, "labels"))) == 0
    out = capsys.readouterr().out
    assert "board 10 of 10" in out and "10 rows: 10 done, 0 failed" in out, out
    with open(plan + ".state.json", encoding="utf-8") as f:
        state = json.load(f)["rows"]
    ids = {}
    for r, hb in zip(rig.rows, rig.boards):
        s = state[r["place"]]
        assert s["status"] == "done"
        stored = read_identity(hb.flash_dir)
        ids[stored["device_id"]] = hb
        assert stored["device_id"] == s["device_id"] >= 0x100 and stored["key"] not in out
        assert os.path.exists(os.path.join(rig.work, "labels", "%08x.svg" % s["device_id"]))
    from tools.tests.test_labels import zbar

    first = state[rig.rows[0]["place"]]["device_id"]
    assert zbar(os.path.join(rig.work, "labels", "%08x.png" % first)) == "FQ1:%08x" % first
    with open(os.path.join(rig.work, "labels", "sheet.html"), encoding="utf-8") as f:
        assert f.read().count('class="s"') == 10
    app = GatewayApp(load_config(rig.config_path))
    app.start()
    try:
        for hb in rig.boards:
            assert hb.wait_exit(10) == 3     # rebooted by deploy
            hb.restart()
        wait_for(lambda: {e.device_id for e in app.store.events_after(0, 1000) if e.kind == "boot"} == set(ids),
                 60, "every deployed board's boot frame stored")
        alarms = {dev for dev, hb in ids.items() if read_identity(hb.flash_dir)["role"] == "alarm"}
        assert len(alarms) == 9
        for dev in alarms:
            ids[dev].hold(1300)
        wait_for(lambda: {e.device_id for e in app.store.events_after(0, 1000) if e.kind == "alarm"} == alarms,
                 60, "the alarm of every alarm button stored at the gateway")
    finally:
        app.stop()


def test_plan_errors_name_line_and_field(tmp_path):
    from tools.deploy import PlanError, load_plan

    plan = tmp_path / "bad.csv"
    plan.write_text("role,village,place,name,group,power,checkpoint_id\n"
                    "alarm,东山村,hh-1,王家,g1,mains,\n"
                    "siren,东山村,hh-2,李家,g1,mains,\n"
                    "alarm,东山村,hh-1,张家,g1,solar,\n"
                    "checkin,东山村,cp-1,村口,,mains,x\n", encoding="utf-8")
    with pytest.raises(PlanError) as e:
        load_plan(str(plan))
    text = str(e.value)
    assert "4 error(s)" in text
    for want in ("bad.csv:3: role: 'siren'", "bad.csv:4: place: 'hh-1' is already on line 2",
                 "bad.csv:4: power: 'solar'", "bad.csv:5: checkpoint_id: 'x'"):
        assert want in text, text
    (tmp_path / "nohdr.csv").write_text("role,place\nalarm,hh-1\n", encoding="utf-8")
    with pytest.raises(PlanError, match=r"nohdr.csv:1: missing column\(s\) village, name, group, power"):
        load_plan(str(tmp_path / "nohdr.csv"))


@pytest.mark.timeout(60)
def test_unknown_place_refused_before_any_board_is_touched(rig, capsys):
    rows = [dict(rig.rows[0], place="hh-nowhere")]
    plan = rig.write_plan(rows, "unknown.csv")
    rig.plug(0)
    assert main(rig.deploy_args(plan)) == 1
    err = capsys.readouterr().err
    assert "unknown.csv:2: place: 'hh-nowhere' is not in the gateway's registry" in err
    assert not os.path.exists(os.path.join(rig.boards[0].flash_dir, "data", "identity.cfg"))


@pytest.mark.timeout(120)
def test_away_from_the_gateway_bundle_then_import(rig, capsys):
    """The laptop cannot reach the gateway DB: a field kit, the boards keyed into a signed bundle, the
    bundle imported at the township; the gateway then holds each board's very key, the broker too."""
    from gateway.broker import ProjectBroker
    from gateway.registry import Registry

    conf = ["--config", rig.config_path]
    tech = os.path.join(rig.work, "tech.pem")
    assert main(["device", "technician-key", "--out", tech]) == 0
    pub = capsys.readouterr().out.strip()
    assert main(["device", "technician", "add", "li", "--pubkey", pub] + conf) == 0
    kit = os.path.join(rig.work, "kit.json")
    assert main(["device", "field-kit", "--technician", "li", "--count", "5", "--out", kit] + conf) == 0
    capsys.readouterr()
    plan = rig.write_plan(rig.rows[:2], "away.csv")
    rig.plug(0)
    rig.plug(1)
    args = [a for a in rig.deploy_args(plan, "--no-reboot") if a not in ("--gateway-config", rig.config_path)]
    assert main(args + ["--kit", kit, "--technician-key", tech]) == 0
    out = capsys.readouterr().out
    bundle = plan + ".bundle.json"
    assert "enrolment bundle %s: 2 board(s)" % bundle in out
    boards = [read_identity(hb.flash_dir) for hb in rig.boards[:2]]
    with open(bundle, "rb") as f:
        data = f.read()
    for b in boards:
        assert b["key"].encode() not in data and b["key"] not in out
    reg = Registry(rig.db_path, rig.master_key)
    try:
        assert all(reg.device(b["device_id"]) is None for b in boards)   # nothing at the gateway yet
    finally:
        reg.close()
    assert main(["device", "import-enrolment", bundle] + conf) == 0
    reg = Registry(rig.db_path, rig.master_key)
    try:
        for b, r in zip(boards, rig.rows):
            assert reg.device_key(b["device_id"], 1).hex() == b["key"] and reg.device(b["device_id"]).place_id == r["place"]
    finally:
        reg.close()
    assert {"%08x" % b["device_id"] for b in boards} <= set(ProjectBroker(rig.broker.workdir).devices())


@pytest.mark.timeout(60)
def test_the_same_board_twice_is_detected(rig, capsys):
    plan = rig.write_plan(rig.rows[:1], "one.csv")
    rig.plug(0)
    assert main(rig.deploy_args(plan, "--no-reboot")) == 0
    first = read_identity(rig.boards[0].flash_dir)
    capsys.readouterr()
    plan2 = rig.write_plan(rig.rows[1:2], "two.csv")   # the same board plugged in for the next row
    assert main(rig.deploy_args(plan2, "--no-reboot")) == 0
    out = capsys.readouterr().out
    assert "is already deployed as device %08x (%s): not provisioned twice" % (first["device_id"],
                                                                              rig.rows[0]["place"]) in out, out
    assert read_identity(rig.boards[0].flash_dir) == first
    assert "1 rows: 0 done, 0 failed, 1 to do" in out   # the summary: row 1 of two.csv still to do


@pytest.mark.timeout(60)
def test_a_board_whose_flash_cannot_store_the_identity_is_named_and_left_unregistered(rig, capsys):
    """A full or failing flash: the board's write of its identity fails (here its data/ is a file, so
    nothing can be written under it: the board answers storage_error). The board is reported with
    what to do, skipped, and nothing is registered nor let onto the broker; the enrolment is
    cancelled, so a rerun after the fix keys it afresh."""
    import shutil

    from gateway.broker import ProjectBroker
    from gateway.registry import Registry

    hb = rig.boards[0]
    hb.stop()
    data = os.path.join(hb.flash_dir, "data")
    shutil.rmtree(data, ignore_errors=True)
    with open(data, "wb") as f:
        f.write(b"not a directory")
    hb.start()
    plan = rig.write_plan(rig.rows[:1], "full.csv")
    rig.plug(0)
    assert main(rig.deploy_args(plan, "--no-reboot")) == 1
    out = capsys.readouterr().out
    assert "FAILED: the board could not store its identity (flash full or failing" in out, out
    assert "reflash it (`fengqiao flash`), then rerun" in out
    reg = Registry(rig.db_path, rig.master_key)
    try:
        assert reg.devices() == []
    finally:
        reg.close()
    assert ProjectBroker(rig.broker.workdir).devices() == []
    hb.stop()   # the flash mended: the rerun deploys the board
    os.remove(data)
    hb.start()
    rig.unplug(0)
    rig.plug(0)
    assert main(rig.deploy_args(plan, "--no-reboot")) == 0
    assert "1 rows: 1 done" in capsys.readouterr().out


@pytest.mark.parametrize("rssi,button,verdict", [(-60, 0, "PASS  -60 dBm"), (-85, 1, "FAIL  -85 dBm: weak")])
def test_field_check_reads_the_wifi_signal_and_button_aloud(monkeypatch, rssi, button, verdict):
    """`device check`'s Wi-Fi and button lines from a selftest reply's `rssi` and `button`, through a
    stand-in console (the firmware's selftest sends both, firmware/tests/test_console_pty.py)."""
    from tools import deploy

    class Con:
        def identify(self):
            return {"board": "esp32", "hwid": "e-1", "fw": deploy.FIRMWARE_VERSION, "provisioned": False}

        def selftest(self):
            return {"led": "driven", "buzzer": "driven", "reader": "absent", "battery_mv": 4000,
                    "tamper_open": False, "button": button, "rssi": rssi}

        def close(self):
            pass

    monkeypatch.setattr(deploy, "open_console", lambda port, timeout_s: Con())
    said = []
    rc = deploy.field_check("/dev/ttyUSB0", say=said.append)
    assert any(line.startswith("Wi-Fi signal") and verdict in line for line in said), said
    assert any(line.startswith("button") and ("FAIL  pressed now" if button else "PASS  up (not stuck)") in line
               for line in said), said
    assert rc == (0 if rssi >= deploy.WIFI_MIN_DBM and not button else 1)


@pytest.mark.timeout(90)
def test_a_board_failing_its_self_test_is_skipped_and_the_next_board_takes_its_row(tmp_path, capsys):
    """A check-in point whose card reader does not answer fails the self-test before anything is
    keyed: reported, skipped, left without an identity and unregistered; the next board plugged in
    deploys the same row."""
    from gateway.registry import Registry

    rig = DeployRig(tmp_path, boards=2, checkins=2).start()
    try:
        bad = rig.boards[0]
        bad.stop()
        bad.flags.append("--no-rfid")   # no reader fitted / a dead one
        bad.start()
        plan = rig.write_plan(rig.rows[:1])
        assert rig.rows[0]["role"] == "checkin"
        rig.plug(0)
        rig.plug(1)
        assert main(rig.deploy_args(plan, "--no-reboot")) == 1
        out = capsys.readouterr().out
        assert "board 1 of 1 — FAILED: self-test failed: LED driven, buzzer driven, reader absent (skipped)" in out, out
        assert "1 rows: 1 done" in out, out
        assert not os.path.exists(os.path.join(bad.flash_dir, "data", "identity.cfg"))
        good = read_identity(rig.boards[1].flash_dir)
        reg = Registry(rig.db_path, rig.master_key)
        try:
            assert [(d.device_id, d.place_id) for d in reg.devices()] == [(good["device_id"], rig.rows[0]["place"])]
        finally:
            reg.close()
    finally:
        rig.close()


@pytest.mark.parametrize("t,verdict", [(None, "clock            SKIP  not reported by the board"),
                                       (0, "clock            FAIL  not set"),
                                       (5, "clock            PASS  +"), (-600, "clock            FAIL  -60")])
def test_field_check_reads_the_running_units_clock(monkeypatch, t, verdict):
    """`device check`'s clock line from identify's `time` (a running unit's clock; 0: not set yet)."""
    import time as _time

    from tools import deploy

    class Con:
        def identify(self):
            out = {"board": "esp32", "hwid": "e-1", "fw": deploy.FIRMWARE_VERSION, "provisioned": False}
            if t is not None:
                out["time"] = 0 if t == 0 else int(_time.time()) + t
            return out

        def selftest(self):
            return {"led": "driven", "buzzer": "driven", "reader": "absent", "battery_mv": 4000,
                    "tamper_open": False, "button": False, "rssi": -50}

        def close(self):
            pass

    monkeypatch.setattr(deploy, "open_console", lambda port, timeout_s: Con())
    said = []
    rc = deploy.field_check("/dev/ttyUSB0", say=said.append)
    assert any(line.startswith(verdict) for line in said), said
    assert rc == (1 if "FAIL" in verdict else 0)
