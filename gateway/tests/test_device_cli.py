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


@pytest.mark.timeout(180)
def test_rotate_key_on_a_running_board_keeps_its_outbox_and_the_gateway_acks_it(tmp_path, capsys):
    """`fengqiao device rotate-key ID --port P` (no --no-reboot) on a deployed, running board whose
    events wait unacked (no gateway yet): the console's one-step rekey keeps the outbox, the board
    resets onto key id 2; then the gateway starts: the waiting events arrive under key id 1 (as
    they were numbered), a new one under key id 2, and every one is acked (the outbox empties)."""
    from gateway.cli import GatewayApp
    from gateway.config import load_config
    from tools.testing.deploy_rig import PowerOn, outbox_seqs

    rig = DeployRig(tmp_path, boards=1).start()
    hb = rig.boards[0]
    # 128 KB, as test_deploy_resume's rotation: the console beside a running role with its TLS
    # session up runs out of a 64 KB heap (a firmware memory matter, not this test's)
    hb.stop()
    hb.heap = "128k"
    hb.start()
    power = PowerOn(hb)
    app = None
    try:
        conf = ["--config", rig.config_path]
        rig.plug(0)
        assert main(rig.deploy_args(rig.write_plan(rig.rows[:1]), "--timeout-s", "2")) == 0   # reset: its role runs
        dev = identity(hb)["device_id"]
        wait_for(lambda: power.resets == 1 and os.path.exists(os.path.join(hb.flash_dir, "data", "outbox.log"))
                 and outbox_seqs(hb.flash_dir), 20, "the board's boot event waiting in its outbox")
        waiting = outbox_seqs(hb.flash_dir)
        capsys.readouterr()
        assert main(["device", "rotate-key", "%08x" % dev, "--port", rig.modems[0].port, "--timeout-s", "2"] + conf) == 0
        assert "now uses key id 2" in capsys.readouterr().out
        rotated = identity(hb)
        assert (rotated["key_id"], rotated["prev_key_id"]) == (2, 1) and rotated["prev_below"] > max(waiting)
        assert power.resets == 2 and set(waiting) <= set(outbox_seqs(hb.flash_dir))   # reset once, outbox kept
        app = GatewayApp(load_config(rig.config_path))
        app.start()

        def events():
            return {(e.key_id, e.seq) for e in app.store.events_after(0, 1000) if e.device_id == dev}

        wait_for(lambda: {(1, s) for s in waiting} <= events() and any(k == 2 for k, _ in events())
                 and not outbox_seqs(hb.flash_dir), 60, "old events under key id 1, the new boot under 2, all acked")
        assert all(s < rotated["prev_below"] for k, s in events() if k == 1)
        assert all(s >= rotated["prev_below"] for k, s in events() if k == 2)
    finally:
        if app is not None:
            app.stop()
        power.close()
        rig.close()
