"""`fengqiao device ...` over host boards on real ptys, a real gateway DB and a real Mosquitto:
replace (old revoked, its publish refused by the broker, history linked), rotate-key, check,
revoke (dropped within 5 s, no broker restart), list/show, import-enrolment, release dispatch,
port errors."""

import json
import os
import subprocess
import sys
import time

import pytest

from gateway.tests.conftest import TestClient
from tools.cli import main
from tools.testing.deploy_rig import DeployRig
from tools.testing.procs import wait_for


@pytest.fixture
def rig(tmp_path):
    r = DeployRig(tmp_path, boards=2).start()
    yield r
    r.close()


def identity(hb):
    with open(os.path.join(hb.flash_dir, "data", "identity.cfg"), "rb") as f:
        return json.loads(f.read().split(b"\n")[0])


def connect_as(broker, cfg):
    c = TestClient(broker.port, *broker.device_credentials(cfg["device_id"], bytes.fromhex(cfg["key"])))
    ok = c.connect()
    return c, ok


@pytest.mark.timeout(120)
def test_replace_rotate_check_revoke(rig, capsys):
    conf = ["--config", rig.config_path]
    plan = rig.write_plan(rig.rows[:1])
    rig.plug(0)
    assert main(rig.deploy_args(plan, "--no-reboot")) == 0
    old = identity(rig.boards[0])
    old_id = "%08x" % old["device_id"]
    c_old, ok = connect_as(rig.broker, old)
    assert ok
    capsys.readouterr()

    # replace: the board on port 1 takes the old one's place; the old login is dropped and refused
    t0 = time.monotonic()
    assert main(["device", "replace", old_id, "--port", rig.modems[1].port, "--no-reboot"] + conf) == 0
    out = capsys.readouterr().out
    wait_for(c_old.disconnected.is_set, 5 - (time.monotonic() - t0) + 0.5, "old device dropped by the broker")
    new = identity(rig.boards[1])
    new_id = "%08x" % new["device_id"]
    assert "device %s replaces %s at hh-d001" % (new_id, old_id) in out and new["key"] not in out
    c_again, ok = connect_as(rig.broker, old)
    assert not ok                                   # the old board's login is refused from now on
    c_again.close()
    c_old.close()
    assert main(["device", "show", new_id] + conf) == 0
    shown = capsys.readouterr().out
    assert "replaces %s" % old_id in shown and "hh-d001" in shown and "status      active" in shown
    assert main(["device", "show", old_id] + conf) == 0
    shown = capsys.readouterr().out
    assert "replaced by %s" % new_id in shown and "status      revoked" in shown

    # rotate-key: a new key id on the board and at the gateway, the broker takes the new login
    assert main(["device", "rotate-key", new_id, "--port", rig.modems[1].port, "--no-reboot"] + conf) == 0
    out = capsys.readouterr().out
    rotated = identity(rig.boards[1])
    assert rotated["key_id"] == 2 and rotated["key"] != new["key"] and rotated["key"] not in out
    assert "now uses key id 2" in out
    c_new, ok = connect_as(rig.broker, rotated)
    assert ok

    # rotate-key against the wrong board is refused before anything is written
    assert main(["device", "rotate-key", new_id, "--port", rig.modems[0].port, "--no-reboot"] + conf) == 1
    assert "not device %s" % new_id in capsys.readouterr().err

    # check: PASS/FAIL lines
    assert main(["device", "check", "--port", rig.modems[1].port]) == 0
    out = capsys.readouterr().out
    for want in ("board            PASS", "firmware         PASS", "LED              PASS", "buzzer           PASS",
                 "broker           PASS", "clock            SKIP"):
        assert want in out, out

    # list, then revoke: dropped by the broker within 5 s, no broker restart
    pid = rig.broker.pid
    assert main(["device", "list"] + conf) == 0
    listing = capsys.readouterr().out
    assert "%s alarm   revoked" % old_id in listing and "%s alarm   active  2" % new_id in listing
    t0 = time.monotonic()
    assert main(["device", "revoke", new_id] + conf) == 0
    wait_for(c_new.disconnected.is_set, 5, "revoked device dropped within 5 s")
    assert time.monotonic() - t0 < 5 and rig.broker.pid == pid
    assert main(["device", "revoke", new_id] + conf) == 1
    assert "revoked already" in capsys.readouterr().err
    c_new.close()


def test_port_errors(rig, tmp_path, capsys):
    assert main(["device", "check", "--port", str(tmp_path / "ttyUSB9")]) == 1
    assert "does not exist: is the board plugged in?" in capsys.readouterr().err
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1],'rb'); print('ok', flush=True);"
                               " time.sleep(60)", rig.modems[0].port], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"ok"
        assert main(["device", "check", "--port", rig.modems[0].port]) == 1
        err = capsys.readouterr().err
        assert "is busy: python" in err and "pid %d" % holder.pid in err
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # an older firmware on the board (its identify answer rewritten on the cable, CRC and all)
    from tools.serialconsole import decode, encode

    held = bytearray()

    def older(data):   # the board writes a reply in pieces: rewrite whole lines only
        held.extend(data)
        out = b""
        while b"\n" in held:
            line, _, rest = bytes(held).partition(b"\n")
            held[:] = rest
            if line.startswith(b"FQ1 ") and b'"fw"' in line:
                obj = decode(line)
                obj["fw"] = 903
                line = encode(obj).rstrip(b"\n")
            out += line + b"\n"
        return out

    rig.modems[1].from_board = older
    assert main(["device", "check", "--port", rig.modems[1].port]) == 1
    assert "firmware         FAIL  0.9.3 (this tool: 1.0.0)" in capsys.readouterr().out
    plan = rig.write_plan(rig.rows[1:2], "old-fw.csv")
    rig.plug(1)
    assert main(rig.deploy_args(plan, "--no-reboot")) == 1
    out = capsys.readouterr().out
    assert "runs firmware 0.9.3, this tool provisions 1.0.0: flash it first (`fengqiao flash --port" in out, out
    assert not os.path.exists(os.path.join(rig.boards[1].flash_dir, "data", "identity.cfg"))
    rig.modems[1].from_board = None

    import pty   # a tty with nothing on the other end: a silent board

    m, s = pty.openpty()
    try:
        assert main(["device", "check", "--port", os.ttyname(s), "--timeout-s", "0.3"]) == 1
        out = capsys.readouterr().out
        assert "board            FAIL  no Fengqiao console answered" in out
    finally:
        os.close(m)
        os.close(s)


def test_import_enrolment_cli_and_release_dispatch(rig, tmp_path, capsys):
    from gateway.bundle import ENROLMENT_KEY_FILE, EnrolmentKey, make_bundle, seal_entry
    from gateway.keys import SigningKey
    from tools.hostboard import key_fingerprint

    conf = ["--config", rig.config_path]
    tech_key = tmp_path / "tech.pem"
    assert main(["device", "technician-key", "--out", str(tech_key)]) == 0
    pub_hex = capsys.readouterr().out.strip()
    assert main(["device", "technician", "add", "zhang", "--pubkey", pub_hex] + conf) == 0
    kit = tmp_path / "kit.json"
    assert main(["device", "field-kit", "--technician", "zhang", "--count", "3", "--out", str(kit)] + conf) == 0
    capsys.readouterr()
    k = json.loads(kit.read_text())
    assert "PRIVATE" not in kit.read_text() and k["device_ids"][1] - k["device_ids"][0] == 2
    gw_key = EnrolmentKey.load_or_create(os.path.join(rig.work, "gw", ENROLMENT_KEY_FILE))
    assert k["gateway_enrolment_key"] == gw_key.public_raw.hex()
    key = os.urandom(32)
    meta = {"device_id": k["device_ids"][0], "key_id": 1, "role": "alarm_button", "place_id": "hh-d001",
            "power": "mains", "hwid": "hw-x", "fingerprint": key_fingerprint(key)}
    bundle = tmp_path / "b.fqe"
    bundle.write_bytes(make_bundle([seal_entry(bytes.fromhex(k["gateway_enrolment_key"]), meta, key)],
                                   SigningKey.load_or_create(tech_key), k["gateway_key_id"]))
    assert main(["device", "import-enrolment", str(bundle)] + conf) == 0
    out = capsys.readouterr().out
    assert "from technician zhang" in out and "%08x alarm   hh-d001" % meta["device_id"] in out
    assert main(["device", "import-enrolment", str(bundle)] + conf) == 1
    assert "ReplayedBundle: bundle" in capsys.readouterr().err
    tampered = bytearray(bundle.read_bytes())
    tampered[60] ^= 0x04
    bundle.write_bytes(bytes(tampered))
    assert main(["device", "import-enrolment", str(bundle)] + conf) == 1
    assert "TamperedBundle" in capsys.readouterr().err
    # release is dispatched to gateway.quarantine_cli (its own messages), imported only for release
    import importlib.util

    assert main(["device", "release", "%08x" % meta["device_id"]] + conf) == 1
    err = capsys.readouterr().err
    if importlib.util.find_spec("gateway.quarantine_cli") is None:
        assert "`fengqiao device release` is not available in this build" in err
    else:
        assert "is not quarantined" in err
